"""Operations and administration: liveness, Prometheus metrics, API keys (the admin key's
routes) and the audit log.

- ``POST /v1/admin/keys`` makes a key (its secret is shown once), ``GET /v1/admin/keys``
  lists them (never a secret), ``POST /v1/admin/keys/{id}/revoke`` revokes one: every
  replica refuses it within its key cache's lifetime (2 s by default).
- ``POST /v1/admin/reshard`` changes the shard count on the running deployment
  (:mod:`tallyray.cluster.reshard`; ``tallyray reshard`` calls it): writes answer 503
  ``resharding`` with ``Retry-After`` while it runs.
- ``GET /v1/audit-events`` reads the audit log of the key's environment (``manage`` scope);
  the admin key reads any environment's (``?env=``).
"""

from __future__ import annotations

import asyncio
import contextlib

from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from tallyray import __version__
from tallyray.access import ADMIN, ALL_SCOPES, KEY_ENVIRONMENTS, parse_scopes
from tallyray.errors import Conflict, InvalidInput, Problem, StoreUnavailable
from tallyray.pricing.money import shown
from tallyray.serve.api import api_of
from tallyray.serve.auth import audit_entry
from tallyray.serve.http import json_response, object_body, timestamp_field
from tallyray.storage.pages import DEFAULT_LIMIT, PageRequest, page_of_list

__all__ = ["router"]

router = APIRouter()

MAX_KEY_NAME = 200

MAX_SHARDS = 1024
"""The most shards ``POST /v1/admin/reshard`` makes (each is a Ray actor, ~125 MB)."""

_resharding = asyncio.Lock()
"""One reshard at a time through this replica (the store refuses a second one whose
starting count is stale)."""


@router.get("/healthz", tags=["operations"])
async def healthz(request: Request) -> Response:
    """Liveness: the replica answers, and how many shards it routes to."""
    api = api_of(request)
    return json_response({"status": "ok", "version": __version__, "shards": api.router.count})


@router.get("/metrics", tags=["operations"])
async def get_metrics(request: Request) -> Response:
    """Prometheus text: the replica's counters and the shards' cumulative histograms."""
    api = api_of(request)
    with contextlib.suppress(StoreUnavailable):  # a restarting shard: report what we have
        api.metrics.absorb_shards(await api.router.call_all("status"))
    api.metrics.absorb_shard_calls(api.router.calls)
    return Response(api.metrics.render(), media_type="text/plain; version=0.0.4")


@router.post("/v1/admin/keys", tags=["admin"], status_code=201)
async def create_key(request: Request) -> Response:
    """`{"env": "live" | "test" | "admin", "name"?, "scopes"?: ["ingest", "read",
    "manage"], "expires_at"?}` → the key, with its secret `key`: shown here only."""
    api = api_of(request)
    await api.authenticate(request)
    doc = await object_body(
        request, frozenset({"env", "name", "scopes", "expires_at"}), frozenset({"env"})
    )
    problems: list[Problem] = []
    env = doc["env"]
    if env not in KEY_ENVIRONMENTS:
        problems.append(Problem("env", f"must be one of {', '.join(KEY_ENVIRONMENTS)}"))
    name = doc.get("name")
    if name is not None and (
        not isinstance(name, str) or not 0 < len(name) <= MAX_KEY_NAME or "\x00" in name
    ):
        problems.append(Problem("name", f"must be a string of 1 to {MAX_KEY_NAME} characters"))
    scopes = ALL_SCOPES
    if doc.get("scopes") is not None:
        try:
            scopes = parse_scopes(doc["scopes"])
        except ValueError as error:
            problems.append(Problem("scopes", str(error)))
        if env == ADMIN:
            problems.append(Problem("scopes", "an admin key has no scopes to choose"))
    now = api.clock()
    expires_at = None
    if doc.get("expires_at") is not None:
        expires_at = timestamp_field(doc["expires_at"], "expires_at")
        if expires_at <= now:
            problems.append(Problem("expires_at", "is not in the future"))
    if problems:
        raise InvalidInput("the key has problems", problems)
    entry = audit_entry(
        request,
        env,
        "api_key.created",
        "api_key",
        "",
        now,
        {"name": name, "scopes": sorted(scopes), "expires_at": doc.get("expires_at")},
    )
    key, secret = await run_in_threadpool(
        lambda: api.keys.create(env, now, name, scopes, expires_at, audit=entry)
    )
    return json_response({**key.to_json(), "key": secret}, 201)


@router.post("/v1/admin/reshard", tags=["admin"])
async def reshard(request: Request) -> Response:
    """`{"shards": N}` → the shard count becomes N on the running deployment: every shard
    stops taking writes (503 `resharding` + `Retry-After` meanwhile), checkpoints, hands its
    accounts over, and the new set starts from the checkpoints. Answers what moved and how
    long writes paused."""
    api = api_of(request)
    env = await api.authenticate(request)
    doc = await object_body(request, frozenset({"shards"}), frozenset({"shards"}))
    count = doc["shards"]
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= MAX_SHARDS:
        raise InvalidInput(
            "the request has problems",
            [Problem("shards", f"must be a whole number from 1 to {MAX_SHARDS}")],
        )
    if api.services.reshard is None:
        raise Conflict("this server cannot change its shard count while running")
    if _resharding.locked():
        raise Conflict("a reshard is running already; wait for it to finish")
    async with _resharding:
        api.router.relayout()
        if count == api.router.count:
            return json_response({"from": count, "to": count, "unchanged": True})
        result = await api.services.reshard(count)
        api.router.relayout()
    entry = audit_entry(request, env, "shards.resharded", "shards", "", api.clock(), result)
    await run_in_threadpool(api.audit.write, entry)
    return json_response(result)


@router.get("/v1/admin/keys", tags=["admin"])
async def list_keys(
    request: Request,
    env: str | None = None,
    limit: int = DEFAULT_LIMIT,
    starting_after: str | None = None,
) -> Response:
    """Every key (of `?env=`): id, env, name, scopes, dates, never a secret."""
    api = api_of(request)
    await api.authenticate(request)
    if env is not None and env not in KEY_ENVIRONMENTS:
        raise InvalidInput(
            f"'env' must be one of {', '.join(KEY_ENVIRONMENTS)}", [Problem("env", shown(env))]
        )
    page = PageRequest.of(limit, starting_after)
    keys = await run_in_threadpool(api.keys.list, env)
    found = page_of_list(keys, lambda k: k.id, page, "API key")
    return json_response({"keys": [k.to_json() for k in found.items], "has_more": found.has_more})


@router.post("/v1/admin/keys/{key_id}/revoke", tags=["admin"])
async def revoke_key(key_id: str, request: Request) -> Response:
    """Revoke a key: refused (401) from now on, on every replica within seconds."""
    api = api_of(request)
    await api.authenticate(request)
    now = api.clock()
    known = await run_in_threadpool(api.keys.get, key_id)
    entry = audit_entry(
        request, known.env, "api_key.revoked", "api_key", key_id, now, {"name": known.name}
    )
    key = await run_in_threadpool(api.keys.revoke, key_id, now, entry)
    api.key_cache.forget(key_id)
    return json_response(key.to_json())


@router.get("/v1/audit-events", tags=["admin"])
async def audit_events(
    request: Request,
    object_type: str | None = None,
    object_id: str | None = None,
    since: str | None = None,
    starting_after: str | None = None,
    limit: int = DEFAULT_LIMIT,
    env: str | None = None,
) -> Response:
    """The audit log, oldest first: who (key id and name, or the portal's customer), what
    (`action`), which object, when, the request id, and a summary of the change.
    `?object_type&object_id&since&starting_after&limit` (at most 1,000)."""
    api = api_of(request)
    own = await api.authenticate(request)
    if own != ADMIN and env is not None and env != own:
        raise InvalidInput(
            "a key reads its own environment's audit log; leave out 'env'",
            [Problem("env", shown(env))],
        )
    chosen = env if own == ADMIN and env is not None else own
    page = PageRequest.of(limit, starting_after)
    found = await run_in_threadpool(
        lambda: api.audit.events(
            chosen,
            object_type=object_type,
            object_id=object_id,
            since=None if since is None else timestamp_field(since, "since"),
            starting_after=page.starting_after,
            limit=page.limit,
        )
    )
    return json_response({"events": found[:limit], "has_more": len(found) > limit})
