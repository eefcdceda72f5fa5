"""The main path through the server: ingest → balance → check → hold → settle, on each store."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import httpx
import pytest
from support import Server, make_customer, unique

from tallyray.pricing.events import format_timestamp
from tallyray.storage import tables as t

pytestmark = pytest.mark.anyio


def completion(customer: str, model: str, inp: int, out: int, event_id: str | None = None) -> dict:
    return {
        "id": event_id or unique("evt"),
        "customer_id": customer,
        "type": "llm.completion",
        "properties": {"model": model, "input_tokens": inp, "output_tokens": out},
    }


async def test_ingest_balance_check_hold_settle(client: httpx.AsyncClient) -> None:
    customer = await make_customer(client, plan="pro", credits="100.00")

    # 3 gpt-4o calls: 3 × (1,000 × 0.0000025 + 500 × 0.00001) = 3 × 0.0075 = 0.0225
    # plus 3 requests = 1 started package of 1,000 at 2.00 → spend 2.0225
    events = [completion(customer, "gpt-4o", 1000, 500) for _ in range(3)]
    r = await client.post("/v1/events", json=events)
    assert r.status_code == 200, r.text
    assert r.json() == {"ingested": 3, "duplicates": 0}

    balance = (await client.get(f"/v1/customers/{customer}/balance")).json()
    assert balance["period_spend_precise"] == "2.0225"
    assert balance["period_spend"] == "2.02"
    assert balance["credits_remaining"] == "97.98"  # 100 − 2.0225 = 97.9775 → 97.98
    assert balance["usage"]["input_tokens"]["quantity"] == "3000"
    assert balance["usage"]["requests"]["quantity"] == "3"

    # A would-be call of 100,000 gpt-4o input tokens costs 0.25; nothing is stored.
    would_be = {
        "type": "llm.completion",
        "properties": {"model": "gpt-4o", "input_tokens": 100_000, "output_tokens": 0},
    }
    r = await client.post("/v1/quota/check", json={"customer_id": customer, "event": would_be})
    assert r.status_code == 200, r.text
    assert r.json() == {
        "allowed": True,
        "cost": "0.25",
        "available": "97.98",
        "currency": "EUR",
        "reason": None,
        "refusal": None,
    }

    # Hold it, then settle with what the call really used: 40,000 input + 1,000 output tokens.
    r = await client.post("/v1/reservations", json={"customer_id": customer, "event": would_be})
    assert r.status_code == 201, r.text
    hold = r.json()
    assert hold["allowed"] and hold["amount"] == "0.25" and hold["id"].startswith("res_")
    balance = (await client.get(f"/v1/customers/{customer}/balance")).json()
    assert balance["holds"] == "0.25"
    assert balance["available"] == "97.73"  # 97.9775 − 0.25 = 97.7275

    actual = [completion(customer, "gpt-4o", 40_000, 1_000)]
    r = await client.post(f"/v1/reservations/{hold['id']}/settle", json={"events": actual})
    assert r.status_code == 200, r.text
    assert r.json()["ingested"] == 1 and r.json()["released"] == "0.25"

    balance = (await client.get(f"/v1/customers/{customer}/balance")).json()
    # + 40,000 × 0.0000025 + 1,000 × 0.00001 = 0.1 + 0.01 = 0.11 → spend 2.1325
    assert balance["period_spend_precise"] == "2.1325"
    assert balance["holds"] == "0.00"
    assert balance["usage"]["requests"]["quantity"] == "4"

    # A retried settle (its answer was lost) answers what the first did, and books nothing.
    r = await client.post(f"/v1/reservations/{hold['id']}/settle", json={"events": actual})
    assert r.status_code == 200, r.text
    again = r.json()
    assert (again["ingested"], again["duplicates"], again["released"]) == (1, 0, "0.25")
    assert again["retried"] is True
    assert (await client.get(f"/v1/customers/{customer}/balance")).json() == balance
    # releasing a settled hold says so
    r = await client.post(f"/v1/reservations/{hold['id']}/release")
    assert r.status_code == 409 and "was settled" in r.text


STARTER_CALL = {  # starter plan, USD: 200,000 input tokens × 0.000002 = 0.40
    "type": "llm.completion",
    "properties": {"model": "gpt-4o", "input_tokens": 200_000, "output_tokens": 0},
}


async def test_release_frees_the_hold(client: httpx.AsyncClient) -> None:
    customer = await make_customer(client, plan="starter", currency="USD", credits="1.00")
    r = await client.post("/v1/reservations", json={"customer_id": customer, "event": STARTER_CALL})
    hold = r.json()
    assert hold["allowed"] and hold["amount"] == "0.40"
    r = await client.post(f"/v1/reservations/{hold['id']}/release")
    assert r.status_code == 200 and r.json()["released"] == "0.40"
    assert r.json()["retried"] is False
    balance = (await client.get(f"/v1/customers/{customer}/balance")).json()
    assert balance["holds"] == "0.00" and balance["available"] == "1.00"
    # a retried release answers what the first did
    r = await client.post(f"/v1/reservations/{hold['id']}/release")
    assert r.status_code == 200, r.text
    assert (r.json()["status"], r.json()["released"], r.json()["retried"]) == (
        "released",
        "0.40",
        True,
    )
    assert (await client.get(f"/v1/customers/{customer}/balance")).json() == balance
    # settling it afterwards still books the usage (it happened), and frees nothing more
    actual = {**STARTER_CALL, "id": unique("evt"), "customer_id": customer}
    r = await client.post(f"/v1/reservations/{hold['id']}/settle", json={"events": [actual]})
    assert r.status_code == 200, r.text
    assert (r.json()["ingested"], r.json()["released"]) == (1, "0")


async def test_hold_expires_after_its_ttl(client: httpx.AsyncClient) -> None:
    customer = await make_customer(client, plan="starter", currency="USD", credits="1.00")
    r = await client.post(
        "/v1/reservations",
        json={"customer_id": customer, "event": STARTER_CALL, "ttl_seconds": 1},
    )
    assert r.json()["allowed"]
    assert (await client.get(f"/v1/customers/{customer}/balance")).json()["holds"] == "0.40"
    await asyncio.sleep(1.3)
    balance = (await client.get(f"/v1/customers/{customer}/balance")).json()
    assert balance["holds"] == "0.00" and balance["available"] == "1.00"


async def test_quota_denied_with_a_reason(client: httpx.AsyncClient) -> None:
    customer = await make_customer(client, plan="starter", currency="USD", credits="0.10")
    r = await client.post("/v1/quota/check", json={"customer_id": customer, "event": STARTER_CALL})
    body = r.json()
    assert body["allowed"] is False
    assert body["cost"] == "0.4" and body["available"] == "0.10"
    assert body["reason"] == "insufficient credit: 0.10 USD available, this costs 0.40"
    r = await client.post("/v1/reservations", json={"customer_id": customer, "event": STARTER_CALL})
    assert r.status_code == 200 and r.json()["allowed"] is False and r.json()["id"] is None


@pytest.mark.parametrize("field", ["credit_limit", "spend_limit"])  # spend_limit: its old name
async def test_postpaid_credit_limit(client: httpx.AsyncClient, field: str) -> None:
    customer = await make_customer(client, billing_mode="postpaid", **{field: "2.10"})
    await client.post("/v1/events", json=[completion(customer, "gpt-4o", 1000, 0)])
    # spend: 2.00 package + 0.0025 = 2.0025; limit 2.10 leaves 0.0975
    would_be = {
        "type": "llm.completion",
        "properties": {"model": "gpt-4o", "input_tokens": 100_000, "output_tokens": 0},
    }
    r = await client.post("/v1/quota/check", json={"customer_id": customer, "event": would_be})
    body = r.json()
    assert body["allowed"] is False
    assert body["reason"].startswith("credit limit of 2.10 EUR for this period reached")
    small = {
        "type": "llm.completion",
        "properties": {"model": "gpt-4o", "input_tokens": 1000, "output_tokens": 0},
    }
    r = await client.post("/v1/quota/check", json={"customer_id": customer, "event": small})
    assert r.json()["allowed"] is True


async def test_postpaid_without_limit_is_always_allowed(client: httpx.AsyncClient) -> None:
    customer = await make_customer(client, billing_mode="postpaid")
    would_be = {
        "type": "llm.completion",
        "properties": {"model": "gpt-4o", "input_tokens": 10**9, "output_tokens": 0},
    }
    r = await client.post("/v1/quota/check", json={"customer_id": customer, "event": would_be})
    assert r.json()["allowed"] is True and r.json()["available"] is None


async def test_duplicates_are_counted_once(client: httpx.AsyncClient) -> None:
    customer = await make_customer(client, credits="10.00")
    events = [completion(customer, "gpt-4o-mini", 100, 10) for _ in range(5)]
    assert (await client.post("/v1/events", json=events)).json() == {"ingested": 5, "duplicates": 0}
    again = events[:3] + [completion(customer, "gpt-4o-mini", 100, 10)]
    assert (await client.post("/v1/events", json=again)).json() == {"ingested": 1, "duplicates": 3}
    # the same id twice in one request counts once
    twin = completion(customer, "gpt-4o-mini", 100, 10)
    assert (await client.post("/v1/events", json=[twin, twin])).json() == {
        "ingested": 1,
        "duplicates": 1,
    }
    balance = (await client.get(f"/v1/customers/{customer}/balance")).json()
    assert balance["usage"]["requests"]["quantity"] == "7"


async def test_body_shapes(client: httpx.AsyncClient, server: Server) -> None:
    customer = await make_customer(client)
    wrapped = {"events": [completion(customer, "gpt-4o", 1, 1)]}
    assert (await client.post("/v1/events", json=wrapped)).json()["ingested"] == 1
    cloudevents = [
        {
            "specversion": "1.0",
            "id": unique("ce"),
            "source": "/gateway",
            "type": "llm.completion",
            "subject": customer,
            "time": format_timestamp(server.clock() - 3_600_000_000),  # an hour ago
            "data": {"model": "gpt-4o", "input_tokens": 5, "output_tokens": 5},
        },
    ]
    r = await client.post(
        "/v1/events",
        content=__import__("json").dumps(cloudevents),
        headers={"Content-Type": "application/cloudevents-batch+json"},
    )
    assert r.status_code == 200, r.text
    assert r.json()["ingested"] == 1


async def test_credit_burn_order(client: httpx.AsyncClient) -> None:
    customer = await make_customer(client)
    for amount, priority in (("1.00", 2), ("3.00", 1)):
        r = await client.post(
            f"/v1/customers/{customer}/credits", json={"amount": amount, "priority": priority}
        )
        assert r.status_code == 201
    await client.post("/v1/events", json=[completion(customer, "gpt-4o", 1000, 0)])  # 2.0025
    grants = (await client.get(f"/v1/customers/{customer}/balance")).json()["grants"]
    by_amount = {g["amount"]: g["remaining"] for g in grants}
    assert by_amount == {"3.00": "1.00", "1.00": "1.00"}  # priority 1 burns first: 3 − 2.0025


async def test_usage_series(client: httpx.AsyncClient, server: Server) -> None:
    customer = await make_customer(client)
    await client.post(
        "/v1/events",
        json=[
            completion(customer, "gpt-4o", 100, 1),
            completion(customer, "gpt-4o-mini", 50, 1),
            completion(customer, "gpt-4o-mini", 25, 1),
        ],
    )
    now = datetime.fromtimestamp(server.clock() / 1e6, UTC)
    today = now.replace(hour=0, minute=0, second=0, microsecond=0)
    r = await client.get(
        "/v1/usage",
        params={
            "customer_id": customer,
            "meter": "input_tokens",
            "window": "hour",
            "group_by": "model",
            "from": today.isoformat(),
            "to": (today + timedelta(days=1)).isoformat(),
        },
    )
    assert r.status_code == 200, r.text
    series = r.json()["data"]
    assert len(series) == 24
    total = sum(Decimal(point["quantity"]) for point in series)
    assert total == 175
    last = [p for p in series if p["groups"]][-1]
    assert {g["group"]["model"]: g["quantity"] for g in last["groups"]} == {
        "gpt-4o": "100",
        "gpt-4o-mini": "75",
    }


async def test_unknown_customers_are_created_when_the_deployment_opts_in(server: Server) -> None:
    from dataclasses import replace

    from tallyray.serve.app import build_app

    services = replace(server.services, auto_create_customers=True, default_currency="EUR")
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=build_app(services)),
        base_url="http://auto",
        headers={"Authorization": f"Bearer {server.test_key}"},
    ) as c:
        customer = unique("auto")
        r = await c.post("/v1/events", json=[completion(customer, "gpt-4o", 10, 1)])
        assert r.json() == {"ingested": 1, "duplicates": 0}
        record = (await c.get(f"/v1/customers/{customer}")).json()
        assert record["currency"] == "EUR" and record["subscription"] is None
        balance = (await c.get(f"/v1/customers/{customer}/balance")).json()
        assert balance["usage"]["requests"]["quantity"] == "1"


async def test_a_retried_credit_grant_with_an_idempotency_key_is_booked_once(
    client: httpx.AsyncClient, server: Server
) -> None:
    from test_api_durability import restart_shard

    customer = await make_customer(client, plan="pro")
    key = {"Idempotency-Key": unique("topup")}
    first = await client.post(
        f"/v1/customers/{customer}/credits", json={"amount": "25.00"}, headers=key
    )
    assert first.status_code == 201, first.text
    # the client did not hear back and sends the same request again, even after a restart:
    # the first answer, again
    await restart_shard(server.services.router.index("test", customer))
    again = await client.post(
        f"/v1/customers/{customer}/credits", json={"amount": "25.00"}, headers=key
    )
    assert (again.status_code, again.json()) == (201, first.json())
    assert again.headers["idempotent-replayed"] == "true"
    # the same key with another body is a mistake, not a retry
    other = await client.post(
        f"/v1/customers/{customer}/credits", json={"amount": "25"}, headers=key
    )
    assert other.status_code == 409
    assert "Idempotency-Key" in other.json()["error"]["message"]
    # once the kept answer is gone (after 24 hours), the grant's id still comes from the key:
    # a retry books nothing and answers 200 with the grant the first request booked
    with server.catalog.engine.begin() as conn:
        conn.execute(t.idempotency_keys.delete())
    late = await client.post(
        f"/v1/customers/{customer}/credits", json={"amount": "25"}, headers=key
    )
    assert late.status_code == 200, late.text
    assert late.json()["id"] == first.json()["id"]
    balance = (await client.get(f"/v1/customers/{customer}/balance")).json()
    assert balance["credits_remaining"] == "25.00"
    with server.catalog.engine.begin() as conn:
        conn.execute(t.idempotency_keys.delete())
    other = await client.post(
        f"/v1/customers/{customer}/credits", json={"amount": "30.00"}, headers=key
    )
    assert other.status_code == 409
    assert "Idempotency-Key" in other.json()["error"]["message"]


async def test_concurrent_quota_checks_share_shard_calls_and_answer_each_its_own(
    client: httpx.AsyncClient,
) -> None:
    """Checks waiting for the same shard go together in one call; each still gets its own
    answer, and an unknown customer's 404 is its own, not the batch's."""
    rich = await make_customer(client, plan="pro", credits="100.00")
    poor = await make_customer(client, plan="pro", credits="0.01")
    would_be = {
        "type": "llm.completion",
        "properties": {"model": "gpt-4o", "input_tokens": 100_000, "output_tokens": 0},
    }  # 0.25 + a first package of requests, 2.00

    async def check(customer: str) -> httpx.Response:
        return await client.post(
            "/v1/quota/check", json={"customer_id": customer, "event": would_be}
        )

    who = [rich, poor, "nobody-" + unique("x")] * 100
    answers = await asyncio.gather(*(check(c) for c in who))
    for customer, r in zip(who, answers, strict=True):
        if customer == rich:
            assert (r.status_code, r.json()["allowed"]) == (200, True)
        elif customer == poor:
            assert (r.status_code, r.json()["allowed"]) == (200, False)
        else:
            assert r.status_code == 404, r.text
