"""The HTTP API v1 (FastAPI). Routes are thin: they authenticate, validate, and hand the work
to the shard owning the customer (hot paths) or to the catalog (everything else).

The hot paths — ``POST /v1/events``, ``POST /v1/quota/check``, reservations — decode with
orjson and hand-written checks rather than a pydantic model per event (measured 3–7× faster
in DESIGN.md), and make one call per shard per request.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import secrets
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from tallyray import __version__
from tallyray.actors.account import QuotaAnswer
from tallyray.actors.limits import Limits
from tallyray.clock import Clock, system_clock
from tallyray.errors import (
    Conflict,
    EventError,
    InvalidInput,
    NotFound,
    Problem,
    RateLimited,
    StoreUnavailable,
    TallyrayError,
    Unauthorized,
)
from tallyray.invoicing.service import Billing
from tallyray.metrics import Metrics
from tallyray.pricing.events import Event, format_timestamp, is_identifier
from tallyray.pricing.money import currency, parse_amount, round_amount
from tallyray.pricing.periods import ANCHORS
from tallyray.serve.admin_routes import admin_router
from tallyray.serve.admission import send_events
from tallyray.serve.alert_routes import AlertRules, add_alert_routes
from tallyray.serve.auth import (
    Authenticator,
    KeyCache,
    RateLimit,
    RateLimiter,
    audit_entry,
)
from tallyray.serve.body_limit import BodyLimit
from tallyray.serve.http import json_body, json_object, json_response, text_field, timestamp_field
from tallyray.serve.idempotency import Idempotency
from tallyray.serve.intake import IntakeRules, PeriodKey, decode_batch, validate_events
from tallyray.serve.invoicing_routes import add_invoicing_routes
from tallyray.serve.portal_routes import add_portal_routes
from tallyray.serve.request_context import RequestContext
from tallyray.serve.shards import ShardRouter
from tallyray.serve.webhook_routes import add_webhook_routes
from tallyray.storage.alerts import AlertStore
from tallyray.storage.audit import AuditLog
from tallyray.storage.billing import BillingStore
from tallyray.storage.catalog import (
    CUSTOMER_FIELDS,
    Catalog,
    CustomerRecord,
    EnvCatalog,
    customer_from_json,
    new_id,
)
from tallyray.storage.db import DatabaseUnavailable
from tallyray.storage.eventlog import stored_events
from tallyray.storage.idempotency import KEEP_US, IdempotencyStore
from tallyray.storage.keys import KeyStore
from tallyray.storage.usage import WINDOWS, usage_series
from tallyray.storage.webhooks import WebhookStore

log = logging.getLogger("tallyray.api")

__all__ = ["Services", "build_app"]


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
    clock: Clock = system_clock
    billing: Billing | None = None
    """Invoicing; built from the catalog's database with the default config when not
    given."""
    alerts: AlertRules | None = None
    """Alert rules (built by :func:`build_app` when not given)."""
    dunning_seconds: float | None = None
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


class _Caches:
    """Short-lived copies of the catalog, so the hot paths rarely touch the database.

    Writes through this process refresh them at once; writes through another ingress replica
    are seen within ``cache_seconds``.
    """

    def __init__(self, services: Services) -> None:
        self.s = services
        self.envs: dict[str, tuple[EnvCatalog, float]] = {}
        self._customers: dict[tuple[str, str], tuple[CustomerRecord, float]] = {}
        self._loading: dict[tuple[str, str], asyncio.Future[Any]] = {}
        self._writes: dict[str, int] = {}
        """Per environment: catalog writes seen, so a load that overlapped one is not kept."""

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
        for customer_id in ids:
            hit = self._customers.get((env, customer_id))
            if hit is not None and time.monotonic() - hit[1] < self.s.customer_cache_seconds:
                found[customer_id] = hit[0]
            else:
                missing.append(customer_id)
        if missing:
            loaded = await run_in_threadpool(self.s.catalog.customers, env, missing)
            stamp = time.monotonic()
            for customer_id, record in loaded.items():
                self._customers[(env, customer_id)] = (record, stamp)
                found[customer_id] = record
        return found

    def forget_env(self, env: str) -> None:
        self.envs.pop(env, None)
        self._loading.pop(("env", env), None)  # a load already running may predate the write
        self._writes[env] = self._writes.get(env, 0) + 1

    def forget_customer(self, env: str, customer_id: str) -> None:
        self._customers.pop((env, customer_id), None)


def _monthly(_customer_id: str) -> str:
    return "month"


def _quota_json(answer: QuotaAnswer) -> dict[str, Any]:
    cur = currency(answer.currency)
    return {
        "allowed": answer.allowed,
        "cost": format(answer.cost.normalize() if answer.cost else Decimal(0), "f"),
        "available": None
        if answer.available is None
        else format(round_amount(answer.available, cur), "f"),
        "currency": cur.code,
        "reason": answer.reason,
    }


def build_app(services: Services) -> FastAPI:
    engine = services.catalog.engine
    keys = KeyStore(engine)
    key_cache = KeyCache(keys.find, ttl=services.key_cache_seconds, lookups=services.key_lookups)
    authenticate = Authenticator(key_cache, RateLimiter(services.rate_limit), services.clock)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        tasks = [
            asyncio.create_task(_note_key_use(keys, key_cache, services.key_use_seconds)),
            asyncio.create_task(_forget_old_answers(IdempotencyStore(engine), services.clock)),
        ]
        if services.dunning_seconds and services.billing is not None:
            tasks.append(
                asyncio.create_task(_collect_forever(services.billing, services.dunning_seconds))
            )
        yield
        for task in tasks:
            task.cancel()

    docs = services.public_docs
    app = FastAPI(
        title="Tallyray",
        version=__version__,
        description="Real-time metering and billing. Authenticate with `Authorization: Bearer "
        "trk_live_…` or `trk_test_…`; the key's environment scopes every object.",
        lifespan=lifespan,
        docs_url="/docs" if docs else None,
        redoc_url="/redoc" if docs else None,
        openapi_url="/openapi.json" if docs else None,
    )
    # Innermost first: the request id, then the body limit, then Idempotency-Key.
    app.add_middleware(
        Idempotency, keys=key_cache, store=IdempotencyStore(engine), clock=services.clock
    )
    app.add_middleware(BodyLimit, limit=services.rules.max_body_bytes)
    app.add_middleware(RequestContext)  # outermost: every answer carries the request's id
    caches = _Caches(services)
    router = services.router
    metrics = services.metrics
    rules = services.rules
    billing = services.billing
    if billing is None:
        billing = services.billing = Billing(
            catalog=services.catalog,
            store=BillingStore(engine),
            database_url=engine.url.render_as_string(hide_password=False),
            router=router,
            grace_seconds=rules.grace_seconds,
            clock=services.clock,
        )
    rebook_late = billing.config.late_events == "book_to_open_period"
    alert_rules = services.alerts
    if alert_rules is None:
        alert_rules = services.alerts = AlertRules(
            services.catalog,
            AlertStore(services.catalog.engine),
            router,
            services.clock,
            services.limits.alert_rules_per_customer,
        )

    # -- errors: one JSON shape ----------------------------------------------------------

    @app.exception_handler(TallyrayError)
    async def _tallyray_error(request: Request, error: TallyrayError) -> Response:
        headers = {}
        if isinstance(error, StoreUnavailable):
            metrics.store_unavailable.inc()
            headers["Retry-After"] = str(error.retry_after_seconds)
        if isinstance(error, Unauthorized):
            headers["WWW-Authenticate"] = "Bearer"
        if isinstance(error, RateLimited):
            headers["Retry-After"] = error.retry_after_header
        return JSONResponse(error.to_json(), status_code=error.http_status, headers=headers)

    @app.exception_handler(DatabaseUnavailable)
    async def _store_down(request: Request, error: DatabaseUnavailable) -> Response:
        log.error("database unavailable: %s", error.orig)
        return await _tallyray_error(
            request, StoreUnavailable("the database is unavailable; retry shortly")
        )

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, error: RequestValidationError) -> Response:
        problems = [
            Problem(".".join(str(p) for p in e["loc"][1:]) or "request", e["msg"])
            for e in error.errors()
        ]
        return await _tallyray_error(request, InvalidInput("the request is invalid", problems))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, error: StarletteHTTPException) -> Response:
        kind = {404: "not_found", 405: "method_not_allowed"}.get(error.status_code, "http_error")
        return JSONResponse(
            {"error": {"type": kind, "message": str(error.detail), "details": []}},
            status_code=error.status_code,
        )

    # -- events --------------------------------------------------------------------------

    async def _interval_lookup(env: str, ids: set[str]) -> Callable[[str], PeriodKey | None]:
        catalog = await caches.env(env)
        records = await caches.customers(env, ids)
        missing = ids - set(records)
        if missing and services.auto_create_customers:
            for customer_id in missing:
                record = CustomerRecord(env, customer_id, services.default_currency)
                records[customer_id] = await run_in_threadpool(
                    services.catalog.upsert_customer, record, services.clock()
                )

        def interval_of(customer_id: str) -> PeriodKey | None:
            record = records.get(customer_id)
            if record is None:
                return None
            if record.plan_key is None:
                return ("month", None)
            plan = catalog.plans.get((record.plan_key, record.plan_version or 0))
            return (plan.interval if plan else "month", record.anchor)

        return interval_of

    async def _validated(env: str, items: list[Any], now: int) -> tuple[list[Event], int]:
        """The batch's events to send, and how many of it are old events stored already
        (a retry after an outage: duplicates, whatever their age)."""
        ids = {i.get("customer_id") for i in items if isinstance(i, dict)}
        # Only ids that could be ids reach the store (a NUL there is a 500 on PostgreSQL);
        # the others are refused, with every other problem, by validate_events.
        interval_of = await _interval_lookup(env, {c for c in ids if is_identifier(c)})
        catalog = await caches.env(env)
        too_old: list[tuple[int, Event, str]] = []
        try:
            events = validate_events(
                items, now, catalog.meters, interval_of, rules, too_old=too_old
            )
            if too_old:
                keys = [(e[1], e[0]) for _, e, _ in too_old]
                stored = await run_in_threadpool(stored_events, engine, env, keys)
                unknown = [(i, why) for i, e, why in too_old if (e[1], e[0]) not in stored]
                if unknown:
                    raise EventError.of([Problem(f"[{i}]", why) for i, why in unknown])
        except InvalidInput:
            metrics.events_rejected.labels(env).inc(len(items))
            raise
        return events, len(too_old)

    async def _ingest(env: str, events: list[Event]) -> dict[str, int]:
        by_shard: dict[int, list[tuple[str, str, str, int, Any]]] = defaultdict(list)
        for e in events:
            by_shard[router.index(env, e[1])].append((e[1], e[0], e[2], e[3], e[4]))
        # A request that spans shards must never be half written: should a shard find an
        # event for a period that closed after the ingress checked it, it books that event to
        # the open period rather than refusing it while other shards commit theirs.
        rebook = rebook_late or len(by_shard) > 1
        results = await send_events(router, env, events, by_shard, rebook)
        ingested = sum(r["ingested"] for r in results)
        duplicates = sum(r["duplicates"] for r in results)
        metrics.events_ingested.labels(env).inc(ingested)
        metrics.events_duplicate.labels(env).inc(duplicates)
        return {"ingested": ingested, "duplicates": duplicates}

    @app.post("/v1/events", tags=["events"])
    async def post_events(request: Request) -> Response:
        """Ingest up to 10,000 events: a JSON array, `{"events": [...]}`, or a CloudEvents
        batch. `200` means every new event is durable; repeats count as `duplicates`."""
        env = await authenticate(request)
        body = await request.body()
        items = decode_batch(body, request.headers.get("content-type", ""), rules)
        metrics.request_batch_size.observe(len(items))
        now = services.clock()
        events, stored = await _validated(env, items, now)
        if not events:
            return json_response({"ingested": 0, "duplicates": stored})
        result = await _ingest(env, events)
        return json_response({**result, "duplicates": result["duplicates"] + stored})

    # -- quota checks and reservations ---------------------------------------------------

    async def _would_be(env: str, doc: dict[str, Any], now: int) -> tuple[str, list[Any]]:
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
        catalog = await caches.env(env)
        events = validate_events(items, now, catalog.meters, _monthly, rules)
        return customer_id, [(e[1], e[0], e[2], e[3], e[4]) for e in events]

    @app.post("/v1/quota/check", tags=["quota"])
    async def quota_check(request: Request) -> Response:
        """May this customer spend this? Prices the would-be event against the live balance."""
        started = time.perf_counter()
        env = await authenticate(request)
        doc = json_object(
            await json_body(request),
            frozenset({"customer_id", "event", "events"}),
            frozenset({"customer_id"}),
        )
        customer_id, events = await _would_be(env, doc, services.clock())
        answer = await router.check(router.index(env, customer_id), env, customer_id, events)
        metrics.quota_check_seconds.observe(time.perf_counter() - started)
        return json_response(_quota_json(answer))

    @app.post("/v1/reservations", tags=["quota"])
    async def reserve(request: Request) -> Response:
        """Atomically hold the estimated cost of a would-be event until settled, released or
        expired (`ttl_seconds`, default 300)."""
        env = await authenticate(request)
        doc = json_object(
            await json_body(request),
            frozenset({"customer_id", "event", "events", "ttl_seconds"}),
            frozenset({"customer_id"}),
        )
        ttl = doc.get("ttl_seconds", 300)
        if isinstance(ttl, bool) or not isinstance(ttl, int | float) or not 0 < ttl <= 86_400:
            raise InvalidInput("'ttl_seconds' must be a number of seconds from 1 to 86400")
        customer_id, events = await _would_be(env, doc, services.clock())
        index = router.index(env, customer_id)
        hold_id = f"res_{index}_{secrets.token_hex(10)}"
        answer, expires_at = await router.call(
            index, "reserve", env, customer_id, hold_id, events, float(ttl)
        )
        body = _quota_json(answer)
        body.update(
            id=hold_id if answer.allowed else None,
            customer_id=customer_id,
            amount=format(
                round_amount(
                    max(answer.cost, Decimal(0)), currency(answer.currency), "ROUND_CEILING"
                ),
                "f",
            ),
            expires_at=format_timestamp(expires_at) if answer.allowed else None,
        )
        return json_response(body, 201 if answer.allowed else 200)

    def _hold_shard(hold_id: str) -> int:
        parts = hold_id.split("_")
        if len(parts) != 3 or parts[0] != "res" or not parts[1].isdigit():
            raise NotFound(f"no reservation {hold_id!r}")
        index = int(parts[1])
        if index >= router.count:
            raise NotFound(f"no reservation {hold_id!r}")
        return index

    @app.post("/v1/reservations/{hold_id}/settle", tags=["quota"])
    async def settle(hold_id: str, request: Request) -> Response:
        """Ingest the actual events of a reserved call and free its hold, in one commit."""
        env = await authenticate(request)
        index = _hold_shard(hold_id)
        doc = json_object(await json_body(request), frozenset({"events"}), frozenset({"events"}))
        items = doc["events"]
        if not isinstance(items, list) or len(items) > rules.max_events:
            raise InvalidInput(f"'events' must be a list of at most {rules.max_events} events")
        now = services.clock()
        events, stored = await _validated(env, items, now)
        result = await router.call(
            index, "settle", env, hold_id, [(e[1], e[0], e[2], e[3], e[4]) for e in events]
        )
        result["duplicates"] = result.get("duplicates", 0) + stored
        return json_response({"id": hold_id, "status": "settled", **result})

    @app.post("/v1/reservations/{hold_id}/release", tags=["quota"])
    async def release(hold_id: str, request: Request) -> Response:
        """Free a hold without ingesting anything."""
        env = await authenticate(request)
        result = await router.call(_hold_shard(hold_id), "release", env, hold_id)
        status = "expired" if result["hold"] == "expired" else "released"
        return json_response(
            {
                "id": hold_id,
                "status": status,
                "released": result["released"],
                "retried": result["retried"],
            }
        )

    # -- meters and plans ----------------------------------------------------------------

    async def _refresh(env: str, customer_ids: list[str] | None) -> None:
        caches.forget_env(env)
        for customer_id in customer_ids or []:
            caches.forget_customer(env, customer_id)
        await router.call_all("refresh", env, customer_ids)

    @app.post("/v1/meters", tags=["catalog"], status_code=201)
    async def post_meter(request: Request) -> Response:
        env = await authenticate(request)
        doc = await json_body(request)
        now = services.clock()
        entry = audit_entry(request, env, "meter.created", "meter", _key_of(doc), now, doc)
        meter = await run_in_threadpool(services.catalog.add_meter, env, doc, now, entry)
        await _refresh(env, [])
        return json_response({"key": meter.key, **doc}, 201)

    @app.get("/v1/meters", tags=["catalog"])
    async def get_meters(request: Request) -> Response:
        env = await authenticate(request)
        rows = await run_in_threadpool(services.catalog.meter_definitions, env)
        return json_response({"meters": rows})

    @app.post("/v1/plans", tags=["catalog"], status_code=201)
    async def post_plan(request: Request) -> Response:
        """Create a plan; posting an existing key with changes makes a new version."""
        env = await authenticate(request)
        doc = await json_body(request)
        now = services.clock()
        entry = audit_entry(request, env, "plan.created", "plan", _key_of(doc), now, doc)
        plan, version = await run_in_threadpool(services.catalog.add_plan, env, doc, now, entry)
        await _refresh(env, [])
        return json_response({**doc, "version": version}, 201)

    @app.get("/v1/plans/{key}", tags=["catalog"])
    async def get_plan(key: str, request: Request, version: int | None = None) -> Response:
        env = await authenticate(request)
        catalog = await run_in_threadpool(services.catalog.env_catalog, env)
        catalog.plan(key, version)  # 404 when missing
        chosen = version or catalog.latest[key]
        return json_response({**catalog.raw_plans[(key, chosen)], "version": chosen})

    # -- customers, subscriptions, credits -----------------------------------------------

    @app.post("/v1/customers", tags=["customers"], status_code=201)
    async def post_customer(request: Request) -> Response:
        """Create a customer, or update one (its currency cannot change)."""
        env = await authenticate(request)
        doc = json_object(await json_body(request), CUSTOMER_FIELDS, frozenset({"id", "currency"}))
        record = customer_from_json(env, doc)
        now = services.clock()
        entry = audit_entry(request, env, "customer.saved", "customer", record.id, now, doc)
        saved = await run_in_threadpool(
            services.catalog.upsert_customer, record, now, frozenset(doc), entry
        )
        await _refresh_customer(env, saved.id)
        return json_response(saved.to_json(), 201)

    async def _refresh_customer(env: str, customer_id: str) -> None:
        caches.forget_customer(env, customer_id)
        index = router.index(env, customer_id)
        await router.call(index, "refresh", env, [customer_id])

    @app.get("/v1/customers/{customer_id}", tags=["customers"])
    async def get_customer(customer_id: str, request: Request) -> Response:
        env = await authenticate(request)
        record = await run_in_threadpool(services.catalog.customer, env, customer_id)
        return json_response(record.to_json())

    @app.post("/v1/subscriptions", tags=["customers"], status_code=201)
    async def post_subscription(request: Request) -> Response:
        env = await authenticate(request)
        doc = json_object(
            await json_body(request),
            frozenset({"customer_id", "plan", "start", "anchor", "discount"}),
            frozenset({"customer_id", "plan"}),
        )
        customer_id, plan_key = text_field(doc, "customer_id"), text_field(doc, "plan")
        assert customer_id is not None and plan_key is not None
        now = services.clock()
        start = now if doc.get("start") is None else timestamp_field(doc["start"], "start")
        anchor = doc.get("anchor", "calendar")
        if anchor not in ANCHORS:
            raise InvalidInput(
                f"'anchor' must be one of {', '.join(ANCHORS)}", [Problem("anchor", str(anchor))]
            )
        discount = _discount(doc.get("discount"))
        entry = audit_entry(request, env, "subscription.created", "subscription", "", now, doc)
        sub_id, version = await run_in_threadpool(
            services.catalog.subscribe,
            env,
            customer_id,
            plan_key,
            start,
            now,
            anchor,
            discount,
            entry,
        )
        await _refresh_customer(env, customer_id)
        return json_response(
            {
                "id": sub_id,
                "customer_id": customer_id,
                "plan": plan_key,
                "plan_version": version,
                "start": format_timestamp(start),
                "anchor": anchor,
                "discount": discount,
            },
            201,
        )

    @app.post("/v1/customers/{customer_id}/credits", tags=["customers"], status_code=201)
    async def post_credits(customer_id: str, request: Request) -> Response:
        """Grant prepaid credit. Burns by priority (lower first), then earliest expiry."""
        env = await authenticate(request)
        doc = json_object(
            await json_body(request),
            frozenset({"amount", "currency", "expires_at", "priority"}),
            frozenset({"amount"}),
        )
        record = await run_in_threadpool(services.catalog.customer, env, customer_id)
        code = doc.get("currency", record.currency)
        cur = currency(code)
        amount = parse_amount(
            doc["amount"], places=cur.minor_units, field="amount", sign="positive"
        )
        priority = doc.get("priority", 1)
        if isinstance(priority, bool) or not isinstance(priority, int) or priority < 0:
            raise InvalidInput("'priority' must be a whole number ≥ 0 (lower burns first)")
        now = services.clock()
        expires_at = None
        if doc.get("expires_at") is not None:
            expires_at = timestamp_field(doc["expires_at"], "expires_at")
            if expires_at <= now:
                raise InvalidInput("'expires_at' is in the past", [Problem("expires_at", "past")])
        key = request.headers.get("idempotency-key")
        if key is not None and not 0 < len(key) <= 255:
            raise InvalidInput("the Idempotency-Key header must have 1 to 255 characters")
        grant: dict[str, Any] = {
            "id": new_id("grant") if key is None else _grant_id(env, customer_id, key),
            "env": env,
            "customer_id": customer_id,
            "amount": str(amount),
            "currency": cur.code,
            "priority": priority,
            "expires_at": expires_at,
            "created_at": now,
        }
        entry = audit_entry(
            request,
            env,
            "credit_grant.created",
            "credit_grant",
            grant["id"],
            now,
            {"customer_id": customer_id, **doc},
        )
        booked = await router.call(
            router.index(env, customer_id),
            "add_grant",
            env,
            customer_id,
            {**grant, "audit": entry},  # written in the commit that books the grant
            idempotent=key is not None,
        )
        status = 201
        if booked is not None:  # a retry: the grant was booked by the first request
            same = (Decimal(booked["amount"]), booked["currency"], booked["priority"]) == (
                amount,
                grant["currency"],
                grant["priority"],
            )
            if not same or booked["expires_at"] != expires_at:
                raise Conflict(
                    "this Idempotency-Key was used for a grant with other terms "
                    f"({booked['amount']} {booked['currency']}); use a new key"
                )
            grant.update(booked)
            status = 200
        return json_response(
            {
                **grant,
                "expires_at": None
                if grant["expires_at"] is None
                else format_timestamp(grant["expires_at"]),
                "created_at": format_timestamp(grant["created_at"]),
            },
            status,
        )

    @app.get("/v1/customers/{customer_id}/balance", tags=["customers"])
    async def get_balance(customer_id: str, request: Request) -> Response:
        """The live balance, answered from the shard's memory."""
        env = await authenticate(request)
        index = router.index(env, customer_id)
        return json_response(await router.call(index, "balance", env, customer_id))

    # -- usage ---------------------------------------------------------------------------

    @app.get("/v1/usage", tags=["usage"])
    async def get_usage(
        request: Request,
        customer_id: str,
        meter: str,
        window: str = "day",
        group_by: str = "",
    ) -> Response:
        """`?customer_id&meter&from&to&window=hour|day&group_by=a,b` → a time series."""
        env = await authenticate(request)
        if window not in WINDOWS:
            raise InvalidInput("'window' must be 'hour' or 'day'", [Problem("window", window)])
        catalog = await caches.env(env)
        spec = catalog.meters.meters.get(meter)
        if spec is None:
            raise NotFound(f"no meter {meter!r}")
        await run_in_threadpool(services.catalog.customer, env, customer_id)
        now = services.clock()
        raw_from, raw_to = request.query_params.get("from"), request.query_params.get("to")
        end = now if raw_to is None else timestamp_field(raw_to, "to")
        start = end - 7 * 86_400_000_000 if raw_from is None else timestamp_field(raw_from, "from")
        if start >= end:
            raise InvalidInput("'from' must be before 'to'")
        if (end - start) // WINDOWS[window] > 2000:
            raise InvalidInput("that range has more than 2,000 windows; use a wider window")
        groups = tuple(g for g in group_by.split(",") if g)
        series = await run_in_threadpool(
            usage_series,
            services.catalog.engine,
            env,
            customer_id,
            spec,
            start,
            end,
            window,
            groups,
        )
        return json_response(
            {
                "customer_id": customer_id,
                "meter": meter,
                "window": window,
                "from": format_timestamp(start),
                "to": format_timestamp(end),
                "group_by": list(groups),
                "data": series,
            }
        )

    # -- admin and operations ------------------------------------------------------------

    app.include_router(
        admin_router(keys, key_cache, AuditLog(engine), authenticate, services.clock)
    )
    add_invoicing_routes(app, billing, authenticate)
    add_alert_routes(app, alert_rules, authenticate)
    add_portal_routes(app, services, authenticate)
    add_webhook_routes(
        app,
        WebhookStore(services.catalog.engine),
        authenticate,
        services.clock,
        allow_private=services.webhook_allow_private,
    )

    @app.get("/healthz", tags=["operations"])
    async def healthz() -> Response:
        return json_response({"status": "ok", "version": __version__, "shards": router.count})

    @app.get("/metrics", tags=["operations"])
    async def get_metrics() -> Response:
        try:
            statuses = await router.call_all("status")
            metrics.absorb_shards(statuses)
        except StoreUnavailable:
            pass  # a restarting shard: report what we have
        return Response(metrics.render(), media_type="text/plain; version=0.0.4")

    return app


async def _note_key_use(keys: KeyStore, cache: KeyCache, seconds: float) -> None:
    """Write when keys were last used, every so often (coarse on purpose: never on the
    request path)."""
    while True:
        await asyncio.sleep(seconds)
        used = cache.take_used()
        if not used:
            continue
        try:
            await run_in_threadpool(keys.touch, used)
        except Exception as error:  # noqa: BLE001 — a later round writes newer moments
            log.warning("noting when keys were last used: %s", error)


async def _forget_old_answers(store: IdempotencyStore, clock: Clock) -> None:
    """Drop the Idempotency-Key answers older than a day, every hour."""
    while True:
        await asyncio.sleep(3600)
        try:
            await run_in_threadpool(store.forget_before, clock() - KEEP_US)
        except Exception as error:  # noqa: BLE001 — next hour
            log.warning("forgetting old Idempotency-Key answers: %s", error)


async def _collect_forever(billing: Billing, seconds: float) -> None:
    """The dunning clock: collect what is due, in both environments, every so often."""
    while True:
        await asyncio.sleep(seconds)
        for env in ("live", "test"):
            try:
                await billing.collect_due(env)
            except Exception as error:  # noqa: BLE001 — try again next round
                log.warning("collecting due payments (%s): %s", env, error)


def _key_of(doc: Any) -> str:
    """The ``key`` of a meter or plan body, for its audit entry (the store checks it)."""
    key = doc.get("key") if isinstance(doc, dict) else None
    return key if isinstance(key, str) else ""


def _grant_id(env: str, customer_id: str, key: str) -> str:
    """A grant's id from the client's idempotency key: the same key books one grant."""
    digest = hashlib.sha256(f"{env}\x00{customer_id}\x00{key}".encode()).hexdigest()
    return f"grant_{digest[:24]}"


def _discount(raw: Any) -> dict[str, Any] | None:
    """A subscription's discount: ``{"percent": "10"}`` or ``{"amount": "5.00"}``, with an
    optional ``description``."""
    if raw is None:
        return None
    if not isinstance(raw, dict) or set(raw) - {"percent", "amount", "description"}:
        raise InvalidInput(
            '\'discount\' must be {"percent": "10"} or {"amount": "5.00"}, with an '
            'optional "description"',
            [Problem("discount", "unexpected shape")],
        )
    if ("percent" in raw) == ("amount" in raw):
        raise InvalidInput(
            "a discount is either a percent or an amount", [Problem("discount", "give one")]
        )
    out: dict[str, Any] = {}
    for name in ("percent", "amount"):
        if name in raw:
            value = parse_amount(raw[name], field=f"discount.{name}")
            if value <= 0 or (name == "percent" and value > 100):
                raise InvalidInput(
                    f"discount {name} must be more than 0"
                    + (" and at most 100" if name == "percent" else ""),
                    [Problem(f"discount.{name}", str(raw[name]))],
                )
            out[name] = format(value, "f")
    description = raw.get("description")
    if description is not None and not isinstance(description, str):
        raise InvalidInput("discount description must be a string")
    pct = out.get("percent")
    out["description"] = description or (f"Discount {pct}%" if pct else "Discount")
    return out
