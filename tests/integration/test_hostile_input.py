"""What an attacker holding a test key would send, through the HTTP API, on each store.

Every case gets its exact 4xx and a message that says what is wrong; none may reach a shard
in a form that breaks it. The last test checks that, after the whole table, the same shards
still take events and answer quota checks and balances for a live customer.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from support import Server, make_customer, unique

pytestmark = pytest.mark.anyio

HUGE = "9" * 10_000_000  # 10 MB
LONG_ID = "c" * 300


def event(customer: str, **changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "id": unique("evt"),
        "customer_id": customer,
        "type": "llm.completion",
        "properties": {"model": "gpt-4o", "input_tokens": 10, "output_tokens": 5},
    }
    properties = changes.pop("properties", None)
    if properties is not None:
        base["properties"] = {**base["properties"], **properties}
    return {**base, **changes}


def raw(text: str) -> Callable[[str], bytes]:
    """A body that JSON encoders would not write (NaN, huge integers): sent as it is."""
    return lambda customer: text.replace("CUSTOMER", customer).encode()


Case = tuple[str, str, str, Any, int, str]
"""(case, method, path ({c}: the customer), body (given the customer), status, fragment)."""

CASES: list[Case] = [
    # -- found by Schemathesis: an object where a string belongs (these were 500s)
    (
        "grant in currency {}",
        "POST",
        "/v1/customers/{c}/credits",
        {"amount": "1.00", "currency": {}},
        422,
        "unknown currency code",
    ),
    (
        "customer in currency {}",
        "POST",
        "/v1/customers",
        {"id": "someone-new", "currency": {}},
        422,
        "unknown currency code",
    ),
    (
        "exchange rate to {}",
        "POST",
        "/v1/exchange-rates",
        {"from": "USD", "to": {}, "rate": "0.9"},
        422,
        "unknown currency code",
    ),
    (
        "event for customer {}",
        "POST",
        "/v1/events",
        [{"id": "evt-object", "customer_id": {}, "type": "llm.completion", "properties": {}}],
        422,
        "customer_id",
    ),
    # -- credit grants: the amount is money, bounded, in plain decimal notation
    (
        "grant 1e9999999",
        "POST",
        "/v1/customers/{c}/credits",
        {"amount": "1e9999999"},
        422,
        "'amount' '1e9999999' is not a decimal in plain notation",
    ),
    (
        "grant 1e999999",
        "POST",
        "/v1/customers/{c}/credits",
        {"amount": "1e999999"},
        422,
        "not a decimal in plain notation",
    ),
    (
        "grant 10^15",
        "POST",
        "/v1/customers/{c}/credits",
        {"amount": "1000000000000000"},
        422,
        "magnitude must be below 10^15",
    ),
    ("grant NaN", "POST", "/v1/customers/{c}/credits", {"amount": "NaN"}, 422, "plain notation"),
    (
        "grant -Infinity",
        "POST",
        "/v1/customers/{c}/credits",
        {"amount": "-Infinity"},
        422,
        "plain notation",
    ),
    (
        "grant negative",
        "POST",
        "/v1/customers/{c}/credits",
        {"amount": "-5.00"},
        422,
        "must be greater than zero",
    ),
    (
        "grant zero",
        "POST",
        "/v1/customers/{c}/credits",
        {"amount": "0"},
        422,
        "must be greater than zero",
    ),
    (
        "grant tiny",
        "POST",
        "/v1/customers/{c}/credits",
        {"amount": "0.001"},
        422,
        "more than 2 decimal places",
    ),
    (
        "grant float",
        "POST",
        "/v1/customers/{c}/credits",
        {"amount": 1e308},
        422,
        "JSON number with a fraction",
    ),
    (
        "grant huge int",
        "POST",
        "/v1/customers/{c}/credits",
        raw('{"amount": 1' + "0" * 30 + "}"),
        422,
        "too large to be an exact integer",
    ),
    ("grant 10 MB", "POST", "/v1/customers/{c}/credits", {"amount": HUGE}, 422, "plain notation"),
    (
        "grant full-width",
        "POST",
        "/v1/customers/{c}/credits",
        {"amount": "１２"},
        422,
        "plain notation",
    ),
    ("grant blank", "POST", "/v1/customers/{c}/credits", {"amount": " 5"}, 422, "plain notation"),
    (
        "grant priority",
        "POST",
        "/v1/customers/{c}/credits",
        {"amount": "5", "priority": 1.5},
        422,
        "'priority'",
    ),
    (
        "grant unknown field",
        "POST",
        "/v1/customers/{c}/credits",
        {"amount": "5", "bonus": "5"},
        422,
        "unknown field",
    ),
    (
        "grant JSON NaN",
        "POST",
        "/v1/customers/{c}/credits",
        raw('{"amount": NaN}'),
        422,
        "not valid JSON",
    ),
    (
        "grant idempotency key",
        "POST",
        "/v1/customers/{c}/credits",
        {"amount": "5"},
        422,
        "Idempotency-Key",
    ),  # sent with a 1,000-character key (see HEADERS)
    # -- customers: ids, text and limits
    (
        "customer NUL id",
        "POST",
        "/v1/customers",
        {"id": "a\x00b", "currency": "EUR"},
        422,
        "NUL character",
    ),
    (
        "customer newline id",
        "POST",
        "/v1/customers",
        {"id": "a\nb", "currency": "EUR"},
        422,
        "printable",
    ),
    (
        "customer long id",
        "POST",
        "/v1/customers",
        {"id": LONG_ID, "currency": "EUR"},
        422,
        "1 to 255 printable characters",
    ),
    (
        "customer 10 MB name",
        "POST",
        "/v1/customers",
        {"id": "x", "currency": "EUR", "name": HUGE},
        422,
        "at most 500 characters",
    ),
    (
        "customer long email",
        "POST",
        "/v1/customers",
        {"id": "x", "currency": "EUR", "email": "a" * 400},
        422,
        "at most 320 characters",
    ),
    (
        "customer credit limit 1e20",
        "POST",
        "/v1/customers",
        {"id": "x", "currency": "EUR", "credit_limit": "1e20"},
        422,
        "plain notation",
    ),
    (
        "customer negative overdraft",
        "POST",
        "/v1/customers",
        {"id": "x", "currency": "EUR", "overdraft": "-5"},
        422,
        "must not be negative",
    ),
    (
        "customer spend cap NaN",
        "POST",
        "/v1/customers",
        {"id": "x", "currency": "EUR", "spend_cap": "NaN"},
        422,
        "plain notation",
    ),
    (
        "customer limit too precise",
        "POST",
        "/v1/customers",
        {"id": "x", "currency": "JPY", "credit_limit": "10.5"},
        422,
        "more than 0 decimal places",
    ),
    (
        "customer both limit names",
        "POST",
        "/v1/customers",
        {"id": "x", "currency": "EUR", "credit_limit": "5", "spend_limit": "6"},
        422,
        "'spend_limit' is its old name",
    ),
    (
        "customer nested address",
        "POST",
        "/v1/customers",
        {"id": "x", "currency": "EUR", "address": {"line1": {"a": 1}}},
        422,
        "text fields",
    ),
    (
        "customer currency",
        "POST",
        "/v1/customers",
        {"id": "x", "currency": "EURO"},
        422,
        "ISO 4217",
    ),
    (
        "customer unknown field",
        "POST",
        "/v1/customers",
        {"id": "x", "currency": "EUR", "is_admin": True},
        422,
        "unknown field",
    ),
    ("customer body not JSON", "POST", "/v1/customers", raw("{id: 1}"), 422, "not valid JSON"),
    ("customer body a list", "POST", "/v1/customers", [1, 2], 422, "must be a JSON object"),
    # -- events: values, ids, sizes
    (
        "event negative value",
        "POST",
        "/v1/events",
        lambda c: [event(c, properties={"input_tokens": -1000})],
        422,
        "is negative (-1000)",
    ),
    (
        "event 1e300 value",
        "POST",
        "/v1/events",
        lambda c: [event(c, properties={"input_tokens": 1e300})],
        422,
        "below 10^15",
    ),
    (
        "event 2^63 value",
        "POST",
        "/v1/events",
        lambda c: [event(c, properties={"input_tokens": 2**63})],
        422,
        "below 10^15",
    ),
    (
        "event 2^70 value",
        "POST",
        "/v1/events",
        raw(
            '[{"id": "e", "customer_id": "CUSTOMER", "type": "llm.completion", '
            '"properties": {"input_tokens": 1180591620717411303424}}]'
        ),
        422,
        "below 10^15",
    ),
    (
        "event NaN value",
        "POST",
        "/v1/events",
        raw(
            '[{"id": "e", "customer_id": "CUSTOMER", "type": "llm.completion", '
            '"properties": {"input_tokens": NaN}}]'
        ),
        422,
        "not valid JSON",
    ),
    (
        "event string value",
        "POST",
        "/v1/events",
        lambda c: [event(c, properties={"input_tokens": "1e9999999"})],
        422,
        "must be a number",
    ),
    ("event NUL id", "POST", "/v1/events", lambda c: [event(c, id="e\x00")], 422, "unprintable"),
    (
        "event NUL customer",
        "POST",
        "/v1/events",
        lambda c: [event(c, customer_id=c + "\x00")],
        422,
        "unprintable",
    ),
    (
        "event long customer",
        "POST",
        "/v1/events",
        lambda c: [event(c, customer_id=LONG_ID)],
        422,
        "longer than 255",
    ),
    ("event 10 MB id", "POST", "/v1/events", lambda c: [event(c, id=HUGE)], 422, "longer than 255"),
    (
        "event 10 MB group value",
        "POST",
        "/v1/events",
        lambda c: [event(c, properties={"model": HUGE})],
        422,
        "longer than 255 characters",
    ),
    (
        "event newline type",
        "POST",
        "/v1/events",
        lambda c: [event(c, type="llm\ncompletion")],
        422,
        "unprintable",
    ),
    (
        "event timestamp exponent",
        "POST",
        "/v1/events",
        lambda c: [event(c, timestamp="1e9")],
        422,
        "not RFC 3339",
    ),
    (
        "event 10 MB timestamp",
        "POST",
        "/v1/events",
        lambda c: [event(c, timestamp=HUGE)],
        422,
        "not RFC 3339",
    ),
    (
        "event properties a string",
        "POST",
        "/v1/events",
        lambda c: [event(c, properties=None) | {"properties": HUGE}],
        422,
        "'properties' must be a JSON object",
    ),
    (
        "events 10,001",
        "POST",
        "/v1/events",
        lambda c: [event(c) for _ in range(10_001)],
        413,
        "the limit is 10,000",
    ),
    ("events not a list", "POST", "/v1/events", {"event": {}}, 422, "send a JSON array"),
    # -- quota checks and reservations
    (
        "check negative",
        "POST",
        "/v1/quota/check",
        lambda c: {
            "customer_id": c,
            "event": {
                "type": "llm.completion",
                "properties": {"model": "gpt-4o", "input_tokens": -(10**9)},
            },
        },
        422,
        "is negative",
    ),
    (
        "check NUL customer",
        "POST",
        "/v1/quota/check",
        lambda c: {"customer_id": "\x00", "event": {"type": "llm.completion"}},
        422,
        "NUL",
    ),
    (
        "check unknown field",
        "POST",
        "/v1/quota/check",
        lambda c: {"customer_id": c, "event": {"type": "llm.completion"}, "admin": True},
        422,
        "unknown field",
    ),
    (
        "hold ttl 1e10",
        "POST",
        "/v1/reservations",
        lambda c: {"customer_id": c, "event": {"type": "llm.completion"}, "ttl_seconds": 1e10},
        422,
        "'ttl_seconds'",
    ),
    (
        "hold ttl NaN",
        "POST",
        "/v1/reservations",
        raw('{"customer_id": "CUSTOMER", "event": {"type": "llm.completion"}, "ttl_seconds": NaN}'),
        422,
        "not valid JSON",
    ),
    (
        "settle unknown hold",
        "POST",
        "/v1/reservations/res_0_nope/settle",
        {"events": []},
        404,
        "no reservation 'res_0_nope'",
    ),
    (
        "settle NUL hold",
        "POST",
        "/v1/reservations/res_0_%00/settle",
        {"events": []},
        422,
        "NUL character",
    ),
    # -- exchange rates, alert rules, plans, meters, discounts
    (
        "rate 1e400",
        "POST",
        "/v1/exchange-rates",
        {"from": "USD", "to": "EUR", "rate": "1e400"},
        422,
        "plain notation",
    ),
    (
        "rate negative",
        "POST",
        "/v1/exchange-rates",
        {"from": "USD", "to": "EUR", "rate": "-1"},
        422,
        "greater than zero",
    ),
    (
        "rate Infinity",
        "POST",
        "/v1/exchange-rates",
        {"from": "USD", "to": "EUR", "rate": "Infinity"},
        422,
        "plain notation",
    ),
    (
        "rate 10^15",
        "POST",
        "/v1/exchange-rates",
        {"from": "USD", "to": "EUR", "rate": "1000000000000000"},
        422,
        "below 10^15",
    ),
    (
        "alert threshold 1e9999",
        "POST",
        "/v1/customers/{c}/alert-rules",
        {"kind": "spend_above", "threshold": "1e9999"},
        422,
        "plain notation",
    ),
    (
        "alert threshold NaN",
        "POST",
        "/v1/customers/{c}/alert-rules",
        {"kind": "balance_below", "threshold": "NaN"},
        422,
        "plain notation",
    ),
    (
        "alert threshold 150%",
        "POST",
        "/v1/customers/{c}/alert-rules",
        {"kind": "credits_used_percent", "threshold": "150"},
        422,
        "from 0 to 100",
    ),
    (
        "alert name NUL",
        "POST",
        "/v1/customers/{c}/alert-rules",
        {"kind": "spend_above", "threshold": "5", "name": "a\x00"},
        422,
        "NUL",
    ),
    (
        "plan base fee 1e20",
        "POST",
        "/v1/plans",
        {"key": "evil", "currency": "EUR", "interval": "month", "base_fee": "1e20", "charges": []},
        422,
        "plain notation",
    ),
    (
        "plan unit price 13 places",
        "POST",
        "/v1/plans",
        {
            "key": "evil",
            "currency": "EUR",
            "interval": "month",
            "charges": [
                {"meter": "requests", "model": "per_unit", "unit_amount": "0.0000000000001"}
            ],
        },
        422,
        "more than 12 decimal places",
    ),
    (
        "plan tier 10^18",
        "POST",
        "/v1/plans",
        {
            "key": "evil",
            "currency": "EUR",
            "interval": "month",
            "charges": [
                {
                    "meter": "requests",
                    "model": "graduated",
                    "tiers": [
                        {"up_to": 10**18, "unit_amount": "1"},
                        {"up_to": None, "unit_amount": "1"},
                    ],
                }
            ],
        },
        422,
        "below 10^15",
    ),
    (
        "meter allow_negative yes",
        "POST",
        "/v1/meters",
        {
            "key": "evil",
            "event_type": "x",
            "aggregation": "sum",
            "value": "v",
            "allow_negative": "yes",
        },
        422,
        "true or false",
    ),
    (
        "discount 1e5 percent",
        "POST",
        "/v1/subscriptions",
        lambda c: {"customer_id": c, "plan": "pro", "discount": {"percent": "1e5"}},
        422,
        "plain notation",
    ),
    (
        "subscription NUL plan",
        "POST",
        "/v1/subscriptions",
        lambda c: {"customer_id": c, "plan": "pro\x00"},
        422,
        "NUL",
    ),
    # -- URLs and keys
    ("NUL in path", "GET", "/v1/customers/%00/balance", None, 422, "NUL character"),
    ("NUL in query", "GET", "/v1/usage?customer_id=%00&meter=requests", None, 422, "NUL character"),
    (
        "usage window",
        "GET",
        "/v1/usage?customer_id={c}&meter=requests&window=1e9",
        None,
        422,
        "'window'",
    ),
    (
        "unknown customer balance",
        "GET",
        "/v1/customers/nobody-at-all/balance",
        None,
        404,
        "no customer",
    ),
    ("unknown invoice", "GET", "/v1/invoices/inv_" + "x" * 300, None, 404, "no invoice"),
]

HEADERS: dict[str, dict[str, str]] = {
    "grant idempotency key": {"Idempotency-Key": "k" * 1000},
}


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "fragment"),
    [pytest.param(*case[1:], id=case[0]) for case in CASES],
)
async def test_hostile_input_gets_its_exact_4xx(
    client: httpx.AsyncClient,
    request: pytest.FixtureRequest,
    method: str,
    path: str,
    body: Any,
    status: int,
    fragment: str,
) -> None:
    customer = await make_customer(client)
    extra = next((h for name, h in HEADERS.items() if name in request.node.callspec.id), {})
    headers = {"Content-Type": "application/json", **extra}
    made = body(customer) if callable(body) else body
    content = made if isinstance(made, bytes) else None if made is None else json.dumps(made)
    r = await client.request(method, path.format(c=customer), content=content, headers=headers)
    assert r.status_code == status, r.text[:500]
    error = r.json()["error"]
    assert fragment in json.dumps(error, ensure_ascii=False), error
    assert len(r.content) < 5_000  # an answer never repeats the megabytes it refuses


@pytest.mark.parametrize(
    ("bearer", "fragment"),
    [
        ("admin", "not a Tallyray API key"),
        ("trk_test_" + "x" * 10_000, "not a Tallyray API key"),
        ("trk_test_" + "!" * 32, "not a Tallyray API key"),
        ("trk_live_" + "a" * 32, "unknown API key"),
    ],
)
async def test_hostile_keys_get_401(server: Server, bearer: str, fragment: str) -> None:
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=server.app), base_url="http://tallyray.test"
    ) as c:
        r = await c.get("/v1/meters", headers={"Authorization": f"Bearer {bearer}"})
    assert r.status_code == 401 and fragment in r.text
    assert r.headers["www-authenticate"] == "Bearer"


async def test_after_all_of_it_the_shards_still_serve_live_customers(server: Server) -> None:
    """Last in this module: the same shards that saw every case above take events, answer
    quota checks and balances — for a customer on each shard, in the live environment."""
    async with server.client(server.live_key) as live:
        customers: dict[int, str] = {}
        while len(customers) < server.services.router.count:
            customer = await make_customer(live, credits="100.00")
            customers.setdefault(server.services.router.index("live", customer), customer)
        for customer in customers.values():
            r = await live.post("/v1/events", json=[event(customer) for _ in range(20)])
            assert r.json() == {"ingested": 20, "duplicates": 0}, r.text
            check = {
                "customer_id": customer,
                "event": {
                    "type": "llm.completion",
                    "properties": {"model": "gpt-4o", "input_tokens": 1000, "output_tokens": 10},
                },
            }
            r = await live.post("/v1/quota/check", json=check)
            assert r.status_code == 200 and r.json()["allowed"] is True, r.text
            balance = (await live.get(f"/v1/customers/{customer}/balance")).json()
            assert balance["usage"]["requests"]["quantity"] == "20"
            # 20 × (10 × 0.0000025 + 5 × 0.00001) = 0.0015, and one package of requests 2.00
            assert balance["credits_remaining"] == "98.00"
