"""Caps on one customer's state, through the HTTP API, on each store (tallyray/actors/limits.py).

Each test runs its own store and two shards with small caps: 2 active holds, 2 alert rules,
3 groups per meter and period, 4 distinct values per ``unique_count`` meter and period. Under
``pro``, ``input_tokens`` and ``output_tokens`` group by ``model``, and ``seats`` counts
distinct ``user_id`` values of ``seat.active`` events.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select
from suite_clock import CLOCK
from support import OwnShard, Server, make_customer, own_shard, unique

from tallyray.actors.limits import Limits
from tallyray.serve.admission import rooms_of
from tallyray.storage import tables as t

pytestmark = pytest.mark.anyio

LIMITS = Limits(
    holds_per_customer=2, alert_rules_per_customer=2, groups_per_meter=3, unique_values=4
)

GROUPS_MESSAGE = (
    "meter 'input_tokens' already has 3 groups (by model) for this customer in this billing "
    "period, the most it may have; this event would start another "
    "(TALLYRAY_MAX_GROUPS_PER_METER)"
)
VALUES_MESSAGE = (
    "meter 'seats' already counts 4 distinct values for this customer in this billing period, "
    "the most it may hold; this event would add another (TALLYRAY_MAX_UNIQUE_VALUES)"
)


@pytest.fixture
async def own(server: Server, tmp_path: Path) -> AsyncIterator[OwnShard]:
    async with own_shard(
        server.store, tmp_path, server.settings.config_path, CLOCK, shards=2, limits=LIMITS
    ) as shard:
        yield shard


def call(customer: str, model: str = "gpt-4o") -> dict[str, Any]:
    return {
        "id": unique("evt"),
        "customer_id": customer,
        "type": "llm.completion",
        "properties": {"model": model, "input_tokens": 10, "output_tokens": 1},
    }


def seat(customer: str, user: str) -> dict[str, Any]:
    return {
        "id": unique("evt"),
        "customer_id": customer,
        "type": "seat.active",
        "properties": {"user_id": user},
    }


def stored(own: OwnShard, customer: str) -> int:
    with own.engine.connect() as conn:
        return int(
            conn.execute(
                select(func.count()).select_from(t.events).where(t.events.c.customer_id == customer)
            ).scalar_one()
        )


async def customers_on_each_shard(own: OwnShard) -> tuple[str, str]:
    """Two customers, on shard 0 and shard 1."""
    found: dict[int, str] = {}
    while len(found) < 2:
        customer = await make_customer(own.client, credits="100.00")
        found.setdefault(own.services.router.index("test", customer), customer)
    return found[0], found[1]


def refused(r: httpx.Response, *problems: tuple[str, str]) -> None:
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    noun = "event is" if len(problems) == 1 else "events are"
    assert error["message"] == f"{len(problems)} {noun} invalid; nothing was stored"
    assert [(d["where"], d["message"]) for d in error["details"]] == list(problems)


# -- groups and values ------------------------------------------------------------------------


async def test_an_event_starting_a_group_past_the_cap_is_refused_whole(own: OwnShard) -> None:
    client = own.client
    customer = await make_customer(client, credits="100.00")
    r = await client.post("/v1/events", json=[call(customer, m) for m in ("a", "b", "c")])
    assert r.json() == {"ingested": 3, "duplicates": 0}
    # [0] and [2] are in groups the customer has; [1] and [3] would start a fourth
    r = await client.post(
        "/v1/events",
        json=[call(customer, "a"), call(customer, "d"), call(customer, "c"), call(customer, "e")],
    )
    refused(r, ("[1]", GROUPS_MESSAGE), ("[3]", GROUPS_MESSAGE))
    assert stored(own, customer) == 3
    r = await client.post("/v1/events", json=[call(customer, "a"), call(customer, "c")])
    assert r.json() == {"ingested": 2, "duplicates": 0}


async def test_an_event_adding_a_value_past_the_cap_is_refused_whole(own: OwnShard) -> None:
    client = own.client
    customer = await make_customer(client, credits="100.00")
    r = await client.post("/v1/events", json=[seat(customer, u) for u in ("ana", "ben", "cem")])
    assert r.json() == {"ingested": 3, "duplicates": 0}
    # dan is the fourth; eva would be a fifth; ana again adds nothing
    batch = [seat(customer, "dan"), seat(customer, "ana"), seat(customer, "eva")]
    refused(await client.post("/v1/events", json=batch), ("[2]", VALUES_MESSAGE))
    assert stored(own, customer) == 3
    r = await client.post("/v1/events", json=batch[:2])
    assert r.json() == {"ingested": 2, "duplicates": 0}
    balance = (await client.get(f"/v1/customers/{customer}/balance")).json()
    assert balance["usage"]["seats"]["quantity"] == "4"


async def test_a_request_spanning_shards_is_refused_whole_before_either_writes(
    own: OwnShard,
) -> None:
    client = own.client
    full, other = await customers_on_each_shard(own)
    r = await client.post("/v1/events", json=[call(full, m) for m in ("a", "b", "c")])
    assert r.json() == {"ingested": 3, "duplicates": 0}
    # The other shard's events come first and are fine; the request is still refused whole,
    # with the bad event named by its index in the request.
    batch = [call(other), call(other, "x"), call(full, "d"), call(other, "y")]
    refused(await client.post("/v1/events", json=batch), ("[2]", GROUPS_MESSAGE))
    assert (stored(own, other), stored(own, full)) == (0, 3)
    # Near the cap but within it: the closer look lets it through.
    batch = [call(other), call(full, "a"), call(full, "b"), call(other, "x")]
    r = await client.post("/v1/events", json=batch)
    assert r.json() == {"ingested": 4, "duplicates": 0}


async def test_settling_with_events_past_the_cap_keeps_the_hold(own: OwnShard) -> None:
    client = own.client
    customer = await make_customer(client, credits="100.00")
    await client.post("/v1/events", json=[call(customer, m) for m in ("a", "b", "c")])
    r = await client.post(
        "/v1/reservations", json={"customer_id": customer, "event": call(customer, "a")}
    )
    hold = r.json()["id"]
    r = await client.post(f"/v1/reservations/{hold}/settle", json={"events": [call(customer, "z")]})
    refused(r, ("[0]", GROUPS_MESSAGE))
    r = await client.post(f"/v1/reservations/{hold}/settle", json={"events": [call(customer, "a")]})
    assert r.status_code == 200, r.text
    assert r.json()["ingested"] == 1


# -- holds ------------------------------------------------------------------------------------

FREE = {"type": "gpu.job", "properties": {"gpu": "h100", "seconds": 1}}
"""No charge of ``pro`` prices GPU seconds: a hold of 0.00."""

HOLDS_MESSAGE = (
    "customer {!r} has 2 active holds, the most one customer may have (2); settle or release "
    "some (POST /v1/reservations/{{id}}/settle or /release) before reserving more"
)


async def test_a_reservation_past_the_cap_is_a_conflict_zero_cost_holds_too(
    own: OwnShard,
) -> None:
    client = own.client
    customer = await make_customer(client, credits="100.00")
    holds = []
    for _ in range(2):
        r = await client.post("/v1/reservations", json={"customer_id": customer, "event": FREE})
        assert r.status_code == 201 and r.json()["amount"] == "0.00", r.text
        holds.append(r.json()["id"])
    r = await client.post("/v1/reservations", json={"customer_id": customer, "event": FREE})
    assert r.status_code == 409, r.text
    assert r.json()["error"] == {
        "type": "conflict",
        "message": HOLDS_MESSAGE.format(customer),
        "details": [],
    }
    r = await client.post(f"/v1/reservations/{holds[0]}/release")
    assert r.status_code == 200
    r = await client.post("/v1/reservations", json={"customer_id": customer, "event": FREE})
    assert r.status_code == 201, r.text


# -- alert rules ------------------------------------------------------------------------------

RULES_MESSAGE = (
    "customer {!r} has 2 alert rules, the most one customer may have (2); delete one before "
    "adding another"
)


async def test_an_alert_rule_past_the_cap_is_a_conflict_over_the_api_and_in_the_portal(
    own: OwnShard,
) -> None:
    client = own.client
    customer = await make_customer(client, credits="100.00")
    path = f"/v1/customers/{customer}/alert-rules"
    rules = []
    for threshold in ("10", "20"):
        r = await client.post(path, json={"kind": "balance_below", "threshold": threshold})
        assert r.status_code == 201, r.text
        rules.append(r.json()["id"])
    r = await client.post(path, json={"kind": "balance_below", "threshold": "30"})
    assert r.status_code == 409, r.text
    assert r.json()["error"]["message"] == RULES_MESSAGE.format(customer)

    r = await client.post("/v1/portal-sessions", json={"customer_id": customer})
    url = r.json()["url"]
    r = await client.post(
        f"{url}/alerts",
        data={"kind": "spend_above", "threshold": "5"},
        headers={"Authorization": ""},
    )
    assert r.status_code == 422
    assert "alert rules, the most one customer may have (2); delete one" in r.text

    assert (await client.delete(f"{path}/{rules[0]}")).status_code == 200
    r = await client.post(path, json={"kind": "balance_below", "threshold": "30"})
    assert r.status_code == 201, r.text
    assert len((await client.get(path)).json()["rules"]) == 2


async def test_a_spanning_request_with_room_to_spare_is_sent_without_asking(
    own: OwnShard, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every answer carries the shard's room; while it covers a request, no ``admit``."""
    router = own.services.router
    calls: list[str] = []
    real = router.call

    async def counted(index: int, method: str, *args: Any, **kwargs: Any) -> Any:
        calls.append(method)
        return await real(index, method, *args, **kwargs)

    monkeypatch.setattr(router, "call", counted)
    first, second = await customers_on_each_shard(own)
    for expected in (["admit", "admit"], []):  # the first time, nothing is known yet
        calls.clear()
        r = await own.client.post("/v1/events", json=[call(first), call(second)])
        assert r.json() == {"ingested": 2, "duplicates": 0}
        assert [c for c in calls if c == "admit"] == expected


async def test_when_a_shard_refuses_its_part_after_another_wrote_the_answer_says_so(
    own: OwnShard,
) -> None:
    """The race the room cannot rule out with several ingress replicas, forced here by making
    the ingress believe the full customer's shard has room."""
    client = own.client
    full, other = await customers_on_each_shard(own)
    await client.post("/v1/events", json=[call(full, m) for m in ("a", "b", "c")])
    rooms = rooms_of(own.services.router)
    for shard in (0, 1):
        rooms.known[shard] = (10**15, 10**6, time.monotonic())
    r = await client.post("/v1/events", json=[call(other), call(full, "d"), call(other)])
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["message"] == (
        "1 event is invalid and was not stored; the request's other events were stored: "
        "send it again without these (repeats count once)"
    )
    assert error["details"] == [{"where": "[1]", "message": GROUPS_MESSAGE}]
    assert (stored(own, other), stored(own, full)) == (2, 3)


async def test_a_shards_room_is_its_least_headroom(own: OwnShard) -> None:
    """Caps 3 groups and 4 values: the room is what the most crowded account has left."""
    customer = await make_customer(own.client, credits="100.00")
    shard = own.shards[own.services.router.index("test", customer)]

    async def room() -> int:
        answer = await shard.admit.remote("test", {})
        return int(answer["room"][1])

    assert await room() == 3  # an empty account: min(3 groups, 4 values)
    await own.client.post("/v1/events", json=[call(customer, "a"), call(customer, "b")])
    assert await room() == 1  # two groups of 3
    await own.client.post("/v1/events", json=[seat(customer, u) for u in ("x", "y", "z", "w")])
    assert await room() == 0  # four values of 4
