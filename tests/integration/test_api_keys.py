"""Scoped, revocable keys through the HTTP API, on each store: what each scope may call,
revocation, expiry, the admin key, rate limits and the audit trail they leave."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from support import Server, make_customer, unique

from tallyray.cluster import Settings
from tallyray.errors import InvalidInput
from tallyray.pricing.events import format_timestamp
from tallyray.serve.app import build_app
from tallyray.serve.auth import RateLimit
from tallyray.storage.keys import KeyStore

pytestmark = pytest.mark.anyio


@pytest.fixture
async def admin(server: Server) -> AsyncIterator[httpx.AsyncClient]:
    _, secret = KeyStore(server.catalog.engine).create("admin", server.clock())
    async with server.client(secret) as c:
        yield c


async def new_key(admin: httpx.AsyncClient, **body: Any) -> dict[str, Any]:
    r = await admin.post("/v1/admin/keys", json={"env": "test", **body})
    assert r.status_code == 201, r.text
    return dict(r.json())


def completion(customer: str) -> dict[str, Any]:
    return {
        "id": unique("evt"),
        "customer_id": customer,
        "type": "llm.completion",
        "properties": {"model": "gpt-4o", "input_tokens": 10, "output_tokens": 5},
    }


CALL = {"type": "llm.completion", "properties": {"model": "gpt-4o", "input_tokens": 10}}

# (route group, method, path given the customer, body given the customer, scope it needs)
ROUTES: list[tuple[str, str, str, Any, str]] = [
    ("events", "POST", "/v1/events", lambda c: [completion(c)], "ingest"),
    ("quota", "POST", "/v1/quota/check", lambda c: {"customer_id": c, "event": CALL}, "ingest"),
    ("holds", "POST", "/v1/reservations", lambda c: {"customer_id": c, "event": CALL}, "ingest"),
    ("balance", "GET", "/v1/customers/{c}/balance", None, "read"),
    ("customer", "GET", "/v1/customers/{c}", None, "read"),
    ("meters", "GET", "/v1/meters", None, "read"),
    ("usage", "GET", "/v1/usage?customer_id={c}&meter=requests", None, "read"),
    ("invoices", "GET", "/v1/invoices?customer_id={c}", None, "read"),
    ("webhooks", "GET", "/v1/webhook-endpoints", None, "read"),
    ("alert rules", "GET", "/v1/customers/{c}/alert-rules", None, "read"),
    ("audit", "GET", "/v1/audit-events", None, "manage"),
    ("customers", "POST", "/v1/customers", lambda c: {"id": c, "currency": "EUR"}, "manage"),
    ("credits", "POST", "/v1/customers/{c}/credits", lambda c: {"amount": "1.00"}, "manage"),
    ("plans", "POST", "/v1/plans", lambda c: {"key": "x"}, "manage"),
    ("portal", "POST", "/v1/portal-sessions", lambda c: {"customer_id": c}, "manage"),
    (
        "alert rule",
        "POST",
        "/v1/customers/{c}/alert-rules",
        lambda c: {"kind": "spend_above", "threshold": "5"},
        "manage",
    ),
    ("runs", "POST", "/v1/invoice-runs", lambda c: {"until": "2025-01-01T00:00:00Z"}, "manage"),
    (
        "rates",
        "POST",
        "/v1/exchange-rates",
        lambda c: {"from": "NOK", "to": "ISK", "rate": "12"},
        "manage",
    ),
    ("keys", "POST", "/v1/admin/keys", lambda c: {"env": "test"}, "admin"),
]


@pytest.mark.parametrize("scope", ["ingest", "read", "manage"])
async def test_each_scope_against_each_route_group(
    server: Server, admin: httpx.AsyncClient, client: httpx.AsyncClient, scope: str
) -> None:
    customer = await make_customer(client, credits="50.00")
    key = await new_key(admin, name=f"only {scope}", scopes=[scope])
    assert key["scopes"] == [scope]
    async with server.client(key["key"]) as c:
        for group, method, path, body, needed in ROUTES:
            url = path.format(c=customer)
            r = await c.request(method, url, json=None if body is None else body(customer))
            if needed == scope:
                assert r.status_code not in (401, 403), (group, r.text)
            else:
                assert r.status_code == 403, (group, r.text)
                error = r.json()["error"]
                assert error["type"] == "forbidden"
                assert f"'{needed}'" in error["message"] or needed == "admin", (group, error)


async def test_a_key_has_every_scope_unless_told(admin: httpx.AsyncClient) -> None:
    key = await new_key(admin)
    assert key["scopes"] == ["ingest", "read", "manage"]
    assert key["key"].startswith("trk_test_") and len(key["key"]) >= 9 + 32


async def test_keys_are_listed_without_their_secrets(
    admin: httpx.AsyncClient, server: Server
) -> None:
    made = await new_key(admin, name="dashboard", scopes=["read"])
    r = await admin.get("/v1/admin/keys", params={"env": "test"})
    assert r.status_code == 200
    listed = {k["id"]: k for k in r.json()["keys"]}
    shown = listed[made["id"]]
    assert made["key"] not in r.text and "key" not in shown and "hash" not in shown
    assert shown["name"] == "dashboard" and shown["scopes"] == ["read"]
    assert set(shown) >= {"id", "env", "created_at", "expires_at", "last_used_at", "revoked_at"}
    assert shown["prefix"] == made["key"][:16]
    assert all(k["env"] == "test" for k in listed.values())


async def test_a_revoked_key_is_refused_within_seconds(
    admin: httpx.AsyncClient, server: Server
) -> None:
    made = await new_key(admin, name="leaked")
    async with server.client(made["key"]) as c:
        assert (await c.get("/v1/meters")).status_code == 200  # now in the key cache
        r = await admin.post(f"/v1/admin/keys/{made['id']}/revoke")
        assert r.status_code == 200 and r.json()["revoked_at"] is not None
        # refused at once through this replica, and by any other within its cache's 2 s
        r = await c.get("/v1/meters")
        assert r.status_code == 401 and "revoked" in r.text
    again = await admin.post(f"/v1/admin/keys/{made['id']}/revoke")
    assert again.status_code == 200  # revoking twice changes nothing
    assert (await admin.post("/v1/admin/keys/key_nope/revoke")).status_code == 404


async def test_a_key_expires(admin: httpx.AsyncClient, server: Server) -> None:
    soon = format_timestamp(server.clock() + 1_500_000)
    made = await new_key(admin, expires_at=soon)
    async with server.client(made["key"]) as c:
        assert (await c.get("/v1/meters")).status_code == 200
        await asyncio.sleep(1.6)
        r = await c.get("/v1/meters")
        assert r.status_code == 401 and "expired" in r.text


@pytest.mark.parametrize(
    ("body", "where"),
    [
        ({"env": "prod"}, "env"),
        ({"env": "test", "scopes": ["write"]}, "scopes"),
        ({"env": "test", "scopes": []}, "scopes"),
        ({"env": "test", "expires_at": "2020-01-01T00:00:00Z"}, "expires_at"),
        ({"env": "test", "name": "x" * 201}, "name"),
        ({"env": "admin", "scopes": ["read"]}, "scopes"),
        ({"env": "test", "secret": "mine"}, "secret"),
    ],
)
async def test_bad_key_requests(admin: httpx.AsyncClient, body: dict[str, Any], where: str) -> None:
    r = await admin.post("/v1/admin/keys", json=body)
    assert r.status_code == 422, r.text
    assert where in [d["where"] for d in r.json()["error"]["details"]]


async def test_the_admin_key_only_manages_keys(admin: httpx.AsyncClient, server: Server) -> None:
    r = await admin.get("/v1/meters")
    assert r.status_code == 403 and "only manages API keys" in r.text
    async with server.client() as c:  # a test key with every scope
        r = await c.post("/v1/admin/keys", json={"env": "test"})
        assert r.status_code == 403 and "needs the admin key" in r.text


async def test_a_new_seeded_admin_key_retires_the_one_before(server: Server) -> None:
    keys = KeyStore(server.catalog.engine)
    first, second = (f"trk_admin_{unique('seed').replace('-', '_')}{'s' * 24}" for _ in range(2))
    keys.seed_admin(first, server.clock())
    async with server.client(first) as c:
        assert (await c.get("/v1/admin/keys")).status_code == 200
    keys.seed_admin(second, server.clock())  # TALLYRAY_ADMIN_KEY changed; the server restarts
    async with server.client(first) as c:
        await asyncio.sleep(server.services.key_cache_seconds + 0.1)
        assert (await c.get("/v1/admin/keys")).status_code == 401
    async with server.client(second) as c:
        assert (await c.get("/v1/admin/keys")).status_code == 200


@pytest.mark.parametrize(
    "key", ["admin", "trk_admin_short", "trk_test_" + "a" * 40, "trk_admin_" + "a" * 31 + "!"]
)
def test_the_server_refuses_an_admin_key_that_does_not_look_generated(key: str) -> None:
    with pytest.raises(InvalidInput, match="tallyray keys new-admin-key"):
        Settings.load(admin_key=key)


def test_a_generated_admin_key_is_accepted() -> None:
    assert Settings.load(admin_key="trk_admin_" + "A1b2-_" * 6).admin_key is not None


async def test_a_key_over_its_rate_limit_gets_429_with_retry_after(server: Server) -> None:
    limited = dataclasses.replace(server.services, rate_limit=RateLimit(per_second=1, burst=3))
    app = build_app(limited)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://tallyray.test",
        headers={"Authorization": f"Bearer {server.test_key}"},
    ) as c:
        answers = [await c.get("/v1/meters") for _ in range(5)]
    assert [r.status_code for r in answers] == [200, 200, 200, 429, 429]
    assert answers[3].headers["retry-after"] == "1"
    assert answers[3].json()["error"]["type"] == "rate_limited"


async def test_every_answer_has_a_request_id(client: httpx.AsyncClient) -> None:
    r = await client.get("/v1/meters")
    assert r.headers["x-request-id"].startswith("req_")
    r = await client.get("/v1/meters", headers={"X-Request-Id": "gw-1234"})
    assert r.headers["x-request-id"] == "gw-1234"  # the caller's, echoed
    r = await client.get("/v1/meters", headers={"X-Request-Id": "x" * 500})
    assert r.headers["x-request-id"].startswith("req_")  # too long: one of ours instead


async def test_the_audit_trail_of_keys_and_a_customer(
    admin: httpx.AsyncClient, server: Server
) -> None:
    made = await new_key(admin, name="back office", scopes=["read", "manage"])
    async with server.client(made["key"]) as c:
        customer = unique("cust")
        steps = [
            ("POST", "/v1/customers", {"id": customer, "currency": "EUR", "name": "A"}),
            ("POST", "/v1/customers", {"id": customer, "currency": "EUR", "name": "B"}),
            ("POST", "/v1/subscriptions", {"customer_id": customer, "plan": "pro"}),
            ("POST", f"/v1/customers/{customer}/credits", {"amount": "25.00"}),
            ("POST", "/v1/portal-sessions", {"customer_id": customer}),
        ]
        for method, path, body in steps:
            r = await c.request(method, path, json=body, headers={"X-Request-Id": path})
            assert r.status_code in (200, 201), r.text
        r = await c.get("/v1/audit-events", params={"object_id": customer})
        assert r.status_code == 200, r.text
        trail = r.json()["events"]
        assert [(e["action"], e["object"]["type"]) for e in trail] == [
            ("customer.created", "customer"),
            ("customer.updated", "customer"),
            ("portal_session.created", "customer"),
        ]
        assert {e["actor"]["id"] for e in trail} == {made["id"]}
        assert {e["actor"]["name"] for e in trail} == {"back office"}
        assert trail[1]["summary"]["name"] == "B" and trail[0]["request_id"] == "/v1/customers"
        everything = (await c.get("/v1/audit-events", params={"limit": 1000})).json()["events"]
        mine = [
            e
            for e in everything
            if customer in (e["object"]["id"], e["summary"].get("customer_id"))
        ]
        assert [e["action"] for e in mine] == [
            "customer.created",
            "customer.updated",
            "subscription.created",
            "credit_grant.created",
            "portal_session.created",
        ]
        sub = next(e for e in mine if e["action"] == "subscription.created")
        assert sub["object"]["id"].startswith("sub_") and sub["summary"]["plan_version"] >= 1
        # paging: one at a time gives the same events
        first = (await c.get("/v1/audit-events", params={"limit": 1})).json()
        assert first["has_more"] is True
        second = await c.get(
            "/v1/audit-events", params={"limit": 1, "starting_after": first["events"][0]["id"]}
        )
        assert second.json()["events"][0]["id"] == everything[1]["id"]
    # the admin key reads any environment's trail, keys included
    r = await admin.get("/v1/audit-events", params={"env": "test", "object_type": "api_key"})
    created = [e for e in r.json()["events"] if e["object"]["id"] == made["id"]]
    assert [e["action"] for e in created] == ["api_key.created"]
    assert created[0]["actor"]["type"] == "admin"
    # a live key sees none of the test environment's
    async with server.client(server.live_key) as c:
        r = await c.get("/v1/audit-events", params={"object_id": customer})
        assert r.json()["events"] == []
        r = await c.get("/v1/audit-events", params={"env": "test"})
        assert r.status_code == 422
