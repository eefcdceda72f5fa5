"""Unit limits and entitlements through the HTTP API, on each store (issue 14, item 6).

Each test posts a plan of its own (``capped-…``, EUR, monthly, 0.00001 per output token):

- ``output_tokens``: at most 1,000 a day (UTC);
- ``requests``: at most 50 a period;
- feature ``models.gpt-4o`` (events with ``model: gpt-4o``) not allowed.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from suite_clock import CLOCK
from support import OwnShard, Server, make_customer, own_shard, unique

from tallyray.clock import ShiftedClock, offset_to
from tallyray.pricing.events import format_timestamp, parse_timestamp

pytestmark = pytest.mark.anyio

DAY = 86_400 * 1_000_000


def capped_plan() -> dict[str, Any]:
    return {
        "key": unique("capped"),
        "currency": "EUR",
        "interval": "month",
        "charges": [{"meter": "output_tokens", "model": "per_unit", "unit_amount": "0.00001"}],
        "limits": [
            {"meter": "output_tokens", "limit": 1000, "window": "day"},
            {"meter": "requests", "limit": 50, "window": "period"},
        ],
        "entitlements": [
            {"feature": "models.gpt-4o", "match": {"model": "gpt-4o"}, "allowed": False}
        ],
    }


async def capped_customer(client: httpx.AsyncClient) -> str:
    plan = capped_plan()
    r = await client.post("/v1/plans", json=plan)
    assert r.status_code == 201, r.text
    return await make_customer(client, plan=plan["key"], credits="100.00")


def call(tokens: int, model: str = "gpt-4o-mini", **fields: Any) -> dict[str, Any]:
    return {
        "type": "llm.completion",
        "properties": {"model": model, "input_tokens": 0, "output_tokens": tokens},
        **fields,
    }


def used(customer: str, tokens: int, **fields: Any) -> dict[str, Any]:
    return {"id": unique("evt"), "customer_id": customer, **call(tokens, **fields)}


def today(now: int) -> tuple[str, str]:
    start = now - now % DAY
    return format_timestamp(start), format_timestamp(start + DAY)


async def day_limit(client: httpx.AsyncClient, customer: str) -> dict[str, Any]:
    balance = (await client.get(f"/v1/customers/{customer}/balance")).json()
    found: dict[str, Any] = balance["limits"][0]
    return found


async def test_a_check_refused_by_a_unit_limit_names_it(client: httpx.AsyncClient) -> None:
    customer = await capped_customer(client)
    r = await client.post("/v1/events", json=[used(customer, 900)])
    assert r.json() == {"ingested": 1, "duplicates": 0}

    r = await client.post("/v1/quota/check", json={"customer_id": customer, "event": call(100)})
    assert r.json()["allowed"] is True  # 900 + 100 = 1,000: at the limit

    r = await client.post("/v1/quota/check", json={"customer_id": customer, "event": call(101)})
    assert r.status_code == 200, r.text
    start, end = today(CLOCK())
    assert r.json() == {
        "allowed": False,
        "cost": "0.00101",  # 101 × 0.00001
        "available": "99.99",  # 100 − 900 × 0.00001 = 99.991, rounded
        "currency": "EUR",
        "reason": "unit limit of 1,000 output_tokens per day reached: 900 used, this adds "
        f"101 (the window resets at {end})",
        "refusal": "unit_limit",
        "limit": {
            "meter": "output_tokens",
            "window": "day",
            "limit": "1000",
            "used": "900",
            "window_start": start,
            "resets_at": end,
        },
    }
    balance = (await client.get(f"/v1/customers/{customer}/balance")).json()
    assert balance["limits"] == [
        {
            "meter": "output_tokens",
            "window": "day",
            "limit": "1000",
            "used": "900",
            "held": "0",
            "remaining": "100",
            "window_start": start,
            "resets_at": end,
        },
        {
            "meter": "requests",
            "window": "period",
            "limit": "50",
            "used": "1",
            "held": "0",
            "remaining": "49",
            "window_start": balance["limits"][1]["window_start"],
            "resets_at": balance["limits"][1]["resets_at"],
        },
    ]
    assert balance["entitlements"] == [{"feature": "models.gpt-4o", "allowed": False}]


async def test_a_feature_the_plan_leaves_out_is_refused(client: httpx.AsyncClient) -> None:
    customer = await capped_customer(client)
    gpt = call(10, model="gpt-4o")
    r = await client.post("/v1/quota/check", json={"customer_id": customer, "event": gpt})
    body = r.json()
    assert (body["allowed"], body["refusal"], body["feature"]) == (
        False,
        "entitlement",
        "models.gpt-4o",
    )
    assert body["reason"] == "the plan does not include feature 'models.gpt-4o'"
    r = await client.post("/v1/reservations", json={"customer_id": customer, "event": gpt})
    assert r.status_code == 200, r.text
    assert (r.json()["id"], r.json()["refusal"]) == (None, "entitlement")
    assert (await client.get(f"/v1/customers/{customer}/balance")).json()["holds"] == "0.00"


async def test_concurrent_reservations_never_pass_a_unit_limit(client: httpx.AsyncClient) -> None:
    customer = await capped_customer(client)
    answers = await asyncio.gather(
        *(
            client.post("/v1/reservations", json={"customer_id": customer, "event": call(150)})
            for _ in range(12)
        )
    )
    placed = [r.json() for r in answers if r.status_code == 201]
    refused = [r.json() for r in answers if r.status_code == 200]
    assert len(placed) == 6  # 6 × 150 = 900; a seventh would make 1,050 > 1,000
    assert len(refused) == 6
    assert {(b["refusal"], b["limit"]["used"]) for b in refused} == {("unit_limit", "900")}
    limit = await day_limit(client, customer)
    assert (limit["used"], limit["held"], limit["remaining"]) == ("0", "900", "100")

    # Releasing gives units back; settling turns a hold's units into used ones.
    for hold in placed[:5]:
        r = await client.post(f"/v1/reservations/{hold['id']}/release")
        assert r.json()["status"] == "released"
    r = await client.post(
        f"/v1/reservations/{placed[5]['id']}/settle", json={"events": [used(customer, 120)]}
    )
    assert r.json()["ingested"] == 1, r.text
    limit = await day_limit(client, customer)
    assert (limit["used"], limit["held"], limit["remaining"]) == ("120", "0", "880")
    r = await client.post("/v1/reservations", json={"customer_id": customer, "event": call(880)})
    assert r.status_code == 201, r.text  # 120 + 880 = 1,000


# -- the window rolls over, on a clock of the test's own ----------------------------------------

JUST_PAST_MIDNIGHT = parse_timestamp("2026-11-21T00:00:05Z")


@pytest.fixture
async def own(server: Server, tmp_path: Path) -> AsyncIterator[OwnShard]:
    clock = ShiftedClock(offset_to(JUST_PAST_MIDNIGHT))
    async with own_shard(server.store, tmp_path, server.settings.config_path, clock) as shard:
        yield shard


async def test_the_day_window_rolls_over_at_midnight_utc_and_survives_a_restart(
    own: OwnShard,
) -> None:
    client = own.client
    customer = await capped_customer(client)
    yesterday = used(customer, 1000, timestamp="2026-11-20T23:59:00Z")
    assert (await client.post("/v1/events", json=[yesterday])).json()["ingested"] == 1
    limit = await day_limit(client, customer)
    assert (limit["used"], limit["window_start"], limit["resets_at"]) == (
        "0",  # yesterday's 1,000 count in yesterday's window
        "2026-11-21T00:00:00Z",
        "2026-11-22T00:00:00Z",
    )
    r = await client.post("/v1/quota/check", json={"customer_id": customer, "event": call(1000)})
    assert r.json()["allowed"] is True

    tonight = used(customer, 600, timestamp="2026-11-21T00:00:01Z")
    assert (await client.post("/v1/events", json=[tonight])).json()["ingested"] == 1
    r = await client.post("/v1/reservations", json={"customer_id": customer, "event": call(300)})
    assert r.status_code == 201, r.text  # 600 + 300 = 900

    # Units used and units held are both there after a crash.
    await own.restart()
    limit = await day_limit(client, customer)
    assert (limit["used"], limit["held"], limit["remaining"]) == ("600", "300", "100")
    r = await client.post("/v1/quota/check", json={"customer_id": customer, "event": call(101)})
    assert (r.json()["refusal"], r.json()["limit"]["used"]) == ("unit_limit", "900")
