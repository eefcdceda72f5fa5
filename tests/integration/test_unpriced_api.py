"""Unpriced usage (issue 14, item 4), on each store: a plan that refuses it (422 at ingress and
on settle, ``allowed: false`` with ``refusal: "unpriced"`` from quota checks and reservations),
one that allows it (free), and one that flags it (records, the list route, the metric, one
``usage.unpriced`` webhook per plan, group and period).

The plans below price ``output_tokens`` of ``gpt-4o`` only (0.00001 EUR a token), and
``input_tokens`` not at all (outside the plan): ``gpt-5`` output tokens are unpriced."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from support import Server, make_customer, unique

from tallyray.storage.alerts import AlertStore

pytestmark = pytest.mark.anyio

UNPRICED_GPT5 = (
    "unpriced usage: plan {plan!r} has no charge for meter 'output_tokens' (model=gpt-5) and "
    "refuses usage it does not price; add a charge that covers it to the plan, or set the "
    'plan\'s "unpriced" to "flag" or "allow"'
)


async def make_plan(client: httpx.AsyncClient, mode: str | None) -> str:
    key = unique("unpriced")
    plan: dict[str, Any] = {
        "key": key,
        "currency": "EUR",
        "interval": "month",
        "charges": [
            {"meter": "output_tokens", "filter": {"model": "gpt-4o"}, "model": "per_unit",
             "unit_amount": "0.00001"},
        ],
    }  # fmt: skip
    if mode is not None:
        plan["unpriced"] = mode
    r = await client.post("/v1/plans", json=plan)
    assert r.status_code == 201, r.text
    return key


def event(customer: str, model: str, tokens: int = 1000) -> dict[str, Any]:
    return {
        "id": unique("evt"),
        "customer_id": customer,
        "type": "llm.completion",
        "properties": {"model": model, "input_tokens": 10, "output_tokens": tokens},
    }


async def unpriced_rows(
    client: httpx.AsyncClient, customer: str, expect: int, **params: Any
) -> dict[str, Any]:
    """The customer's unpriced usage records, once ``expect`` are there with their latest
    figures (the shards write them with each checkpoint, every 0.5 s here)."""
    body: dict[str, Any] = {}
    for _ in range(200):
        r = await client.get("/v1/unpriced-usage", params={"customer_id": customer, **params})
        assert r.status_code == 200, r.text
        body = r.json()
        if len(body["unpriced_usage"]) >= expect:
            return body
        await asyncio.sleep(0.05)
    return body


async def webhooks_of(server: Server, customer: str, expect: int) -> list[dict[str, Any]]:
    store = AlertStore(server.catalog.engine)
    found: list[dict[str, Any]] = []
    for _ in range(100):
        found = [
            m
            for m in reversed(store.messages("test", "usage.unpriced", limit=1000))
            if m["data"]["customer_id"] == customer
        ]
        if len(found) >= expect:
            break
        await asyncio.sleep(0.05)
    return found


async def test_reject_refuses_the_batch_and_the_quota_check_says_no(
    client: httpx.AsyncClient,
) -> None:
    plan = await make_plan(client, "reject")
    customer = await make_customer(client, plan=plan, credits="100.00")
    good, bad = event(customer, "gpt-4o"), event(customer, "gpt-5")

    r = await client.post("/v1/events", json=[good, bad])
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["message"] == "1 event is invalid; nothing was stored"
    assert error["details"] == [
        {"where": "[1]", "message": f"event {bad['id']!r}: {UNPRICED_GPT5.format(plan=plan)}"}
    ]
    # all or nothing: the good event was not stored either
    r = await client.post("/v1/events", json=[good])
    assert r.json() == {"ingested": 1, "duplicates": 0}

    would_be = {"model": "gpt-5", "input_tokens": 10, "output_tokens": 1000}
    check = {"customer_id": customer, "event": {"type": "llm.completion", "properties": would_be}}
    r = await client.post("/v1/quota/check", json=check)
    assert r.status_code == 200, r.text
    answer = r.json()
    assert (answer["allowed"], answer["refusal"]) == (False, "unpriced")
    assert answer["reason"] == UNPRICED_GPT5.format(plan=plan)

    r = await client.post("/v1/reservations", json=check)
    assert r.status_code == 200, r.text
    assert (r.json()["allowed"], r.json()["id"], r.json()["refusal"]) == (False, None, "unpriced")

    # a reservation for priced usage, settled with unpriced usage: refused like ingest
    priced = {**check, "event": {**check["event"], "properties": {**would_be, "model": "gpt-4o"}}}
    r = await client.post("/v1/reservations", json=priced)
    assert r.status_code == 201, r.text
    assert r.json()["refusal"] is None
    hold = r.json()["id"]
    r = await client.post(f"/v1/reservations/{hold}/settle", json={"events": [bad]})
    assert r.status_code == 422, r.text
    assert r.json()["error"]["details"][0]["where"] == "[0]"


async def test_allow_accepts_unpriced_usage_as_free(client: httpx.AsyncClient) -> None:
    plan = await make_plan(client, "allow")
    customer = await make_customer(client, plan=plan, credits="100.00")
    r = await client.post("/v1/events", json=[event(customer, "gpt-5", 1_000_000)])
    assert r.json() == {"ingested": 1, "duplicates": 0}
    balance = (await client.get(f"/v1/customers/{customer}/balance")).json()
    assert balance["period_spend"] == "0.00"
    r = await client.post(
        "/v1/quota/check",
        json={
            "customer_id": customer,
            "event": {"type": "llm.completion", "properties": {"model": "gpt-5",
                      "input_tokens": 1, "output_tokens": 1}},
        },
    )  # fmt: skip
    assert (r.json()["allowed"], r.json()["refusal"]) == (True, None)
    await asyncio.sleep(1.2)  # two checkpoints: nothing is recorded
    assert (await unpriced_rows(client, customer, 0))["unpriced_usage"] == []


async def test_flag_records_lists_counts_and_announces_once(
    client: httpx.AsyncClient, server: Server
) -> None:
    plan = await make_plan(client, None)  # flag is the default
    customer = await make_customer(client, plan=plan, credits="100.00")
    other = await make_customer(client, plan=plan, credits="100.00")
    before = await unpriced_metric(client)
    batch = [
        event(customer, "gpt-4o", 1000),  # 0.01 EUR
        event(customer, "gpt-5", 700),
        event(customer, "gpt-5", 300),
        event(customer, "o3", 50),
        event(other, "gpt-5", 5),
    ]
    r = await client.post("/v1/events", json=batch)
    assert r.json() == {"ingested": 5, "duplicates": 0}
    balance = (await client.get(f"/v1/customers/{customer}/balance")).json()
    assert balance["period_spend"] == "0.01"  # unpriced usage is free

    body = await unpriced_rows(client, customer, 2)
    rows = sorted(body["unpriced_usage"], key=lambda row: row["groups"]["model"])
    assert [
        (row["plan"], row["meter"], row["groups"], row["events"], row["quantity"]) for row in rows
    ] == [
        (plan, "output_tokens", {"model": "gpt-5"}, 2, "1000"),  # 700 + 300
        (plan, "output_tokens", {"model": "o3"}, 1, "50"),
    ]
    assert body["has_more"] is False
    assert {row["customer_id"] for row in rows} == {customer}

    # cursor pagination, like every list
    first = await client.get("/v1/unpriced-usage", params={"customer_id": customer, "limit": 1})
    assert first.json()["has_more"] is True
    after = first.json()["unpriced_usage"][0]["id"]
    second = await client.get(
        "/v1/unpriced-usage",
        params={"customer_id": customer, "limit": 1, "starting_after": after},
    )
    assert second.json()["has_more"] is False
    assert {first.json()["unpriced_usage"][0]["id"], second.json()["unpriced_usage"][0]["id"]} == {
        row["id"] for row in rows
    }

    # one more gpt-5 event: the record counts it, no second announcement
    r = await client.post("/v1/events", json=[event(customer, "gpt-5", 1)])
    assert r.json() == {"ingested": 1, "duplicates": 0}
    for _ in range(200):
        body = await unpriced_rows(client, customer, 2)
        gpt5 = [row for row in body["unpriced_usage"] if row["groups"] == {"model": "gpt-5"}]
        if gpt5 and gpt5[0]["events"] == 3:
            break
        await asyncio.sleep(0.05)
    assert (gpt5[0]["events"], gpt5[0]["quantity"]) == (3, "1001")

    announced = await webhooks_of(server, customer, 2)
    assert sorted((m["data"]["meter"], m["data"]["groups"]["model"]) for m in announced) == [
        ("output_tokens", "gpt-5"),
        ("output_tokens", "o3"),
    ]
    assert {m["data"]["plan"] for m in announced} == {plan}
    assert {m["data"]["unpriced"] for m in announced} == {"flag"}

    # 4 events of the first request (not the gpt-4o one) and 1 of the second were unpriced
    assert await unpriced_metric(client) - before == 5


async def unpriced_metric(client: httpx.AsyncClient) -> float:
    r = await client.get("/metrics")
    assert r.status_code == 200, r.text
    for line in r.text.splitlines():
        if line.startswith('tallyray_events_unpriced_total{env="test"}'):
            return float(line.split()[-1])
    return 0.0


async def test_a_plan_refuses_an_unknown_mode(client: httpx.AsyncClient) -> None:
    plan = {"key": unique("unpriced"), "currency": "EUR", "interval": "month", "unpriced": "no"}
    r = await client.post("/v1/plans", json=plan)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["details"] == [
        {
            "where": "plan.unpriced",
            "message": "must be one of reject, allow, flag (what an event that no charge "
            "prices gets), not 'no'",
        }
    ]
