"""Plan versions move forward: publish or delete a draft, and migrate the subscribers of
older versions to a newer one (:mod:`tallyray.storage.plan_versions`)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from tallyray.errors import InvalidInput, NotFound, Problem
from tallyray.pricing.money import shown
from tallyray.serve.api import api_of
from tallyray.serve.auth import audit_entry
from tallyray.serve.http import json_body, json_object, json_response
from tallyray.storage.plan_versions import (
    MIGRATE_AT,
    delete_draft,
    migrate_subscribers,
    publish_plan,
)

__all__ = ["router"]

router = APIRouter()

MIGRATE_FIELDS = frozenset({"from_version", "to_version", "at"})
MAX_VERSION = 2**31 - 1
"""Versions are stored as 32-bit integers: a larger one names no plan."""


@router.post("/v1/plans/{key}/versions/{version}/publish", tags=["catalog"])
async def publish(key: str, version: int, request: Request) -> Response:
    """Publish a draft: from now on `POST /v1/subscriptions` subscribes to it (the latest
    published version) and `migrate` may move subscribers to it. Publishing a published
    version changes nothing."""
    api = api_of(request)
    env = await api.authenticate(request)
    _known(key, version)
    now = api.clock()
    entry = audit_entry(
        request, env, "plan.published", "plan", key, now, {"key": key, "version": version}
    )
    was = await run_in_threadpool(publish_plan, api.catalog, env, key, version, entry)
    if was == "draft":
        await api.refresh(env, [])
    catalog = await run_in_threadpool(api.catalog.env_catalog, env)
    return json_response(
        {**catalog.raw_plans[(key, version)], "version": version, "status": "published"}
    )


@router.delete("/v1/plans/{key}/versions/{version}", tags=["catalog"])
async def delete(key: str, version: int, request: Request) -> Response:
    """Delete a draft. A published version is never deleted (`409`)."""
    api = api_of(request)
    env = await api.authenticate(request)
    _known(key, version)
    now = api.clock()
    entry = audit_entry(
        request, env, "plan.draft_deleted", "plan", key, now, {"key": key, "version": version}
    )
    await run_in_threadpool(delete_draft, api.catalog, env, key, version, entry)
    await api.refresh(env, [])
    return json_response({"deleted": f"{key}@{version}"})


@router.post("/v1/plans/{key}/migrate", tags=["catalog"])
async def migrate(key: str, request: Request) -> Response:
    """Move the subscribers of older versions of a plan (all older published versions, or
    `from_version`'s) to `to_version`: `"at": "now"` at once (the period is cut in two
    segments, each priced under its plan, base fees prorated), or `"period_end"` at the end
    of each subscription's current period. In batches, each audited; a retry moves nothing
    twice (those already moved count as `already`)."""
    api = api_of(request)
    env = await api.authenticate(request)
    doc = json_object(await json_body(request), MIGRATE_FIELDS, frozenset({"to_version", "at"}))
    to_version = _version(doc, "to_version")
    from_version = None if doc.get("from_version") is None else _version(doc, "from_version")
    at = doc["at"]
    if at not in MIGRATE_AT:
        raise InvalidInput(
            f"'at' must be one of {', '.join(MIGRATE_AT)}", [Problem("at", shown(at))]
        )
    now = api.clock()
    entry = audit_entry(request, env, "plan.migrated", "plan", key, now, {"key": key, **doc})
    done = await run_in_threadpool(
        migrate_subscribers, api.catalog, env, key, from_version, to_version, at, now, entry
    )
    customers = done.customers()
    if customers:
        await api.refresh(env, customers)
    return json_response(done.to_json())


def _version(doc: dict[str, object], name: str) -> int:
    value = doc.get(name)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_VERSION:
        raise InvalidInput(
            f"'{name}' must be a plan version (a whole number ≥ 1)", [Problem(name, shown(value))]
        )
    return value


def _known(key: str, version: int) -> None:
    """A version outside what the store holds names no plan (a 404, never a store error)."""
    if not 1 <= version <= MAX_VERSION:
        raise NotFound(f"no plan {key!r} version {version}")
