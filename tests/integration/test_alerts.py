"""Spend alerts, on each store: evaluated by the shard on the batch that crosses a threshold,
fired once per crossing per period (across a shard restart too), recovered after a top-up,
written durably to the outbox."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from support import Server, make_customer, unique
from test_api_durability import restart_shard

from tallyray.storage.alerts import AlertStore

pytestmark = pytest.mark.anyio


def tokens(customer: str, count: int) -> dict[str, Any]:
    # gpt-4o input under "pro": 0.0000025 EUR a token → 1,000,000 tokens = 2.50 EUR
    return {
        "id": unique("evt"),
        "customer_id": customer,
        "type": "llm.completion",
        "properties": {"model": "gpt-4o", "input_tokens": count, "output_tokens": 0},
    }


async def alerts_of(server: Server, customer: str, expect: int) -> list[dict[str, Any]]:
    """The customer's outbox messages, once there are ``expect`` of them (the shard writes
    what fired with its next commit)."""
    store = AlertStore(server.catalog.engine)
    found: list[dict[str, Any]] = []
    for _ in range(100):
        found = [
            m
            for m in reversed(store.messages("test", limit=1000))
            if m["data"].get("customer_id") == customer
        ]
        if len(found) >= expect:
            break
        await asyncio.sleep(0.05)
    return found


def summary(messages: list[dict[str, Any]]) -> list[tuple[str, str | None]]:
    return [(m["type"], (m["data"].get("rule") or {}).get("description")) for m in messages]


async def test_thresholds_fire_once_per_crossing_and_recover_after_a_top_up(
    client: httpx.AsyncClient, server: Server
) -> None:
    customer = await make_customer(client, plan="pro", credits="10.00")
    for rule in (
        {"kind": "credits_used_percent", "threshold": "50"},
        {"kind": "balance_below", "threshold": "2.00", "name": "almost out"},
        {"kind": "usage_above", "meter": "input_tokens", "threshold": "3000000"},
    ):
        r = await client.post(f"/v1/customers/{customer}/alert-rules", json=rule)
        assert r.status_code == 201, r.text

    # 2.50 of tokens + 2.00 for the first package of requests = 4.50: 45% used — no alert
    assert (await client.post("/v1/events", json=[tokens(customer, 1_000_000)])).status_code == 200
    # +3.75 = 8.25: 82.5% used and 1.75 left — two crossings
    assert (await client.post("/v1/events", json=[tokens(customer, 1_500_000)])).status_code == 200
    # +1.25 = 9.50: still above 50% and below 2.00 — no second alert; 3,000,000 tokens
    # is not above 3,000,000
    assert (await client.post("/v1/events", json=[tokens(customer, 500_000)])).status_code == 200
    # +2.50 = 12.00: 4,000,000 tokens, and the credit is gone
    assert (await client.post("/v1/events", json=[tokens(customer, 1_000_000)])).status_code == 200
    fired = await alerts_of(server, customer, 4)
    assert summary(fired) == [
        ("alert.triggered", "credits used at 50%"),
        ("alert.triggered", "almost out"),
        ("alert.triggered", "input_tokens usage above 3000000"),
        ("credits.depleted", None),
    ]
    assert fired[0]["data"]["value"] == "82.5"

    # A top-up of 40.00: 10 of 50 used (20%); 40.00 − 2.00 spent before it = 38.00 available
    # → both recover (a grant pays only for usage after it)
    r = await client.post(f"/v1/customers/{customer}/credits", json={"amount": "40.00"})
    assert r.status_code == 201
    fired = await alerts_of(server, customer, 6)
    assert summary(fired[4:]) == [
        ("alert.recovered", "credits used at 50%"),
        ("alert.recovered", "almost out"),
    ]


async def test_an_alert_fires_once_across_a_shard_restart(
    client: httpx.AsyncClient, server: Server
) -> None:
    customer = await make_customer(client, plan="pro", credits="10.00")
    rule = {"kind": "spend_above", "threshold": "5.00"}
    assert (
        await client.post(f"/v1/customers/{customer}/alert-rules", json=rule)
    ).status_code == 201
    assert (await client.post("/v1/events", json=[tokens(customer, 2_400_000)])).status_code == 200
    assert len(await alerts_of(server, customer, 1)) == 1  # 6.00 > 5.00

    # A crash before the next checkpoint: the restarted shard replays the log and makes the
    # same crossing again, with the same id, which the outbox stores once.
    await restart_shard(server.services.router.index("test", customer))
    more = [tokens(customer, 400_000)]
    assert (await client.post("/v1/events", json=more)).status_code == 200
    await asyncio.sleep(1.0)
    assert summary(await alerts_of(server, customer, 2)) == [
        ("alert.triggered", "period spend above 5.00")
    ]


async def test_a_plan_carries_default_rules(client: httpx.AsyncClient, server: Server) -> None:
    plan = {
        "key": unique("alerting"),
        "name": "Alerting",
        "currency": "EUR",
        "interval": "month",
        "charges": [{"meter": "requests", "model": "per_unit", "unit_amount": "1.00"}],
        "alerts": [
            {"kind": "credits_used_percent", "threshold": "50"},
            {"kind": "credits_used_percent", "threshold": "80"},
        ],
    }
    assert (await client.post("/v1/plans", json=plan)).status_code == 201
    customer = await make_customer(client, plan=plan["key"], credits="10.00")
    rules = (await client.get(f"/v1/customers/{customer}/alert-rules")).json()["rules"]
    assert [(r["source"], r["description"]) for r in rules] == [
        ("plan", "credits used at 50%"),
        ("plan", "credits used at 80%"),
    ]
    events = [
        {
            "id": unique("e"),
            "customer_id": customer,
            "type": "llm.completion",
            "properties": {"model": "m", "input_tokens": 0, "output_tokens": 0},
        }
        for _ in range(9)  # 9 requests × 1.00: 90% of the 10.00 used
    ]
    assert (await client.post("/v1/events", json=events)).status_code == 200
    assert summary(await alerts_of(server, customer, 2)) == [
        ("alert.triggered", "credits used at 50%"),
        ("alert.triggered", "credits used at 80%"),
    ]


@pytest.mark.parametrize(
    ("rule", "where"),
    [
        ({"kind": "soon", "threshold": "1"}, "kind"),
        ({"kind": "spend_above", "threshold": 1.5}, "threshold"),
        ({"kind": "credits_used_percent", "threshold": "150"}, "threshold"),
        ({"kind": "usage_above", "threshold": "10", "meter": "nope"}, "meter"),
        ({"kind": "spend_above", "threshold": "1", "colour": "red"}, "colour"),
    ],
    ids=["unknown-kind", "float-threshold", "percent-over-100", "unknown-meter", "unknown-field"],
)
async def test_a_bad_rule_is_a_422_naming_the_field(
    client: httpx.AsyncClient, rule: dict[str, Any], where: str
) -> None:
    customer = await make_customer(client, plan="pro")
    r = await client.post(f"/v1/customers/{customer}/alert-rules", json=rule)
    assert r.status_code == 422, r.text
    assert where in [d["where"] for d in r.json()["error"]["details"]]


async def test_rules_are_deleted_and_scoped_to_the_environment(
    client: httpx.AsyncClient, server: Server
) -> None:
    customer = await make_customer(client, plan="pro")
    r = await client.post(
        f"/v1/customers/{customer}/alert-rules", json={"kind": "spend_above", "threshold": "1"}
    )
    rule_id = r.json()["id"]
    async with server.client(server.live_key) as live:
        r = await live.delete(f"/v1/customers/{customer}/alert-rules/{rule_id}")
        assert r.status_code == 404
    r = await client.delete(f"/v1/customers/{customer}/alert-rules/{rule_id}")
    assert r.status_code == 200
    assert (await client.get(f"/v1/customers/{customer}/alert-rules")).json()["rules"] == []
