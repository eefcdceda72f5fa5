"""The charge models AI billing needs, through the API, on each store: a plan with a clamped
``percentage``, a plain one, a ``dynamic`` charge and a ``weighted_sum`` gauge prices the same
live (balance, quota check, the closed period's spend) as on the invoice.

Plan ``ai`` (EUR, monthly, no base fee): ``margin`` 20 % of the provider's cost, at least 0.01
and at most 2.00 per call; ``markup`` 10 % of the cost of gpt-4o calls; ``passthrough`` the
price each call carries; ``seats`` 0.50 a seat-day. The clock starts on 2026-11-20 10:00 UTC
(whatever ``TALLYRAY_TEST_NOW`` says): October is invoiced, November is live.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from support import unique
from test_invoicing import (
    NOV_1,
    OCT_1,
    Invoicing,
    amounts,
    inv,  # noqa: F401 (the fixture: a fresh store and shard per test)
)

from tallyray.pricing.events import parse_timestamp

pytestmark = pytest.mark.anyio

D = Decimal
STARTS_NOV_20 = [pytest.param("2026-11-20T10:00:00Z", id="nov-20")]


async def _ai_plan(inv: Invoicing) -> tuple[str, dict[str, str]]:  # noqa: F811
    """Meters and plan with fresh keys; returns (plan key, the event types and the seats
    meter's key)."""
    cost, price, seats = unique("cost"), unique("price"), unique("seats")
    types = {"call": unique("ai.call"), "seats": unique("ai.seats"), "seat_meter": seats}
    meters = [
        {
            "key": cost,
            "event_type": types["call"],
            "aggregation": "sum",
            "value": "cost",
            "group_by": ["model"],
        },
        {"key": price, "event_type": types["call"], "aggregation": "sum", "value": "price"},
        {
            "key": seats,
            "event_type": types["seats"],
            "aggregation": "weighted_sum",
            "value": "seats",
            "unit": "day",
        },
    ]
    for meter in meters:
        r = await inv.client.post("/v1/meters", json=meter)
        assert r.status_code == 201, r.text
    r = await inv.client.get("/v1/meters", params={"limit": 100})
    assert r.status_code == 200, r.text
    listed = {m["key"]: m for m in r.json()["meters"]}
    assert listed[seats]["aggregation"] == "weighted_sum" and listed[seats]["unit"] == "day"
    plan = unique("ai")
    r = await inv.client.post(
        "/v1/plans",
        json={
            "key": plan,
            "currency": "EUR",
            "interval": "month",
            "charges": [
                {
                    "meter": cost,
                    "model": "percentage",
                    "percent": "20",
                    "minimum": "0.01",
                    "maximum": "2.00",
                    "description": "margin",
                },
                {
                    "meter": cost,
                    "filter": {"model": "gpt-4o"},
                    "model": "percentage",
                    "percent": "10",
                    "description": "markup",
                },
                {"meter": price, "model": "dynamic", "description": "passthrough"},
                {
                    "meter": seats,
                    "model": "per_unit",
                    "unit_amount": "0.50",
                    "description": "seats",
                },
            ],
        },
    )
    assert r.status_code == 201, r.text
    return plan, types


def _call(customer: str, kind: str, day: str, model: str, cost: Any, price: Any) -> dict[str, Any]:
    return {
        "id": unique("evt"),
        "customer_id": customer,
        "type": kind,
        "timestamp": f"{day}T12:00:00Z",
        "properties": {"model": model, "cost": cost, "price": price},
    }


def _seats(customer: str, kind: str, day: str, seats: int) -> dict[str, Any]:
    return {
        "id": unique("evt"),
        "customer_id": customer,
        "type": kind,
        "timestamp": f"{day}T00:00:00Z",
        "properties": {"seats": seats},
    }


@pytest.mark.parametrize("inv", STARTS_NOV_20, indirect=True)
async def test_each_model_prices_the_same_live_and_on_the_invoice(
    inv: Invoicing,  # noqa: F811 (the fixture imported above)
) -> None:
    plan, types = await _ai_plan(inv)
    call, gauge = types["call"], types["seats"]
    customer = unique("cust")
    r = await inv.client.post(
        "/v1/customers", json={"id": customer, "currency": "EUR", "country": "DE"}
    )
    assert r.status_code == 201, r.text
    r = await inv.client.post(
        "/v1/subscriptions", json={"customer_id": customer, "plan": plan, "start": OCT_1}
    )
    assert r.status_code == 201, r.text

    october = [
        _call(customer, call, "2026-10-10", "gpt-4o", 0.02, 0.0125),
        _call(customer, call, "2026-10-11", "claude", 30, 0.3),
        _call(customer, call, "2026-10-12", "gpt-4o", 0.5, 1.2),
        _call(customer, call, "2026-10-13", "gpt-4o", 0.001, 0),
        _seats(customer, gauge, "2026-10-21", 16),  # sent out of order: it holds the same
        _seats(customer, gauge, "2026-10-01", 10),
    ]
    november = [
        _call(customer, call, "2026-11-02", "gpt-4o", 0.3125, 0),
        _call(customer, call, "2026-11-03", "gpt-4o", 0.3125, 0.005),
        _seats(customer, gauge, "2026-11-16", 3),
    ]
    r = await inv.client.post("/v1/events", json=october + november)
    assert r.status_code == 200, r.text
    assert r.json()["ingested"] == 9

    # Live, November: margin 0.0625 + 0.0625 = 0.125; markup 10 % of 0.625 = 0.0625;
    # passthrough 0.005; seats: 3 from Nov 16, held to the period's end (Dec 1): 15 days × 3
    # = 45 seat-days × 0.50 = 22.50. Spend 22.6925 → 22.69.
    r = await inv.client.get(f"/v1/customers/{customer}/balance")
    assert r.status_code == 200, r.text
    balance = r.json()
    assert balance["period_spend_precise"] == "22.6925"
    assert balance["period_spend"] == "22.69"
    assert balance["usage"][types["seat_meter"]]["quantity"] == "45"

    # Usage over time holds the gauge from reading to reading, across windows.
    for since, until, held in [
        ("2026-10-01", "2026-10-03", ["10", "10"]),
        ("2026-10-20", "2026-10-23", ["0", "16", "16"]),  # from the first reading inside
    ]:
        r = await inv.client.get(
            "/v1/usage",
            params={
                "customer_id": customer,
                "meter": types["seat_meter"],
                "window": "day",
                "from": f"{since}T00:00:00Z",
                "to": f"{until}T00:00:00Z",
            },
        )
        assert r.status_code == 200, r.text
        assert [point["quantity"] for point in r.json()["data"]] == held

    # A quota check prices a would-be call per event: 20 % of 100 is capped at 2.00 (claude:
    # no markup); a reading of 5 seats on Nov 20 holds 11 days where 3 did, 2 × 11 × 0.50 = 11.
    for event, cost in [
        ({"type": call, "properties": {"model": "claude", "cost": 100, "price": 0}}, "2"),
        ({"type": call, "properties": {"model": "gpt-4o", "cost": 0, "price": 0}}, "0.01"),
        ({"type": gauge, "timestamp": "2026-11-20T00:00:00Z", "properties": {"seats": 5}}, "11"),
    ]:
        r = await inv.client.post("/v1/quota/check", json={"customer_id": customer, "event": event})
        assert r.status_code == 200, r.text
        assert r.json()["cost"] == cost, event

    # The invoice, October: margin 0.01 (0.004 lifted) + 2.00 (6.00 capped) + 0.10 + 0.01
    # (0.0002 lifted) = 2.12; markup 10 % of (0.02 + 0.5 + 0.001) = 0.0521 → 0.05;
    # passthrough 0.0125 + 0.3 + 1.2 + 0 = 1.5125 → 1.51; seats 10 × 20 days + 16 × 11 days
    # = 376 seat-days × 0.50 = 188.00. Subtotal 191.68.
    run = await inv.run()
    assert run["status"] == "succeeded", run
    (invoice,) = await inv.invoices(customer)
    assert invoice["period"] == {"start": OCT_1, "end": NOV_1}
    assert amounts(invoice) == {
        "margin": "2.12",
        "markup": "0.05",
        "passthrough": "1.51",
        "seats": "188.00",
    }
    lines = {line["description"]: line for line in invoice["lines"]}
    assert lines["margin"]["quantity"] == "30.521"  # the provider's cost the margin is on
    assert "unit_amount" not in lines["margin"]  # clamped: no one price per unit
    assert lines["markup"]["unit_amount"] == "0.1"
    assert lines["seats"]["quantity"] == "376"
    assert invoice["subtotal"] == "191.68"

    # What the shard priced live when it closed October is what the invoice priced.
    (row,) = [
        row
        for row in inv.billing.store.closed_period_rows("test", customer)
        if row["start"] == parse_timestamp(OCT_1)
    ]
    precise = sum((D(line["precise_amount"]) for line in invoice["lines"]), D(0))
    assert D(row["spend"]) == precise == D("191.6846")
