"""The gateway client and its LiteLLM hook against a real `tallyray serve` (one server for the
module): reservations settled and released, a settle whose answer was lost, the buffered
ingest's refused events, and LiteLLM calls (with its mock responses, no network) that get
exactly what their credit pays for, never overspend and leave no hold behind."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no cost map from the network

import httpx  # noqa: E402
import litellm  # noqa: E402
import pytest  # noqa: E402
from fastapi import HTTPException  # noqa: E402
from litellm.caching.dual_cache import DualCache  # noqa: E402
from litellm.proxy._types import UserAPIKeyAuth  # noqa: E402
from served import tallyray_serve  # noqa: E402
from tallyray_client import (  # noqa: E402
    AsyncTallyray,
    Denied,
    Forbidden,
    NotFound,
    Rejected,
    Tallyray,
)
from tallyray_client.litellm import TallyrayHook  # noqa: E402

pytestmark = [
    pytest.mark.e2e,
    # LiteLLM's own modules warn about what their dependencies deprecate; not ours to fix.
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.filterwarnings("ignore::pydantic.warnings.PydanticDeprecatedSince20"),
    pytest.mark.filterwarnings("ignore:.*the `ReadOnly` qualifier:UserWarning"),
]

ADMIN_KEY = "trk_admin_" + uuid.uuid4().hex
# The "starter" plan of examples/llm-api: USD, per unit, no base fee, no minimum.
INPUT_PRICE = Decimal("0.000002")
OUTPUT_PRICE = Decimal("0.000008")
CALL = {
    "type": "llm.completion",
    "properties": {"model": "gpt-4o", "input_tokens": 1000, "output_tokens": 0},
}


class Server:
    def __init__(self, base: str) -> None:
        self.base = base
        admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
        self.manage = self._key(admin, ["ingest", "read", "manage"])
        self.gateway = self._key(admin, ["ingest", "read"])  # read: for balance()
        self.ingest_only = self._key(admin, ["ingest"])

    def _key(self, admin: dict[str, str], scopes: list[str]) -> str:
        r = httpx.post(
            f"{self.base}/v1/admin/keys",
            json={"env": "test", "scopes": scopes},
            headers=admin,
            timeout=30,
        )
        assert r.status_code == 201, r.text
        return str(r.json()["key"])

    def customer(self, credits: str | None = None) -> str:
        customer = f"gw-{uuid.uuid4().hex[:10]}"
        with httpx.Client(
            base_url=self.base, headers={"Authorization": f"Bearer {self.manage}"}, timeout=30
        ) as http:
            r = http.post("/v1/customers", json={"id": customer, "currency": "USD"})
            assert r.status_code == 201, r.text
            r = http.post("/v1/subscriptions", json={"customer_id": customer, "plan": "starter"})
            assert r.status_code == 201, r.text
            if credits is not None:
                r = http.post(f"/v1/customers/{customer}/credits", json={"amount": credits})
                assert r.status_code == 201, r.text
        return customer

    def client(self, **kw: Any) -> Tallyray:
        return Tallyray(self.base, self.gateway, **kw)

    def aclient(self, **kw: Any) -> AsyncTallyray:
        return AsyncTallyray(self.base, self.gateway, **kw)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with tallyray_serve(tmp_path_factory.mktemp("serve"), ADMIN_KEY) as base:
        yield Server(base)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


# -- reservations -----------------------------------------------------------------------


class LoseFirstAnswer(httpx.BaseTransport):
    """Sends every request; throws away the server's first answer to a settle, as a
    connection that breaks after the request went out would."""

    def __init__(self) -> None:
        self.inner = httpx.HTTPTransport()
        self.lost: list[httpx.Request] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self.inner.handle_request(request)
        if request.url.path.endswith("/settle") and not self.lost:
            response.read()  # the server answered: its settlement is done
            response.close()
            self.lost.append(request)
            raise httpx.ReadError("connection reset by peer", request=request)
        return response

    def close(self) -> None:
        self.inner.close()


def test_a_settle_whose_answer_was_lost_is_retried_into_one_settlement(server: Server) -> None:
    customer = server.customer(credits="10.00")
    transport = LoseFirstAnswer()
    with server.client(transport=transport) as tallyray:
        hold = tallyray.reserve(customer, CALL)
        assert hold.allowed and hold.id is not None
        event = {"id": "e-lost", "type": "llm.completion", "customer_id": customer}
        event["properties"] = {"model": "gpt-4o", "input_tokens": 1000, "output_tokens": 100}
        settled = tallyray.settle(hold.id, [event])
        # the retry carried the first attempt's Idempotency-Key: the first answer, again
        assert transport.lost and settled.replayed
        assert (settled.status, settled.ingested, settled.duplicates) == ("settled", 1, 0)
        # another logical call (another key) for the same hold: answered with what the
        # settlement did, marked retried, and nothing stored again
        again = tallyray.settle(hold.id, [event])
        assert (again.retried, again.replayed, again.ingested) == (True, False, 1)
        balance = tallyray.balance(customer)
    assert balance.holds == Decimal("0")
    assert balance.quantity("requests") == 1  # one settlement
    assert balance.quantity("input_tokens") == 1000
    # 1,000 × 0.000002 + 100 × 0.000008 = 0.0028 → 0.00 spent shown in cents, 10.00 left
    assert Decimal(balance.raw["period_spend_precise"]) == Decimal("0.0028")


def test_a_reservation_block_settles_on_success_and_releases_on_error(server: Server) -> None:
    customer = server.customer(credits="10.00")
    estimate = {**CALL, "properties": {**CALL["properties"], "input_tokens": 100_000}}
    with server.client() as tallyray:
        with tallyray.reserve(customer, estimate, ttl_seconds=60) as hold:
            # 100,000 × 0.000002 = 0.20, held while the call runs
            assert tallyray.balance(customer).holds == Decimal("0.20")
            actual = {"model": "gpt-4o", "input_tokens": 7, "output_tokens": 0}
            hold.record(type="llm.completion", properties=actual)
        assert hold.outcome is not None and hold.outcome.status == "settled"

        with pytest.raises(TimeoutError), tallyray.reserve(customer, CALL) as failed:
            raise TimeoutError("the model did not answer")
        assert failed.outcome is not None and failed.outcome.status == "released"

        balance = tallyray.balance(customer)
    assert balance.holds == 0
    assert (balance.quantity("requests"), balance.quantity("input_tokens")) == (1, 7)


def test_a_check_and_a_reservation_that_do_not_fit(server: Server) -> None:
    customer = server.customer(credits="1.00")
    big = {**CALL, "properties": {**CALL["properties"], "input_tokens": 10**6}}
    with server.client() as tallyray:
        small = tallyray.check(customer, CALL)
        # 1,000 × 0.000002 = 0.002; 1,000,000 × 0.000002 = 2.00 > 1.00
        assert (small.allowed, small.cost, small.available) == (True, Decimal("0.002"), 1)
        refused = tallyray.check(customer, big)
        assert not refused.allowed and not refused.degraded
        assert refused.reason and refused.reason.startswith("insufficient credit")
        with pytest.raises(Denied) as denied, tallyray.reserve(customer, big):
            pytest.fail("the block must not run")
        assert denied.value.hold.id is None
        assert tallyray.balance(customer).holds == 0


def test_api_errors_carry_the_message_and_the_request_id(server: Server) -> None:
    with server.client() as tallyray, pytest.raises(NotFound) as unknown:
        tallyray.reserve("nobody-" + uuid.uuid4().hex[:6], CALL)
    assert unknown.value.status == 404 and unknown.value.request_id
    assert "nobody" in unknown.value.message
    with (
        Tallyray(server.base, server.ingest_only) as gateway,
        pytest.raises(Forbidden) as forbidden,
    ):
        gateway.balance("acme")
    assert "read" in str(forbidden.value)


def test_the_buffered_ingest_drops_the_events_the_server_refuses(server: Server) -> None:
    customer = server.customer()
    rejected: list[Rejected] = []
    good = [{"customer_id": customer, **CALL} for _ in range(5)]
    bad = {"customer_id": "nobody-" + uuid.uuid4().hex[:6], **CALL}
    with server.client(on_rejected=rejected.append, flush_interval=0.05) as tallyray:
        tallyray.ingest([*good[:2], bad, *good[2:]])
        assert tallyray.flush(timeout=60)
        assert tallyray.balance(customer).quantity("requests") == 5
    assert [r.event["customer_id"] for r in rejected] == [bad["customer_id"]]
    assert "unknown customer" in rejected[0].message


# -- LiteLLM ------------------------------------------------------------------------------

MESSAGES = [{"role": "user", "content": "Say hello to the billing system."}]
MAX_TOKENS = 100


def key_of(customer: str) -> UserAPIKeyAuth:
    """The LiteLLM virtual key of a customer, its metadata naming the Tallyray customer."""
    return UserAPIKeyAuth(api_key="sk-" + customer, metadata={"tallyray_customer_id": customer})


async def proxied_call(
    hook: TallyrayHook, customer: str, mock: Any = "Hello!", **extra: Any
) -> Any:
    """One request through the proxy's steps: the pre-call hook, then the model call (a
    LiteLLM mock), whose success or failure LiteLLM reports to the hook (litellm.callbacks)."""
    data: dict[str, Any] = {
        "model": "gpt-4o",
        "messages": MESSAGES,
        "max_tokens": MAX_TOKENS,
        "litellm_call_id": str(uuid.uuid4()),  # the proxy sets it before its hooks run
        **extra,
    }
    data = (
        await hook.async_pre_call_hook(
            user_api_key_dict=key_of(customer),
            cache=DualCache(),
            data=data,
            call_type="acompletion",
        )
        or data
    )
    return await litellm.acompletion(**data, mock_response=mock)


async def settled(hook: TallyrayHook) -> None:
    """LiteLLM reports success and failure in the background: wait until the hook is done."""
    for _ in range(1200):
        if hook.open_holds == 0:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{hook.open_holds} holds still open")


@pytest.fixture(scope="module")
def registered(server: Server) -> Iterator[TallyrayHook]:
    """One hook for the module, registered once: LiteLLM keeps the first logger of a type it
    was given, so a second instance would never hear of its calls."""
    hook = TallyrayHook(server.aclient())
    litellm.callbacks = [hook]
    yield hook
    litellm.callbacks = []
    for name in (
        "callbacks",
        "success_callback",
        "failure_callback",
        "_async_success_callback",
        "_async_failure_callback",
        "input_callback",
    ):
        litellm.logging_callback_manager.remove_callbacks_by_type(
            getattr(litellm, name, None), TallyrayHook
        )


@pytest.fixture
async def hook(registered: TallyrayHook, server: Server) -> Any:
    """The hook with a client of this test's event loop."""
    registered.client = server.aclient()
    yield registered
    await registered.client.close()


def prices(event: dict[str, Any]) -> Decimal:
    p = event["properties"]
    return p["input_tokens"] * INPUT_PRICE + p["output_tokens"] * OUTPUT_PRICE


@pytest.mark.anyio
async def test_a_customer_with_credit_for_n_calls_gets_exactly_n(
    server: Server, hook: TallyrayHook
) -> None:
    credit = Decimal("0.01")
    customer = server.customer(credits=str(credit))
    data = {"model": "gpt-4o", "messages": MESSAGES, "max_tokens": MAX_TOKENS}
    estimate = prices(hook.estimate(data))  # counted input tokens + 100 output tokens
    first = await proxied_call(hook, customer)
    await settled(hook)
    used = first.usage.prompt_tokens * INPUT_PRICE + first.usage.completion_tokens * OUTPUT_PRICE
    # call k + 1 is reserved while credit − k × used ≥ estimate: with the mock's 10 + 20
    # tokens, used = 0.00018 and estimate = 14 × 0.000002 + 100 × 0.000008 = 0.000828, so
    # k ≤ (0.01 − 0.000828) / 0.00018 = 50.96 → 51 calls
    n = int((credit - estimate) // used) + 1
    made, refused = 1, None
    while refused is None:
        try:
            await proxied_call(hook, customer)
            made += 1
        except HTTPException as error:
            refused = error
        await settled(hook)
    assert made == n
    assert refused.status_code == 402 and "insufficient credit" in str(refused.detail)
    balance = await hook.client.balance(customer)
    assert balance.holds == 0
    assert balance.quantity("requests") == n
    assert balance.quantity("output_tokens") == n * first.usage.completion_tokens


@pytest.mark.anyio
async def test_concurrent_calls_never_overspend_and_leave_no_hold(
    server: Server, hook: TallyrayHook
) -> None:
    credit = Decimal("0.01")
    # each call holds 14 × 0.000002 + 500 × 0.000008 = 0.004028: room for 2 at a time
    customer = server.customer(credits=str(credit))
    results = await asyncio.gather(
        *(proxied_call(hook, customer, max_tokens=500) for _ in range(40)),
        return_exceptions=True,
    )
    await settled(hook)
    done = [r for r in results if not isinstance(r, BaseException)]
    refused = [r for r in results if isinstance(r, HTTPException)]
    assert len(done) + len(refused) == 40 and done and refused
    balance = await hook.client.balance(customer)
    assert balance.holds == 0
    assert balance.quantity("requests") == len(done)
    spent = Decimal(balance.raw["period_spend_precise"])
    assert spent <= credit and Decimal(balance.raw["uncovered"]) == 0
    assert spent == sum(
        r.usage.prompt_tokens * INPUT_PRICE + r.usage.completion_tokens * OUTPUT_PRICE for r in done
    )


@pytest.mark.anyio
async def test_a_stream_is_settled_once_with_its_complete_usage(
    server: Server, hook: TallyrayHook
) -> None:
    customer = server.customer(credits="1.00")
    stream = await proxied_call(
        hook,
        customer,
        mock="A streamed answer, word by word.",
        stream=True,
        stream_options={"include_usage": True},
    )
    usage = None
    async for chunk in stream:
        usage = getattr(chunk, "usage", None) or usage
    await settled(hook)
    assert usage is not None
    balance = await hook.client.balance(customer)
    assert balance.holds == 0 and balance.quantity("requests") == 1
    assert balance.quantity("input_tokens") == usage.prompt_tokens
    assert balance.quantity("output_tokens") == usage.completion_tokens


@pytest.mark.anyio
async def test_a_failed_call_releases_its_hold(server: Server, hook: TallyrayHook) -> None:
    customer = server.customer(credits="1.00")
    with pytest.raises(Exception, match="fell over"):
        await proxied_call(hook, customer, mock=Exception("the provider fell over"))
    await settled(hook)
    balance = await hook.client.balance(customer)
    assert balance.holds == 0 and balance.quantity("requests") == 0


@pytest.mark.anyio
async def test_a_key_without_a_customer_is_refused(server: Server, hook: TallyrayHook) -> None:
    with pytest.raises(HTTPException) as refused:
        await hook.async_pre_call_hook(
            user_api_key_dict=UserAPIKeyAuth(api_key="sk-stranger"),
            cache=DualCache(),
            data={"model": "gpt-4o", "messages": MESSAGES},
            call_type="acompletion",
        )
    assert refused.value.status_code == 403


@pytest.mark.anyio
async def test_a_key_mapped_to_a_customer_tallyray_does_not_know_is_refused(
    hook: TallyrayHook,
) -> None:
    with pytest.raises(HTTPException) as refused:
        await proxied_call(hook, "nobody-" + uuid.uuid4().hex[:6])
    assert refused.value.status_code == 403 and "tallyray" in str(refused.value.detail)
    assert hook.open_holds == 0


def test_the_proxy_finds_the_hook_by_its_config_name(
    server: Server, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """`callbacks: ["tallyray_client.litellm.proxy_handler"]` in config.yaml, resolved the
    way the proxy resolves it."""
    import tallyray_client.litellm as module
    from litellm.proxy.types_utils.utils import get_instance_fn

    monkeypatch.setattr(module, "_handler", None)
    monkeypatch.setenv("TALLYRAY_URL", server.base)
    monkeypatch.setenv("TALLYRAY_API_KEY", server.gateway)
    monkeypatch.setenv("TALLYRAY_CUSTOMER_FROM", "key.team_id, request.user")
    found = get_instance_fn("tallyray_client.litellm.proxy_handler", str(tmp_path / "config.yaml"))
    assert isinstance(found, TallyrayHook)
    assert found.customer_from == ("key.team_id", "request.user")
