"""Quota checks and reservations: the gateway's calls. ``POST /v1/quota/check`` asks, a
reservation holds the estimate while a call streams, ``settle`` books what it used and
``release`` lets the hold go (both safe to retry)."""

from __future__ import annotations

import secrets
import time
from decimal import Decimal
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from tallyray.actors.account import QuotaAnswer
from tallyray.errors import InvalidInput
from tallyray.pricing.events import format_timestamp
from tallyray.pricing.money import currency, round_amount
from tallyray.serve.api import api_of
from tallyray.serve.http import json_body, json_object, json_response

__all__ = ["quota_json", "router"]

router = APIRouter(tags=["quota"])

DEFAULT_TTL_SECONDS = 300
MAX_TTL_SECONDS = 86_400


def quota_json(answer: QuotaAnswer) -> dict[str, Any]:
    """A quota answer as the API shows it: the cost at full precision, what is available
    rounded to the currency, and what refused it (``refusal``; with the unit ``limit`` or the
    ``feature`` when one of those did)."""
    cur = currency(answer.currency)
    body: dict[str, Any] = {
        "allowed": answer.allowed,
        "cost": format(answer.cost.normalize() if answer.cost else Decimal(0), "f"),
        "available": None
        if answer.available is None
        else format(round_amount(answer.available, cur), "f"),
        "currency": cur.code,
        "reason": answer.reason,
        "refusal": answer.refusal,
    }
    if answer.limit is not None:
        body["limit"] = answer.limit.to_json()
    if answer.feature is not None:
        body["feature"] = answer.feature
    return body


@router.post("/v1/quota/check")
async def quota_check(request: Request) -> Response:
    """May this customer spend this? Prices the would-be event against the live balance."""
    # Most checks are answered by the HTTP protocol before the app (tallyray.serve.fastpath);
    # this route answers the same, through the same steps, for the others (an
    # Idempotency-Key, a query string, an app not served by our listener).
    started = time.perf_counter()
    api = api_of(request)
    env = await api.authenticate(request)
    answer = await api.check_quota(env, await json_body(request), started)
    return json_response(quota_json(answer))


@router.post("/v1/reservations")
async def reserve(request: Request) -> Response:
    """Atomically hold the estimated cost of a would-be event until settled, released or
    expired (`ttl_seconds`, default 300): `201` with the hold, or `200` with `allowed:
    false` and no hold when it does not fit."""
    api = api_of(request)
    env = await api.authenticate(request)
    doc = json_object(
        await json_body(request),
        frozenset({"customer_id", "event", "events", "ttl_seconds"}),
        frozenset({"customer_id"}),
    )
    ttl = doc.get("ttl_seconds", DEFAULT_TTL_SECONDS)
    if isinstance(ttl, bool) or not isinstance(ttl, int | float) or not 0 < ttl <= MAX_TTL_SECONDS:
        raise InvalidInput(f"'ttl_seconds' must be a number of seconds from 1 to {MAX_TTL_SECONDS}")
    customer_id, events = await api.would_be(env, doc, api.clock())
    index = api.router.index(env, customer_id)
    hold_id = f"res_{index}_{secrets.token_hex(10)}"
    answer, expires_at = await api.router.call(
        index, "reserve", env, customer_id, hold_id, events, float(ttl)
    )
    body = quota_json(answer)
    held = round_amount(max(answer.cost, Decimal(0)), currency(answer.currency), "ROUND_CEILING")
    body.update(
        id=hold_id if answer.allowed else None,
        customer_id=customer_id,
        amount=format(held, "f"),
        expires_at=format_timestamp(expires_at) if answer.allowed else None,
    )
    return json_response(body, 201 if answer.allowed else 200)


@router.post("/v1/reservations/{hold_id}/settle")
async def settle(hold_id: str, request: Request) -> Response:
    """Ingest the actual events of a reserved call and free its hold, in one commit. Safe
    to retry: a retry answers what the first settle did (`retried: true`)."""
    api = api_of(request)
    env = await api.authenticate(request)
    index = await api.hold_shard(env, hold_id)
    doc = json_object(await json_body(request), frozenset({"events"}), frozenset({"events"}))
    items = doc["events"]
    if not isinstance(items, list) or len(items) > api.rules.max_events:
        raise InvalidInput(f"'events' must be a list of at most {api.rules.max_events} events")
    events, stored = await api.validated(env, items, api.clock())
    result = await api.router.call(
        index, "settle", env, hold_id, [(e[1], e[0], e[2], e[3], e[4]) for e in events]
    )
    result["duplicates"] = result.get("duplicates", 0) + stored
    return json_response({"id": hold_id, "status": "settled", **result})


@router.post("/v1/reservations/{hold_id}/release")
async def release(hold_id: str, request: Request) -> Response:
    """Free a hold without ingesting anything. Safe to retry."""
    api = api_of(request)
    env = await api.authenticate(request)
    result = await api.router.call(await api.hold_shard(env, hold_id), "release", env, hold_id)
    status = "expired" if result["hold"] == "expired" else "released"
    return json_response(
        {
            "id": hold_id,
            "status": status,
            "released": result["released"],
            "retried": result["retried"],
        }
    )
