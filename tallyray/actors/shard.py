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
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import orjson

from tallyray.actors.account import CustomerAccount, Hold, Profile, QuotaAnswer
from tallyray.actors.alerting import AlertRule, plan_rules
from tallyray.actors.shard_line import Endpoint, ShardLineServer
from tallyray.clock import Clock, clock_for, system_clock
from tallyray.errors import (
    Conflict,
    EventError,
    NotFound,
    Problem,
    StoreUnavailable,
    TallyrayError,
)
from tallyray.heap import freeze_startup_heap
from tallyray.logs import configure_logging
from tallyray.metrics import BATCH_BUCKETS, LATENCY_BUCKETS, BucketCounts
from tallyray.pricing.credits import CreditGrant
from tallyray.pricing.events import Event, format_timestamp
from tallyray.pricing.meters import MeterSet
from tallyray.pricing.money import currency, round_amount
from tallyray.storage.alerts import AlertStore
from tallyray.storage.billing import BillingStore
from tallyray.storage.catalog import Catalog, CustomerRecord, EnvCatalog
from tallyray.storage.db import make_engine
from tallyray.storage.eventlog import EventRow, ShardStore

log = logging.getLogger("tallyray.shard")

IncomingEvent = tuple[str, str, str, int, dict[str, Any]]
"""(customer_id, event id, type, ts, properties): what the ingress sends per event."""

AccountKey = tuple[str, str]
"""(env, customer_id)."""


GATHER_EVENTS = 4000
"""A commit of events stops waiting for more once it holds this many."""


@dataclass
class _Pending:
    """One request waiting for the next group commit."""

    future: asyncio.Future[Any]
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


class ShardCore:
    """The shard's logic, independent of Ray so it can be driven directly in tests."""

    def __init__(
        self,
        shard: int,
        shard_count: int,
        database_url: str,
        checkpoint_seconds: float = 5.0,
        grace_seconds: int | None = None,
        gather_seconds: float = 0.0,
        clock: Clock = system_clock,
    ) -> None:
        self.shard = shard
        self.clock = clock
        self.shard_count = shard_count
        self.checkpoint_seconds = checkpoint_seconds
        self.grace_seconds = grace_seconds
        """With a grace window, periods close by themselves once it has passed."""
        self.gather_seconds = gather_seconds
        """How long a commit of events may wait for more under load (0: never)."""
        self._last_commit = float("-inf")
        self._last_requests = 0
        self.engine = make_engine(database_url)
        self.store = ShardStore(self.engine, shard)
        self.catalog = Catalog(self.engine)
        self.billing = BillingStore(self.engine)
        self.alert_store = AlertStore(self.engine)
        self.outbox: list[dict[str, Any]] = []
        self._booking: set[str] = set()
        """Ids of grants waiting for their commit (a retry must not book one twice)."""
        """Alerts fired since the last commit: the next commit writes them."""
        self.cutoffs: dict[str, int] = {}
        """Per environment: periods that ended by this moment are closed."""
        self.envs: dict[str, EnvCatalog] = {}
        self.accounts: dict[AccountKey, CustomerAccount] = {}
        self.hold_owner: dict[str, AccountKey] = {}
        self.dirty: set[AccountKey] = set()
        self.position = 0
        self.stats = ShardStats()
        self._queue: list[_Pending] = []
        self._wake: asyncio.Event | None = None
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

    def env(self, env: str) -> EnvCatalog:
        found = self.envs.get(env)
        if found is None:
            found = self.envs[env] = self.catalog.env_catalog(env)
        return found

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
        )

    def _load_accounts(self, env: str, customer_ids: Iterable[str]) -> None:
        """Create accounts for customers seen for the first time (reads the catalog)."""
        missing = [c for c in set(customer_ids) if (env, c) not in self.accounts]
        if not missing:
            return
        records = self.catalog.customers(env, missing)
        rules = self.alert_store.rules(env, missing)
        meters = self.env(env).meters
        for customer_id in missing:
            record = records.get(customer_id)
            if record is None:
                raise NotFound(f"no customer {customer_id!r}")
            account = CustomerAccount(self._profile(record), meters)
            account.rules = self._rules(record, rules.get(customer_id, []))
            self.accounts[(env, customer_id)] = account

    def _rules(self, record: CustomerRecord, own: list[AlertRule]) -> tuple[AlertRule, ...]:
        """The customer's own alert rules and its plan's defaults."""
        if record.plan_key is None:
            return tuple(own)
        raw = self.env(record.env).raw_plans.get((record.plan_key, record.plan_version or 0), {})
        return (*own, *plan_rules(record.plan_key, raw.get("alerts", [])))

    def account(self, env: str, customer_id: str) -> CustomerAccount:
        found = self.accounts.get((env, customer_id))
        if found is None:
            self._load_accounts(env, [customer_id])
            found = self.accounts[(env, customer_id)]
        return found

    # -- recovery ------------------------------------------------------------------------

    def recover(self) -> None:
        started = time.perf_counter()
        position, count, states = self.store.load_checkpoint()
        if count is not None and count != self.shard_count:
            raise RuntimeError(
                f"shard {self.shard}: the checkpoint was taken with {count} shards, not "
                f"{self.shard_count}; start Tallyray with TALLYRAY_SHARDS={count}"
            )
        now = self.clock()
        by_env: dict[str, list[str]] = defaultdict(list)
        for env, customer in states:
            by_env[env].append(customer)
        for env, customers in by_env.items():
            records = self.catalog.customers(env, customers)
            rules = self.alert_store.rules(env, customers)
            for customer in customers:
                record = records.get(customer)
                if record is None:
                    continue
                account = CustomerAccount.restore(
                    states[(env, customer)], self._profile(record), self.env(env).meters, now
                )
                account.rules = self._rules(record, rules.get(customer, []))
                self.accounts[(env, customer)] = account
        # Grants booked at or before the checkpoint are in it, unless their commit raced
        # the snapshot; add those (idempotently) before replaying what came after.
        for grant in self.store.grants_at_or_before(position):
            self._add_grant_row(grant)
        later = self.store.grants_after(position)
        replayed = 0
        self.position = position
        for rows in self.store.replay(position):
            segment: list[Any] = []
            for row in rows:
                if later and later[0]["position"] < row.seq:
                    self._apply_rows(segment)
                    segment = []
                    while later and later[0]["position"] < row.seq:
                        self._add_grant_row(later.pop(0))
                segment.append(row)
            self._apply_rows(segment)
            replayed += len(rows)
            self.position = rows[-1].seq
        for grant in later:
            self._add_grant_row(grant)
        self.position = max(self.position, position)
        # Periods closed after the checkpoint came back with the replay: they are written
        # out, so drop them again.
        self.cutoffs = self.billing.cutoffs(self.shard)
        for (env, _), account in self.accounts.items():
            cutoff = self.cutoffs.get(env)
            if cutoff is not None:
                account.drop_periods([p.start for p in account.due_periods(cutoff)])
        for hold in self.store.active_holds():
            key = (hold["env"], hold["customer_id"])
            self._load_accounts(key[0], [key[1]])
            self.accounts[key].holds[hold["id"]] = Hold(
                hold["id"], Decimal(hold["amount"]), hold["expires_at"]
            )
            self.hold_owner[hold["id"]] = key
        self.dirty.update(self.accounts)
        log.info(
            "shard %d recovered at position %d: %d accounts, %d events replayed in %.2fs",
            self.shard,
            self.position,
            len(self.accounts),
            replayed,
            time.perf_counter() - started,
        )

    def _add_grant_row(self, row: dict[str, Any]) -> None:
        account = self.account(row["env"], row["customer_id"])
        account.add_grant(_grant(row))
        self._alerts(row["env"], account, row["created_at"])  # a top-up may recover alerts

    def _apply_rows(self, rows: Sequence[Any]) -> None:
        """Apply replayed log rows: per commit (same ``received_at``) and per customer."""
        groups: dict[tuple[int, str, str], list[Event]] = defaultdict(list)
        for row in rows:
            groups[(row.received_at, row.env, row.customer_id)].append(
                Event(row.event_id, row.customer_id, row.type, row.ts, orjson.loads(row.properties))
            )
        for (received_at, env, customer), events in groups.items():
            self._apply(env, customer, events, received_at)

    def _apply(
        self, env: str, customer_id: str, events: list[Event], at: int, alerts: bool = True
    ) -> None:
        account = self.account(env, customer_id)
        try:
            account.record(events, at)
        except EventError as error:
            # Only possible if the ingress validated against older meters than ours; the
            # events are in the log, so skip the bad ones rather than lose the good.
            bad = {int(p.where.strip("[]")) for p in error.problems}
            log.error("shard %d: %d committed events fail their meters", self.shard, len(bad))
            account.record([e for i, e in enumerate(events) if i not in bad], at)
        self.dirty.add((env, customer_id))
        if alerts:
            self._alerts(env, account, at)

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

    async def _submit(self, pending: _Pending) -> Any:
        self._ensure_tasks()
        assert self._wake is not None
        self._queue.append(pending)
        self._wake.set()
        return await pending.future

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
        while True:
            queued = self._queue
            if any(not p.events or p.grants or p.new_holds or p.finished_holds for p in queued):
                return
            if sum(len(p.events) for p in queued) >= GATHER_EVENTS:
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
            messages, self.outbox = self.outbox, []
            if not batch and not messages:
                continue
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
                        self.accounts[key].release(hold_id)
                        self.hold_owner.pop(hold_id, None)
                    if not p.future.done():
                        p.future.set_exception(
                            StoreUnavailable("the event store is unavailable; retry shortly")
                        )
                continue
            self._last_commit = time.perf_counter()
            self._last_requests = sum(1 for p in batch if p.events)
            self.stats.commits += 1
            self.stats.commit_seconds.observe(self._last_commit - started)
            self.stats.batch_sizes.observe(len(events))
            self._apply_commit(batch, result.inserted, at)
            self.position = result.position
            for p in batch:
                if not p.future.done():
                    p.future.set_result(p)

    def _apply_commit(
        self, batch: list[_Pending], inserted: dict[tuple[str, str, str], int], at: int
    ) -> None:
        """Apply a commit in memory: each account's new events in one go, then the grants
        (the order replay applies them in: grants are booked after the commit's events),
        then each touched account's alerts once. The batch that crosses a threshold is the
        commit."""
        fresh: dict[AccountKey, list[Event]] = {}
        everything_new = len(inserted) == sum(len(p.parsed) for p in batch)
        for p in batch:
            env, new = p.env, 0
            for customer, event_id, etype, ts, props in p.parsed:
                # pop: an id sent twice in one commit (two requests, or one request
                # repeating it) is new for the first sender only.
                if everything_new or inserted.pop((env, customer, event_id), None) is not None:
                    key = (env, customer)
                    found = fresh.get(key)
                    if found is None:
                        found = fresh[key] = []
                    found.append(Event(event_id, customer, etype, ts, props))
                    new += 1
            p.result = {"ingested": new, "duplicates": len(p.parsed) - new}
            self.stats.ingested += new
            self.stats.duplicates += len(p.parsed) - new
        for (env, customer), events in fresh.items():
            self._apply(env, customer, events, at, alerts=False)
        for p in batch:
            for grant in p.grants:
                self._add_grant_row(grant)
        for env, customer in fresh:
            self._alerts(env, self.accounts[(env, customer)], at)

    # -- checkpoints and hold expiry -----------------------------------------------------

    async def _checkpointer(self) -> None:
        while True:
            await asyncio.sleep(self.checkpoint_seconds)
            try:
                await self.close_due_periods()
                await self.checkpoint()
                await self.expire_holds()
            except Exception as error:  # noqa: BLE001 — try again next round
                log.error("shard %d: checkpoint failed: %s", self.shard, error)

    async def checkpoint(self) -> int:
        """Write the dirty accounts and the position they include. Returns how many."""
        if not self.dirty:
            self.stats.checkpoint_at = self.clock()
            return 0
        keys, self.dirty = self.dirty, set()
        states = {k: self.accounts[k].snapshot() for k in keys if k in self.accounts}
        position, now = self.position, self.clock()
        pending = list(self.outbox)
        try:
            await asyncio.get_running_loop().run_in_executor(
                self._db,
                self.store.save_checkpoint,
                position,
                self.shard_count,
                states,
                now,
                pending,
            )
        except Exception:
            self.dirty |= keys
            raise
        self.stats.checkpoint_at = now
        return len(states)

    async def expire_holds(self) -> int:
        now = self.clock()
        finished: list[tuple[str, str]] = []
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
        """Close, in every environment, the periods whose grace window has passed."""
        if self.grace_seconds is None:
            return 0
        cutoff = self.clock() - self.grace_seconds * 1_000_000
        closed = 0
        for env in {key[0] for key in self.accounts}:
            if any(p for a in self._accounts_of(env) for p in a.periods if p < cutoff):
                closed += (await self.close_periods(env, cutoff))["closed"]
        return closed

    def _accounts_of(self, env: str) -> list[CustomerAccount]:
        return [a for key, a in self.accounts.items() if key[0] == env]

    async def close_periods(self, env: str, cutoff: int) -> dict[str, int]:
        """Close every period of ``env`` that ended by ``cutoff``: write each one's final
        usage, spend and burned credit with the log position, then forget it. From the
        moment this starts, events for those periods are refused (or rebooked)."""
        self.cutoffs[env] = max(self.cutoffs.get(env, 0), cutoff)
        cutoff = self.cutoffs[env]
        # Let every commit queued before the cutoff moved land in memory first.
        loop = asyncio.get_running_loop()
        await self._submit(_Pending(loop.create_future(), env))
        keys = [key for key in self.accounts if key[0] == env]
        rows: list[dict[str, Any]] = []
        dropped: dict[AccountKey, list[int]] = {}
        for key in keys:
            for period in self.accounts[key].due_periods(cutoff):
                rows.append(
                    {
                        "customer_id": key[1],
                        "start": period.start,
                        "end": period.end,
                        "usage": period.usage.to_json(),
                        "spend": format(period.spend, "f"),
                        "costs": [format(c, "f") for c in period.costs],
                        "burned": {g: format(a, "f") for g, a in period.burned.items()},
                        "position": self.position,
                    }
                )
                dropped.setdefault(key, []).append(period.start)
        try:
            await loop.run_in_executor(
                self._db, self.billing.close_periods, self.shard, env, cutoff, rows, self.clock()
            )
        except Exception as error:
            log.error("shard %d: closing periods failed: %s", self.shard, error)
            raise StoreUnavailable("the store is unavailable; periods were not closed") from None
        for key, starts in dropped.items():
            self.accounts[key].drop_periods(starts)
            self.dirty.add(key)
        return {"closed": len(rows), "cutoff": cutoff}

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
    ) -> dict[str, int]:
        """Make ``events`` durable, then count them. Events are validated by the ingress;
        ones for a closed period are refused unless ``rebook_late``."""
        self._load_accounts(env, {e[0] for e in events})
        events = self._late(env, events, rebook_late)
        rows: list[EventRow] = [
            (env, c, i, typ, ts, orjson.dumps(props).decode()) for c, i, typ, ts, props in events
        ]
        loop = asyncio.get_running_loop()
        pending = await self._submit(_Pending(loop.create_future(), env, rows, events))
        return pending.result  # type: ignore[no-any-return]

    def check(self, env: str, customer_id: str, events: list[IncomingEvent]) -> QuotaAnswer:
        account = self.account(env, customer_id)
        return account.check([_event(e) for e in events], self.clock())

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
        cost = account.price([_event(e) for e in events])
        expires_at = now + int(ttl_seconds * 1_000_000)
        answer = account.place_hold(Hold(hold_id, max(cost, Decimal(0)), expires_at), now)
        if not answer.allowed:
            return answer, expires_at
        self.hold_owner[hold_id] = (env, customer_id)
        row = {
            "id": hold_id,
            "env": env,
            "customer_id": customer_id,
            "amount": str(max(cost, Decimal(0))),
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
        return key

    async def settle(self, env: str, hold_id: str, events: list[IncomingEvent]) -> dict[str, Any]:
        """Ingest the actual events and free the hold, in one commit."""
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
        rows: list[EventRow] = [
            (env, c, i, typ, ts, orjson.dumps(props).decode()) for c, i, typ, ts, props in events
        ]
        hold = self.accounts[key].release(hold_id)
        self.hold_owner.pop(hold_id, None)
        loop = asyncio.get_running_loop()
        try:
            pending = await self._submit(
                _Pending(
                    loop.create_future(), env, rows, events, finished_holds=[(hold_id, "settled")]
                )
            )
        except StoreUnavailable:
            if hold is not None:  # nothing was written: the hold stands
                self.accounts[key].holds[hold_id] = hold
                self.hold_owner[hold_id] = key
            raise
        return {**pending.result, "released": self._shown(key, hold)}

    def _shown(self, key: AccountKey, hold: Hold | None) -> str:
        """A hold's amount as the API shows it: in minor units, rounded up (as reserved)."""
        cur = currency(self.accounts[key].profile.currency)
        return format(round_amount(hold.amount if hold else Decimal(0), cur, "ROUND_CEILING"), "f")

    async def release(self, env: str, hold_id: str) -> str:
        key = self._owned_hold(env, hold_id)
        hold = self.accounts[key].release(hold_id)
        self.hold_owner.pop(hold_id, None)
        loop = asyncio.get_running_loop()
        try:
            await self._submit(
                _Pending(loop.create_future(), env, finished_holds=[(hold_id, "released")])
            )
        except StoreUnavailable:
            if hold is not None:
                self.accounts[key].holds[hold_id] = hold
                self.hold_owner[hold_id] = key
            raise
        return self._shown(key, hold)

    async def add_grant(
        self, env: str, customer_id: str, grant: dict[str, Any]
    ) -> dict[str, Any] | None:
        """Book a credit grant. A grant whose id the account already has (a retried request
        with the same idempotency key) is not booked again: its stored terms are returned
        (``None`` when it was booked now)."""
        account = self.account(env, customer_id)
        if grant["currency"] != account.profile.currency:
            raise Conflict(
                f"customer {customer_id!r} is billed in {account.profile.currency}; "
                f"a grant in {grant['currency']} cannot pay for its usage"
            )
        for known in account.ledger.grants:
            if known.id == grant["id"]:
                return {
                    "amount": format(known.amount, "f"),
                    "currency": known.currency,
                    "priority": known.priority,
                    "expires_at": known.expires_at,
                    "created_at": known.created_at,
                }
        if grant["id"] in self._booking:
            raise Conflict("a grant with this Idempotency-Key is being booked; retry shortly")
        self._booking.add(grant["id"])
        try:
            loop = asyncio.get_running_loop()
            await self._submit(_Pending(loop.create_future(), env, grants=[grant]))
        finally:
            self._booking.discard(grant["id"])
        return None

    def balance(self, env: str, customer_id: str) -> dict[str, Any]:
        return self.account(env, customer_id).balance(self.clock())

    def refresh(self, env: str, customer_ids: Sequence[str] | None = None) -> None:
        """The catalog changed: reload the environment's meters and plans, and the named
        customers' records (all of the environment's accounts when none are named)."""
        self.envs[env] = self.catalog.env_catalog(env)
        meters: MeterSet = self.envs[env].meters
        keys = [k for k in self.accounts if k[0] == env]
        if customer_ids is not None:
            keys = [(env, c) for c in customer_ids if (env, c) in self.accounts]
        records = self.catalog.customers(env, [k[1] for k in keys])
        rules = self.alert_store.rules(env, [k[1] for k in keys])
        now = self.clock()
        for key, account in self.accounts.items():
            if key[0] == env:
                account.set_meters(meters)
        for key in keys:
            record = records.get(key[1])
            if record is not None:
                account = self.accounts[key]
                account.rebook(account.set_profile(self._profile(record)), now)
                account.rules = self._rules(record, rules.get(key[1], []))
                self.dirty.add(key)
                self._alerts(env, account, now)

    def status(self) -> dict[str, Any]:
        stats = self.stats
        return {
            "shard": self.shard,
            "position": self.position,
            "accounts": len(self.accounts),
            "commits": stats.commits,
            "ingested": stats.ingested,
            "duplicates": stats.duplicates,
            "commit_seconds": stats.commit_seconds.to_json(),
            "batch_sizes": stats.batch_sizes.to_json(),
            "checkpoint_age_seconds": (self.clock() - stats.checkpoint_at) / 1e6
            if stats.checkpoint_at
            else None,
        }


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

    def __init__(
        self,
        shard: int,
        shard_count: int,
        database_url: str,
        checkpoint_seconds: float,
        grace_seconds: int | None = None,
        gather_seconds: float = 0.0,
        clock_offset_us: int = 0,
    ) -> None:
        configure_logging()
        self.core = ShardCore(
            shard,
            shard_count,
            database_url,
            checkpoint_seconds,
            grace_seconds,
            gather_seconds,
            clock_for(clock_offset_us),
        )
        self._line: ShardLineServer | None = None
        freeze_startup_heap()

    async def ready(self) -> int:
        self.core._ensure_tasks()
        return self.core.position

    async def ingest(
        self, env: str, events: list[IncomingEvent], rebook_late: bool = False
    ) -> dict[str, int]:
        return await self.core.ingest(env, events, rebook_late)

    async def close_periods(self, env: str, cutoff: int) -> dict[str, int]:
        return await self.core.close_periods(env, cutoff)

    async def check(self, env: str, customer_id: str, events: list[IncomingEvent]) -> QuotaAnswer:
        return self.core.check(env, customer_id, events)

    async def check_many(
        self, checks: list[tuple[str, str, list[IncomingEvent]]]
    ) -> list[QuotaAnswer | TallyrayError]:
        return self.core.check_many(checks)

    async def line_endpoint(self) -> Endpoint:
        """Where this shard's line listens (see :mod:`tallyray.actors.shard_line`): quota
        checks and ingest, the calls that are safe to repeat."""
        if self._line is None:
            import ray  # the actor runs under Ray; the module stays importable without it

            node = ray.get_runtime_context().get_node_id()
            self._line = ShardLineServer(
                node, {"check_many": self.core.check_many, "ingest": self.core.ingest}
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

    async def release(self, env: str, hold_id: str) -> str:
        return await self.core.release(env, hold_id)

    async def add_grant(
        self, env: str, customer_id: str, grant: dict[str, Any]
    ) -> dict[str, Any] | None:
        return await self.core.add_grant(env, customer_id, grant)

    async def balance(self, env: str, customer_id: str) -> dict[str, Any]:
        return self.core.balance(env, customer_id)

    async def refresh(self, env: str, customer_ids: list[str] | None = None) -> None:
        self.core.refresh(env, customer_ids)

    async def checkpoint(self) -> int:
        return await self.core.checkpoint()

    async def status(self) -> dict[str, Any]:
        return self.core.status()
