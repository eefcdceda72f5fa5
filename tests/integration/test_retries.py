"""Safe to retry, everything: Idempotency-Key on every POST (Stripe's semantics), settle and
release answered again, and events already stored answered as duplicates whatever their age."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from support import Server, make_customer, unique

pytestmark = pytest.mark.anyio

CALL = {
    "type": "llm.completion",
    "properties": {"model": "gpt-4o", "input_tokens": 40_000, "output_tokens": 1_000},
}


async def test_a_retried_reservation_holds_once(client: httpx.AsyncClient) -> None:
    customer = await make_customer(client, credits="10.00")
    body = {"customer_id": customer, "event": CALL}
    key = {"Idempotency-Key": unique("res")}
    first = await client.post("/v1/reservations", json=body, headers=key)
    again = await client.post("/v1/reservations", json=body, headers=key)
    assert first.status_code == again.status_code == 201, again.text
    assert again.json() == first.json()  # the same hold, answered again
    assert again.headers["idempotent-replayed"] == "true"
    assert "idempotent-replayed" not in first.headers
    balance = (await client.get(f"/v1/customers/{customer}/balance")).json()
    assert balance["holds"] == first.json()["amount"]  # held once, not twice


async def test_the_same_key_for_another_request_is_a_conflict(
    client: httpx.AsyncClient,
) -> None:
    customer = await make_customer(client, credits="10.00")
    key = {"Idempotency-Key": unique("k")}
    r = await client.post(f"/v1/customers/{customer}/credits", json={"amount": "5.00"}, headers=key)
    assert r.status_code == 201
    r = await client.post(f"/v1/customers/{customer}/credits", json={"amount": "6.00"}, headers=key)
    assert r.status_code == 409 and "another request" in r.json()["error"]["message"]
    r = await client.post("/v1/customers", json={"id": customer, "currency": "EUR"}, headers=key)
    assert r.status_code == 409  # another path
    balance = (await client.get(f"/v1/customers/{customer}/balance")).json()
    assert balance["credits_remaining"] == "15.00"


async def test_keys_belong_to_their_environment(server: Server) -> None:
    key = {"Idempotency-Key": unique("shared")}
    async with server.client() as test, server.client(server.live_key) as live:
        a = await make_customer(test)
        b = await make_customer(live)
        r = await test.post(f"/v1/customers/{a}/credits", json={"amount": "1.00"}, headers=key)
        assert r.status_code == 201
        r = await live.post(f"/v1/customers/{b}/credits", json={"amount": "1.00"}, headers=key)
        assert r.status_code == 201 and "idempotent-replayed" not in r.headers


async def test_an_error_the_caller_can_fix_is_answered_again_but_not_a_missing_key(
    server: Server, client: httpx.AsyncClient
) -> None:
    key = {"Idempotency-Key": unique("err")}
    bad = {"amount": "-1"}
    customer = await make_customer(client)
    r1 = await client.post(f"/v1/customers/{customer}/credits", json=bad, headers=key)
    r2 = await client.post(f"/v1/customers/{customer}/credits", json=bad, headers=key)
    assert r1.status_code == r2.status_code == 422
    assert r2.headers.get("idempotent-replayed") == "true"
    # a 401 is never kept: the same key works once the caller sends a key
    key = {"Idempotency-Key": unique("auth")}
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=server.app), base_url="http://tallyray.test"
    ) as anonymous:
        r = await anonymous.post(
            f"/v1/customers/{customer}/credits", json={"amount": "1.00"}, headers=key
        )
        assert r.status_code == 401
    r = await client.post(f"/v1/customers/{customer}/credits", json={"amount": "1.00"}, headers=key)
    assert r.status_code == 201 and "idempotent-replayed" not in r.headers


@pytest.mark.parametrize("key", [b"", b"k" * 256, "naïve".encode()])
async def test_a_bad_idempotency_key_is_refused(client: httpx.AsyncClient, key: bytes) -> None:
    headers = {"Idempotency-Key": key}
    r = await client.post(
        "/v1/customers", json={"id": unique("c"), "currency": "EUR"}, headers=headers
    )
    assert r.status_code == 422 and "Idempotency-Key" in r.text


async def test_a_retried_event_batch_is_answered_again(client: httpx.AsyncClient) -> None:
    customer = await make_customer(client)
    events: list[dict[str, Any]] = [
        {"id": unique("e"), "customer_id": customer, **CALL} for _ in range(3)
    ]
    key = {"Idempotency-Key": unique("batch")}
    first = await client.post("/v1/events", json=events, headers=key)
    again = await client.post("/v1/events", json=events, headers=key)
    assert first.json() == again.json() == {"ingested": 3, "duplicates": 0}
    without = await client.post("/v1/events", json=events)  # no key: the ids dedupe
    assert without.json() == {"ingested": 0, "duplicates": 3}


async def test_a_retry_of_events_stored_long_ago_is_answered_as_duplicates(
    client: httpx.AsyncClient, server: Server
) -> None:
    """A gateway that retries after an outage may send events whose period has closed and
    whose grace window has passed: stored the first time, they are duplicates, not errors."""
    from tallyray.pricing.events import format_timestamp
    from tallyray.storage import tables as t

    customer = await make_customer(client)
    old = server.clock() - 200 * 86_400_000_000  # 200 days ago: long past any grace window
    stored = {
        "id": unique("e"),
        "customer_id": customer,
        **CALL,
        "timestamp": format_timestamp(old),
    }
    with server.catalog.engine.begin() as conn:  # as a server of those days stored it
        conn.execute(
            t.events.insert().values(
                env="test",
                shard=server.services.router.index("test", customer),
                customer_id=customer,
                event_id=stored["id"],
                type=CALL["type"],
                ts=old,
                properties="{}",
                received_at=old,
            )
        )
        conn.execute(  # ids are recognised through the ledger (migration 0013)
            t.event_ids.insert().values(
                env="test", customer_id=customer, event_id=stored["id"], received_at=old
            )
        )
    fresh = {"id": unique("e"), "customer_id": customer, **CALL}
    r = await client.post("/v1/events", json=[stored, fresh])
    assert r.status_code == 200, r.text
    assert r.json() == {"ingested": 1, "duplicates": 1}
    never = {**stored, "id": unique("e")}  # as old, but never stored: still refused
    r = await client.post("/v1/events", json=[never, fresh])
    assert r.status_code == 422
    assert [d["where"] for d in r.json()["error"]["details"]] == ["[0]"]
    assert "past its grace window" in r.text


async def test_a_retry_while_the_first_is_still_answered_gets_its_own_type(
    server: Server, client: httpx.AsyncClient
) -> None:
    """The one 409 a client retries with the same key: the first request holds the key
    (claimed, no answer yet), so the retry is told to come back, by type."""
    from tallyray.serve.idempotency import _fingerprint
    from tallyray.storage.idempotency import IdempotencyStore

    customer = await make_customer(client)
    path, body = f"/v1/customers/{customer}/credits", b'{"amount": "1.00"}'
    key = unique("busy")
    store = IdempotencyStore(server.catalog.engine)
    scope = {"path": path, "query_string": b""}
    assert store.claim("test", key, "POST", path, _fingerprint(scope, body), server.clock()) is None
    r = await client.post(path, content=body, headers={"Idempotency-Key": key})
    assert r.status_code == 409 and r.json()["error"]["type"] == "request_in_progress"
    balance = (await client.get(f"/v1/customers/{customer}/balance")).json()
    assert balance["credits_remaining"] == "0.00"  # nothing ran
