"""What the HTTP API's routes share: the services the composition root hands in
(:class:`Services`), the replica's short-lived copies of the catalog (:class:`Caches`), and
the steps several routes take (:class:`Api`: validating a batch of events, sending it to its
shards, refreshing shards after a catalog write).

Route modules (:mod:`tallyray.serve.routes`) find the :class:`Api` on the application's state
(:func:`api_of`); nothing here builds a route.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict, defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request
from starlette.concurrency import run_in_threadpool

from tallyray.actors.account import QuotaAnswer, unpriced_message
from tallyray.actors.limits import Limits
from tallyray.clock import Clock, system_clock
from tallyray.errors import EventError, InvalidInput, NotFound, Problem
from tallyray.invoicing.scheduler import RunSchedule
from tallyray.invoicing.service import Billing
from tallyray.metrics import Metrics
from tallyray.pricing.events import Event, is_identifier
from tallyray.pricing.plans import Plan
from tallyray.pricing.unpriced import lookup_for
from tallyray.serve.admission import send_events
from tallyray.serve.alert_rules import AlertRules
from tallyray.serve.auth import KeyCache, RateLimit
from tallyray.serve.http import json_object, text_field
from tallyray.serve.intake import IntakeRules, PeriodKey, decode_batch, validate_events
from tallyray.serve.shards import ShardRouter
from tallyray.storage.audit import AuditLog
from tallyray.storage.catalog import Catalog, CustomerRecord, EnvCatalog
from tallyray.storage.eventlog import stored_events
from tallyray.storage.keys import KeyStore
from tallyray.storage.layout import hold_owner

__all__ = [
    "CUSTOMER_CACHE_SIZE",
    "Api",
    "Authenticate",
    "Caches",
    "IncomingEvent",
    "Services",
    "api_of",
]

log = logging.getLogger("tallyray.api")

Authenticate = Callable[[Request], Awaitable[str]]
"""Maps a request to the environment of its API key, or raises what it deserves
(:class:`~tallyray.serve.auth.Authenticator`)."""

QUOTA_FIELDS = frozenset({"customer_id", "event", "events"})
QUOTA_REQUIRED = frozenset({"customer_id"})

SHARD_INDEX_SIZE = 100_000
"""Customers per environment whose shard an ingress replica remembers."""

IncomingEvent = tuple[str, str, str, int, Any]
"""(customer_id, event id, type, ts, properties): an event as the shards take it."""


CUSTOMER_CACHE_SIZE = 50_000
"""Customers one replica's cache holds by default (``TALLYRAY_CUSTOMER_CACHE_SIZE``): about
1 KB each, so ~55 MB; beyond it the least recently used are loaded again when next needed."""


@dataclass
class Services:
    """Everything the routes need, wired by :mod:`tallyray.cluster`."""

    catalog: Catalog
    router: ShardRouter
    rules: IntakeRules = field(default_factory=IntakeRules)
    metrics: Metrics = field(default_factory=Metrics)
    auto_create_customers: bool = False
    default_currency: str = "EUR"
    cache_seconds: float = 2.0
    customer_cache_seconds: float = 60.0
    """Customers are never deleted and writes through this replica refresh its cache at once;
    only a subscription changed through another replica is seen this late (and only the
    late-event window of ingest depends on it)."""
    customer_cache_size: int = CUSTOMER_CACHE_SIZE
    """Customers a replica keeps in its cache at most (the least recently used go first)."""
    clock: Clock = system_clock
    billing: Billing | None = None
    """Invoicing; built from the catalog's database with the default config when not
    given."""
    alerts: AlertRules | None = None
    """Alert rules (built by :func:`build_app` when not given)."""
    dunning_seconds: float | None = None
    recharge_seconds: float | None = None
    """Sweep auto-recharge crossings every so often (``None``: only on request)."""
    run_schedule: RunSchedule | None = None
    """Start invoice runs by themselves (:mod:`tallyray.invoicing.scheduler`); ``None``:
    only on request."""
    """Collect due payments every so often while the app runs (``None``: only on request)."""
    rate_limit: RateLimit = RateLimit(2000, 4000)
    """Requests a second per API key, and the burst it may send at once (per replica)."""
    portal_rate_limit: RateLimit = RateLimit(5, 30)
    """Requests a second per portal link (per replica)."""
    key_lookups: RateLimit = RateLimit(100, 200)
    """Store look-ups of keys not in the cache, a second (per replica)."""
    key_cache_seconds: float = 2.0
    """How long a replica trusts what it knows of a key: a revoked key is refused on every
    replica within this."""
    key_use_seconds: float = 60.0
    """How often a replica writes when its keys were last used."""
    public_docs: bool = True
    """``/docs`` and ``/openapi.json`` answer without a key."""
    webhook_allow_private: bool = False
    """Accept webhook URLs whose host is not public (:mod:`tallyray.alerts.egress`)."""
    limits: Limits = field(default_factory=Limits)
    """Caps on one customer's state (the shards get theirs from the same settings)."""
    reshard: Callable[[int], Awaitable[dict[str, Any]]] | None = None
    """Changes the shard count of the running deployment (``POST /v1/admin/reshard``;
    :func:`tallyray.cluster.reshard.reshard_live`); ``None``: this server cannot."""


class Caches:
    """Short-lived copies of the catalog, so the hot paths rarely touch the database.

    Writes through this process refresh them at once; writes through another ingress replica
    are seen within ``cache_seconds``. Customers are an LRU of at most
    ``customer_cache_size``: a replica that sees many customers keeps the recent ones.
    """

    def __init__(self, services: Services) -> None:
        self.s = services
        self.envs: dict[str, tuple[EnvCatalog, float]] = {}
        self._customers: OrderedDict[tuple[str, str], tuple[CustomerRecord, float]] = OrderedDict()
        self._loading: dict[tuple[str, str], asyncio.Future[Any]] = {}
        self._writes: dict[str, int] = {}
        """Per environment: catalog writes seen, so a load that overlapped one is not kept."""
        self._customer_writes = 0
        """Customer writes seen (:meth:`forget_customer`), for the same purpose."""

    def _fresh(self, stamp: float) -> bool:
        return time.monotonic() - stamp < self.s.cache_seconds

    async def _load(self, what: tuple[str, str], load: Callable[[], Any]) -> Any:
        """One load per key at a time: requests that miss together share it (at 1,000
        requests/s an expired entry would otherwise be read by dozens of them at once)."""
        running = self._loading.get(what)
        if running is None:
            running = self._loading[what] = asyncio.ensure_future(run_in_threadpool(load))
            running.add_done_callback(
                lambda done: self._loading.pop(what) if self._loading.get(what) is done else None
            )
        return await asyncio.shield(running)

    async def env(self, env: str) -> EnvCatalog:
        hit = self.envs.get(env)
        if hit is not None and self._fresh(hit[1]):
            return hit[0]
        writes = self._writes.get(env, 0)
        found = await self._load(("env", env), lambda: self.s.catalog.env_catalog(env))
        if self._writes.get(env, 0) == writes:
            self.envs[env] = (found, time.monotonic())
        return found  # type: ignore[no-any-return]

    async def customers(self, env: str, ids: set[str]) -> dict[str, CustomerRecord]:
        found: dict[str, CustomerRecord] = {}
        missing = []
        cached = self._customers
        now = time.monotonic()
        ttl = self.s.customer_cache_seconds
        for customer_id in ids:
            key = (env, customer_id)
            hit = cached.get(key)
            if hit is not None and now - hit[1] < ttl:
                cached.move_to_end(key)
                found[customer_id] = hit[0]
            else:
                missing.append(customer_id)
        if missing:
            writes = self._customer_writes
            loaded = await run_in_threadpool(self.s.catalog.customers, env, missing)
            keep = self._customer_writes == writes  # else one of them may be stale already
            stamp = time.monotonic()
            for customer_id, record in loaded.items():
                found[customer_id] = record
                if keep:
                    cached[(env, customer_id)] = (record, stamp)
                    cached.move_to_end((env, customer_id))
            while len(cached) > self.s.customer_cache_size:
                cached.popitem(last=False)  # the least recently used
        return found

    def forget_env(self, env: str) -> None:
        self.envs.pop(env, None)
        self._loading.pop(("env", env), None)  # a load already running may predate the write
        self._writes[env] = self._writes.get(env, 0) + 1

    def forget_customer(self, env: str, customer_id: str) -> None:
        self._customers.pop((env, customer_id), None)
        self._customer_writes += 1  # a load already running may predate the write


def _monthly(_customer_id: str) -> str:
    return "month"


def _intervals(
    records: dict[str, CustomerRecord], catalog: EnvCatalog
) -> Callable[[str], PeriodKey | None]:
    """How each customer's periods run (for the late-event window); ``None`` for a customer
    not in ``records``."""

    def interval_of(customer_id: str) -> PeriodKey | None:
        record = records.get(customer_id)
        if record is None:
            return None
        if record.plan_key is None:
            return ("month", None)
        plan = catalog.plans.get((record.plan_key, record.plan_version or 0))
        return (plan.interval if plan else "month", record.anchor)

    return interval_of


@dataclass
class Api:
    """The routes' view of one replica: its services and the steps routes share."""

    services: Services
    authenticate: Authenticate
    caches: Caches
    keys: KeyStore
    key_cache: KeyCache
    audit: AuditLog
    billing: Billing
    alert_rules: AlertRules
    _shards_of: dict[tuple[str, int, int], dict[str, int]] = field(
        default_factory=dict, init=False, repr=False
    )
    """Per (environment, shard count, layout epoch): customer → its shard, as worked out."""

    @property
    def catalog(self) -> Catalog:
        return self.services.catalog

    @property
    def router(self) -> ShardRouter:
        return self.services.router

    @property
    def metrics(self) -> Metrics:
        return self.services.metrics

    @property
    def rules(self) -> IntakeRules:
        return self.services.rules

    @property
    def clock(self) -> Clock:
        return self.services.clock

    @property
    def rebook_late(self) -> bool:
        return self.billing.config.late_events == "book_to_open_period"

    # -- events --------------------------------------------------------------------------

    async def customer_records(self, env: str, ids: set[str]) -> dict[str, CustomerRecord]:
        """The records of the customers ``ids`` that exist, creating unknown ones first when
        the deployment auto-creates them."""
        services = self.services
        records = await self.caches.customers(env, ids)
        missing = ids - records.keys()
        if missing and services.auto_create_customers:
            for customer_id in missing:
                record = CustomerRecord(env, customer_id, services.default_currency)
                records[customer_id] = await run_in_threadpool(
                    services.catalog.upsert_customer, record, services.clock()
                )
        return records

    async def validated(self, env: str, items: list[Any], now: int) -> tuple[list[Event], int]:
        """The batch's events to send, and how many of it are old events stored already
        (a retry after an outage: duplicates, whatever their age)."""
        ids = {
            i["customer_id"]
            for i in items
            if isinstance(i, dict) and isinstance(i.get("customer_id"), str)
        }  # anything else is refused by validate_events, with every other problem
        # Only ids that could be ids reach the store (a NUL there is a 500 on PostgreSQL);
        # the others are refused, with every other problem, by validate_events.
        records = await self.customer_records(env, {c for c in ids if is_identifier(c)})
        catalog = await self.caches.env(env)
        too_old: list[tuple[int, Event, str]] = []
        try:
            interval_of = _intervals(records, catalog)
            events = validate_events(
                items, now, catalog.meters, interval_of, self.rules, too_old=too_old
            )
            await self.refuse_unpriced(env, events, catalog, records)
            if too_old:
                keys = [(e[1], e[0]) for _, e, _ in too_old]
                engine = self.catalog.engine
                stored = await run_in_threadpool(stored_events, engine, env, keys)
                unknown = [(i, why) for i, e, why in too_old if (e[1], e[0]) not in stored]
                if unknown:
                    raise EventError.of([Problem(f"[{i}]", why) for i, why in unknown])
        except InvalidInput:
            self.metrics.events_rejected.labels(env).inc(len(items))
            raise
        return events, len(too_old)

    async def refuse_unpriced(
        self,
        env: str,
        events: list[Event],
        catalog: EnvCatalog,
        records: dict[str, CustomerRecord] | None = None,
    ) -> None:
        """:class:`EventError` naming each event with usage that no charge of its customer's
        plan prices, when that plan refuses unpriced usage (``"unpriced": "reject"``), before
        anything is sent: the batch is refused whole. A customer record and a plan's lookup
        are each looked up once per batch (``records``: the batch's customers, when the
        caller has them already); a batch with no such customer costs no more."""
        plans: dict[str, Plan] = {}
        if records is None:
            ids = {e[1] for e in events if is_identifier(e[1])}
            records = await self.caches.customers(env, ids)
        if not any(plan.unpriced == "reject" for plan in catalog.plans.values()):
            return
        for customer_id, record in records.items():
            if record.plan_key is None:
                continue
            plan = catalog.plans.get((record.plan_key, record.plan_version or 0))
            if plan is not None and plan.unpriced == "reject":
                plans[customer_id] = plan
        if not plans:
            return
        meters = catalog.meters
        problems: list[Problem] = []
        for index, event in enumerate(events):
            plan = plans.get(event[1])
            if plan is None:
                continue
            found = lookup_for(plan, meters.meters).event_unpriced(meters, event)
            if found:
                message = unpriced_message(plan.key, *found[0])
                problems.append(Problem(f"[{index}]", f"event {event[0]!r}: {message}"))
        if problems:
            raise EventError.of(problems)

    async def ingest_body(self, env: str, body: bytes, content_type: str) -> dict[str, int]:
        """``POST /v1/events`` once the caller is known: the batch in ``body`` decoded,
        checked whole and sent (the route and :mod:`tallyray.serve.fastpath` both answer
        through this). Durable once this returns; old events stored already count as
        duplicates."""
        items = decode_batch(body, content_type, self.rules)
        self.metrics.request_batch_size.observe(len(items))
        events, stored = await self.validated(env, items, self.clock())
        if not events:
            return {"ingested": 0, "duplicates": stored}
        result = await self.ingest(env, events)
        return {"ingested": result["ingested"], "duplicates": result["duplicates"] + stored}

    async def ingest(self, env: str, events: list[Event]) -> dict[str, int]:
        """Send validated events to their shards; durable once this returns."""
        router = self.router
        known = self._shard_index(env)
        by_shard: dict[int, list[IncomingEvent]] = defaultdict(list)
        for e in events:
            customer = e[1]
            index = known.get(customer)
            if index is None:
                index = known[customer] = router.index(env, customer)
            by_shard[index].append((customer, e[0], e[2], e[3], e[4]))
        # A request that spans shards must never be half written: should a shard find an
        # event for a period that closed after the ingress checked it, it books that event to
        # the open period rather than refusing it while other shards commit theirs.
        rebook = self.rebook_late or len(by_shard) > 1
        results = await send_events(router, env, events, by_shard, rebook)
        ingested = sum(r["ingested"] for r in results)
        duplicates = sum(r["duplicates"] for r in results)
        self.metrics.events_ingested.labels(env).inc(ingested)
        self.metrics.events_duplicate.labels(env).inc(duplicates)
        return {"ingested": ingested, "duplicates": duplicates}

    def _shard_index(self, env: str) -> dict[str, int]:
        """Customer → shard in ``env`` under the router's current layout, remembered (a
        dict look-up per event instead of a hash of the customer id; at most
        :data:`SHARD_INDEX_SIZE` customers, then it starts afresh)."""
        router = self.router
        key = (env, router.count, router.epoch)
        known = self._shards_of.get(key)
        if known is None or len(known) > SHARD_INDEX_SIZE:
            if known is None:  # the layout changed: the old ones are of no use
                self._shards_of = {k: v for k, v in self._shards_of.items() if k[0] != env}
            known = self._shards_of[key] = {}
        return known

    async def would_be(
        self, env: str, doc: dict[str, Any], now: int
    ) -> tuple[str, list[IncomingEvent]]:
        """The customer and the would-be events of a quota check or a reservation."""
        customer_id = text_field(doc, "customer_id")
        assert customer_id is not None
        raw = doc.get("events", [doc["event"]] if "event" in doc else None)
        if not isinstance(raw, list) or not raw:
            raise InvalidInput("send the would-be usage as 'event': {...} or 'events': [...]")
        items = []
        for i, item in enumerate(raw):
            if not isinstance(item, dict):
                raise InvalidInput("each event must be a JSON object", [Problem(f"[{i}]", "")])
            items.append({"id": f"quote_{i}", **item, "customer_id": customer_id})
        # The hot path of a gateway: no customer look-up here (the shard knows its
        # customers, and answers 404 for an unknown one), only the shape and the meters.
        catalog = await self.caches.env(env)
        events = validate_events(items, now, catalog.meters, _monthly, self.rules)
        return customer_id, [(e[1], e[0], e[2], e[3], e[4]) for e in events]

    async def check_quota(self, env: str, doc: Any, started: float) -> QuotaAnswer:
        """``POST /v1/quota/check`` once the caller is known: the shard's answer for the
        body ``doc`` (the route and :mod:`tallyray.serve.fastpath` both answer through
        this). ``started``: when the request began (``perf_counter``), for the metric."""
        doc = json_object(doc, QUOTA_FIELDS, QUOTA_REQUIRED)
        customer_id, events = await self.would_be(env, doc, self.clock())
        router = self.router
        answer: QuotaAnswer = await router.check(
            router.index(env, customer_id), env, customer_id, events
        )
        self.metrics.quota_check_seconds.observe(time.perf_counter() - started)
        return answer

    async def hold_shard(self, env: str, hold_id: str) -> int:
        """The shard a reservation lives on: its id says (``res_<shard>_…``) until the shard
        count changes; after a reshard, its customer's shard (read from the store)."""
        parts = hold_id.split("_")
        if len(parts) != 3 or parts[0] != "res" or not parts[1].isdigit():
            raise NotFound(f"no reservation {hold_id!r}")
        index = int(parts[1])
        if self.router.epoch:
            customer = await run_in_threadpool(
                hold_owner, self.services.catalog.engine, env, hold_id
            )
            if customer is None:
                raise NotFound(f"no reservation {hold_id!r}")
            return self.router.index(env, customer)
        if index >= self.router.count:
            raise NotFound(f"no reservation {hold_id!r}")
        return index

    # -- after a catalog write -----------------------------------------------------------

    async def refresh(self, env: str, customer_ids: list[str] | None) -> None:
        """The environment's meters or plans changed: every shard reloads them."""
        self.caches.forget_env(env)
        for customer_id in customer_ids or []:
            self.caches.forget_customer(env, customer_id)
        await self.router.call_all("refresh", env, customer_ids)

    async def refresh_customer(self, env: str, customer_id: str) -> None:
        """A customer changed: its shard reloads it."""
        self.caches.forget_customer(env, customer_id)
        index = self.router.index(env, customer_id)
        await self.router.call(index, "refresh", env, [customer_id])


def api_of(request: Request) -> Api:
    """The :class:`Api` of the application serving ``request``."""
    api: Api = request.app.state.api
    return api
