"""ShardActor: hosts the live accounts of the customers that hash to it.

A thin shell around the pure :class:`~tallyray.actors.account.CustomerAccount`: it owns the
clock, the database (:class:`~tallyray.storage.eventlog.ShardStore`) and the Ray interface.

The rules it keeps:

1. **Nothing is acknowledged before it is durable.** Requests queue; one committer task writes
   everything queued so far in a single transaction (group commit) and only then applies it
   in memory and answers. A failed commit answers every waiting request with
   :class:`StoreUnavailable` and changes nothing in memory.
2. **The log is the truth.** Every few seconds the dirty accounts are checkpointed with the log
   position they include. A restarted shard (Ray restarts it: ``max_restarts=-1``) loads the
   checkpoint and replays the log after it; grants are re-added at the log position they were
   booked at, so replay reproduces the live state.
3. **Closed periods stay closed.** Periods that ended by the environment's *cutoff* are
   written out for invoicing (:meth:`ShardCore.close_periods`) and dropped from memory; an
   event for one is refused, or booked to the open period, and never changes the invoice.
4. **Holds are atomic.** The actor runs one request at a time on its event loop between
   awaits, and a hold is placed in memory before its write is awaited, so concurrent
   reservations can never together exceed what is available.
5. **One account never stops the shard.** An error while applying or replaying one account's
   data (its events, grants, holds, checkpoint, profile, alerts, balance, snapshot, period
   close) sets that account aside (*quarantined*): its requests answer
   :class:`AccountQuarantined` (503), nothing more is written for it, and every other
   account carries on, across restarts too. Its stored data stays in the log, and the
   shard's checkpoint position stays behind it (replay skips what each account's own
   checkpoint holds), so once the operator has repaired the row a restart brings the
   account back with everything.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter, defaultdict, deque
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import orjson

from tallyray.actors.account import (
    CustomerAccount,
    FlagKey,
    Hold,
    PlanSpan,
    Profile,
    QuotaAnswer,
)
from tallyray.actors.alerting import AlertRule
from tallyray.actors.limits import Limits
from tallyray.actors.routing import shard_of
from tallyray.actors.shard_line import Endpoint, LineOptions, ShardLineServer
from tallyray.actors.unapplied import (
    APPLY_WAIT_SECONDS,
    APPLY_WAYS,
    SETTLE_EVENTS,
    AccountKey,
    Accounts,
    ApplyWay,
    Commits,
)
from tallyray.clock import Clock, clock_for, system_clock
from tallyray.credentials import database_url as resolve_database_url
from tallyray.errors import (
    AccountQuarantined,
    Conflict,
    EventError,
    NotFound,
    NotOwner,
    Problem,
    Resharding,
    StoreUnavailable,
    TallyrayError,
)
from tallyray.heap import freeze_startup_heap
from tallyray.logs import configure_logging
from tallyray.metrics import BATCH_BUCKETS, LATENCY_BUCKETS, BucketCounts
from tallyray.pricing.alert_rules import plan_rules, unusable_plan_rules
from tallyray.pricing.credits import CreditGrant
from tallyray.pricing.events import Event, format_timestamp
from tallyray.pricing.meters import MeterSet
from tallyray.pricing.money import Currency, currency, round_amount
from tallyray.pricing.periods import covered_until
from tallyray.pricing.recharge_rules import trigger_rule
from tallyray.pricing.segments import merge_spans
from tallyray.storage.alerts import AlertStore
from tallyray.storage.billing import BillingStore
from tallyray.storage.catalog import Catalog, CustomerRecord, EnvCatalog
from tallyray.storage.db import DatabaseUnavailable, make_engine
from tallyray.storage.eventlog import EventRow, ShardStore
from tallyray.storage.recharges import RechargeStore
from tallyray.storage.unpriced import UnpricedStore, record_id

log = logging.getLogger("tallyray.shard")

IncomingEvent = tuple[str, str, str, int, dict[str, Any]]
"""(customer_id, event id, type, ts, properties): what the ingress sends per event."""


GATHER_EVENTS = 4000
"""A commit of events stops waiting for more once it holds this many."""

APPLY_SLICE_SECONDS = 0.001
"""Applying a commit in memory lets the event loop run other work (quota checks, balance
reads) after about this much of it: a commit of a few thousand events takes tens of ms to
apply, and a check arriving meanwhile would otherwise wait for all of it (see
:meth:`ShardCore._apply_commit`)."""

_STORE_DOWN = (DatabaseUnavailable, StoreUnavailable)
"""Errors of the store, not of an account: while recovering they fail the start (Ray starts
the shard again), instead of setting accounts aside."""

UNPRICED_EVENT = "usage.unpriced"
"""The webhook event type that announces unpriced usage (once per plan, group and period)."""

SHOWN_SET_ASIDE = 100
"""At most this many accounts set aside are listed in a shard's status."""


@dataclass(frozen=True, slots=True)
class SetAside:
    """Why an account is set aside, and the log position the shard's checkpoint may not pass
    while it is (its stored state holds its data up to there; the log has the rest)."""

    reason: str
    floor: int
    since: int


@dataclass
class _Pending:
    """One request waiting for the next group commit.

    Its future resolves to ``None``, never to the pending: a cycle through the future would
    leave each request's events (~100 per request at 20k events/s) to the cyclic garbage
    collector, which found 14,000–24,000 such objects in each full collection of a shard and
    stalled its loop 19–67 ms each time (docs/benchmarks.md, "Garbage collection on a check's
    path")."""

    future: asyncio.Future[None]
    env: str
    events: list[EventRow] = field(default_factory=list)
    parsed: list[IncomingEvent] = field(default_factory=list)
    grants: list[dict[str, Any]] = field(default_factory=list)
    new_holds: list[dict[str, Any]] = field(default_factory=list)
    finished_holds: list[tuple[str, str]] = field(default_factory=list)
    placed_hold: tuple[AccountKey, str] | None = None
    result: dict[str, int] = field(default_factory=dict)


@dataclass
class ShardStats:
    commits: int = 0
    commit_seconds: BucketCounts = field(default_factory=lambda: BucketCounts(LATENCY_BUCKETS))
    batch_sizes: BucketCounts = field(default_factory=lambda: BucketCounts(BATCH_BUCKETS))
    checkpoint_at: int = 0
    ingested: int = 0
    duplicates: int = 0
    unpriced: Counter[str] = field(default_factory=Counter)
    """Per environment: events with usage no charge prices, flagged since the shard started
    (live only: a replay does not count them again)."""
    applies: Counter[ApplyWay] = field(default_factory=Counter)
    """Accounts given their waiting commits, by way (:meth:`ShardCore._apply`): how well a
    shard's applies fold commits together (replay's included)."""
    applied_commits: Counter[ApplyWay] = field(default_factory=Counter)
    """The account commits those applies gave, by the same ways."""


class ShardCore:
    """The shard's logic, independent of Ray so it can be driven directly in tests."""

    def __init__(
        self,
        shard: int,
        shard_count: int,
        database_url: str | None,
        checkpoint_seconds: float = 5.0,
        grace_seconds: int | None = None,
        gather_seconds: float = 0.0,
        clock: Clock = system_clock,
        limits: Limits | None = None,
        secrets_file: str | None = None,
    ) -> None:
        """``database_url``: ``None`` in a deployment, where the shard reads it as a secret
        (:func:`tallyray.credentials.database_url`), never as an argument Ray would keep."""
        self.shard = shard
        self.clock = clock
        self.limits = limits or Limits()
        """How much state one customer may make the shard keep (:mod:`~.limits`)."""
        self.shard_count = shard_count
        self.checkpoint_seconds = checkpoint_seconds
        self.grace_seconds = grace_seconds
        """With a grace window, periods close by themselves once it has passed."""
        self.gather_seconds = gather_seconds
        """How long a commit of events may wait for more under load (0: never)."""
        self._last_commit = float("-inf")
        self._last_requests = 0
        self.engine = make_engine(resolve_database_url(database_url, secrets_file))
        self.store = ShardStore(self.engine, shard)
        self.catalog = Catalog(self.engine)
        self.billing = BillingStore(self.engine)
        self.alert_store = AlertStore(self.engine)
        self.recharge_store = RechargeStore(self.engine)
        self.unpriced_store = UnpricedStore(self.engine)
        self._flag_rows: set[tuple[AccountKey, int, FlagKey]] = set()
        """Unpriced usage records whose figures moved since they were last written."""
        self.outbox: list[dict[str, Any]] = []
        self._booking: set[str] = set()
        """Ids of grants waiting for their commit (a retry must not book one twice)."""
        """Alerts fired since the last commit: the next commit writes them."""
        self.cutoffs: dict[str, int] = {}
        """Per environment: periods that ended by this moment are closed."""
        self.envs: dict[str, EnvCatalog] = {}
        self._history: dict[AccountKey, list[tuple[int, str, int]]] = {}
        """Per account, its subscriptions that may price open periods: (start, plan key,
        version), oldest first (read with its record, made plan spans by ``_profile``)."""
        self.accounts = Accounts(self._apply_waiting)
        """Each account applies the commits it has not applied before it is read (see
        :mod:`tallyray.actors.unapplied`)."""
        self._settling: asyncio.TimerHandle | None = None
        """The timer that applies everything waiting (see :data:`APPLY_WAIT_SECONDS`)."""
        self.hold_owner: dict[str, AccountKey] = {}
        self.dirty: set[AccountKey] = set()
        self.quarantined: dict[AccountKey, SetAside] = {}
        """Accounts set aside after an error applying their data (see rule 5 above)."""
        self.position = 0
        self._saved_head = 0
        """The shard position of the last checkpoint stored (at first, the one recovered
        from): every account's stored state holds its data up to there."""
        self._stored_at: dict[AccountKey, int] = {}
        """While recovering: the log position each account's checkpoint includes."""
        self._recovering = True
        self.resharding = False
        """Draining for a reshard: every write is refused with :class:`Resharding`."""
        self.stats = ShardStats()
        self._queue: list[_Pending] = []
        self._committing: list[_Pending] = []
        """The requests of the commit being written now."""
        self._sending: list[dict[str, Any]] = []
        """The outbox messages of the commit being written now: a checkpoint taken meanwhile
        writes them too, since the states it stores say they fired (and if that commit
        fails, they would be neither in the store nor in a restarted shard's replay)."""
        self._waiting = 0
        """Events queued or being written, not applied yet (they count towards the caps)."""
        self._headroom: int | None = None
        """The fewest events any account here could take before a cap may refuse one
        (``None``: work it out again)."""
        self._wake: asyncio.Event | None = None
        self._locks: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Lock]] = {}
        """Held while a commit is applied in slices, and by a checkpoint while it takes its
        snapshots (:meth:`applying`)."""
        self._db = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"shard-{shard}-db")
        self._tasks: list[asyncio.Task[None]] = []
        self.recover()

    # -- wiring --------------------------------------------------------------------------

    def _ensure_tasks(self) -> None:
        if self._wake is None:
            self._wake = asyncio.Event()
            loop = asyncio.get_running_loop()
            self._tasks = [
                loop.create_task(self._committer()),
                loop.create_task(self._checkpointer()),
            ]
            if self.outbox:  # fired while recovering (no loop then): write them now
                self._wake.set()

    def _lock(self, name: str) -> asyncio.Lock:
        """This core's lock ``name`` on the running event loop (a lock belongs to the loop it
        first waited on, and tests drive one core from several loops)."""
        loop = asyncio.get_running_loop()
        found = self._locks.get(name)
        if found is None or found[0] is not loop:
            found = self._locks[name] = (loop, asyncio.Lock())
        return found[1]

    def applying(self) -> asyncio.Lock:
        """The lock between a commit's apply and a checkpoint's snapshot.

        A commit is applied in slices (:meth:`_apply_commit`), and between two slices some
        accounts hold the commit's events while the shard's position does not include it
        yet. A checkpoint taken there would store those accounts with the old position, and
        a restart would replay their events a second time; so a checkpoint waits for the
        apply to end. Everything else may run between slices: each account is whole at any
        moment (its part of the commit is applied in one go), and what the commit changes
        is not acknowledged until all of it is applied."""
        return self._lock("applying")

    def checkpoint_round(self) -> asyncio.Lock:
        """Held by the checkpointer for each round (periods closed, checkpoint, holds
        expired), so that :meth:`drain` stops it between rounds, never in one: a checkpoint
        cancelled while its write waits for the database thread takes the accounts' dirty
        marks with it, and the drain's own checkpoint would then leave those accounts'
        latest state unstored — events the hand-over to a new shard set would lose."""
        return self._lock("checkpoint round")

    def close(self) -> None:
        """Stop the committer and checkpointer, the database thread and the engine (a core
        driven directly, in tests and benchmarks; an actor's process simply ends)."""
        if self._settling is not None:
            self._settling.cancel()
        for task in self._tasks:
            task.cancel()
        self._db.shutdown(wait=True)
        self.engine.dispose()

    def env(self, env: str) -> EnvCatalog:
        found = self.envs.get(env)
        if found is None:
            found = self.envs[env] = self.catalog.env_catalog(env)
        return found

    def _records(self, env: str, customer_ids: Sequence[str]) -> dict[str, CustomerRecord]:
        """The customers' records, and their subscriptions (for ``_profile``)."""
        records = self.catalog.customers(env, customer_ids)
        history = self.catalog.subscriptions(env, customer_ids)
        cutoff = self.cutoffs.get(env, 0)
        for customer_id in customer_ids:
            self._history[(env, customer_id)] = [
                (row["start"], row["plan_key"], row["plan_version"])
                for row in history.get(customer_id, [])
                if row["end"] is None or row["end"] > max(row["start"], cutoff)
            ]
        return records

    def _spans(self, record: CustomerRecord) -> tuple[PlanSpan, ...]:
        """The customer's plans over its open periods (a plan change mid-period cuts it)."""
        history = self._history.get((record.env, record.id), [])
        if len(history) < 2:
            return ()
        cat = self.env(record.env)
        if any((key, version) not in cat.plans for _, key, version in history):
            cat = self.envs[record.env] = self.catalog.env_catalog(record.env)
        return merge_spans(
            PlanSpan(start, cat.plan(key, version), version) for start, key, version in history
        )

    def _profile(self, record: CustomerRecord) -> Profile:
        cat = self.env(record.env)
        plan = None
        if record.plan_key is not None:
            plan = cat.plans.get((record.plan_key, record.plan_version or 0))
            if plan is None:  # a plan version newer than our copy of the catalog
                cat = self.envs[record.env] = self.catalog.env_catalog(record.env)
                plan = cat.plan(record.plan_key, record.plan_version)
        fx_rate = None
        if plan is not None and plan.currency.code != record.currency:
            found = self.billing.rate(record.env, plan.currency.code, record.currency)
            if found is None:
                raise Conflict(
                    f"customer {record.id!r} is billed in {record.currency} on a plan priced "
                    f"in {plan.currency.code}, and there is no exchange rate between them"
                )
            fx_rate = found[0]
        return Profile(
            customer_id=record.id,
            currency=record.currency,
            plan=plan,
            billing_mode=record.billing_mode,
            overdraft=record.overdraft,
            credit_limit=record.credit_limit,
            spend_cap=record.spend_cap,
            anchor=record.anchor,
            fx_rate=fx_rate,
            plan_version=None if plan is None else record.plan_version,
            plan_until=None
            if plan is None or record.subscription_end is None
            else covered_until(record.subscription_end, plan.interval, record.anchor),
            spans=self._spans(record),
        )

    def _load_accounts(self, env: str, customer_ids: Iterable[str]) -> None:
        """Create accounts for customers seen for the first time (reads the catalog)."""
        missing = [c for c in set(customer_ids) if (env, c) not in self.accounts]
        if not missing:
            return
        self._refuse_set_aside(env, missing)
        foreign = [c for c in missing if shard_of(env, c, self.shard_count) != self.shard]
        if foreign:  # the sender's shard count is older than ours (a reshard just happened)
            raise NotOwner(
                f"customer {foreign[0]!r} is served by another shard since the shard count "
                f"became {self.shard_count}; nothing was stored, retry"
            )
        records = self._records(env, missing)
        rules = self._own_rules(env, missing)
        meters = self.env(env).meters
        for customer_id in missing:
            record = records.get(customer_id)
            if record is None:
                raise NotFound(f"no customer {customer_id!r}")
            account = CustomerAccount(self._profile(record), meters)
            account.rules = self._rules(record, rules.get(customer_id, []))
            self.accounts[(env, customer_id)] = account

    def _own_rules(self, env: str, customer_ids: Iterable[str]) -> dict[str, list[AlertRule]]:
        """The customers' own alert rules, with the trigger of their auto-recharge
        (:mod:`tallyray.pricing.recharge_rules`) when it is on."""
        wanted = list(customer_ids)
        rules = self.alert_store.rules(env, wanted)
        for customer, settings in self.recharge_store.settings_of(env, wanted).items():
            trigger = trigger_rule(settings)
            if trigger is not None:
                rules.setdefault(customer, []).append(trigger)
        return rules

    def _rules(self, record: CustomerRecord, own: list[AlertRule]) -> tuple[AlertRule, ...]:
        """The customer's own alert rules and its plan's defaults."""
        if record.plan_key is None:
            return tuple(own)
        cat = self.env(record.env)
        raw = cat.raw_plans.get((record.plan_key, record.plan_version or 0), {})
        alerts, meters = raw.get("alerts", []), list(cat.meters.meters)
        unusable = unusable_plan_rules(alerts, meters)
        if unusable:  # only a plan stored before its rules were checked the one way
            log.error(
                "shard %d: plan %s@%s has alert rules that cannot be evaluated: %s",
                self.shard,
                record.plan_key,
                record.plan_version,
                "; ".join(map(str, unusable)),
            )
        return (*own, *plan_rules(record.plan_key, alerts, meters))

    def account(self, env: str, customer_id: str) -> CustomerAccount:
        found = self.accounts.get((env, customer_id))
        if found is None:
            self._load_accounts(env, [customer_id])
            found = self.accounts[(env, customer_id)]
        return found

    # -- accounts set aside --------------------------------------------------------------

    def _refuse_set_aside(self, env: str, customer_ids: Iterable[str]) -> None:
        """:class:`AccountQuarantined` if one of these accounts is set aside (before anything
        of the request is written)."""
        if self.quarantined:
            for customer_id in customer_ids:
                if (env, customer_id) in self.quarantined:
                    raise AccountQuarantined.of(customer_id)

    def _set_aside(self, key: AccountKey, doing: str, error: BaseException) -> None:
        """Quarantine one account: forget its state (it may be half changed), refuse its
        requests, and say so once, at error level. Its data stays in the store."""
        if key in self.quarantined:
            return
        self.accounts.pop(key, None)
        self.dirty.discard(key)
        reason = f"{doing}: {type(error).__name__}: {str(error)[:200]}"
        self.quarantined[key] = SetAside(reason, self._saved_head, self.clock())
        log.error(
            "shard %d: account %s/%s set aside after an error %s; its other requests are "
            "refused with 503 until the stored data is repaired and the shard restarted",
            self.shard,
            key[0],
            key[1],
            reason,
            extra={"env": key[0], "customer_id": key[1]},
        )

    def _fails_account(self, error: Exception) -> bool:
        """Does ``error`` belong to the account being applied (set it aside) rather than to the
        store? While recovering, a store that cannot be reached fails the start and Ray starts
        the shard again; live, everything counts against the account, so that a commit's
        apply always finishes for the others."""
        return not (self._recovering and isinstance(error, _STORE_DOWN))

    def _serving(self, key: AccountKey, doing: str, error: Exception) -> TallyrayError:
        """The error a request gets when reading or changing one account failed: the
        caller's own mistakes as they are, anything else sets the account aside."""
        if isinstance(error, TallyrayError):
            return error
        self._set_aside(key, doing, error)
        return AccountQuarantined.of(key[1])

    # -- recovery ------------------------------------------------------------------------

    def recover(self) -> None:
        started = time.perf_counter()
        position, count, states, stored_at = self.store.load_checkpoint()
        if count is not None and count != self.shard_count:
            raise RuntimeError(
                f"shard {self.shard}: the checkpoint was taken with {count} shards, not "
                f"{self.shard_count}; start Tallyray with TALLYRAY_SHARDS={count}"
            )
        self._recovering = True
        self._saved_head = position
        self._stored_at = stored_at
        now = self.clock()
        by_env: dict[str, list[str]] = defaultdict(list)
        for env, customer in states:
            by_env[env].append(customer)
        for env, customers in by_env.items():
            records = self._records(env, customers)
            rules = self._own_rules(env, customers)
            for customer in customers:
                record = records.get(customer)
                if record is None:
                    continue
                key = (env, customer)
                try:
                    account = CustomerAccount.restore(
                        states[key], self._profile(record), self.env(env).meters, now
                    )
                    account.rules = self._rules(record, rules.get(customer, []))
                    self.accounts[key] = account
                except Exception as error:
                    if not self._fails_account(error):
                        raise
                    self._set_aside(key, "restoring its checkpoint", error)
        # Grants booked at or before the checkpoint are in it, unless their commit raced
        # the snapshot; add those (idempotently) before replaying what came after.
        for grant in self.store.grants_at_or_before(position):
            self._add_grant_row(grant)
        later = deque(self.store.grants_after(position))
        replayed = 0
        self.position = position
        for rows in self.store.replay(position):
            segment: list[Any] = []
            for row in rows:
                if later and later[0]["position"] < row.seq:
                    self._apply_rows(segment)
                    segment = []
                    while later and later[0]["position"] < row.seq:
                        self._add_grant_row(later.popleft())
                segment.append(row)
            self._apply_rows(segment)
            replayed += len(rows)
            self.position = rows[-1].seq
        for grant in later:
            self._add_grant_row(grant)
        self.position = max(self.position, position)
        # Periods closed after the checkpoint came back with the replay: drop them again.
        # They are written out, unless the account was set aside when they were closed:
        # those are written now.
        self.cutoffs = self.billing.cutoffs(self.shard)
        for env, cutoff in self.cutoffs.items():
            rows_out, dropped = self._due_rows(env, cutoff)
            if rows_out:
                self.billing.record_periods(self.shard, env, rows_out, self.clock())
            for key, starts in dropped.items():
                self.accounts[key].drop_periods(starts)
                self._headroom = None
        for hold in self.store.active_holds():
            key = (hold["env"], hold["customer_id"])
            self.hold_owner[hold["id"]] = key  # a set-aside account's hold answers 503
            if key in self.quarantined:
                continue
            try:
                self.account(*key).holds[hold["id"]] = Hold(
                    hold["id"], Decimal(hold["amount"]), hold["expires_at"], _held_units(hold)
                )
            except Exception as error:
                if not self._fails_account(error):
                    raise
                self._set_aside(key, f"restoring its hold {hold['id']}", error)
        self.dirty.update(self.accounts)
        self._stored_at = {}
        self._recovering = False
        log.info(
            "shard %d recovered at position %d: %d accounts (%d set aside), %d events "
            "replayed in %.2fs",
            self.shard,
            self.position,
            len(self.accounts),
            len(self.quarantined),
            replayed,
            time.perf_counter() - started,
        )

    def _add_grant_row(self, row: dict[str, Any]) -> None:
        key = (row["env"], row["customer_id"])
        if key in self.quarantined:
            return  # the grant is stored; it is added when the account comes back
        try:
            account = self.account(*key)
            account.add_grant(_grant(row))
            self.dirty.add(key)  # its ledger (and maybe its alert state) changed: stored next
            self._alerts(row["env"], account, row["created_at"])  # a top-up may recover alerts
        except Exception as error:
            if not self._fails_account(error):
                raise
            self._set_aside(key, f"adding its credit grant {row['id']}", error)

    def _apply_rows(self, rows: Sequence[Any]) -> None:
        """Apply replayed log rows: per commit (same ``received_at``) and per customer, each
        account only what its checkpoint does not hold already."""
        groups: dict[tuple[int, str, str], list[Event]] = defaultdict(list)
        stored_at, aside = self._stored_at, self.quarantined
        owned: dict[AccountKey, bool] = {}
        for row in rows:
            key = (row.env, row.customer_id)
            if key in aside or row.seq <= stored_at.get(key, 0):
                continue
            mine = owned.get(key)
            if mine is None:
                mine = owned[key] = shard_of(*key, self.shard_count) == self.shard
            if not mine:  # written by this shard number before a reshard moved the customer
                continue
            try:
                properties = orjson.loads(row.properties)
            except orjson.JSONDecodeError as error:
                self._set_aside(key, f"reading its event at log position {row.seq}", error)
                continue
            groups[(row.received_at, row.env, row.customer_id)].append(
                Event(row.event_id, row.customer_id, row.type, row.ts, properties)
            )
        for (received_at, env, customer), events in groups.items():
            if (env, customer) not in aside:
                self._apply(env, customer, [(received_at, events)])

    def _apply(self, env: str, customer_id: str, commits: Commits, alerts: bool = True) -> None:
        """Fold committed events into their account (setting it aside if that fails), then
        evaluate its alerts: ``commits``, its events of one or more commits, oldest first,
        in one go where :meth:`CustomerAccount.record_together` can, else commit by commit
        with the alerts after each, as replay applies them."""
        key = (env, customer_id)
        at = commits[-1][0]
        try:
            account = self.account(env, customer_id)
            if len(commits) == 1:
                way: ApplyWay = "alone"
                self._record(account, commits[0][1], at)
            elif self._record_together(account, commits):
                way = "together"
            else:
                way = "one_by_one"
                # commit by commit, the alerts after each, as replay applies them
                for commit_at, events in commits[:-1]:
                    self._record(account, events, commit_at)
                    if alerts:
                        self._after_commit(key, account, commit_at)
                        if key in self.quarantined:
                            return
                self._record(account, commits[-1][1], at)
            self.stats.applies[way] += 1
            self.stats.applied_commits[way] += len(commits)
            self.dirty.add(key)
            self._flags(env, account, at)
        except Exception as error:
            if not self._fails_account(error):
                raise
            self._set_aside(key, "applying its events", error)
            return
        if alerts:
            self._after_commit(key, account, at)

    def _record_together(self, account: CustomerAccount, commits: Commits) -> bool:
        try:
            return account.record_together(commits)
        except EventError:
            return False  # nothing recorded: one by one, each without its bad events

    def _record(self, account: CustomerAccount, events: list[Event], at: int) -> None:
        try:
            account.record(events, at)
        except EventError as error:
            # Only possible if the ingress validated against older meters than ours (or a
            # meter was added after the checkpoint, before a restart): the events are in
            # the log, so skip the bad ones rather than lose the good, live and on replay
            # alike.
            bad = {int(p.where.strip("[]")) for p in error.problems}
            log.error("shard %d: %d committed events fail their meters", self.shard, len(bad))
            account.record([e for i, e in enumerate(events) if i not in bad], at)

    def _apply_waiting(self, key: AccountKey, commits: Commits) -> None:
        """What :class:`Accounts` calls before an account is read: give it its commits."""
        if key not in self.quarantined:  # set aside meanwhile: the log holds them
            self._apply(key[0], key[1], commits)

    async def _settle(self) -> None:
        """Apply every account's waiting commits, letting the event loop answer what waits
        every :data:`APPLY_SLICE_SECONDS` or so (each account's part whole)."""
        if self._settling is not None:
            self._settling.cancel()
            self._settling = None
        accounts = self.accounts
        clock = time.perf_counter
        yield_at = clock() + APPLY_SLICE_SECONDS
        while accounts.unapplied:
            accounts.settle(next(iter(accounts.unapplied)))
            if clock() >= yield_at:
                await asyncio.sleep(0)
                yield_at = clock() + APPLY_SLICE_SECONDS

    def _settle_later(self) -> None:
        """Apply everything waiting :data:`APPLY_WAIT_SECONDS` from now, unless something
        else has by then."""
        if self._settling is None and self.accounts.unapplied:
            loop = asyncio.get_running_loop()
            self._settling = loop.call_later(APPLY_WAIT_SECONDS, self._settle_soon)

    def _settle_soon(self) -> None:
        self._settling = None
        task = asyncio.get_running_loop().create_task(self._settle_now())
        self._tasks.append(task)
        task.add_done_callback(self._tasks.remove)

    async def _settle_now(self) -> None:
        async with self.applying():  # between commits: a commit's own settle may be running
            await self._settle()

    def _after_commit(self, key: AccountKey, account: CustomerAccount, at: int) -> None:
        """Once an account holds a commit's events (and grants): its alerts, and the shard's
        least headroom (see :meth:`room`)."""
        try:
            self._alerts(key[0], account, at)
            if self._headroom is not None:
                self._headroom = min(self._headroom, self._headroom_of(account))
        except Exception as error:
            if not self._fails_account(error):
                raise
            self._set_aside(key, "evaluating its alerts", error)

    def _flags(self, env: str, account: CustomerAccount, at: int) -> None:
        """Note what the account just flagged as unpriced usage: its records are written with
        the next checkpoint, and each group new in its period is announced once
        (``usage.unpriced``, by the next commit; the id makes a replay's announcement the
        same message)."""
        news = account.take_flags()
        if not news.touched:
            return
        customer = account.profile.customer_id
        if not self._recovering:
            self.stats.unpriced[env] += news.events
        self._flag_rows.update(((env, customer), start, key) for start, key in news.touched)
        for start, key in news.new:
            row = account.flag_row(start, key)
            self.outbox.append(
                {
                    "id": f"usage.unpriced:{record_id(env, row)}",
                    "env": env,
                    "type": UNPRICED_EVENT,
                    "payload": _unpriced_payload(row, account.profile),
                    "created_at": at,
                }
            )
        if news.new and self._wake is not None:
            self._wake.set()

    def _unpriced_rows(self) -> list[tuple[str, dict[str, Any]]]:
        """The records to write (and forget which moved)."""
        keys, self._flag_rows = self._flag_rows, set()
        rows = []
        for (env, customer), start, key in keys:
            account = self.accounts.get((env, customer))
            if account is not None and start in account.flagged:
                rows.append((env, account.flag_row(start, key)))
        return rows

    async def _write_unpriced(self) -> None:
        """Write the unpriced usage records that moved (kept for the next try if it fails)."""
        if not self._flag_rows:
            return
        pending = set(self._flag_rows)
        rows = self._unpriced_rows()
        try:
            await asyncio.get_running_loop().run_in_executor(
                self._db, self.unpriced_store.save, rows, self.clock()
            )
        except BaseException:  # also cancelled, likewise
            self._flag_rows |= pending
            raise

    def _alerts(self, env: str, account: CustomerAccount, at: int) -> None:
        """Evaluate the account's alerts on what was just applied; what fires is written by
        the next commit (and by any checkpoint before it)."""
        firings = account.evaluate_alerts(at, f"{env}:{account.profile.customer_id}")
        for firing in firings:
            self.outbox.append(
                {
                    "id": firing.id,
                    "env": env,
                    "type": firing.type,
                    "payload": dict(firing.payload),
                    "created_at": at,
                }
            )
        if firings and self._wake is not None:
            self._wake.set()

    # -- the group commit ----------------------------------------------------------------

    async def _submit(self, pending: _Pending) -> _Pending:
        """Queue ``pending`` for the next group commit; it, once that commit is applied."""
        if self.resharding:
            raise Resharding.now()
        self._ensure_tasks()
        assert self._wake is not None
        self._waiting += len(pending.parsed)
        self._queue.append(pending)
        self._wake.set()
        await pending.future
        return pending

    def _landed(self, batch: list[_Pending]) -> None:
        """A commit was applied (or failed): its events no longer wait."""
        self._waiting -= sum(len(p.parsed) for p in batch)
        self._committing = []
        self._sending = []

    async def _gather(self) -> None:
        """Under load, let a commit of events only wait a moment for more: up to
        ``gather_seconds``, or until :data:`GATHER_EVENTS` are queued.

        Every commit costs fixed work — a transaction, and each touched account folded and
        bounded once — so fuller commits cost less per event: at 8 requests of 1,000 events
        in flight, waiting up to 50 ms took ingest from ~15k to ~26k events/s and *lowered*
        the acknowledgement latency (docs/benchmarks.md). Only a shard that committed a
        moment ago with several requests waits (see :meth:`_busy`), and anything but events
        (a hold, a grant, a release, a settlement) commits at once."""
        assert self._wake is not None
        deadline = time.perf_counter() + self.gather_seconds
        seen = events = 0  # what came since the last look (many small requests: no rescans)
        while True:
            queued = self._queue
            for p in queued[seen:]:
                if not p.events or p.grants or p.new_holds or p.finished_holds:
                    return
                events += len(p.events)
            seen = len(queued)
            if events >= GATHER_EVENTS:
                return
            left = deadline - time.perf_counter()
            if left <= 0:
                return
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), left)

    def _busy(self) -> bool:
        """Do several producers look to be sending at once? The last commit was a moment
        ago and carried more than one request, or more than one is waiting now. A lone
        producer, which waits for each answer before it sends again, is never kept waiting."""
        if not self.gather_seconds:
            return False
        recent = time.perf_counter() - self._last_commit < 2 * self.gather_seconds
        return recent and (self._last_requests > 1 or len(self._queue) > 1)

    async def _committer(self) -> None:
        assert self._wake is not None
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            if self._busy():
                await self._gather()
            self._wake.clear()
            batch, self._queue = self._queue, []
            self._committing = batch
            messages, self.outbox = self.outbox, []
            if not batch and not messages:
                continue
            self._sending = messages
            events = [e for p in batch for e in p.events]
            grants = [g for p in batch for g in p.grants]
            new_holds = [h for p in batch for h in p.new_holds]
            finished = [h for p in batch for h in p.finished_holds]
            started = time.perf_counter()
            at = self.clock()
            try:
                result = await loop.run_in_executor(
                    self._db,
                    self.store.commit,
                    events,
                    self.position,
                    at,
                    grants,
                    new_holds,
                    finished,
                    messages,
                )
            except Exception as error:  # noqa: BLE001 — every waiter must hear about it
                log.error("shard %d: commit failed: %s", self.shard, error)
                self.outbox = messages + self.outbox  # written by the next commit
                for p in batch:
                    if p.placed_hold is not None:
                        key, hold_id = p.placed_hold
                        placed = self.accounts.get(key)
                        if placed is not None:
                            placed.release(hold_id)
                        self.hold_owner.pop(hold_id, None)
                    if not p.future.done():
                        p.future.set_exception(
                            StoreUnavailable("the event store is unavailable; retry shortly")
                        )
                self._landed(batch)
                continue
            self._last_commit = time.perf_counter()
            self._last_requests = sum(1 for p in batch if p.events)
            self.stats.commits += 1
            self.stats.commit_seconds.observe(self._last_commit - started)
            self.stats.batch_sizes.observe(len(events))
            try:
                async with self.applying():
                    await self._apply_commit(batch, result.skipped, at, result.skipped_grants)
            except Exception as error:  # noqa: BLE001 — the commit is durable: answer it
                # Each account's part is guarded on its own (see _apply_commit); this is the
                # last line, so that the committer itself never dies.
                log.exception("shard %d: applying a commit failed: %s", self.shard, error)
            self._landed(batch)
            self.position = result.position
            for p in batch:
                if not p.future.done():
                    # Not the pending itself: a future holding what holds it is a reference
                    # cycle, which only the cyclic collector frees (see _Pending).
                    p.future.set_result(None)

    async def _apply_commit(
        self,
        batch: list[_Pending],
        skipped: frozenset[int],
        at: int,
        skipped_grants: set[str] | frozenset[str] = frozenset(),
    ) -> None:
        """Apply a commit in memory: each account's new events in one go, then the grants
        (the order replay applies them in: grants are booked after the commit's events),
        then each touched account's alerts once. The batch that crosses a threshold is the
        commit.

        The commit is durable before this runs, so every request in it is answered as
        written, also when applying one account's part fails: that account is set aside (its
        part is in the log and counts once it is repaired) and the others go on.

        Every :data:`APPLY_SLICE_SECONDS` or so, between two accounts, it lets the event loop
        answer what waits (quota checks above all: a commit of thousands of events takes
        tens of ms). The caller holds :meth:`applying`, which keeps checkpoints out of the
        middle; each account's part is applied whole, and nothing of the commit is answered
        before all of it is applied."""
        fresh: dict[AccountKey, list[Event]] = {}
        make = tuple.__new__  # an Event without NamedTuple's Python-level __new__ (per event)
        first = 0  # the place of the request's first event in the commit's list
        for p in batch:
            env, new = p.env, 0
            for ordinal, (customer, event_id, etype, ts, props) in enumerate(p.parsed, first):
                # An id sent twice in one commit (two requests, or one request repeating
                # it) is new for the first sender only: the log skipped the others.
                if ordinal not in skipped:
                    key = (env, customer)
                    found = fresh.get(key)
                    if found is None:
                        found = fresh[key] = []
                    found.append(make(Event, (event_id, customer, etype, ts, props)))
                    new += 1
            first += len(p.parsed)
            p.result = {"ingested": new, "duplicates": len(p.parsed) - new}
            self.stats.ingested += new
            self.stats.duplicates += len(p.parsed) - new
        aside = self.quarantined
        accounts = self.accounts
        if not any(p.grants for p in batch):
            # Each account gets its events when it is next read, or a moment later: most
            # of an apply's cost is per call (see tallyray.actors.unapplied).
            for key, events in fresh.items():
                if key not in aside:  # set aside while this commit was written
                    accounts.hold(key, at, events)
            # They count against the caps while they wait (see room): never half the room.
            if accounts.events >= min(SETTLE_EVENTS, self._least_headroom() // 2):
                await self._settle()
            else:
                self._settle_later()
            return
        # Grants are booked after the events before them (the order replay applies them
        # in): everything waiting first, then this commit's events, the grants, and the
        # touched accounts' alerts once.
        await self._settle()
        clock = time.perf_counter
        yield_at = clock() + APPLY_SLICE_SECONDS
        for (env, customer), events in fresh.items():
            if (env, customer) not in aside:  # set aside while this commit was written
                self._apply(env, customer, [(at, events)], alerts=False)
            if clock() >= yield_at:
                await asyncio.sleep(0)
                yield_at = clock() + APPLY_SLICE_SECONDS
        for p in batch:
            for grant in p.grants:
                if grant["id"] in skipped_grants:  # it pays a purchase paid before
                    p.result = {"skipped": 1}
                else:
                    self._add_grant_row(grant)
        for key in fresh:
            account = self.accounts.get(key)
            if account is not None:  # else set aside meanwhile
                self._after_commit(key, account, at)
            if clock() >= yield_at:
                await asyncio.sleep(0)
                yield_at = clock() + APPLY_SLICE_SECONDS

    # -- resharding ----------------------------------------------------------------------

    async def drain(self) -> dict[str, int]:
        """The first step of a reshard: stop taking writes (:class:`Resharding`, 503), let
        every commit already queued land, stop the background tasks and checkpoint, so that
        the store holds everything this shard knows. Reads go on answering until the shard
        is stopped. Refused (:class:`Conflict`) while an account is set aside: its stored
        state is behind the log, and only its own shard replays it."""
        if self.quarantined:
            raise Conflict(
                f"shard {self.shard} has {len(self.quarantined)} accounts set aside; repair "
                "them and restart the shard before changing the shard count"
            )
        self.resharding = True
        while self._queue or self._committing:
            await asyncio.sleep(0.005)
        async with self.checkpoint_round():  # a round under way ends first
            for task in self._tasks:
                task.cancel()
        self._tasks, self._wake = [], None
        saved = await self.checkpoint()
        return {"shard": self.shard, "position": self.position, "saved": saved}

    def resume(self) -> None:
        """Take writes again (a reshard that did not go ahead)."""
        self.resharding = False

    # -- checkpoints and hold expiry -----------------------------------------------------

    async def _checkpointer(self) -> None:
        while True:
            await asyncio.sleep(self.checkpoint_seconds)
            async with self.checkpoint_round():
                try:
                    await self.close_due_periods()
                    await self.checkpoint()
                    await self.expire_holds()
                except Resharding:
                    pass  # draining: the drain takes the last checkpoint
                except Exception as error:  # noqa: BLE001 — try again next round
                    log.error("shard %d: checkpoint failed: %s", self.shard, error)

    async def checkpoint(self) -> int:
        """Write the dirty accounts and the position they include. Returns how many.

        An account whose snapshot fails is set aside and not written (its last stored state
        stays); while any account is set aside, the shard's own position stays at the point
        its stored state reaches, so a restart replays its data from there.

        The states and the position are taken between two commits' applies, never in the
        middle of one (:meth:`applying`). Taking the states lets the event loop answer what
        waits (quota checks above all) every :data:`APPLY_SLICE_SECONDS` or so: a shard of a
        few hundred busy accounts took 41–67 ms in one go under load (docs/benchmarks.md,
        "A checkpoint's states taken in slices"). Nothing that runs meanwhile changes what a
        snapshot holds: whatever applies events, grants or a new plan waits for
        :meth:`applying`, a check or a reservation only prices what was applied (as the
        snapshot does first) and holds are not in a snapshot (they are rows of their own)."""
        async with self.applying():
            await self._settle()  # the position includes them: so must the states
            await self._write_unpriced()  # first: a checkpoint never gets ahead of its records
            if not self.dirty:
                self.stats.checkpoint_at = self.clock()
                return 0
            keys, self.dirty = self.dirty, set()
            states: dict[AccountKey, Any] = {}
            clock = time.perf_counter
            yield_at = clock() + APPLY_SLICE_SECONDS
            for key in keys:
                account = self.accounts.get(key)
                if account is None:
                    continue
                try:
                    states[key] = account.snapshot()
                except Exception as error:
                    self._set_aside(key, "taking its checkpoint", error)
                if clock() >= yield_at:
                    await asyncio.sleep(0)
                    yield_at = clock() + APPLY_SLICE_SECONDS
            for key in [key for key in states if key in self.quarantined]:
                del states[key]  # set aside meanwhile (a check can): its stored state stays
            position, now = self.position, self.clock()
            head = min([position, *(aside.floor for aside in self.quarantined.values())])
            pending = [*self._sending, *self.outbox]  # written once: the ids are deterministic
        try:
            await asyncio.get_running_loop().run_in_executor(
                self._db,
                self.store.save_checkpoint,
                position,
                self.shard_count,
                states,
                now,
                pending,
                head,
            )
        except BaseException:  # also cancelled: the marks must outlive a write that never ran
            self.dirty |= {key for key in keys if key in self.accounts}
            raise
        self._saved_head = head
        self.stats.checkpoint_at = now
        return len(states)

    async def expire_holds(self) -> int:
        now = self.clock()
        finished: list[tuple[str, str]] = []
        async with self.applying():  # not between a commit's slices: see refresh_between
            await self._settle()  # in slices: what waits is applied before, as on replay
            for account in self.accounts.values():
                for hold_id in account.expire_holds(now):
                    finished.append((hold_id, "expired"))
                    self.hold_owner.pop(hold_id, None)
        if finished:
            loop = asyncio.get_running_loop()
            await self._submit(_Pending(loop.create_future(), "", finished_holds=finished))
        return len(finished)

    # -- closing periods -----------------------------------------------------------------

    async def close_due_periods(self) -> int:
        """Close, in every environment, the periods whose grace window has passed.

        Runs every checkpoint round, so finding nothing due must cost little: the accounts
        are looked at as they stand (``dict.values``: nothing waiting is applied for it, and
        nothing is priced), and :meth:`close_periods` — a commit, every account priced, a
        transaction — runs only for an environment with a period that ended by the cutoff.
        (Events still waiting for their account are under a second old; a period they open
        is not due before the next round.)"""
        if self.grace_seconds is None:
            return 0
        cutoff = self.clock() - self.grace_seconds * 1_000_000
        due: set[str] = set()
        for (env, _), account in dict.items(self.accounts):
            if env not in due and account.has_due(cutoff):
                due.add(env)
        closed = 0
        for env in sorted(due):
            closed += (await self.close_periods(env, cutoff))["closed"]
        return closed

    async def close_periods(self, env: str, cutoff: int) -> dict[str, Any]:
        """Close every period of ``env`` that ended by ``cutoff``: write each one's final
        usage, spend and burned credit with the log position, then forget it. From the
        moment this starts, events for those periods are refused (or rebooked).

        Answers how many periods were closed, the cutoff, and the customers of ``env`` whose
        accounts are set aside (``set_aside``): their periods are not written yet, so an
        invoice run must leave them out until they are repaired (their shard writes them on
        the restart that brings them back)."""
        if self.resharding:  # before the cutoff moves: nothing of the close may happen
            raise Resharding.now()
        self.cutoffs[env] = max(self.cutoffs.get(env, 0), cutoff)
        cutoff = self.cutoffs[env]
        # Let every commit queued before the cutoff moved land in memory first.
        loop = asyncio.get_running_loop()
        await self._submit(_Pending(loop.create_future(), env))
        await self._settle()  # what waits may flag usage of the periods closing
        await self._write_unpriced()  # while the periods' accounts still hold them
        rows, dropped = self._due_rows(env, cutoff)
        try:
            await loop.run_in_executor(
                self._db, self.billing.close_periods, self.shard, env, cutoff, rows, self.clock()
            )
        except Exception as error:
            log.error("shard %d: closing periods failed: %s", self.shard, error)
            raise StoreUnavailable("the store is unavailable; periods were not closed") from None
        for key, starts in dropped.items():
            account = self.accounts.get(key)
            if account is not None:
                account.drop_periods(starts)
                self.dirty.add(key)
                self._headroom = None
        aside = sorted(customer for e, customer in self.quarantined if e == env)
        return {"closed": len(rows), "cutoff": cutoff, "set_aside": aside}

    def _due_rows(
        self, env: str, cutoff: int
    ) -> tuple[list[dict[str, Any]], dict[AccountKey, list[int]]]:
        """The billing-period rows of ``env``'s periods that ended by ``cutoff``, and which
        periods of which account they are (an account that cannot say is set aside)."""
        rows: list[dict[str, Any]] = []
        dropped: dict[AccountKey, list[int]] = {}
        for key in [k for k in self.accounts if k[0] == env]:
            try:
                mine: list[dict[str, Any]] = [
                    {
                        "customer_id": key[1],
                        "start": period.start,
                        "end": period.end,
                        "usage": period.usage.to_json(),
                        "spend": format(period.spend, "f"),
                        "costs": [format(c, "f") for c in period.costs],
                        "burned": {g: format(a, "f") for g, a in period.burned.items()},
                        "position": self.position,
                        "segments": [s.to_json() for s in period.segments] or None,
                    }
                    for period in self.accounts[key].due_periods(cutoff)
                ]
            except Exception as error:
                if not self._fails_account(error):
                    raise
                self._set_aside(key, "closing its billing periods", error)
                continue
            if mine:
                rows += mine
                dropped[key] = [row["start"] for row in mine]
        return rows, dropped

    def _late(self, env: str, events: list[IncomingEvent], rebook: bool) -> list[IncomingEvent]:
        """Events for closed periods: :class:`EventError` naming them, or (``rebook``) the
        events with those moved to the first open period, their own time kept as
        ``$late_timestamp``."""
        cutoff = self.cutoffs.get(env)
        if cutoff is None or min(e[3] for e in events) >= cutoff:
            return events
        out: list[IncomingEvent] = []
        problems: list[Problem] = []
        for index, e in enumerate(events):
            customer, event_id, kind, ts, props = e
            if ts < cutoff:
                profile = self.accounts[(env, customer)].profile
                period = profile.period_of(ts)
                if period.end <= cutoff:
                    if not rebook:
                        problems.append(
                            Problem(
                                f"[{index}]",
                                f"timestamp {format_timestamp(ts)} falls in a closed billing "
                                f"period (ended {format_timestamp(period.end)}); it has been "
                                "invoiced and cannot change",
                            )
                        )
                        continue
                    opened = profile.period_of(cutoff).start
                    e = (customer, event_id, kind, opened, {**props, "$late_timestamp": ts})
            out.append(e)
        if problems:
            raise EventError.of(problems)
        return out

    # -- requests ------------------------------------------------------------------------

    async def ingest(
        self,
        env: str,
        events: list[IncomingEvent],
        rebook_late: bool = False,
    ) -> dict[str, Any]:
        """Make ``events`` durable, then count them: ``{"ingested", "duplicates", "room"}``
        (see :meth:`room`). Events are validated by the ingress; ones for a closed period
        are refused unless ``rebook_late``, and the request is refused whole, before it is
        written, if one of its accounts is set aside (503) or an event would pass a cap
        (:class:`EventError`)."""
        customers = {e[0] for e in events}
        self._refuse_set_aside(env, customers)
        self._load_accounts(env, customers)
        loop = asyncio.get_running_loop()
        events, stored = await self._without_stored_late(env, events, rebook_late)
        if not events:
            return {"ingested": 0, "duplicates": stored, "room": self.room()}
        events = self._late(env, events, rebook_late)
        self._check_limits(env, events)
        rows: list[EventRow] = [
            (env, c, i, typ, ts, orjson.dumps(props).decode()) for c, i, typ, ts, props in events
        ]
        pending = await self._submit(_Pending(loop.create_future(), env, rows, events))
        result = {**pending.result}
        result["duplicates"] = result.get("duplicates", 0) + stored
        return {**result, "room": self.room()}

    async def _without_stored_late(
        self, env: str, events: list[IncomingEvent], rebook_late: bool
    ) -> tuple[list[IncomingEvent], int]:
        """Events before the cutoff that the log holds already, taken out (and counted):
        a retry after an outage is answered with duplicates, never refused for events it
        stored the first time. (Rebooked events need no look-up: the log's own dedup
        counts them.)"""
        cutoff = self.cutoffs.get(env)
        if rebook_late or cutoff is None or all(e[3] >= cutoff for e in events):
            return events, 0
        late = [(e[0], e[1]) for e in events if e[3] < cutoff]
        loop = asyncio.get_running_loop()
        stored = await loop.run_in_executor(self._db, self.store.stored, env, late)
        if not stored:
            return events, 0
        kept = [e for e in events if (e[0], e[1]) not in stored]
        return kept, len(events) - len(kept)

    def admit(
        self, env: str, counts: Mapping[str, int], events: list[IncomingEvent] | None = None
    ) -> dict[str, Any]:
        """Before a request whose events span shards is written anywhere, when the ingress
        cannot tell from :meth:`room` that it fits (see :mod:`tallyray.serve.admission`):
        refuse it (503) if one of its accounts here is set aside, and say which of its
        customers here (with ``counts`` events each) are near a cap (``"near"``). Given
        those customers' ``events``, refuse the ones that would pass a cap
        (:class:`EventError` naming them by their index in ``events``)."""
        self._refuse_set_aside(env, counts)
        self._load_accounts(env, counts)
        near: list[str] = []
        if events is None:
            near = self._near(env, counts)
        else:
            self._refuse_over_limits(env, self._late(env, events, rebook=True), list(counts))
        return {"near": near, "room": self.room()}

    def room(self) -> tuple[int, int]:
        """``(log position, events)``: however its events fall, a request with at most that
        many events cannot take an account of this shard past a cap now — the least
        headroom of any account, less every event still waiting to be applied (0 while an
        account is set aside). The ingress keeps the latest (by position) and, while it is
        fresh and enough, sends a request spanning shards without asking first."""
        if self.quarantined:
            return self.position, 0
        waiting = self._waiting + self.accounts.events
        return self.position, max(0, self._least_headroom() - waiting)

    def _least_headroom(self) -> int:
        """The fewest events any account here could take before a cap may refuse one, as
        the accounts stand: events waiting for their account are counted by the callers
        (:meth:`room`, :meth:`_check_limits`), so none is applied for this (``dict.values``:
        applying everything waiting in one go would stall the event loop)."""
        if self._headroom is None:
            limits = self.limits
            self._headroom = min(
                (self._headroom_of(a) for a in dict.values(self.accounts)),
                default=min(limits.groups_per_meter, limits.unique_values),
            )
        return self._headroom

    def _headroom_of(self, account: CustomerAccount) -> int:
        groups, values = account.crowding()
        return min(self.limits.groups_per_meter - groups, self.limits.unique_values - values)

    def _check_limits(self, env: str, events: list[IncomingEvent]) -> None:
        """:class:`EventError` naming each event that would take a meter of its account past
        a cap, before anything is written. Far from the caps this costs one comparison for
        the whole request (:meth:`room`); nearer, one per account
        (:meth:`CustomerAccount.near_limits`); only accounts near a cap get their events
        looked at."""
        if len(events) + self._waiting + self.accounts.events <= self._least_headroom():
            return
        near = self._near(env, Counter(e[0] for e in events))
        if near:
            self._refuse_over_limits(env, events, near)

    def _near(self, env: str, counts: Mapping[str, int]) -> list[str]:
        """The customers whose accounts ``counts`` more events (and those waiting) could take
        past a cap."""
        limits, accounts, waiting = self.limits, self.accounts, self._waiting
        near = [
            customer
            for customer, count in counts.items()
            if accounts[(env, customer)].near_limits(count + waiting, limits)
        ]
        if not near or not waiting:
            return near
        # Every waiting event was counted against every account: count each account's own.
        mine: Counter[str] = Counter(
            e[0] for p in (*self._committing, *self._queue) if p.env == env for e in p.parsed
        )
        return [c for c in near if accounts[(env, c)].near_limits(counts[c] + mine[c], limits)]

    def _refuse_over_limits(
        self, env: str, events: list[IncomingEvent], customers: Sequence[str]
    ) -> None:
        problems: list[Problem] = []
        for customer in customers:
            spots = [i for i, e in enumerate(events) if e[0] == customer]
            waiting = [
                _event(e)
                for p in (*self._committing, *self._queue)
                if p.env == env
                for e in p.parsed
                if e[0] == customer
            ]
            problems += self.accounts[(env, customer)].over_limits(
                [_event(events[i]) for i in spots],
                self.limits,
                waiting,
                label=lambda j, spots=spots: f"[{spots[j]}]",  # type: ignore[misc]
            )
        if problems:
            problems.sort(key=lambda p: int(p.where.strip("[]")))
            raise EventError.of(problems)

    def check(self, env: str, customer_id: str, events: list[IncomingEvent]) -> QuotaAnswer:
        account = self.account(env, customer_id)
        try:
            return account.check([_event(e) for e in events], self.clock())
        except Exception as error:
            raise self._serving((env, customer_id), "checking its quota", error) from None

    def check_many(
        self, checks: Sequence[tuple[str, str, list[IncomingEvent]]]
    ) -> list[QuotaAnswer | TallyrayError]:
        """Several quota checks at once; each answers for itself (an unknown customer is
        that check's error, not the batch's)."""
        answers: list[QuotaAnswer | TallyrayError] = []
        for env, customer_id, events in checks:
            try:
                answers.append(self.check(env, customer_id, events))
            except TallyrayError as error:
                answers.append(error)
        return answers

    async def reserve(
        self,
        env: str,
        customer_id: str,
        hold_id: str,
        events: list[IncomingEvent],
        ttl_seconds: float,
    ) -> tuple[QuotaAnswer, int]:
        account = self.account(env, customer_id)
        now = self.clock()
        expires_at = now + int(ttl_seconds * 1_000_000)
        try:
            would_be = [_event(e) for e in events]
            cost = account.price(would_be)
            units = account.units_of(would_be)
            answer = account.place_hold(
                Hold(hold_id, max(cost, Decimal(0)), expires_at, units),
                now,
                self.limits.holds_per_customer,
                would_be,
            )
        except Exception as error:
            raise self._serving((env, customer_id), "placing a hold", error) from None
        if not answer.allowed:
            return answer, expires_at
        self.hold_owner[hold_id] = (env, customer_id)
        row = {
            "id": hold_id,
            "env": env,
            "customer_id": customer_id,
            "amount": str(max(cost, Decimal(0))),
            "units": _units_text(units),
            "expires_at": expires_at,
            "status": "active",
            "created_at": now,
        }
        loop = asyncio.get_running_loop()
        await self._submit(
            _Pending(
                loop.create_future(),
                env,
                new_holds=[row],
                placed_hold=((env, customer_id), hold_id),
            )
        )
        return answer, expires_at

    def _owned_hold(self, env: str, hold_id: str) -> AccountKey:
        key = self.hold_owner.get(hold_id)
        if key is None or key[0] != env:
            raise NotFound(f"no active reservation {hold_id!r} (expired, released or settled)")
        if key in self.quarantined:
            raise AccountQuarantined.of(key[1])
        return key

    async def _finished_hold(self, env: str, hold_id: str) -> dict[str, Any]:
        """A hold that is no longer active, as the store has it; :class:`NotFound` when
        this environment never had it."""
        loop = asyncio.get_running_loop()
        row = await loop.run_in_executor(self._db, self.store.hold, hold_id)
        if row is not None and row["env"] == env and row["shard"] != self.shard:
            raise NotOwner(
                f"reservation {hold_id} is served by another shard since the shard count "
                f"became {self.shard_count}; retry"
            )
        if row is None or row["env"] != env or row["status"] == "active":
            raise NotFound(f"no reservation {hold_id!r}")
        return row

    async def settle(self, env: str, hold_id: str, events: list[IncomingEvent]) -> dict[str, Any]:
        """Ingest the actual events and free the hold, in one commit.

        Safe to retry: a hold settled already answers what its settlement did (which of these
        events that commit stored, and what it released), and stores nothing again. A hold
        that expired, or was released, still gets its usage: the events are ingested (they
        happened), and nothing is released (``"hold": "expired"``)."""
        if hold_id not in self.hold_owner:
            return await self._settle_finished(env, hold_id, events)
        key = self._owned_hold(env, hold_id)
        wrong = [e[1] for e in events if e[0] != key[1]]
        if wrong:
            raise EventError.of(
                [
                    Problem(f"[{i}]", f"belongs to another customer than reservation {hold_id}")
                    for i, e in enumerate(events)
                    if e[0] != key[1]
                ]
            )
        events = self._late(env, events, rebook=True)
        self._check_limits(env, events)
        rows: list[EventRow] = [
            (env, c, i, typ, ts, orjson.dumps(props).decode()) for c, i, typ, ts, props in events
        ]
        account = self.accounts[key]
        cur = currency(account.profile.currency)
        hold = account.release(hold_id)
        self.hold_owner.pop(hold_id, None)
        loop = asyncio.get_running_loop()
        try:
            pending = await self._submit(
                _Pending(
                    loop.create_future(),
                    env,
                    rows,
                    events,
                    finished_holds=[(hold_id, "settled")],
                )
            )
        except StoreUnavailable:
            if hold is not None and key in self.accounts:  # nothing was written: it stands
                self.accounts[key].holds[hold_id] = hold
                self.hold_owner[hold_id] = key
            raise
        return {**pending.result, "released": _shown(cur, hold), "retried": False}

    async def _settle_finished(
        self, env: str, hold_id: str, events: list[IncomingEvent]
    ) -> dict[str, Any]:
        row = await self._finished_hold(env, hold_id)
        customer = row["customer_id"]
        wrong = [i for i, e in enumerate(events) if e[0] != customer]
        if wrong:
            raise EventError.of(
                [
                    Problem(f"[{i}]", f"belongs to another customer than reservation {hold_id}")
                    for i in wrong
                ]
            )
        if row["status"] == "settled":
            loop = asyncio.get_running_loop()
            stored = await loop.run_in_executor(
                self._db,
                self.store.stored_in_commit,
                env,
                customer,
                [e[1] for e in events],
                row["finished_at"] or 0,
            )
            cur = currency(self.account(env, customer).profile.currency)
            released = round_amount(Decimal(row["amount"]), cur, "ROUND_CEILING")
            return {
                "ingested": stored,
                "duplicates": len(events) - stored,
                "released": format(released, "f"),
                "retried": True,
            }
        result = (
            await self.ingest(env, events, rebook_late=True)
            if events
            else {
                "ingested": 0,
                "duplicates": 0,
            }
        )
        return {**result, "released": "0", "retried": False, "hold": row["status"]}

    async def release(self, env: str, hold_id: str) -> dict[str, Any]:
        """Free a hold. Safe to retry: a hold released already answers what the release
        did; one that expired answers so; one that was settled is a conflict (its hold was
        freed by the settlement)."""
        if hold_id not in self.hold_owner:
            row = await self._finished_hold(env, hold_id)
            if row["status"] == "settled":
                raise Conflict(
                    f"reservation {hold_id} was settled; its hold was freed by the settlement"
                )
            cur = currency(self.account(env, row["customer_id"]).profile.currency)
            amount = round_amount(Decimal(row["amount"]), cur, "ROUND_CEILING")
            return {
                "released": format(amount, "f") if row["status"] == "released" else "0",
                "hold": row["status"],
                "retried": row["status"] == "released",
            }
        key = self._owned_hold(env, hold_id)
        account = self.accounts[key]
        cur = currency(account.profile.currency)
        hold = account.release(hold_id)
        self.hold_owner.pop(hold_id, None)
        loop = asyncio.get_running_loop()
        try:
            await self._submit(
                _Pending(loop.create_future(), env, finished_holds=[(hold_id, "released")])
            )
        except StoreUnavailable:
            if hold is not None and key in self.accounts:
                self.accounts[key].holds[hold_id] = hold
                self.hold_owner[hold_id] = key
            raise
        return {"released": _shown(cur, hold), "hold": "released", "retried": False}

    async def add_grant(
        self, env: str, customer_id: str, grant: dict[str, Any]
    ) -> dict[str, Any] | None:
        """Book a credit grant. A grant whose id the account already has (a retried request
        with the same idempotency key) is not booked again: its stored terms are returned
        (``None`` when it was booked now). A grant that pays a credit purchase
        (``grant["purchase"]``) is booked only with the purchase's move to ``paid``, in the
        same transaction (:func:`tallyray.storage.purchases.mark_paid`): when the purchase
        was paid already, nothing is booked and a non-``None`` answer says so."""
        account = self.account(env, customer_id)
        if grant["currency"] != account.profile.currency:
            raise Conflict(
                f"customer {customer_id!r} is billed in {account.profile.currency}; "
                f"a grant in {grant['currency']} cannot pay for its usage"
            )
        if account.has_grant(grant["id"]):
            known = next(g for g in account.ledger.grants if g.id == grant["id"])
            return {
                "amount": format(known.amount, "f"),
                "currency": known.currency,
                "priority": known.priority,
                "expires_at": known.expires_at,
                "created_at": known.created_at,
            }
        if grant["id"] in self._booking and grant.get("purchase") is not None:
            # Two deliveries of one purchase's webhook at once: the second waits for the
            # first (the store books the purchase once whatever happens).
            for _ in range(500):
                await asyncio.sleep(0.01)
                if grant["id"] not in self._booking:
                    break
            return {"booked_by": "another delivery"}
        if grant["id"] in self._booking:
            raise Conflict("a grant with this Idempotency-Key is being booked; retry shortly")
        self._booking.add(grant["id"])
        try:
            loop = asyncio.get_running_loop()
            done = await self._submit(_Pending(loop.create_future(), env, grants=[grant]))
        finally:
            self._booking.discard(grant["id"])
        if done.result.get("skipped"):
            return {"booked_by": "an earlier delivery"}
        return None

    def balance(self, env: str, customer_id: str) -> dict[str, Any]:
        account = self.account(env, customer_id)
        try:
            return account.balance(self.clock())
        except Exception as error:
            raise self._serving((env, customer_id), "reading its balance", error) from None

    def refresh(self, env: str, customer_ids: Sequence[str] | None = None) -> None:
        """The catalog changed: reload the environment's meters and plans, and the named
        customers' records (all of the environment's accounts when none are named).

        Accounts set aside are left as they are (the restart that brings one back reads its
        records afresh). A customer whose new profile cannot be built (no exchange rate to
        its plan's currency) keeps its old one, and the first such error is raised once the
        others are refreshed."""
        self.envs[env] = self.catalog.env_catalog(env)
        meters: MeterSet = self.envs[env].meters
        keys = [k for k in self.accounts if k[0] == env]
        if customer_ids is not None:
            keys = [(env, c) for c in customer_ids if (env, c) in self.accounts]
        records = self._records(env, [k[1] for k in keys])
        rules = self._own_rules(env, [k[1] for k in keys])
        now = self.clock()
        for key, held in self.accounts.items():
            if key[0] == env:
                held.set_meters(meters)
        self._headroom = None
        refused: TallyrayError | None = None
        for key in keys:
            record = records.get(key[1])
            account = self.accounts.get(key)
            if record is None or account is None:
                continue
            try:
                profile = self._profile(record)
            except TallyrayError as error:
                refused = refused or error
                continue
            try:
                account.rebook(account.set_profile(profile), now)
                account.rules = self._rules(record, rules.get(key[1], []))
                self.dirty.add(key)
                self._alerts(env, account, now)
            except Exception as error:
                self._set_aside(key, "taking its new profile", error)
        if refused is not None:
            raise refused

    async def refresh_between(self, env: str, customer_ids: Sequence[str] | None = None) -> None:
        """:meth:`refresh` between two commits' applies, never in the middle of one: a new
        profile re-rates an account and evaluates its alerts, which a commit does for its
        accounts at its end, after its grants (:meth:`_apply_commit`); keeping the two apart
        keeps every account's history in the order replay gives it. The same for hold
        expiry (:meth:`expire_holds`)."""
        async with self.applying():
            self.refresh(env, customer_ids)

    def status(self) -> dict[str, Any]:
        stats = self.stats
        return {
            "shard": self.shard,
            "position": self.position,
            "accounts": len(self.accounts),
            "commits": stats.commits,
            "ingested": stats.ingested,
            "duplicates": stats.duplicates,
            "unpriced": dict(stats.unpriced),
            "applies": {way: stats.applies[way] for way in APPLY_WAYS},
            "applied_commits": {way: stats.applied_commits[way] for way in APPLY_WAYS},
            "commit_seconds": stats.commit_seconds.to_json(),
            "batch_sizes": stats.batch_sizes.to_json(),
            "checkpoint_age_seconds": (self.clock() - stats.checkpoint_at) / 1e6
            if stats.checkpoint_at
            else None,
            "quarantined": len(self.quarantined),
            "quarantined_accounts": [
                {"env": env, "customer_id": customer, "reason": aside.reason}
                for (env, customer), aside in list(self.quarantined.items())[:SHOWN_SET_ASIDE]
            ],
        }


def _unpriced_payload(row: Mapping[str, Any], profile: Profile) -> dict[str, Any]:
    """The ``usage.unpriced`` webhook's data: which customer, plan, meter and group, in which
    period, and what the plan does with such usage."""
    return {
        "customer_id": row["customer_id"],
        "plan": row["plan_key"],
        "plan_version": row["plan_version"],
        "unpriced": profile.plan.unpriced if profile.plan else None,
        "meter": row["meter"],
        "groups": row["groups"],
        "period": {
            "start": format_timestamp(row["period_start"]),
            "end": format_timestamp(row["period_end"]),
        },
    }


def _shown(cur: Currency, hold: Hold | None) -> str:
    """A hold's amount as the API shows it: in minor units, rounded up (as reserved)."""
    return format(round_amount(hold.amount if hold else Decimal(0), cur, "ROUND_CEILING"), "f")


def _units_text(units: Mapping[str, Decimal]) -> str | None:
    """A hold's units as the holds table keeps them (JSON text; ``None``: none held)."""
    if not units:
        return None
    return orjson.dumps({key: format(v.normalize(), "f") for key, v in units.items()}).decode()


def _held_units(row: Mapping[str, Any]) -> dict[str, Decimal]:
    """A stored hold's units (holds stored before unit limits have none)."""
    text = row.get("units")
    if not text:
        return {}
    return {key: Decimal(v) for key, v in orjson.loads(text).items()}


def _event(e: IncomingEvent) -> Event:
    customer, event_id, etype, ts, props = e
    return Event(event_id, customer, etype, ts, props)


def _grant(row: dict[str, Any]) -> CreditGrant:
    amount = Decimal(row["amount"])
    return CreditGrant(
        id=row["id"],
        amount=amount,
        currency=row["currency"],
        remaining=amount,
        priority=row["priority"],
        expires_at=row["expires_at"],
        created_at=row["created_at"],
    )


class ShardActor:
    """The Ray actor: one per shard, named ``shard-<i>`` in the ``tallyray`` namespace.

    Created by :mod:`tallyray.cluster` with ``max_restarts=-1``; every method delegates to
    :class:`ShardCore`, which recovers from the checkpoint and the log in its constructor.
    """

    # Ray runs an async actor's ``async def __init__`` on the event loop that serves its
    # methods (Ray Serve's own actors rely on it); type checkers want ``__init__`` to return
    # None, hence the ignore.
    async def __init__(  # type: ignore[misc]
        self,
        shard: int,
        shard_count: int,
        database_url: str | None,
        checkpoint_seconds: float,
        grace_seconds: int | None = None,
        gather_seconds: float = 0.0,
        clock_offset_us: int = 0,
        limits: Limits | None = None,
        secrets_file: str | None = None,
        line: LineOptions | None = None,
    ) -> None:
        configure_logging()
        self.line_options = line or LineOptions()
        self.core = ShardCore(
            shard,
            shard_count,
            database_url,
            checkpoint_seconds,
            grace_seconds,
            gather_seconds,
            clock_for(clock_offset_us),
            limits,
            secrets_file,
        )
        self._line: ShardLineServer | None = None
        freeze_startup_heap()
        # Start the committer and the checkpointer now, on the loop that will serve, not on
        # the first write: a restarted shard that only gets reads must still write what its
        # replay fired (alerts, auto-recharge crossings), checkpoint and expire holds. (Not
        # by calling ``ready`` on itself: in a restarted actor Ray fails that call with "the
        # actor is restarting", since the restart it sees is its own.)
        self.core._ensure_tasks()

    async def ready(self) -> int:
        self.core._ensure_tasks()
        return self.core.position

    async def ingest(
        self, env: str, events: list[IncomingEvent], rebook_late: bool = False
    ) -> dict[str, Any]:
        return await self.core.ingest(env, events, rebook_late)

    async def close_periods(self, env: str, cutoff: int) -> dict[str, Any]:
        return await self.core.close_periods(env, cutoff)

    async def check(self, env: str, customer_id: str, events: list[IncomingEvent]) -> QuotaAnswer:
        return self.core.check(env, customer_id, events)

    async def check_many(
        self, checks: list[tuple[str, str, list[IncomingEvent]]]
    ) -> list[QuotaAnswer | TallyrayError]:
        return self.core.check_many(checks)

    async def admit(
        self, env: str, counts: dict[str, int], events: list[IncomingEvent] | None = None
    ) -> dict[str, Any]:
        return self.core.admit(env, counts, events)

    async def line_endpoint(self) -> Endpoint:
        """Where this shard's line listens (see :mod:`tallyray.actors.shard_line`): quota
        checks, ingest and its admission, the calls that are safe to repeat."""
        if self._line is None:
            import ray  # the actor runs under Ray; the module stays importable without it
            from ray.util import get_node_ip_address

            node = ray.get_runtime_context().get_node_id()
            options = self.line_options
            self._line = ShardLineServer(
                node,
                {
                    "check_many": self.core.check_many,
                    "ingest": self.core.ingest,
                    "admit": self.core.admit,
                },
                # the address Ray reports for this node: where other nodes reach it
                host=get_node_ip_address() if options.remote else None,  # type: ignore[no-untyped-call]
                tls=options.tls,
            )
        return await self._line.endpoint()

    async def reserve(
        self,
        env: str,
        customer_id: str,
        hold_id: str,
        events: list[IncomingEvent],
        ttl_seconds: float,
    ) -> tuple[QuotaAnswer, int]:
        return await self.core.reserve(env, customer_id, hold_id, events, ttl_seconds)

    async def settle(self, env: str, hold_id: str, events: list[IncomingEvent]) -> dict[str, Any]:
        return await self.core.settle(env, hold_id, events)

    async def release(self, env: str, hold_id: str) -> dict[str, Any]:
        return await self.core.release(env, hold_id)

    async def add_grant(
        self, env: str, customer_id: str, grant: dict[str, Any]
    ) -> dict[str, Any] | None:
        return await self.core.add_grant(env, customer_id, grant)

    async def balance(self, env: str, customer_id: str) -> dict[str, Any]:
        return self.core.balance(env, customer_id)

    async def refresh(self, env: str, customer_ids: list[str] | None = None) -> None:
        await self.core.refresh_between(env, customer_ids)

    async def checkpoint(self) -> int:
        return await self.core.checkpoint()

    async def drain(self) -> dict[str, int]:
        return await self.core.drain()

    async def resume(self) -> None:
        self.core.resume()

    async def status(self) -> dict[str, Any]:
        return self.core.status()
