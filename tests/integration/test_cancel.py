"""Ending a subscription: `POST /v1/subscriptions/{id}/cancel` with `{"at": "period_end" |
"now"}`. The suite's clock stands in November 2026 (monthly plans: the period ends on
1 December); invoicing of the period it ends in is tested in test_invoicing.py."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from support import Server, make_customer, unique

from tallyray.pricing.events import parse_timestamp

pytestmark = pytest.mark.anyio

DEC_1 = "2026-12-01T00:00:00Z"
CALL = {
    "type": "llm.completion",
    "properties": {"model": "gpt-4o", "input_tokens": 1000, "output_tokens": 100},
}


async def subscription(client: httpx.AsyncClient, customer: str) -> dict[str, Any]:
    r = await client.get("/v1/subscriptions", params={"customer_id": customer})
    subs: list[dict[str, Any]] = r.json()["subscriptions"]
    return subs[-1]


async def cancel(client: httpx.AsyncClient, sub_id: str, **body: Any) -> httpx.Response:
    return await client.post(f"/v1/subscriptions/{sub_id}/cancel", json=body or None)


async def test_at_period_end_runs_to_the_end_of_the_period(
    server: Server, client: httpx.AsyncClient
) -> None:
    customer = await make_customer(client, credits="100.00")
    sub = await subscription(client, customer)
    r = await cancel(client, sub["id"])  # period_end is the default
    assert r.status_code == 200, r.text
    assert (r.json()["end"], r.json()["status"]) == (DEC_1, "ending")
    shown = (await client.get(f"/v1/customers/{customer}")).json()["subscription"]
    assert (shown["id"], shown["end"]) == (sub["id"], DEC_1)
    # until then, usage is priced under the plan, live
    answer = await client.post("/v1/quota/check", json={"customer_id": customer, "event": CALL})
    assert answer.status_code == 200, answer.text
    assert answer.json()["allowed"] and answer.json()["cost"] != "0"
    # cancelling again answers the same, and changes nothing
    again = await cancel(client, sub["id"], at="period_end")
    assert again.status_code == 200 and again.json() == r.json()


async def test_now_ends_it_at_once_and_it_cannot_end_twice(
    server: Server, client: httpx.AsyncClient
) -> None:
    customer = await make_customer(client)
    sub = await subscription(client, customer)
    before = server.clock()
    r = await cancel(client, sub["id"], at="now")
    assert r.status_code == 200, r.text
    end = parse_timestamp(r.json()["end"])
    assert before <= end <= server.clock() and r.json()["status"] == "ended"
    # the period it ended in is still priced under its plan (and invoiced so)
    answer = await client.post("/v1/quota/check", json={"customer_id": customer, "event": CALL})
    assert answer.json()["cost"] != "0"
    r = await cancel(client, sub["id"], at="now")
    assert r.status_code == 409 and "ended on" in r.json()["error"]["message"]


async def test_now_after_period_end_brings_the_end_closer(client: httpx.AsyncClient) -> None:
    customer = await make_customer(client)
    sub = await subscription(client, customer)
    assert (await cancel(client, sub["id"], at="period_end")).json()["end"] == DEC_1
    r = await cancel(client, sub["id"], at="now")
    assert r.status_code == 200 and r.json()["end"] < DEC_1


async def test_subscribing_again_replaces_a_cancelled_subscription(
    client: httpx.AsyncClient,
) -> None:
    customer = await make_customer(client)
    old = await subscription(client, customer)
    await cancel(client, old["id"])
    r = await client.post("/v1/subscriptions", json={"customer_id": customer, "plan": "pro"})
    assert r.status_code == 201, r.text
    subs = (await client.get("/v1/subscriptions", params={"customer_id": customer})).json()
    first, second = subs["subscriptions"]
    assert first["end"] == second["start"]  # the new one starts where the old one stops
    assert (first["status"], second["status"]) == ("ended", "active")
    shown = (await client.get(f"/v1/customers/{customer}")).json()["subscription"]
    assert (shown["id"], shown["end"]) == (second["id"], None)


@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        ({"at": "tomorrow"}, 422, "'at' must be one of period_end, now"),
        ({"at": {}}, 422, "'at' must be one of period_end, now"),
        ({"when": "now"}, 422, "unknown field"),
    ],
)
async def test_a_bad_cancellation_says_what_to_fix(
    client: httpx.AsyncClient, body: dict[str, Any], status: int, fragment: str
) -> None:
    customer = await make_customer(client)
    sub = await subscription(client, customer)
    r = await cancel(client, sub["id"], **body)
    assert r.status_code == status and fragment in r.text, r.text
    assert (await subscription(client, customer))["end"] is None  # nothing written


async def test_another_environments_subscription_is_not_found(server: Server) -> None:
    async with server.client(server.live_key) as live, server.client() as test:
        customer = await make_customer(live)
        sub = await subscription(live, customer)
        r = await cancel(test, sub["id"], at="now")
        assert r.status_code == 404
        assert (await cancel(test, unique("sub"), at="now")).status_code == 404
        assert (await subscription(live, customer))["end"] is None


async def test_the_cancellation_is_audited(client: httpx.AsyncClient) -> None:
    customer = await make_customer(client)
    sub = await subscription(client, customer)
    await cancel(client, sub["id"], at="period_end")
    r = await client.get(
        "/v1/audit-events", params={"object_type": "subscription", "object_id": sub["id"]}
    )
    actions = [(e["action"], e["summary"].get("end")) for e in r.json()["events"]]
    assert ("subscription.canceled", DEC_1) in actions
