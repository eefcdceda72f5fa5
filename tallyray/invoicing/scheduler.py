"""Invoice runs that start themselves: once a day, at a set time, each scheduled environment
gets a run for the periods whose grace window has passed since the last run.

The schedule has one *slot* a day, at ``at`` (UTC; Tallyray has no per-environment time
zone). At slot ``S`` the periods that ended by ``S`` less the grace window are due. Every
Serve replica runs the same loop (:meth:`InvoiceScheduler.run_forever`); what makes it one
run cluster-wide is the store, not the loop:

1. a run already started for the slot (its row carries ``scheduled_for = S``) → nothing;
2. no period ended between the latest ``until`` of the environment's runs that did not fail
   (started by hand or by the schedule) and the slot's ``until`` → nothing: a run started by
   hand first makes the scheduled one a no-op, and so does the run of an earlier slot;
3. otherwise the run is started with an INSERT of its row, and a unique index on
   (env, scheduled_for) lets exactly one replica's INSERT succeed; the others, and this
   replica after a restart, see step 1.

While the slot's run goes on, every replica keeps an eye on it: a run whose driver stopped
(``interrupted``, :mod:`tallyray.storage.leases`) is taken over by one of them
(:meth:`~tallyray.invoicing.service.Billing.resume_run`, one conditional UPDATE).

A slot missed while the server was down is not made up one by one: the latest slot's run
covers every period that ended by its ``until``. A run is idempotent (a period is invoiced
once), so a run started by hand at the same moment as the scheduled one bills nothing twice.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from starlette.concurrency import run_in_threadpool

from tallyray.errors import Conflict
from tallyray.invoicing.schedule import due_periods
from tallyray.pricing.events import format_timestamp

if TYPE_CHECKING:  # the settings read the schedule: keep the service out of their imports
    from tallyray.invoicing.service import Billing

__all__ = [
    "CHECK_SECONDS",
    "ENVIRONMENTS",
    "RunSchedule",
    "InvoiceScheduler",
    "parse_schedule",
    "slot_at",
    "until_next_look",
]

log = logging.getLogger("tallyray.invoicing")

ENVIRONMENTS = ("live", "test")
CHECK_SECONDS = 60.0
"""How often each replica looks whether a slot is due (a slot it has dealt with costs no
query until the next one; while the slot's run goes on, one query a look)."""

_US = 1_000_000
_DAY = 86_400 * _US
_PAST_SLOT = 0.01
"""Seconds after a slot at which its look comes (a timer may fire a little early)."""


@dataclass(frozen=True)
class RunSchedule:
    """Which environments get scheduled runs, and at what time of day (UTC)."""

    envs: tuple[str, ...] = ENVIRONMENTS
    at_seconds: int = 2 * 3600
    """Seconds after midnight UTC."""


def parse_schedule(envs: str, at: str) -> RunSchedule:
    """``envs``: ``"live,test"``, ``"live"``, ``"test"`` or ``"off"``; ``at``: ``"HH:MM"``
    (UTC). A :class:`ValueError` says what to fix."""
    names = tuple(name.strip() for name in envs.split(",") if name.strip())
    if names in ((), ("off",)):
        names = ()
    elif any(name not in ENVIRONMENTS for name in names):
        raise ValueError(
            f"TALLYRAY_INVOICE_SCHEDULE must be 'off' or a list of environments from "
            f"{', '.join(ENVIRONMENTS)} (got {envs!r})"
        )
    try:
        moment = datetime.strptime(at.strip(), "%H:%M")
    except ValueError:
        raise ValueError(
            f"TALLYRAY_INVOICE_RUN_AT must be a time of day in UTC as HH:MM, e.g. 02:00 "
            f"(got {at!r})"
        ) from None
    return RunSchedule(tuple(dict.fromkeys(names)), moment.hour * 3600 + moment.minute * 60)


def slot_at(now: int, at_seconds: int) -> int:
    """The latest slot at or before ``now``: today's time of day ``at``, or yesterday's."""
    midnight = now - now % _DAY
    slot = midnight + at_seconds * _US
    return slot if slot <= now else slot - _DAY


def any_period_due(
    subscriptions: Mapping[str, Sequence[Mapping[str, Any]]],
    plan_of: Callable[[str, int], Any],
    after: int,
    until: int,
) -> bool:
    """Whether some customer's billing period ended after ``after`` and by ``until``."""
    return any(due_periods(subs, plan_of, until, after) for subs in subscriptions.values())


@dataclass
class InvoiceScheduler:
    """One replica's side of the schedule. Several may run against one store."""

    billing: Billing
    schedule: RunSchedule
    _settled: dict[str, int] = field(default_factory=dict, init=False)
    """Per environment, the slot this scheduler has dealt with."""

    async def tick(self) -> list[dict[str, Any]]:
        """Start the runs that are due now; returns them (usually none)."""
        started = []
        now = self.billing.clock()
        slot = slot_at(now, self.schedule.at_seconds)
        for env in self.schedule.envs:
            if self._settled.get(env) == slot:
                continue
            run, dealt_with = await self._slot(env, slot)
            if dealt_with:
                self._settled[env] = slot
            if run is not None:
                log.info(
                    "invoice run %s (%s) driven here for the slot at %s",
                    run["id"],
                    env,
                    format_timestamp(slot),
                )
                started.append(run)
        return started

    async def _slot(self, env: str, slot: int) -> tuple[dict[str, Any] | None, bool]:
        """The run this look started or took over, if any; and whether the slot is dealt
        with for good (nothing was due, or its run ended)."""
        billing = self.billing
        taken = await run_in_threadpool(billing.store.scheduled_run, env, slot)
        if taken is not None:
            return await self._watch(env, taken)
        until = slot - billing.grace_seconds * _US
        after = await run_in_threadpool(billing.store.covered_until, env)
        if after >= until:
            return None, True

        def due() -> bool:
            subscriptions = billing.catalog.subscriptions(env, None, until)
            plans = billing.catalog.env_catalog(env)
            return any_period_due(subscriptions, plans.plan, after, until)

        if not await run_in_threadpool(due):
            return None, True
        # None: another replica's INSERT won the slot; watch its run from the next look.
        return await billing.start_scheduled_run(env, slot), False

    async def _watch(self, env: str, run_id: str) -> tuple[dict[str, Any] | None, bool]:
        """The slot's run, started before: ended, leave it; its driver stopped
        (``interrupted``), take it over — of several replicas, one claim wins."""
        billing = self.billing
        run = await run_in_threadpool(billing.store.run, env, run_id, billing.clock())
        if run["status"] != "interrupted":
            return None, run["status"] not in ("pending", "running")
        try:
            return await billing.resume_run(env, run_id), False
        except Conflict:
            return None, False  # another replica took it over first

    async def run_forever(self, seconds: float = CHECK_SECONDS) -> None:
        """Look every ``seconds`` whether a slot is due, as long as the app runs, and at
        each slot itself (:func:`until_next_look`)."""
        while True:
            try:
                await self.tick()
            except Exception as error:  # noqa: BLE001 — the next look tries again
                log.warning("scheduled invoice runs: %s", error)
            now = self.billing.clock()
            await asyncio.sleep(until_next_look(now, self.schedule.at_seconds, seconds))


def until_next_look(now: int, at_seconds: int, seconds: float = CHECK_SECONDS) -> float:
    """Seconds to sleep before the next look: ``seconds``, or less when the next slot comes
    sooner, so that a slot's run starts at the slot, not up to a look later. (Clocks run at
    the real rate, shifted ones too: :mod:`tallyray.clock`.) A hair past the slot, so the
    look sees it."""
    to_slot = (slot_at(now, at_seconds) + _DAY - now) / _US
    return min(seconds, to_slot + _PAST_SLOT)
