"""What API users expect of lists: customers, plans and subscriptions can be listed, and every
list pages by cursor (`limit`, `starting_after`, `has_more`) in its own order, each object
once, whatever is added while a client pages."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from support import Server, make_customer, unique

pytestmark = pytest.mark.anyio


async def walk(
    client: httpx.AsyncClient, path: str, field: str, limit: int, **params: str
) -> list[dict[str, Any]]:
    """Every object of a list, page by page."""
    seen: list[dict[str, Any]] = []
    after: str | None = None
    while True:
        query = {**params, "limit": str(limit), **({"starting_after": after} if after else {})}
        r = await client.get(path, params=query)
        assert r.status_code == 200, r.text
        body = r.json()
        page = body[field]
        assert len(page) <= limit
        seen.extend(page)
        if not body["has_more"]:
            return seen
        assert len(page) == limit  # a page is short only when it is the last
        after = page[-1]["id"] if "id" in page[-1] else page[-1]["key"]


async def test_customers_page_by_id_each_once(client: httpx.AsyncClient) -> None:
    mine = {await make_customer(client) for _ in range(7)}
    everyone = await walk(client, "/v1/customers", "customers", limit=3)
    ids = [c["id"] for c in everyone]
    assert ids == sorted(ids) and len(ids) == len(set(ids))
    assert mine <= set(ids)
    one = next(c for c in everyone if c["id"] in mine)
    assert one["subscription"]["plan"] == "pro"  # with the active subscription


async def test_a_page_is_stable_while_objects_are_added(client: httpx.AsyncClient) -> None:
    first = (await client.get("/v1/customers", params={"limit": 2})).json()
    assert first["has_more"] in (True, False)
    last = first["customers"][-1]["id"]
    await make_customer(client)  # lands somewhere in the order
    after = (await client.get("/v1/customers", params={"starting_after": last})).json()
    assert all(c["id"] > last for c in after["customers"])


async def test_subscriptions_of_a_customer_oldest_first_ended_ones_too(
    client: httpx.AsyncClient,
) -> None:
    customer = await make_customer(client, plan="starter", currency="USD")
    r = await client.post("/v1/subscriptions", json={"customer_id": customer, "plan": "starter"})
    assert r.status_code == 201, r.text
    r = await client.get("/v1/subscriptions", params={"customer_id": customer})
    subs = r.json()["subscriptions"]
    assert [(s["plan"], s["status"]) for s in subs] == [("starter", "ended"), ("starter", "active")]
    assert subs[0]["end"] == subs[1]["start"]  # the change ends the old one
    assert r.json()["has_more"] is False
    paged = await walk(client, "/v1/subscriptions", "subscriptions", 1, customer_id=customer)
    assert [s["id"] for s in paged] == [s["id"] for s in subs]


async def test_plans_list_the_latest_version_of_each(client: httpx.AsyncClient) -> None:
    plans = await walk(client, "/v1/plans", "plans", limit=1)
    keys = [p["key"] for p in plans]
    assert keys == sorted(keys) and {"pro", "starter"} <= set(keys)
    pro = next(p for p in plans if p["key"] == "pro")
    latest = (await client.get("/v1/plans/pro")).json()
    assert pro["version"] == latest["version"] and pro["currency"] == latest["currency"]


@pytest.mark.parametrize(
    ("path", "field"),
    [
        ("/v1/meters", "meters"),
        ("/v1/plans", "plans"),
        ("/v1/customers", "customers"),
        ("/v1/subscriptions", "subscriptions"),
        ("/v1/invoices", "invoices"),
        ("/v1/invoice-runs", "runs"),
        ("/v1/exchange-rates", "rates"),
        ("/v1/webhook-endpoints", "endpoints"),
    ],
)
async def test_every_list_pages_the_same_way(
    client: httpx.AsyncClient, path: str, field: str
) -> None:
    whole = (await client.get(path, params={"limit": 1000})).json()
    assert whole["has_more"] is False or len(whole[field]) == 1000
    paged = await walk(client, path, field, limit=2)
    assert paged == whole[field][: len(paged)] or len(whole[field]) == 1000


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"limit": "0"}, "'limit' must be from 1 to 1000"),
        ({"limit": "1001"}, "'limit' must be from 1 to 1000"),
        ({"limit": "many"}, "the request is invalid"),
        ({"starting_after": "cus_nobody"}, "'starting_after' names no customer"),
    ],
)
async def test_a_bad_page_request_says_what_to_fix(
    client: httpx.AsyncClient, params: dict[str, str], message: str
) -> None:
    r = await client.get("/v1/customers", params=params)
    assert r.status_code == 422 and message in r.json()["error"]["message"], r.text


async def test_a_cursor_of_another_environment_is_unknown(
    server: Server, client: httpx.AsyncClient
) -> None:
    async with server.client(server.live_key) as live:
        theirs = await make_customer(live)
    r = await client.get("/v1/customers", params={"starting_after": theirs})
    assert r.status_code == 422 and "names no customer" in r.text


async def test_subscriptions_of_an_unknown_customer_are_404(client: httpx.AsyncClient) -> None:
    r = await client.get("/v1/subscriptions", params={"customer_id": unique("nobody")})
    assert r.status_code == 404
