"""Invoice runs that start themselves, on each store, on a clock the test moves.

Two schedulers over one store stand for two Serve replicas; a new scheduler over the same
store stands for a restart. The clock is the test's: it only moves when the test says so.
Plans are the example config's, without its customers ("pro" is monthly); the grace window
is 3 days and the schedule's time of day 02:00 UTC, so October's invoice is due at
2026-11-04T02:00:00Z.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from suite_clock import CLOCK
from support import Server, billing_stage, unique

from tallyray.errors import Conflict
from tallyray.invoicing.scheduler import InvoiceScheduler, RunSchedule, parse_schedule
from tallyray.invoicing.service import Billing
from tallyray.pricing.events import format_timestamp, parse_timestamp
from tallyray.storage.billing import BillingStore
from tallyray.storage.catalog import Catalog

pytestmark = pytest.mark.anyio

GRACE = 3 * 86_400
SCHEDULE = parse_schedule("live,test", "02:00")


class StillClock:
    """A clock that stands still until the test sets it."""

    def __init__(self, start: str) -> None:
        self.now = parse_timestamp(start)

    def set(self, moment: str) -> None:
        self.now = parse_timestamp(moment)

    def __call__(self) -> int:
        return self.now


@dataclass
class Replicas:
    client: httpx.AsyncClient
    """A test-environment client of replica ``a``'s app (for runs started by hand)."""
    clock: StillClock
    catalog: Catalog
    a: Billing
    b: Billing

    def scheduler(self, billing: Billing, schedule: RunSchedule = SCHEDULE) -> InvoiceScheduler:
        """A scheduler on ``billing``; a new one stands for a restarted process."""
        return InvoiceScheduler(billing, schedule)

    async def at(self, moment: str, *schedulers: InvoiceScheduler) -> list[dict[str, Any]]:
        """Move the clock to ``moment``; let the schedulers look at once; wait for what
        they started. Returns the runs they started, as stored once done."""
        self.clock.set(moment)
        started = [
            run for runs in await asyncio.gather(*(s.tick() for s in schedulers)) for run in runs
        ]
        done = []
        for run in started:
            for billing in (self.a, self.b):
                await billing.wait(run["id"])
            done.append(self.a.store.run("test", run["id"]))
        return done

    async def runs(self) -> list[dict[str, Any]]:
        r = await self.client.get("/v1/invoice-runs")
        assert r.status_code == 200, r.text
        return list(r.json()["runs"])

    async def invoices(self, customer: str) -> list[dict[str, Any]]:
        r = await self.client.get("/v1/invoices", params={"customer_id": customer})
        assert r.status_code == 200, r.text
        return list(r.json()["invoices"])

    async def customer(self, start: str = "2026-10-01T00:00:00Z") -> str:
        customer = unique("cust")
        doc = {"id": customer, "currency": "EUR", "name": "Acme", "country": "DE"}
        r = await self.client.post("/v1/customers", json=doc)
        assert r.status_code == 201, r.text
        body = {"customer_id": customer, "plan": "pro", "start": start}
        r = await self.client.post("/v1/subscriptions", json=body)
        assert r.status_code == 201, r.text
        return customer


@pytest.fixture
async def replicas(server: Server, tmp_path: Path) -> AsyncIterator[Replicas]:
    """A fresh store and shard per test (closing a period is for good), two billings on it."""
    # The example config's pricing, without its customers: only the test's are billed.
    assert server.settings.config_path is not None
    config = json.loads(Path(server.settings.config_path).read_text())
    config.pop("customers", None)
    (tmp_path / "tallyray.json").write_text(json.dumps(config))
    clock = StillClock("2026-11-01T00:00:00Z")
    async with billing_stage(
        server.store, tmp_path, str(tmp_path / "tallyray.json"), GRACE, CLOCK
    ) as stage:

        def billing() -> Billing:
            return Billing(
                catalog=stage.catalog,
                store=BillingStore(stage.catalog.engine),
                database_url=stage.url,
                router=stage.router,
                invoicing_raw={"seller": {"name": "Tallyray Demo GmbH", "country": "DE"}},
                grace_seconds=GRACE,
                clock=clock,
            )

        a = billing()
        async with stage.client(stage.app(a)) as client:
            yield Replicas(client, clock, stage.catalog, a, billing())


def summary(run: dict[str, Any]) -> tuple[str, str, str | None, int]:
    return run["status"], run["until"], run["scheduled_for"], run["invoices"]


async def test_one_run_per_period_once_due_across_two_replicas_and_a_restart(
    replicas: Replicas,
) -> None:
    customer = await replicas.customer()
    a, b = replicas.scheduler(replicas.a), replicas.scheduler(replicas.b)

    # October ends 11-01T00:00; grace until 11-04T00:00; the next 02:00 is 11-04T02:00.
    for moment in ("2026-11-01T02:00:00Z", "2026-11-03T23:59:59Z", "2026-11-04T01:59:59Z"):
        assert await replicas.at(moment, a, b) == [], moment
    assert await replicas.runs() == []

    (run,) = await replicas.at("2026-11-04T02:00:00Z", a, b)
    assert summary(run) == (
        "succeeded",
        "2026-11-01T02:00:00Z",  # the slot less the grace window
        "2026-11-04T02:00:00Z",
        1,
    )
    assert run["options"]["scheduled"] is True

    # Later that day, both replicas again, then both restarted: the slot is taken.
    assert await replicas.at("2026-11-04T02:00:01Z", a, b) == []
    restarted = (replicas.scheduler(replicas.a), replicas.scheduler(replicas.b))
    assert await replicas.at("2026-11-04T17:00:00Z", *restarted) == []
    # The days after: no period ended since the run's until.
    assert await replicas.at("2026-11-05T02:00:00Z", *restarted) == []
    assert await replicas.at("2026-12-03T02:00:00Z", *restarted) == []

    # November's turn, on restarted schedulers that never saw October's run.
    fresh = (replicas.scheduler(replicas.b), replicas.scheduler(replicas.a))
    (run,) = await replicas.at("2026-12-04T02:00:00Z", *fresh)
    assert summary(run) == ("succeeded", "2026-12-01T02:00:00Z", "2026-12-04T02:00:00Z", 1)

    assert len(await replicas.runs()) == 2
    periods = sorted(invoice["period"]["start"] for invoice in await replicas.invoices(customer))
    assert periods == ["2026-10-01T00:00:00Z", "2026-11-01T00:00:00Z"]


async def test_of_two_claims_on_one_slot_exactly_one_insert_wins(replicas: Replicas) -> None:
    store, slot = replicas.a.store, parse_timestamp("2026-11-04T02:00:00Z")

    def claim(_: int) -> str | None:
        return store.create_run("test", slot - GRACE * 1_000_000, {}, slot, scheduled_for=slot)

    claims = await asyncio.gather(*(asyncio.to_thread(claim, i) for i in range(4)))
    (winner,) = [c for c in claims if c is not None]
    assert store.scheduled_run("test", slot) == winner
    assert store.scheduled_run("live", slot) is None


async def test_a_run_started_by_hand_first_makes_the_scheduled_one_a_no_op(
    replicas: Replicas,
) -> None:
    customer = await replicas.customer()
    a = replicas.scheduler(replicas.a)
    replicas.clock.set("2026-11-04T01:00:00Z")
    r = await replicas.client.post("/v1/invoice-runs", json={})
    assert r.status_code == 202, r.text
    await replicas.a.wait(r.json()["id"])
    assert r.json()["until"] == "2026-11-01T01:00:00Z"  # now less the grace window

    assert await replicas.at("2026-11-04T02:00:00Z", a) == []
    (by_hand,) = await replicas.runs()
    assert (by_hand["scheduled_for"], by_hand["invoices"]) == (None, 1)
    assert len(await replicas.invoices(customer)) == 1


async def test_a_run_started_by_hand_after_the_scheduled_one_bills_nothing_again(
    replicas: Replicas,
) -> None:
    customer = await replicas.customer()
    (scheduled,) = await replicas.at("2026-11-04T02:00:00Z", replicas.scheduler(replicas.a))
    assert scheduled["invoices"] == 1

    replicas.clock.set("2026-11-04T09:00:00Z")
    r = await replicas.client.post("/v1/invoice-runs", json={})
    assert r.status_code == 202, r.text
    await replicas.a.wait(r.json()["id"])
    r = await replicas.client.get(f"/v1/invoice-runs/{r.json()['id']}")
    assert (r.json()["status"], r.json()["invoices"]) == ("succeeded", 0)
    assert len(await replicas.invoices(customer)) == 1


@pytest.mark.parametrize(
    "schedule",
    [
        pytest.param(parse_schedule("off", "02:00"), id="off"),
        pytest.param(parse_schedule("live", "02:00"), id="live-only"),
    ],
)
async def test_turned_off_for_an_environment_nothing_starts_there(
    replicas: Replicas, schedule: RunSchedule
) -> None:
    customer = await replicas.customer()  # a test-environment customer
    scheduler = replicas.scheduler(replicas.a, schedule)
    for moment in ("2026-11-04T02:00:00Z", "2026-12-04T02:00:00Z", "2027-01-04T02:00:00Z"):
        assert await replicas.at(moment, scheduler) == [], moment
    assert await replicas.runs() == []
    assert await replicas.invoices(customer) == []
    assert format_timestamp(replicas.clock()) == "2027-01-04T02:00:00Z"
    assert replicas.a.store.covered_until("live") == 0  # nothing to bill there either


# -- a run whose driving process stopped ----------------------------------------------------

GONE = "replica-gone:1:dead"
"""The driver name of a process that stopped."""


def left_running(replicas: Replicas, moment: str, slot: int | None = None) -> str:
    """The state a replica leaves behind when it stops while driving a run: the run's row,
    ``running``, its last heartbeat at ``moment`` (through the store's own code)."""
    replicas.clock.set(moment)
    store, now = replicas.a.store, replicas.clock()
    until = parse_timestamp("2026-11-01T00:00:00Z")
    run_id = store.create_run(
        "test", until, {"force": False, "finalize": True}, now, scheduled_for=slot, driver=GONE
    )
    assert run_id is not None
    assert store.beat_run(run_id, GONE, now, status="running", customers=1)
    return run_id


async def test_a_run_whose_driver_stopped_shows_interrupted_and_one_resume_takes_it(
    replicas: Replicas,
) -> None:
    customer = await replicas.customer()
    run_id = left_running(replicas, "2026-11-04T09:00:00Z")

    # Within the driver timeout (60 s) the run is running, and resuming it is a 409.
    replicas.clock.set("2026-11-04T09:01:00Z")
    r = await replicas.client.get(f"/v1/invoice-runs/{run_id}")
    assert r.json()["status"] == "running", r.text
    r = await replicas.client.post(f"/v1/invoice-runs/{run_id}/resume")
    assert r.status_code == 409, r.text
    assert "still running" in r.json()["error"]["message"]

    # Past it, the run never says running again.
    replicas.clock.set("2026-11-04T09:01:01Z")
    r = await replicas.client.get(f"/v1/invoice-runs/{run_id}")
    assert r.json()["status"] == "interrupted", r.text
    assert [run["status"] for run in await replicas.runs()] == ["interrupted"]

    # Two replicas resume it at once: one drives it, the other is told it runs.
    async def by_b() -> int:
        try:
            await replicas.b.resume_run("test", run_id)
        except Conflict:
            return 409
        return 202

    answers = await asyncio.gather(
        replicas.client.post(f"/v1/invoice-runs/{run_id}/resume"), by_b()
    )
    codes = sorted([answers[0].status_code, answers[1]])
    assert codes == [202, 409], answers[0].text
    for billing in (replicas.a, replicas.b):
        await billing.wait(run_id)
    r = await replicas.client.get(f"/v1/invoice-runs/{run_id}")
    assert (r.json()["status"], r.json()["invoices"]) == ("succeeded", 1), r.text
    assert len(await replicas.invoices(customer)) == 1
    # The driver that stopped, were it only slow, learns the run is no longer its own.
    assert not replicas.a.store.beat_run(run_id, GONE, replicas.clock())


async def test_a_scheduled_run_whose_replica_stopped_is_taken_over_by_one_other(
    replicas: Replicas,
) -> None:
    customer = await replicas.customer()
    slot = parse_timestamp("2026-11-04T02:00:00Z")
    run_id = left_running(replicas, "2026-11-04T02:00:00Z", slot)
    a, b = replicas.scheduler(replicas.a), replicas.scheduler(replicas.b)

    assert await replicas.at("2026-11-04T02:01:00Z", a, b) == []  # its driver may be alive
    taken = await replicas.at("2026-11-04T02:01:01Z", a, b)
    assert {run["id"] for run in taken} == {run_id}
    assert summary(taken[0]) == ("succeeded", "2026-11-01T00:00:00Z", "2026-11-04T02:00:00Z", 1)
    assert await replicas.at("2026-11-04T03:00:00Z", a, b) == []
    assert len(await replicas.runs()) == 1
    assert len(await replicas.invoices(customer)) == 1
