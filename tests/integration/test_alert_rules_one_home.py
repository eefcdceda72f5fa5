"""Alert rules have one home (issue 14, item 7): the API and a plan's config refuse the same
bad rule with the same message, on each store."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from support import make_customer, unique

pytestmark = pytest.mark.anyio

PERCENT = "is a percentage of the credit used, from 0 to 100 (above 0), not 150"


def _details(body: dict[str, Any]) -> list[tuple[str, str]]:
    return [(d["where"], d["message"]) for d in body["error"]["details"]]


async def test_the_api_and_a_plan_refuse_a_150_percent_rule_with_the_same_message(
    client: httpx.AsyncClient,
) -> None:
    rule = {"kind": "credits_used_percent", "threshold": "150"}
    customer = await make_customer(client, plan="pro")
    r = await client.post(f"/v1/customers/{customer}/alert-rules", json=rule)
    assert r.status_code == 422, r.text
    assert _details(r.json()) == [("threshold", PERCENT)]

    plan = {"key": unique("alerting"), "currency": "EUR", "interval": "month", "alerts": [rule]}
    r = await client.post("/v1/plans", json=plan)
    assert r.status_code == 422, r.text
    assert _details(r.json()) == [("plan.alerts[0].threshold", PERCENT)]


async def test_a_plan_with_a_good_rule_is_stored_and_shown_to_its_subscribers(
    client: httpx.AsyncClient,
) -> None:
    key = unique("alerting")
    plan = {
        "key": key,
        "currency": "EUR",
        "interval": "month",
        "alerts": [{"kind": "credits_used_percent", "threshold": "100"}],
    }
    assert (await client.post("/v1/plans", json=plan)).status_code == 201
    customer = await make_customer(client, plan=key)
    r = await client.get(f"/v1/customers/{customer}/alert-rules")
    assert r.status_code == 200, r.text
    assert [(x["source"], x["description"]) for x in r.json()["rules"]] == [
        ("plan", "credits used at 100%")
    ]
