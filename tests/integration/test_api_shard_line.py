"""Quota checks and ingest over the shards' lines: the same answers as over Ray, and still
answered when a shard is killed (over Ray while it restarts, then over a new line)."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
import ray
from support import Server, make_customer

from tallyray.serve.shards import LINE_RETRY_SECONDS, NAMESPACE, shard_name

pytestmark = pytest.mark.anyio

WOULD_BE = {
    "type": "llm.completion",
    "properties": {"model": "gpt-4o", "input_tokens": 100_000, "output_tokens": 0},
}  # 100,000 × 0.0000025 = 0.25, plus 2.00 for the first package of 1,000 requests


async def check(client: httpx.AsyncClient, customer: str) -> dict[str, Any]:
    """A check, retried on 503 (a shard restarting) as a gateway would."""
    for _ in range(300):
        r = await client.post("/v1/quota/check", json={"customer_id": customer, "event": WOULD_BE})
        if r.status_code == 200:
            return r.json()  # type: ignore[no-any-return]
        assert r.status_code == 503, r.text
        await asyncio.sleep(0.05)
    raise AssertionError("never answered")


async def test_ingest_goes_over_the_line_and_counts_each_event_once(
    client: httpx.AsyncClient, server: Server
) -> None:
    router = server.services.router
    customer = await make_customer(client, credits="5.00")
    events = [
        {
            "id": f"{customer}-{n}",
            "customer_id": customer,
            "type": "llm.completion",
            "properties": {"model": "gpt-4o", "input_tokens": 1000, "output_tokens": 0},
        }
        for n in range(3)
    ]
    before = router.line_calls
    r = await client.post("/v1/events", json=events)
    assert (r.status_code, r.json()) == (200, {"ingested": 3, "duplicates": 0})
    assert router.line_calls > before
    router.lines = False  # the same events again, over Ray: duplicates
    r = await client.post("/v1/events", json=events)
    router.lines = True
    assert r.json() == {"ingested": 0, "duplicates": 3}
    late = [{**events[0], "id": "late-1", "timestamp": "2020-01-01T00:00:00Z"}]
    r = await client.post("/v1/events", json=late)  # refused at the door, as before
    assert r.status_code == 422
    balance = (await client.get(f"/v1/customers/{customer}/balance")).json()
    assert balance["usage"]["input_tokens"]["quantity"] == "3000"


async def test_checks_use_the_line_and_answer_as_over_ray(
    client: httpx.AsyncClient, server: Server
) -> None:
    router = server.services.router
    customer = await make_customer(client, credits="5.00")
    unknown = {"customer_id": "nobody-here", "event": WOULD_BE}

    router.lines = False
    over_ray = await check(client, customer)
    ray_missing = await client.post("/v1/quota/check", json=unknown)
    router.lines = True
    before = router.line_calls
    over_line = await check(client, customer)
    line_missing = await client.post("/v1/quota/check", json=unknown)

    assert router.line_calls > before
    assert (
        over_line
        == over_ray
        == {
            "allowed": True,
            "cost": "2.25",
            "available": "5.00",
            "currency": "EUR",
            "reason": None,
            "refusal": None,
        }
    )
    assert (line_missing.status_code, line_missing.json()) == (
        ray_missing.status_code,
        ray_missing.json(),
    )
    assert line_missing.status_code == 404


async def test_checks_are_answered_across_a_shard_kill(
    client: httpx.AsyncClient, server: Server
) -> None:
    router = server.services.router
    customer = await make_customer(client, credits="5.00")
    index = router.index("test", customer)
    assert (await check(client, customer))["allowed"] is True
    used_line = router.line_calls

    handle = ray.get_actor(shard_name(index), namespace=NAMESPACE)
    ray.kill(handle, no_restart=False)
    answers = [await check(client, customer) for _ in range(20)]
    assert {a["available"] for a in answers} == {"5.00"}  # nothing lost with the process

    # Once the shard is back (and the retry pause is over) checks take a new line.
    await asyncio.sleep(LINE_RETRY_SECONDS + 0.1)
    await check(client, customer)
    before = router.line_calls
    await check(client, customer)
    assert router.line_calls > before >= used_line
