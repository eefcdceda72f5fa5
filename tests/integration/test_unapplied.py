"""A shard gives an account its committed events when something reads the account, or a
moment later (`tallyray/actors/unapplied.py`): whatever reads it sees every acknowledged
event, a checkpoint stores them once, and the caps count them while they wait."""

from __future__ import annotations

import asyncio
from decimal import Decimal

import pytest
from suite_clock import CLOCK
from support import core_on, credit_grant, unique

from tallyray.actors import shard as shard_module
from tallyray.actors.shard import IncomingEvent, ShardCore
from tallyray.actors.unapplied import APPLY_WAIT_SECONDS
from tallyray.pricing.events import Event

pytestmark = pytest.mark.anyio

PROPERTIES = {"model": "gpt-4o", "input_tokens": 1000, "output_tokens": 100}


def calls(customer: str, n: int) -> list[IncomingEvent]:
    return [(customer, unique("evt"), "llm.completion", CLOCK(), PROPERTIES) for _ in range(n)]


def input_tokens(core: ShardCore, customer: str) -> Decimal:
    account = core.accounts[("test", customer)]  # a read: applies what waits for it
    (usage,) = account.periods.values()
    return usage.quantity(account.meters.meters["input_tokens"])


@pytest.fixture
def patient(monkeypatch: pytest.MonkeyPatch) -> None:
    """Events wait a minute, not a moment, unless something reads their account: what a
    test sees waiting does not depend on how fast this machine commits."""
    monkeypatch.setattr(shard_module, "APPLY_WAIT_SECONDS", 60.0)


def quote(core: ShardCore, n: int) -> Decimal:
    """What ``n`` calls of :data:`PROPERTIES` cost on ``pro`` (priced on ``r``'s account, which
    no test here records anything on: a quote changes nothing)."""
    return core.account("test", "r").price(
        [Event(f"quote-{i}", "r", "llm.completion", CLOCK(), PROPERTIES) for i in range(n)]
    )


async def test_every_read_sees_the_acknowledged_events(store_url: str, patient: None) -> None:
    async with core_on(store_url) as core:
        for n in (3, 2):
            await core.ingest("test", calls("p", n))
        assert ("test", "p") in core.accounts.unapplied  # acknowledged, not applied yet
        spend = core.balance("test", "p")["period_spend_precise"]
        assert Decimal(spend) == quote(core, 5) > 0
        assert ("test", "p") not in core.accounts.unapplied
        before = core.check("test", "p", calls("p", 1)).available
        await core.ingest("test", calls("p", 1))
        after = core.check("test", "p", calls("p", 1)).available
        assert before is not None and after is not None
        assert before - after == quote(core, 6) - quote(core, 5)
        assert input_tokens(core, "p") == 6 * 1000


async def test_events_nobody_reads_are_applied_a_moment_later(store_url: str) -> None:
    async with core_on(store_url) as core:
        await core.ingest("test", calls("q", 4))
        assert core.accounts.events == 4
        await asyncio.sleep(APPLY_WAIT_SECONDS + 0.3)
        assert core.accounts.unapplied == {}
        assert core.accounts.events == 0
        assert ("test", "q") in core.dirty  # applied: the next checkpoint stores it


async def test_the_shard_counts_how_its_accounts_were_given_their_commits(
    store_url: str, patient: None
) -> None:
    async with core_on(store_url) as core:
        await core.ingest("test", calls("p", 1))
        core.balance("test", "p")  # one commit waited
        for n in (2, 3, 1):
            await core.ingest("test", calls("p", n))
        core.balance("test", "p")  # three commits waited, folded in one call
        status = core.status()
        assert status["applies"] == {"alone": 1, "together": 1, "one_by_one": 0}
        assert status["applied_commits"] == {"alone": 1, "together": 3, "one_by_one": 0}


async def test_a_checkpoint_stores_the_waiting_events_once(store_url: str, patient: None) -> None:
    async with core_on(store_url) as core:
        await core.ingest("test", calls("p", 3))
        assert core.accounts.events == 3
        await core.checkpoint()
        assert core.accounts.events == 0
        await core.ingest("test", calls("p", 2))  # after the checkpoint: replayed
        live = core.balance("test", "p")
    async with core_on(store_url) as restarted:
        assert input_tokens(restarted, "p") == 5 * 1000
        assert restarted.balance("test", "p") == live


async def test_waiting_events_count_against_the_caps(store_url: str, patient: None) -> None:
    async with core_on(store_url) as core:
        await core.ingest("test", calls("q", 1))
        core.accounts.settle_all()
        _, room = core.room()
        await core.ingest("test", calls("q", 7))
        assert core.accounts.events == 7
        assert core.room()[1] == room - 7


async def test_a_grant_is_booked_after_the_events_before_it_as_on_replay(
    store_url: str, patient: None
) -> None:
    async with core_on(store_url) as core:
        await core.ingest("test", calls("q", 2))
        await core.add_grant("test", "q", credit_grant("q", "100.00"))
        assert core.accounts.unapplied == {}
        await core.ingest("test", calls("q", 3))
        live = core.balance("test", "q")
        assert Decimal(live["credits_remaining"]) < 100
    async with core_on(store_url) as restarted:  # no checkpoint: all of it replayed
        assert restarted.balance("test", "q") == live


async def test_the_least_headroom_is_worked_out_without_applying_what_waits(
    store_url: str, patient: None
) -> None:
    async with core_on(store_url) as core:
        await core.ingest("test", calls("q", 1))
        core.accounts.settle_all()
        _, room = core.room()
        await core.ingest("test", calls("q", 7))
        core._headroom = None  # as after a plan change: worked out afresh
        assert core.room()[1] == room - 7
        assert core.accounts.events == 7  # still waiting, and counted


async def test_expiring_holds_applies_what_waits_first_in_slices(
    store_url: str, patient: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(shard_module, "APPLY_SLICE_SECONDS", 0.0)  # a slice per account
    async with core_on(store_url) as core:
        await core.add_grant("test", "p", credit_grant("p"))
        answer, _ = await core.reserve("test", "p", unique("hold"), calls("p", 1), 0.001)
        assert answer.allowed
        for customer in ("p", "q", "r"):
            await core.ingest("test", calls(customer, 2))
        await asyncio.sleep(0.01)  # the hold's time is up
        expiring = asyncio.create_task(core.expire_holds())
        waiting = []
        while not expiring.done():
            waiting.append(len(core.accounts.unapplied))
            await asyncio.sleep(0)
        assert await expiring == 1
        assert core.accounts.unapplied == {}
        assert {1, 2} & set(waiting)  # the event loop ran between two accounts' applies
        assert input_tokens(core, "p") == 2 * 1000
