"""The LiteLLM hook's pieces without a server: where the customer comes from, the estimate,
the actual usage, and what the proxy answers when the reservation itself fails."""

from __future__ import annotations

import json
import os
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no cost map from the network

import httpx  # noqa: E402
import pytest  # noqa: E402
from litellm.proxy._types import UserAPIKeyAuth  # noqa: E402
from tallyray_client import (  # noqa: E402
    AsyncTallyray,
    BadRequest,
    Conflict,
    NotFound,
    RateLimited,
    TallyrayError,
    Unauthorized,
    Unavailable,
)
from tallyray_client.litellm import TallyrayHook, _status_for, _usage, customer_of  # noqa: E402

pytestmark = [
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.filterwarnings("ignore::pydantic.warnings.PydanticDeprecatedSince20"),
]

KEY = UserAPIKeyAuth(
    api_key="sk-1",
    key_alias="gateway-acme",
    user_id="u-7",
    team_id="team-acme",
    metadata={"tallyray_customer_id": "acme-by-key"},
    team_metadata={"tallyray_customer_id": "acme-by-team"},
)
BARE = UserAPIKeyAuth(api_key="sk-2", team_id="team-9")
REQUEST = {"user": "end-user-1", "metadata": {"tenant": "acme-by-request"}}


@pytest.mark.parametrize(
    ("sources", "key", "customer"),
    [
        (
            ("key.metadata.tallyray_customer_id", "team.metadata.tallyray_customer_id"),
            KEY,
            "acme-by-key",
        ),
        (("team.metadata.tallyray_customer_id",), KEY, "acme-by-team"),
        (("key.metadata.tallyray_customer_id", "key.team_id"), BARE, "team-9"),  # first found
        (("key.key_alias",), KEY, "gateway-acme"),
        (("key.user_id",), KEY, "u-7"),
        (("request.user",), BARE, "end-user-1"),
        (("request.metadata.tenant",), BARE, "acme-by-request"),
        (("key.metadata.tallyray_customer_id",), BARE, None),  # nothing: unmapped
        (lambda key, data: f"fn-{key.team_id}", BARE, "fn-team-9"),
    ],
)
def test_where_the_customer_comes_from(
    sources: Any, key: UserAPIKeyAuth, customer: str | None
) -> None:
    assert customer_of(sources, key, REQUEST) == customer


def test_an_unknown_source_is_an_error() -> None:
    with pytest.raises(ValueError, match="unknown customer source"):
        customer_of(("header.x",), KEY, REQUEST)


def hook(**kw: Any) -> TallyrayHook:
    client = AsyncTallyray("http://tallyray.test", "trk_test_" + "x" * 32)
    return TallyrayHook(client, **kw)


@pytest.mark.parametrize(
    ("request_fields", "output_tokens"),
    [
        ({"max_tokens": 100}, 100),
        ({"max_completion_tokens": 300}, 300),
        ({}, 4096),  # default_max_tokens
    ],
)
def test_the_estimate_counts_the_input_and_takes_the_most_output(
    request_fields: dict[str, Any], output_tokens: int
) -> None:
    messages = [{"role": "user", "content": "Say hello to the billing system."}]
    event = hook().estimate({"model": "gpt-4o", "messages": messages, **request_fields})
    assert event == {
        "type": "llm.completion",
        "properties": {"model": "gpt-4o", "input_tokens": 14, "output_tokens": output_tokens},
    }


def test_event_and_property_names_are_settings() -> None:
    event = hook(event_type="chat", model_property="m", input_property="in", output_property="out")
    assert event.estimate({"model": "x", "prompt": "hi", "max_tokens": 5}) == {
        "type": "chat",
        "properties": {"m": "x", "in": 1, "out": 5},
    }


@pytest.mark.parametrize(
    ("response", "logged", "usage"),
    [
        (
            type(
                "R", (), {"usage": type("U", (), {"prompt_tokens": 10, "completion_tokens": 20})()}
            )(),
            {},
            (10, 20),
        ),
        ({"usage": {"prompt_tokens": 3, "completion_tokens": 4}}, {}, (3, 4)),
        (None, {"prompt_tokens": 5, "completion_tokens": 6}, (5, 6)),  # the logging payload
        (None, {}, (0, 0)),
    ],
)
def test_the_actual_usage(response: Any, logged: dict[str, int], usage: tuple[int, int]) -> None:
    assert _usage({"standard_logging_object": logged}, response) == usage


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (NotFound("no customer 'x'", status=404), 403),
        (RateLimited("slow down", status=429), 429),
        (BadRequest("bad", status=422), 422),
        (Conflict("1,000 active holds", status=409), 409),
        (Unauthorized("the proxy's key is revoked", status=401), 503),
        (Unavailable("down", status=503), 503),
        (TallyrayError("no answer"), 503),
    ],
)
def test_what_the_proxy_answers_when_the_reservation_fails(
    error: TallyrayError, status: int
) -> None:
    assert _status_for(error) == status


def test_the_proxy_handler_needs_no_settings_to_import(monkeypatch: pytest.MonkeyPatch) -> None:
    import tallyray_client.litellm as module

    monkeypatch.delenv("TALLYRAY_URL", raising=False)
    monkeypatch.setattr(module, "_handler", None)
    with pytest.raises(ValueError, match="TALLYRAY_URL"):
        module.proxy_handler  # noqa: B018 — made when first asked for


class Api:
    """Answers reservations; records every request."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, Any]] = []
        self.count = 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content) if request.content else None
        self.requests.append((request.url.path, body))
        if request.url.path == "/v1/reservations":
            self.count += 1
            hold = {"id": f"res_0_{self.count}", "allowed": True, "amount": "0.01"}
            return httpx.Response(201, json={**hold, "customer_id": body["customer_id"]})
        tail = request.url.path.rsplit("/", 1)[-1]
        return httpx.Response(200, json={"id": "res_0_1", "status": tail + "d", "released": "0"})


def wired(api: Api, **kw: Any) -> TallyrayHook:
    transport = httpx.MockTransport(api)
    return TallyrayHook(
        AsyncTallyray("http://tallyray.test", "trk_test_" + "x" * 32, transport=transport), **kw
    )


DATA = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 10}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.anyio
async def test_a_call_is_settled_or_released_by_its_litellm_call_id() -> None:
    api = Api()
    hook = wired(api)
    for call_id in ("ok", "failed"):
        data = await hook.async_pre_call_hook(
            KEY, None, {**DATA, "litellm_call_id": call_id}, "acompletion"
        )
        assert data is not None and data["metadata"]["tallyray_reservation_id"].startswith("res_0_")
    usage = {"usage": {"prompt_tokens": 3, "completion_tokens": 4}}
    await hook.async_log_success_event({"litellm_call_id": "ok"}, usage, None, None)
    await hook.async_log_success_event({"litellm_call_id": "ok"}, usage, None, None)  # once only
    await hook.async_log_failure_event({"litellm_call_id": "failed"}, None, None, None)
    await hook.async_post_call_failure_hook({"litellm_call_id": "failed"}, Exception(), KEY)
    assert [p for p, _ in api.requests] == [
        "/v1/reservations",
        "/v1/reservations",
        "/v1/reservations/res_0_1/settle",
        "/v1/reservations/res_0_2/release",
    ]
    (settled,) = api.requests[2][1]["events"]
    assert settled["customer_id"] == "acme-by-key"
    assert settled["properties"] == {"model": "gpt-4o", "input_tokens": 3, "output_tokens": 4}
    assert hook.open_holds == 0
    await hook.client.close()


@pytest.mark.anyio
async def test_holds_whose_call_never_reported_back_are_forgotten_after_their_ttl() -> None:
    hook = wired(Api(), ttl_seconds=0)
    await hook.async_pre_call_hook(KEY, None, {**DATA, "litellm_call_id": "lost"}, "acompletion")
    assert hook.open_holds == 1
    await hook.async_pre_call_hook(KEY, None, {**DATA, "litellm_call_id": "next"}, "acompletion")
    assert hook.open_holds == 1  # "lost" is gone: Tallyray expires its hold at the same TTL
    await hook.client.close()


@pytest.mark.anyio
async def test_calls_that_are_not_completions_pass_unbilled() -> None:
    api = Api()
    hook = wired(api)
    assert (
        await hook.async_pre_call_hook(KEY, None, {"model": "e", "input": "x"}, "aembedding")
        is None
    )
    assert api.requests == []
    await hook.client.close()
