"""The HTTP API v1 (FastAPI): the application, composed of the route modules in
:mod:`tallyray.serve.routes` — events; quota checks and reservations; meters, plans,
customers, subscriptions and credits; top-ups; invoicing; webhooks and alerts; the portal;
operations and administration.

Here: the middleware (request ids, the body limit, ``Idempotency-Key``), the one JSON error
shape, the background tasks of a replica, and the routes' shared :class:`~tallyray.serve.api.Api`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from tallyray import __version__
from tallyray.clock import Clock
from tallyray.errors import (
    InvalidInput,
    Problem,
    TallyrayError,
)
from tallyray.invoicing.scheduler import InvoiceScheduler
from tallyray.invoicing.service import Billing
from tallyray.serve.alert_rules import AlertRules
from tallyray.serve.api import Api, Caches, Services
from tallyray.serve.auth import Authenticator, KeyCache, RateLimiter
from tallyray.serve.body_limit import BodyLimit
from tallyray.serve.http import error_headers, store_unavailable
from tallyray.serve.idempotency import Idempotency
from tallyray.serve.openapi import DESCRIPTION, contract
from tallyray.serve.request_context import RequestContext
from tallyray.serve.routes import (
    catalog,
    events,
    invoicing,
    operations,
    payment_methods,
    plan_versions,
    portal,
    quota,
    simulations,
    top_ups,
    webhooks,
)
from tallyray.storage.alerts import AlertStore
from tallyray.storage.audit import AuditLog
from tallyray.storage.billing import BillingStore
from tallyray.storage.db import DatabaseUnavailable
from tallyray.storage.idempotency import KEEP_US, IdempotencyStore
from tallyray.storage.keys import KeyStore
from tallyray.storage.webhooks import WebhookStore

log = logging.getLogger("tallyray.api")

__all__ = ["Services", "build_app"]


def build_app(services: Services) -> FastAPI:
    """The API of one replica, over ``services``."""
    engine = services.catalog.engine
    keys = KeyStore(engine)
    key_cache = KeyCache(keys.find, ttl=services.key_cache_seconds, lookups=services.key_lookups)
    authenticate = Authenticator(key_cache, RateLimiter(services.rate_limit), services.clock)
    if services.billing is None:
        services.billing = Billing(
            catalog=services.catalog,
            store=BillingStore(engine),
            database_url=engine.url.render_as_string(hide_password=False),
            router=services.router,
            grace_seconds=services.rules.grace_seconds,
            clock=services.clock,
        )
    if services.alerts is None:
        services.alerts = AlertRules(
            services.catalog,
            AlertStore(engine),
            services.router,
            services.clock,
            services.limits.alert_rules_per_customer,
        )
    api = Api(
        services=services,
        authenticate=authenticate,
        caches=Caches(services),
        keys=keys,
        key_cache=key_cache,
        audit=AuditLog(engine),
        billing=services.billing,
        alert_rules=services.alerts,
    )

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
        if services.recharge_seconds and services.billing is not None:
            recharges = services.billing.recharges
            tasks.append(asyncio.create_task(recharges.run_forever(services.recharge_seconds)))
        if services.run_schedule is not None and services.billing is not None:
            scheduler = InvoiceScheduler(services.billing, services.run_schedule)
            tasks.append(asyncio.create_task(scheduler.run_forever()))
        yield
        for task in tasks:
            task.cancel()

    docs = services.public_docs
    app = FastAPI(
        title="Tallyray",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url="/docs" if docs else None,
        redoc_url="/redoc" if docs else None,
        openapi_url="/openapi.json" if docs else None,
    )
    app.state.api = api
    # Innermost first: the request id, then the body limit, then Idempotency-Key.
    app.add_middleware(
        Idempotency, keys=key_cache, store=IdempotencyStore(engine), clock=services.clock
    )
    app.add_middleware(BodyLimit, limit=services.rules.max_body_bytes)
    app.add_middleware(RequestContext)  # every answer carries the request's id
    # Most quota checks and event batches never reach the app: the HTTP protocol answers them
    # itself (tallyray.serve.fastpath, installed by tallyray.serve.listener).
    _add_error_handlers(app, services)

    for module in (
        events,
        quota,
        catalog,
        top_ups,
        payment_methods,
        plan_versions,
        invoicing,
        simulations,
        operations,
    ):
        app.include_router(module.router)
    contract(app)
    webhooks.include(
        app,
        webhooks.WebhookRoutes(
            store=WebhookStore(engine),
            authenticate=authenticate,
            clock=services.clock,
            allow_private=services.webhook_allow_private,
            alert_rules=services.alerts,
        ),
    )
    portal.include(app, services, authenticate)
    return app


def _add_error_handlers(app: FastAPI, services: Services) -> None:
    """One JSON shape for every error: ``{"error": {"type", "message", "details"}}``."""
    metrics = services.metrics

    @app.exception_handler(TallyrayError)
    async def _tallyray_error(request: Request, error: TallyrayError) -> Response:
        headers = error_headers(error, metrics)
        return JSONResponse(error.to_json(), status_code=error.http_status, headers=headers)

    @app.exception_handler(DatabaseUnavailable)
    async def _store_down(request: Request, error: DatabaseUnavailable) -> Response:
        return await _tallyray_error(request, store_unavailable(error))

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
