"""Every error a caller can cause: a 4xx with a message saying what to fix, nothing stored."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest
from suite_clock import TEST_NOW
from support import Server, make_customer, unique

pytestmark = pytest.mark.anyio


def ev(customer: str, **overrides: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "id": unique("evt"),
        "customer_id": customer,
        "type": "llm.completion",
        "properties": {"model": "gpt-4o", "input_tokens": 10, "output_tokens": 1},
    }
    event.update(overrides)
    return event


def iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


NOW = datetime.fromisoformat(TEST_NOW)
"""About when the server's clock started (it has moved on by the suite's run time since)."""

# (case, events given the customer id → bad index, what the message must say)
BAD_EVENTS = [
    ("unknown customer", lambda c: [ev(c), ev("nobody-" + c)], 1, "unknown customer"),
    ("missing type", lambda c: [ev(c, type=None)], 0, "'type' must be a non-empty string"),
    ("missing id", lambda c: [{k: v for k, v in ev(c).items() if k != "id"}], 0, "'id'"),
    ("properties not an object", lambda c: [ev(c, properties=[1])], 0, "'properties' must be"),
    (
        "value not a number",
        lambda c: [
            ev(c),
            ev(c, properties={"model": "gpt-4o", "input_tokens": "many", "output_tokens": 1}),
        ],
        1,
        "property 'input_tokens' must be a number",
    ),
    (
        "value missing",
        lambda c: [ev(c, properties={"model": "gpt-4o", "output_tokens": 1})],
        0,
        "needs property 'input_tokens', which is missing",
    ),
    (
        "timestamp without offset",
        lambda c: [ev(c, timestamp="2026-11-28T10:00:00")],
        0,
        "has no UTC offset",
    ),
    ("timestamp garbage", lambda c: [ev(c, timestamp="yesterday")], 0, "is not RFC 3339"),
    (
        "timestamp in the future",
        lambda c: [ev(c, timestamp=iso(NOW + timedelta(hours=2)))],
        0,
        "in the future",
    ),
    (
        "timestamp in a closed period",
        lambda c: [ev(c, timestamp=iso(NOW - timedelta(days=75)))],
        0,
        "billing period is closed and past its grace window",
    ),
    ("not an object", lambda c: [ev(c), "hello"], 1, "must be a JSON object"),
]


@pytest.mark.parametrize(
    ("make", "bad_index", "fragment"),
    [case[1:] for case in BAD_EVENTS],
    ids=[case[0] for case in BAD_EVENTS],
)
async def test_bad_events_are_refused_whole(
    client: httpx.AsyncClient, make: Any, bad_index: int, fragment: str
) -> None:
    customer = await make_customer(client)
    events = make(customer)
    r = await client.post("/v1/events", json=events)
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["type"] == "invalid_events"
    assert error["message"].endswith("nothing was stored")
    assert [d["where"] for d in error["details"]] == [f"[{bad_index}]"]
    assert fragment in error["details"][0]["message"]
    # nothing was stored: the good events of the batch count for nothing
    balance = (await client.get(f"/v1/customers/{customer}/balance")).json()
    assert balance["usage"] == {}


async def test_every_bad_event_is_named(client: httpx.AsyncClient) -> None:
    customer = await make_customer(client)
    events = [
        ev(customer),
        ev(customer, type=7),
        ev(customer, properties={"model": "gpt-4o", "input_tokens": "x", "output_tokens": 1}),
        ev("ghost"),
    ]
    r = await client.post("/v1/events", json=events)
    assert r.status_code == 422
    assert [d["where"] for d in r.json()["error"]["details"]] == ["[1]", "[2]", "[3]"]


REQUESTS = [
    # (case, method, path, body, status, error type, message fragment)
    ("body not json", "POST", "/v1/events", b"{nope", 422, "invalid_request", "not valid JSON"),
    ("body not a list", "POST", "/v1/events", b'{"a": 1}', 422, "invalid_request", "JSON array"),
    ("unknown route", "GET", "/v1/nothing", None, 404, "not_found", "Not Found"),
    (
        "unknown meter in plan",
        "POST",
        "/v1/plans",
        b'{"key": "p-bad", "currency": "EUR", "interval": "month", "charges": '
        b'[{"meter": "nope", "model": "per_unit", "unit_amount": "1"}]}',
        422,
        "invalid_config",
        "invalid configuration",
    ),
    (
        "float amount in plan",
        "POST",
        "/v1/plans",
        b'{"key": "p-float", "currency": "EUR", "interval": "month", "charges": '
        b'[{"meter": "requests", "model": "per_unit", "unit_amount": 0.1}]}',
        422,
        "invalid_config",
        "invalid configuration",
    ),
    (
        "customer bad currency",
        "POST",
        "/v1/customers",
        b'{"id": "c-x", "currency": "EURO"}',
        422,
        "invalid_request",
        "the customer has problems",
    ),
    (
        "customer missing id",
        "POST",
        "/v1/customers",
        b'{"currency": "EUR"}',
        422,
        "invalid_request",
        "the request body has problems",
    ),
    (
        "subscription unknown plan",
        "POST",
        "/v1/subscriptions",
        b'{"customer_id": "nobody", "plan": "nope"}',
        404,
        "not_found",
        "no customer",
    ),
    (
        "balance unknown customer",
        "GET",
        "/v1/customers/nobody/balance",
        None,
        404,
        "not_found",
        "no customer 'nobody'",
    ),
    (
        "settle unknown reservation",
        "POST",
        "/v1/reservations/res_0_abc/settle",
        b'{"events": []}',
        404,
        "not_found",
        "no reservation 'res_0_abc'",
    ),
    (
        "release malformed id",
        "POST",
        "/v1/reservations/hold-1/release",
        None,
        404,
        "not_found",
        "no reservation",
    ),
    (
        "quota check without event",
        "POST",
        "/v1/quota/check",
        b'{"customer_id": "x"}',
        422,
        "invalid_request",
        "would-be usage",
    ),
    (
        "usage bad window",
        "GET",
        "/v1/usage?customer_id=x&meter=requests&window=week",
        None,
        422,
        "invalid_request",
        "'window' must be",
    ),
    (
        "usage unknown meter",
        "GET",
        "/v1/usage?customer_id=x&meter=nope",
        None,
        404,
        "not_found",
        "no meter",
    ),
]


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "kind", "fragment"),
    [case[1:] for case in REQUESTS],
    ids=[case[0] for case in REQUESTS],
)
async def test_bad_requests(
    client: httpx.AsyncClient,
    method: str,
    path: str,
    body: bytes | None,
    status: int,
    kind: str,
    fragment: str,
) -> None:
    r = await client.request(
        method, path, content=body, headers={"Content-Type": "application/json"}
    )
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["type"] == kind
    assert fragment in error["message"]


async def test_too_many_events_is_413(client: httpx.AsyncClient) -> None:
    customer = await make_customer(client)
    events = [ev(customer) for _ in range(10_001)]
    r = await client.post("/v1/events", json=events)
    assert r.status_code == 413
    assert "limit is 10,000" in r.json()["error"]["message"]


async def test_body_too_large_is_413(client: httpx.AsyncClient) -> None:
    r = await client.post("/v1/events", content=b"[" + b" " * (17 * 1024 * 1024) + b"]")
    assert r.status_code == 413
    assert "17,825,794 bytes; the limit is 16,777,216" in r.json()["error"]["message"]


async def test_a_chunked_body_too_large_is_413_before_it_is_all_read(
    client: httpx.AsyncClient,
) -> None:
    sent = 0

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: sent chunked
        nonlocal sent
        for _ in range(64):
            sent += 1
            yield b" " * (1024 * 1024)

    r = await client.post("/v1/events", content=chunks())
    assert r.status_code == 413
    assert "the limit is 16,777,216" in r.json()["error"]["message"]
    assert sent <= 18  # stopped reading just past 16 MiB, not at 64


@pytest.mark.parametrize(
    ("header", "fragment"),
    [
        (None, "send your API key"),
        ("Bearer", "send your API key"),
        ("Basic abc", "send your API key"),
        ("Bearer trk_test_doesnotexist", "not a Tallyray API key"),
        ("Bearer trk_test_" + "d" * 32, "unknown API key"),
    ],
)
async def test_missing_or_unknown_key_is_401(
    server: Server, header: str | None, fragment: str
) -> None:
    async with server.client() as c:
        headers = {} if header is None else {"Authorization": header}
        c.headers.pop("Authorization")
        r = await c.get("/v1/meters", headers=headers)
    assert r.status_code == 401
    assert fragment in r.json()["error"]["message"]
    assert r.headers["www-authenticate"] == "Bearer"


async def test_meter_cannot_change(client: httpx.AsyncClient) -> None:
    key = unique("m")
    meter = {"key": key, "event_type": "x", "aggregation": "count"}
    assert (await client.post("/v1/meters", json=meter)).status_code == 201
    assert (await client.post("/v1/meters", json=meter)).status_code == 201  # same: no-op
    changed = {**meter, "aggregation": "sum", "value": "n"}
    r = await client.post("/v1/meters", json=changed)
    assert r.status_code == 409
    assert "cannot change once created" in r.json()["error"]["message"]


async def test_customer_currency_cannot_change(client: httpx.AsyncClient) -> None:
    customer = await make_customer(client, plan=None)
    r = await client.post("/v1/customers", json={"id": customer, "currency": "USD"})
    assert r.status_code == 409
    assert "cannot change" in r.json()["error"]["message"]


async def test_plan_currency_must_match_customer(client: httpx.AsyncClient) -> None:
    customer = await make_customer(client, plan=None, currency="USD")
    r = await client.post("/v1/subscriptions", json={"customer_id": customer, "plan": "pro"})
    assert r.status_code == 409
    assert "priced in EUR" in r.json()["error"]["message"]


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"amount": "-5"}, "greater than zero"),
        ({"amount": 1.5}, "JSON number with a fraction"),
        ({"amount": "1.001"}, "more than 2 decimal places"),
        ({"amount": "5", "currency": "USD"}, "cannot pay for its usage"),
        ({"amount": "5", "expires_at": "2001-01-01T00:00:00Z"}, "in the past"),
        ({"amount": "5", "priority": -1}, "'priority'"),
    ],
)
async def test_bad_credit_grants(client: httpx.AsyncClient, body: dict, fragment: str) -> None:
    customer = await make_customer(client)
    r = await client.post(f"/v1/customers/{customer}/credits", json=body)
    assert 400 <= r.status_code < 500, r.text
    assert fragment in r.text
