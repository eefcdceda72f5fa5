"""Plans move forward, and usage keeps the price it was used at (issue 14, items 2 and 3).

Drafts, publishing and migrations over the API, and a plan change in the middle of October:
the live spend before the change does not move, a shard restart keeps the segments, and the
invoice prices each segment under its own plan, hand-computed to the cent. Each test gets its
own store and shard (the ``inv`` fixture of test_invoicing.py), on SQLite and PostgreSQL.

The plan ``seg`` (EUR, monthly; the example config's meters):

=========  ========  ===========================  ===========================================
version    base fee  input_tokens (per unit)      output_tokens (graduated)
=========  ========  ===========================  ===========================================
1 "Basic"  31.00     0.001                        first 1,000 free, then 0.01
2 "Plus"   62.00     0.002                        first 1,000 free, then 0.01
=========  ========  ===========================  ===========================================
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import ray
from support import _PID as _pid  # by value: it runs in the actor
from support import unique
from test_invoicing import OCT_1, Invoicing
from test_invoicing import inv as fresh_store  # noqa: F401 — the fixture, by this name

from tallyray.clock import ShiftedClock, offset_to
from tallyray.invoicing.reconcile import reconcile_env
from tallyray.pricing.events import parse_timestamp

pytestmark = pytest.mark.anyio


@pytest.fixture
async def inv(fresh_store: Invoicing) -> Invoicing:  # noqa: F811
    """test_invoicing.py's fresh store and shard (its clock starts where ``fresh_store``'s
    parameter says)."""
    return fresh_store


NOV_1 = "2026-11-01T00:00:00Z"
DEC_1 = "2026-12-01T00:00:00Z"


async def restart(shard: Any) -> None:
    """Kill the shard the way a crash would; wait until a new process answers."""
    old = await shard.__ray_call__.remote(_pid)
    ray.kill(shard, no_restart=False)
    for _ in range(300):
        try:
            await shard.ready.remote()
            if await shard.__ray_call__.remote(_pid) != old:
                return
        except ray.exceptions.RayActorError:
            pass
        await asyncio.sleep(0.1)
    raise AssertionError("the shard did not come back")


def seg_plan(version: int) -> dict[str, Any]:
    basic = version == 1
    return {
        "key": PLAN,
        "name": "Basic" if basic else "Plus",
        "currency": "EUR",
        "interval": "month",
        "base_fee": "31.00" if basic else "62.00",
        "charges": [
            {
                "meter": "input_tokens",
                "model": "per_unit",
                "unit_amount": "0.001" if basic else "0.002",
            },
            {
                "meter": "output_tokens",
                "model": "graduated",
                "tiers": [
                    {"up_to": 1000, "unit_amount": "0"},
                    {"up_to": None, "unit_amount": "0.01"},
                ],
            },
        ],
    }


PLAN = "seg"


def call(customer: str, ts: str, inp: int, out: int) -> dict[str, Any]:
    return {
        "id": unique("evt"),
        "customer_id": customer,
        "type": "llm.completion",
        "timestamp": ts,
        "properties": {"model": "gpt-4o", "input_tokens": inp, "output_tokens": out},
    }


async def customer_on_v1(inv: Invoicing, start: str = OCT_1, credits: str | None = None) -> str:
    r = await inv.client.post("/v1/plans", json=seg_plan(1))
    assert r.status_code == 201, r.text
    customer = unique("cust")
    doc = {"id": customer, "currency": "EUR", "country": "DE"}
    assert (await inv.client.post("/v1/customers", json=doc)).status_code == 201
    sub = {"customer_id": customer, "plan": PLAN, "start": start}
    r = await inv.client.post("/v1/subscriptions", json=sub)
    assert r.status_code == 201 and r.json()["plan_version"] == 1, r.text
    if credits is not None:
        r = await inv.client.post(f"/v1/customers/{customer}/credits", json={"amount": credits})
        assert r.status_code == 201, r.text
    return customer


async def balance(inv: Invoicing, customer: str) -> dict[str, Any]:
    r = await inv.client.get(f"/v1/customers/{customer}/balance")
    assert r.status_code == 200, r.text
    return dict(r.json())


# -- drafts ------------------------------------------------------------------------------


async def test_a_draft_is_stored_listed_not_subscribable_then_published(inv: Invoicing) -> None:
    c = inv.client
    r = await c.post("/v1/plans", json={**seg_plan(1), "draft": True})
    assert (r.status_code, r.json()["version"], r.json()["status"]) == (201, 1, "draft")
    # posting a draft again replaces it: still version 1
    again = {**seg_plan(1), "name": "Basic (draft 2)", "draft": True}
    r = await c.post("/v1/plans", json=again)
    assert (r.status_code, r.json()["version"]) == (201, 1)

    listed = {p["key"]: p for p in (await c.get("/v1/plans")).json()["plans"]}
    assert (listed[PLAN]["status"], listed[PLAN]["name"]) == ("draft", "Basic (draft 2)")
    shown = (await c.get(f"/v1/plans/{PLAN}")).json()
    assert (shown["status"], shown["version"], shown["draft_version"]) == ("draft", 1, 1)

    # the sandbox's one lookup finds drafts; subscribing does not
    catalog = inv.billing.catalog.env_catalog("test")
    assert catalog.plan(PLAN, 1).name == "Basic (draft 2)"
    customer = unique("cust")
    assert (
        await c.post("/v1/customers", json={"id": customer, "currency": "EUR"})
    ).status_code == 201
    r = await c.post("/v1/subscriptions", json={"customer_id": customer, "plan": PLAN})
    assert r.status_code == 409, r.text
    assert f"POST /v1/plans/{PLAN}/versions/1/publish" in r.json()["error"]["message"]
    # a published version cannot be posted past a draft
    r = await c.post("/v1/plans", json=seg_plan(2))
    assert r.status_code == 409 and "publish it" in r.json()["error"]["message"], r.text

    r = await c.post(f"/v1/plans/{PLAN}/versions/1/publish")
    assert (r.status_code, r.json().get("status")) == (200, "published"), r.text
    r = await c.post(f"/v1/plans/{PLAN}/versions/1/publish")  # again: nothing changes
    assert r.status_code == 200
    r = await c.post("/v1/subscriptions", json={"customer_id": customer, "plan": PLAN})
    assert (r.status_code, r.json()["plan_version"]) == (201, 1), r.text
    # published versions stay
    r = await c.delete(f"/v1/plans/{PLAN}/versions/1")
    assert r.status_code == 409 and "cannot be deleted" in r.json()["error"]["message"]


async def test_a_draft_is_deleted_and_the_latest_published_stays(inv: Invoicing) -> None:
    c = inv.client
    assert (await c.post("/v1/plans", json=seg_plan(1))).status_code == 201
    r = await c.post("/v1/plans", json={**seg_plan(2), "draft": True})
    assert (r.status_code, r.json()["version"]) == (201, 2)
    listed = {p["key"]: p for p in (await c.get("/v1/plans")).json()["plans"]}
    assert (listed[PLAN]["version"], listed[PLAN]["status"], listed[PLAN]["draft_version"]) == (
        1,
        "published",
        2,
    )
    r = await c.delete(f"/v1/plans/{PLAN}/versions/2")
    assert (r.status_code, r.json()) == (200, {"deleted": f"{PLAN}@2"})
    assert (await c.get(f"/v1/plans/{PLAN}", params={"version": 2})).status_code == 404
    assert (await c.delete(f"/v1/plans/{PLAN}/versions/2")).status_code == 404
    r = await c.post("/v1/plans", json={**seg_plan(1), "draft": "yes"})
    assert r.status_code == 422 and r.json()["error"]["details"][0]["where"] == "draft"


# -- migrations --------------------------------------------------------------------------


async def test_migrate_refuses_what_it_cannot_do(inv: Invoicing) -> None:
    c = inv.client
    await customer_on_v1(inv)
    assert (await c.post("/v1/plans", json={**seg_plan(2), "draft": True})).status_code == 201
    r = await c.post(f"/v1/plans/{PLAN}/migrate", json={"to_version": 2, "at": "now"})
    assert r.status_code == 409 and "publish it first" in r.json()["error"]["message"], r.text
    cases = [
        ({"to_version": 9, "at": "now"}, 404),
        ({"to_version": 2, "at": "tomorrow"}, 422),
        ({"to_version": "2", "at": "now"}, 422),
        ({"to_version": 2}, 422),
        ({"from_version": 2, "to_version": 1, "at": "now"}, 422),
        ({"to_version": 2**40, "at": "now"}, 422),  # no version is that large
        ({"to_version": 2, "at": "now", "when": "soon"}, 422),
    ]
    for body, status in cases:
        r = await c.post(f"/v1/plans/{PLAN}/migrate", json=body)
        assert r.status_code == status, (body, r.text)
    assert (await c.post(f"/v1/plans/{PLAN}/versions/{2**40}/publish")).status_code == 404
    assert (await c.post("/v1/plans/nope/versions/1/publish")).status_code == 404


@pytest.mark.parametrize("fresh_store", ["2026-11-30T23:58:00Z"], indirect=True)
async def test_migrate_at_period_end_schedules_the_switch(inv: Invoicing) -> None:
    c = inv.client
    customer = await customer_on_v1(inv)
    assert (await c.post("/v1/plans", json=seg_plan(2))).status_code == 201
    body = {"to_version": 2, "at": "period_end"}
    r = await c.post(f"/v1/plans/{PLAN}/migrate", json=body)
    assert r.status_code == 200, r.text
    done = r.json()
    assert (done["moved"], done["already"], done["skipped"]) == (1, 0, [])
    (moved,) = done["subscriptions"]
    assert (moved["customer_id"], moved["from_version"], moved["at"]) == (customer, 1, DEC_1)
    # a retry moves nothing twice
    again = (await c.post(f"/v1/plans/{PLAN}/migrate", json=body)).json()
    assert (again["moved"], again["already"]) == (0, 1)

    subs = (await c.get("/v1/subscriptions", params={"customer_id": customer})).json()
    assert [
        (s["plan_version"], s["start"], s["end"], s["status"]) for s in subs["subscriptions"]
    ] == [
        (1, OCT_1, DEC_1, "ending"),
        (2, DEC_1, None, "scheduled"),
    ]
    # November stays under version 1: 1,000 × 0.001 = 1.00
    r = await c.post("/v1/events", json=[call(customer, "2026-11-30T23:57:00Z", 1000, 0)])
    assert r.status_code == 200, r.text
    assert (await balance(inv, customer))["uncovered"] == "1.00"
    # December is version 2's: 1,000 × 0.002 = 2.00
    check = {"customer_id": customer, "event": call(customer, DEC_1, 1000, 0)}
    r = await c.post("/v1/quota/check", json=check)
    assert (r.status_code, r.json()["cost"]) == (200, "2"), r.text

    audit = (await c.get("/v1/audit-events", params={"object_type": "plan"})).json()
    (entry,) = [e for e in audit["events"] if e["action"] == "plan.migrated"]
    assert entry["object"] == {"type": "plan", "id": PLAN}
    assert entry["summary"]["subscriptions"][0]["customer_id"] == customer

    # November's invoice: version 1's whole base fee and usage, no segments
    inv.billing.clock = ShiftedClock(offset_to(parse_timestamp("2026-12-05T00:00:00Z")))
    r = await c.post("/v1/invoice-runs", json={"until": DEC_1, "force": True})
    assert r.status_code == 202, r.text
    await inv.billing.wait(r.json()["id"])
    (invoice,) = [i for i in await inv.invoices(customer) if i["period"]["start"] == NOV_1]
    assert "segments" not in invoice
    assert [(line["description"], line["amount"]) for line in invoice["lines"]] == [
        ("Basic base fee", "31.00"),
        ("input_tokens", "1.00"),
        ("output_tokens", "0.00"),
    ]


# -- a plan change in the middle of October -----------------------------------------------


@pytest.mark.parametrize("fresh_store", ["2026-10-18T12:00:00Z"], indirect=True)
async def test_a_mid_period_change_keeps_the_live_spend_and_invoices_two_segments(
    inv: Invoicing,
) -> None:
    c = inv.client
    customer = await customer_on_v1(inv, credits="100.00")
    # before the change, version 1: 1,000 × 0.001 = 1.00; 1,500 out: 1,000 free + 500 × 0.01
    # = 5.00 → 6.00
    r = await c.post("/v1/events", json=[call(customer, "2026-10-10T12:00:00Z", 1000, 1500)])
    assert r.status_code == 200, r.text
    seen = await balance(inv, customer)
    assert (seen["period_spend"], seen["credits_remaining"]) == ("6.00", "94.00")

    assert (await c.post("/v1/plans", json=seg_plan(2))).status_code == 201
    r = await c.post(f"/v1/plans/{PLAN}/migrate", json={"to_version": 2, "at": "now"})
    assert (r.status_code, r.json()["moved"]) == (200, 1), r.text
    switch = r.json()["subscriptions"][0]["at"]
    assert switch.startswith("2026-10-18T12:")
    # a retry moves nothing twice; the move is in the audit log
    r = await c.post(f"/v1/plans/{PLAN}/migrate", json={"to_version": 2, "at": "now"})
    assert (r.status_code, r.json()["moved"], r.json()["already"]) == (200, 0, 1), r.text
    audit = (await c.get("/v1/audit-events", params={"object_type": "plan"})).json()
    (entry,) = [e for e in audit["events"] if e["action"] == "plan.migrated"]
    assert entry["summary"]["at"] == "now"
    assert entry["summary"]["subscriptions"][0]["customer_id"] == customer
    # the live spend the customer saw does not move at the switch
    after = await balance(inv, customer)
    assert (after["period_spend"], after["credits_remaining"]) == ("6.00", "94.00")
    assert [s["plan"] for s in after["segments"]] == ["seg@1", "seg@2"]

    # after the change, version 2: 1,000 × 0.002 = 2.00; output tiers start again: 5.00
    now = call(customer, "", 1000, 1500)
    del now["timestamp"]  # received after the change: the time of receipt
    r = await c.post("/v1/events", json=[now])
    assert r.status_code == 200, r.text
    assert (await balance(inv, customer))["period_spend"] == "13.00"  # 6.00 + 7.00

    # the shard restarts: checkpoint + log give the same segments
    await restart(inv.billing.router.handle(0))
    # a late event from before the change lands in version 1's segment: 500 × 0.001 = 0.50
    late = [call(customer, "2026-10-12T12:00:00Z", 500, 0)]
    assert (await c.post("/v1/events", json=late)).status_code == 200
    restarted = await balance(inv, customer)
    assert (restarted["period_spend"], restarted["credits_remaining"]) == ("13.50", "86.50")
    assert [(s["plan"], s["spend"]) for s in restarted["segments"]] == [
        ("seg@1", "6.50"),
        ("seg@2", "7.00"),
    ]

    inv.billing.clock = ShiftedClock(offset_to(parse_timestamp("2026-11-05T00:00:00Z")))
    r = await c.post("/v1/invoice-runs", json={"until": NOV_1, "force": True})
    assert r.status_code == 202, r.text
    await inv.billing.wait(r.json()["id"])
    (invoice,) = await inv.invoices(customer)
    assert [s["plan"] + str(s["version"]) for s in invoice["segments"]] == ["seg1", "seg2"]
    assert [(line["description"], line["amount"]) for line in invoice["lines"]] == [
        # switched on 18 October at noon: the day of the change is the new plan's
        ("Basic base fee", "17.00"),  # 31 × 17/31
        ("Plus base fee", "28.00"),  # 62 × 14/31
        ("input_tokens (Basic v1)", "1.50"),  # 1,500 × 0.001
        ("output_tokens (Basic v1)", "5.00"),  # 500 × 0.01 past the free 1,000
        ("input_tokens (Plus v2)", "2.00"),  # 1,000 × 0.002
        ("output_tokens (Plus v2)", "5.00"),  # the tiers start again in the segment
    ]
    # 17 + 28 + 1.50 + 5 + 2 + 5 = 58.50; VAT 19% = 11.115 → 11.12; credits burned 13.50
    assert (invoice["subtotal"], invoice["tax"], invoice["total"]) == ("58.50", "11.12", "69.62")
    assert (invoice["credits_applied"], invoice["amount_due"]) == ("13.50", "56.12")

    # reconcile: the period, and each segment, agree with the event log
    results = reconcile_env(inv.billing.catalog, inv.billing.store, "test", customer)
    assert [(r.plan, r.events, r.ok) for r in results] == [
        (None, 3, True),
        ("seg@1", 2, True),
        ("seg@2", 1, True),
    ]
