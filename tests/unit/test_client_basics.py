"""The gateway client without a server: errors, backoff, the unreachable policy, retries with
one Idempotency-Key, and reservations as context managers (httpx's MockTransport plays the
API)."""

from __future__ import annotations

import json
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import httpx
import pytest
from tallyray_client import (
    AsyncTallyray,
    Backoff,
    BadRequest,
    Conflict,
    Denied,
    Forbidden,
    NotFound,
    RateLimited,
    Tallyray,
    TallyrayError,
    Unauthorized,
    Unavailable,
    UnitLimit,
    Unreachable,
)
from tallyray_client.backoff import retryable
from tallyray_client.errors import error_from_response

URL = "http://tallyray.test"
KEY = "trk_test_" + "x" * 32
CALL = {"type": "llm.completion", "properties": {"model": "gpt-4o", "input_tokens": 10}}
FAST = Backoff(base=0.001, cap=0.002)

Handler = Callable[[httpx.Request], httpx.Response]


def client(handler: Handler, **kw: Any) -> Tallyray:
    return Tallyray(URL, KEY, transport=httpx.MockTransport(handler), backoff=FAST, **kw)


def error(status: int, kind: str, message: str, **headers: str) -> httpx.Response:
    body = {"error": {"type": kind, "message": message, "details": []}}
    return httpx.Response(status, json=body, headers={"x-request-id": "req_1", **headers})


def refuse(request: httpx.Request) -> httpx.Response:
    raise httpx.ConnectError("connection refused", request=request)


HOLD = {
    "id": "res_0_abc",
    "customer_id": "acme",
    "allowed": True,
    "amount": "0.13",
    "cost": "0.125",
    "available": "9.87",
    "currency": "EUR",
    "reason": None,
    "expires_at": "2026-11-20T10:05:00Z",
}


# -- errors ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "kind", "expected"),
    [
        (400, "invalid_request", BadRequest),
        (401, "unauthorized", Unauthorized),
        (403, "forbidden", Forbidden),
        (404, "not_found", NotFound),
        (409, "conflict", Conflict),
        (413, "payload_too_large", BadRequest),
        (422, "invalid_events", BadRequest),
        (429, "rate_limited", RateLimited),
        (500, "error", Unavailable),
        (503, "store_unavailable", Unavailable),
    ],
)
def test_each_status_is_its_own_error(status: int, kind: str, expected: type) -> None:
    found = error_from_response(error(status, kind, "why", **{"retry-after": "2"}))
    assert type(found) is expected
    assert (found.status, found.type, found.message, found.request_id) == (
        status,
        kind,
        "why",
        "req_1",
    )
    assert "req_1" in str(found)
    if isinstance(found, RateLimited | Unavailable):
        assert found.retry_after == 2.0


def test_an_answer_that_is_not_the_error_shape_still_is_an_error() -> None:
    found = error_from_response(httpx.Response(502, text="<html>bad gateway</html>"))
    assert isinstance(found, Unavailable) and found.status == 502


@pytest.mark.parametrize(
    ("failure", "again"),
    [
        (Unreachable("no answer"), True),
        (Unavailable("store down", status=503), True),
        (RateLimited("slow down", status=429), True),
        (Conflict("still being answered", status=409, type="request_in_progress"), True),
        # a conflict of another type is not retried, whatever its message says
        (Conflict("still being answered", status=409, type="conflict"), False),
        (Conflict("meter redefined", status=409), False),
        (BadRequest("bad", status=422), False),
        (Unauthorized("who", status=401), False),
    ],
)
def test_which_failures_are_retried(failure: TallyrayError, again: bool) -> None:
    assert retryable(failure) is again


# -- backoff --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("attempt", "rand", "retry_after", "delay"),
    [
        (0, 0.0, None, 0.1),  # ceiling 0.2, half of it taken off
        (0, 1.0, None, 0.2),
        (3, 0.5, None, 1.2),  # ceiling 0.2 × 2³ = 1.6 → 0.8 + 0.5 × 0.8
        (10, 1.0, None, 5.0),  # capped
        (0, 0.0, 3.0, 3.0),  # Retry-After wins when longer
        (10, 1.0, 1.0, 5.0),  # and the backoff when it is longer
    ],
)
def test_backoff_is_exponential_with_jitter_and_honours_retry_after(
    attempt: int, rand: float, retry_after: float | None, delay: float
) -> None:
    backoff = Backoff(base=0.2, cap=5.0, random=lambda: rand)
    assert backoff.delay(attempt, retry_after) == pytest.approx(delay)


# -- the unreachable policy -------------------------------------------------------------


@pytest.mark.parametrize(
    ("policy", "answer", "allowed"),
    [
        ("deny", refuse, False),
        ("allow", refuse, True),
        ("deny", lambda r: error(503, "store_unavailable", "down"), False),
        ("allow", lambda r: error(503, "store_unavailable", "down"), True),
        (lambda customer: customer == "acme", refuse, True),
        (lambda customer: customer != "acme", refuse, False),
    ],
)
def test_a_check_or_reservation_that_cannot_reach_tallyray_answers_the_policy(
    policy: Any, answer: Handler, allowed: bool
) -> None:
    with client(answer, on_unreachable=policy) as tallyray:
        check = tallyray.check("acme", CALL)
        assert (check.allowed, check.degraded) == (allowed, True)
        hold = tallyray.reserve("acme", CALL)
        assert (hold.allowed, hold.degraded, hold.id) == (allowed, True, None)


def test_the_default_is_to_fail_closed() -> None:
    with client(refuse) as tallyray:
        assert tallyray.check("acme", CALL).allowed is False


def test_an_unknown_policy_fails_at_construction() -> None:
    with pytest.raises(ValueError, match="on_unreachable"):
        Tallyray(URL, KEY, on_unreachable="maybe")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("answer", "raised"),
    [
        (error(429, "rate_limited", "over the limit", **{"retry-after": "0"}), RateLimited),
        (error(404, "not_found", "unknown customer 'nobody'"), NotFound),
        (error(403, "forbidden", "needs the ingest scope"), Forbidden),
    ],
)
def test_an_answer_is_raised_not_degraded(answer: httpx.Response, raised: type) -> None:
    with client(lambda r: answer) as tallyray, pytest.raises(raised) as caught:
        tallyray.check("acme", CALL)
    assert caught.value.request_id == "req_1"


UNIT_REFUSAL = {
    "allowed": False,
    "cost": "0.01",
    "available": "7.97",
    "currency": "EUR",
    "reason": "unit limit of 1,000 output_tokens per day reached: 990 used, this adds 20 "
    "(the window resets at 2026-11-21T00:00:00Z)",
    "refusal": "unit_limit",
    "limit": {
        "meter": "output_tokens",
        "window": "day",
        "limit": "1000",
        "used": "990",
        "window_start": "2026-11-20T00:00:00Z",
        "resets_at": "2026-11-21T00:00:00Z",
    },
}


def test_a_refusal_names_the_unit_limit_in_the_typed_answer() -> None:
    with client(lambda r: httpx.Response(200, json=UNIT_REFUSAL)) as tallyray:
        check = tallyray.check("acme", CALL)
    assert (check.allowed, check.refusal, check.feature) == (False, "unit_limit", None)
    assert check.limit == UnitLimit(
        "output_tokens",
        "day",
        Decimal(1000),
        Decimal(990),
        "2026-11-21T00:00:00Z",
        "2026-11-20T00:00:00Z",
    )


def test_a_hold_refused_by_a_feature_names_it() -> None:
    body = {
        **HOLD,
        "id": None,
        "allowed": False,
        "reason": "the plan does not include feature 'models.o1'",
        "refusal": "entitlement",
        "feature": "models.o1",
    }
    with client(lambda r: httpx.Response(200, json=body)) as tallyray:
        hold = tallyray.reserve("acme", CALL).hold
    assert (hold.allowed, hold.refusal, hold.feature, hold.limit) == (
        False,
        "entitlement",
        "models.o1",
        None,
    )


def test_an_answer_from_a_server_before_refusals_still_reads() -> None:
    with client(lambda r: httpx.Response(200, json=HOLD)) as tallyray:
        hold = tallyray.reserve("acme", CALL).hold
    assert (hold.allowed, hold.refusal, hold.limit, hold.feature) == (True, None, None, None)


def test_a_check_answers_decimals() -> None:
    body = {"allowed": True, "cost": "0.0000025", "available": "7.97", "currency": "EUR"}
    with client(lambda r: httpx.Response(200, json={**body, "reason": None})) as tallyray:
        check = tallyray.check("acme", CALL)
    assert (check.cost, check.available, check.degraded) == (
        Decimal("0.0000025"),
        Decimal("7.97"),
        False,
    )


# -- retries: one logical call, one Idempotency-Key ----------------------------------------


def test_a_settle_whose_answer_is_lost_is_sent_again_with_the_same_key() -> None:
    seen: list[httpx.Request] = []

    def lose_the_first(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if len(seen) == 1:
            raise httpx.ReadError("connection reset", request=request)
        if len(seen) == 2:
            return error(503, "store_unavailable", "down", **{"retry-after": "0"})
        body = {"id": "res_0_abc", "status": "settled", "ingested": 1, "duplicates": 0}
        return httpx.Response(
            200,
            json={**body, "released": "0.13", "retried": False},
            headers={"idempotent-replayed": "true"},
        )

    with client(lose_the_first) as tallyray:
        settled = tallyray.settle("res_0_abc", [{"id": "e1", "customer_id": "acme", **CALL}])
    keys = {r.headers["idempotency-key"] for r in seen}
    assert len(seen) == 3 and len(keys) == 1
    assert settled.replayed and settled.released == Decimal("0.13")


def test_every_post_carries_an_idempotency_key_and_each_call_its_own() -> None:
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"allowed": True, "cost": "0", "available": None})

    with client(answer) as tallyray:
        tallyray.check("acme", CALL)
        tallyray.check("acme", CALL)
    keys = [r.headers["idempotency-key"] for r in seen]
    assert len(set(keys)) == 2
    assert all(r.headers["x-request-id"] == r.headers["idempotency-key"] for r in seen)
    assert all(r.headers["authorization"] == f"Bearer {KEY}" for r in seen)


def test_retries_give_up_and_raise_unreachable() -> None:
    with client(refuse, settle_retries=3) as tallyray, pytest.raises(Unreachable) as caught:
        tallyray.release("res_0_abc")
    assert caught.value.request_id and caught.value.request_id.startswith("trc_")


# -- reservations as context managers ---------------------------------------------------


class Api:
    """Answers reservations, records settles and releases."""

    def __init__(self, allowed: bool = True) -> None:
        self.allowed = allowed
        self.requests: list[tuple[str, Any]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content) if request.content else None
        self.requests.append((request.url.path, body))
        if request.url.path == "/v1/reservations":
            if not self.allowed:
                no = {**HOLD, "id": None, "allowed": False, "reason": "insufficient credit"}
                return httpx.Response(200, json=no)
            return httpx.Response(201, json=HOLD)
        if request.url.path.endswith("/settle"):
            n = len(body["events"])
            done = {"id": HOLD["id"], "status": "settled", "ingested": n, "duplicates": 0}
            return httpx.Response(200, json={**done, "released": "0.13", "retried": False})
        if request.url.path.endswith("/release"):
            done = {"id": HOLD["id"], "status": "released", "released": "0.13"}
            return httpx.Response(200, json={**done, "retried": False})
        if request.url.path == "/v1/events":
            return httpx.Response(200, json={"ingested": len(body), "duplicates": 0})
        return httpx.Response(404)

    def paths(self) -> list[str]:
        return [p for p, _ in self.requests]


def test_a_block_that_succeeds_settles_with_what_it_recorded() -> None:
    api = Api()
    with client(api) as tallyray:
        with tallyray.reserve("acme", CALL) as hold:
            assert hold.amount == Decimal("0.13")
            hold.record(type="llm.completion", properties={"model": "gpt-4o", "input_tokens": 7})
        assert hold.outcome is not None and hold.outcome.status == "settled"
    path, body = api.requests[-1]
    assert path == "/v1/reservations/res_0_abc/settle"
    (event,) = body["events"]
    assert event["customer_id"] == "acme" and event["id"].startswith("evt_")
    assert event["properties"]["input_tokens"] == 7


def test_a_block_that_fails_releases_and_the_error_goes_on() -> None:
    api = Api()
    with client(api) as tallyray, pytest.raises(KeyError), tallyray.reserve("acme", CALL) as hold:
        hold.record(CALL)
        raise KeyError("the model call failed")
    assert api.paths()[-1] == "/v1/reservations/res_0_abc/release"


def test_a_reservation_that_is_not_allowed_never_runs_the_block() -> None:
    ran = []
    tallyray = client(Api(allowed=False))
    with pytest.raises(Denied) as caught, tallyray.reserve("acme", CALL):
        ran.append(True)
    tallyray.close()
    assert not ran and caught.value.hold.reason == "insufficient credit"


def test_a_degraded_reservation_sends_its_usage_through_the_ingest() -> None:
    api = Api()

    def down_for_reservations(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/reservations":
            raise httpx.ConnectError("refused", request=request)
        return api(request)

    with client(down_for_reservations, on_unreachable="allow", flush_interval=0.01) as tallyray:
        with tallyray.reserve("acme", CALL) as hold:
            assert hold.degraded and hold.id is None
            hold.record(CALL)
        assert tallyray.flush(timeout=30)
    assert api.paths() == ["/v1/events"]


def test_a_settle_that_gets_no_answer_hands_its_events_to_the_ingest() -> None:
    api = Api()

    def settle_unreachable(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/settle"):
            raise httpx.ConnectError("refused", request=request)
        return api(request)

    with client(settle_unreachable, settle_retries=1, flush_interval=0.01) as tallyray:
        with tallyray.reserve("acme", CALL) as hold:
            recorded = hold.record(CALL)
        assert tallyray.flush(timeout=30)
    path, body = api.requests[-1]
    assert path == "/v1/events" and body == [recorded]  # the same id: counted once either way


# -- async ------------------------------------------------------------------------------


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.anyio
async def test_the_async_client_reserves_settles_and_releases() -> None:
    api = Api()
    transport = httpx.MockTransport(api)
    async with AsyncTallyray(URL, KEY, transport=transport, backoff=FAST) as tallyray:
        async with tallyray.reserve("acme", CALL) as hold:
            hold.record(CALL)
        with pytest.raises(RuntimeError):
            async with tallyray.reserve("acme", CALL):
                raise RuntimeError("failed")
        plain = await tallyray.reserve("acme", CALL)
        assert plain.allowed
        assert (await plain.release()) is not None
    assert api.paths() == [
        "/v1/reservations",
        "/v1/reservations/res_0_abc/settle",
        "/v1/reservations",
        "/v1/reservations/res_0_abc/release",
        "/v1/reservations",
        "/v1/reservations/res_0_abc/release",
    ]


@pytest.mark.anyio
async def test_the_async_client_answers_the_policy_when_unreachable() -> None:
    transport = httpx.MockTransport(refuse)
    async with AsyncTallyray(URL, KEY, transport=transport, backoff=FAST) as tallyray:
        check = await tallyray.check("acme", CALL)
    assert (check.allowed, check.degraded) == (False, True)


def test_the_client_imports_nothing_of_ray_or_the_server() -> None:
    import subprocess
    import sys

    code = (
        "import sys, tallyray_client\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('ray', 'tallyray'))\n"
        "assert not bad, bad"
    )
    env = {"PATH": ""}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
