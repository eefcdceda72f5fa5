"""Events in, usage out: ``POST /v1/events`` (the hot path of ingest) and ``GET /v1/usage``.

Ingest decodes with orjson and hand-written checks, not a pydantic model per event (3–7×
faster, DESIGN.md); its schema is declared for the contract only
(:mod:`tallyray.serve.schemas`).
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from tallyray.errors import InvalidInput, NotFound, Problem
from tallyray.pricing.events import format_timestamp
from tallyray.serve.api import api_of
from tallyray.serve.http import json_response, timestamp_field
from tallyray.storage.pages import DEFAULT_LIMIT, PageRequest
from tallyray.storage.unpriced import UnpricedStore
from tallyray.storage.usage import WINDOWS, usage_series

__all__ = ["router"]

router = APIRouter(tags=["events"])

MAX_WINDOWS = 2000
DEFAULT_SPAN_US = 7 * 86_400_000_000


@router.post("/v1/events")
async def post_events(request: Request) -> Response:
    """Ingest up to 10,000 events: a JSON array, `{"events": [...]}`, or a CloudEvents
    batch. `200` means every new event is durable; repeats count as `duplicates`."""
    # Most batches never reach the app: the HTTP protocol answers them itself
    # (tallyray.serve.fastpath); this route answers the others (an Idempotency-Key, a
    # query string) through the same Api.ingest_body.
    api = api_of(request)
    env = await api.authenticate(request)
    body = await request.body()
    return json_response(await api.ingest_body(env, body, request.headers.get("content-type", "")))


@router.get("/v1/usage", tags=["usage"])
async def get_usage(
    request: Request,
    customer_id: str,
    meter: str,
    window: str = "day",
    group_by: str = "",
) -> Response:
    """`?customer_id&meter&from&to&window=hour|day&group_by=a,b` → a time series read from
    the event log (any event property can be a group)."""
    api = api_of(request)
    env = await api.authenticate(request)
    if window not in WINDOWS:
        raise InvalidInput("'window' must be 'hour' or 'day'", [Problem("window", window)])
    catalog = await api.caches.env(env)
    spec = catalog.meters.meters.get(meter)
    if spec is None:
        raise NotFound(f"no meter {meter!r}")
    await run_in_threadpool(api.catalog.customer, env, customer_id)
    now = api.clock()
    raw_from, raw_to = request.query_params.get("from"), request.query_params.get("to")
    end = now if raw_to is None else timestamp_field(raw_to, "to")
    start = end - DEFAULT_SPAN_US if raw_from is None else timestamp_field(raw_from, "from")
    if start >= end:
        raise InvalidInput("'from' must be before 'to'")
    if (end - start) // WINDOWS[window] > MAX_WINDOWS:
        raise InvalidInput(f"that range has more than {MAX_WINDOWS:,} windows; use a wider window")
    groups = tuple(g for g in group_by.split(",") if g)
    series = await run_in_threadpool(
        usage_series, api.catalog.engine, env, customer_id, spec, start, end, window, groups
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


@router.get("/v1/unpriced-usage", tags=["usage"])
async def get_unpriced_usage(
    request: Request,
    customer_id: str | None = None,
    limit: int = DEFAULT_LIMIT,
    starting_after: str | None = None,
) -> Response:
    """Usage that no charge of the customer's plan prices, for plans that flag it (the
    default): per customer, plan version, meter, group and period, newest period first.
    Written by the shards with each checkpoint (every few seconds)."""
    api = api_of(request)
    env = await api.authenticate(request)
    page = PageRequest.of(limit, starting_after)
    store = UnpricedStore(api.catalog.engine)
    found = await run_in_threadpool(store.page, env, customer_id, page)
    return json_response({"unpriced_usage": found.items, "has_more": found.has_more})
