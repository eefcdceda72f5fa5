"""Webhook endpoints over the API (``/v1/webhook-endpoints``): create one (its signing secret
is shown once), list, read, disable, enable, delete, read its delivery log, send it a test
event. Every endpoint belongs to the environment of the key that created it.

Sending is the deliverer's job (:mod:`tallyray.alerts.deliverer`); these routes only write.
A new endpoint's URL must name a permitted destination (:mod:`tallyray.alerts.egress`): its
host is resolved when the endpoint is created, and a host that resolves to a loopback,
private, link-local or other non-public address, or to nothing, is a 422 naming ``url``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from tallyray.alerts.deliverer import Deliverer
from tallyray.alerts.egress import (
    RefusedDestination,
    Resolve,
    checked_addresses,
    host_and_port,
    system_resolve,
)
from tallyray.alerts.schedule import SUBSCRIBABLE_TYPES, TEST_EVENT
from tallyray.alerts.signing import new_secret
from tallyray.clock import Clock
from tallyray.errors import InvalidInput, Problem
from tallyray.serve.alert_rules import AlertRules
from tallyray.serve.api import Authenticate
from tallyray.serve.auth import audit_entry
from tallyray.serve.http import json_body, json_response
from tallyray.storage.audit import AuditEntry
from tallyray.storage.pages import DEFAULT_LIMIT, PageRequest, page_of_list
from tallyray.storage.webhooks import DELIVERY_STATUSES, WebhookStore

__all__ = ["WebhookRoutes", "check_destination", "include", "parse_endpoint", "router"]


ENDPOINT_FIELDS = frozenset({"url", "event_types", "description"})
MAX_URL = 2000
MAX_DESCRIPTION = 500
RESOLVE_SECONDS = 5.0
"""How long creating an endpoint waits for its host name to resolve."""


def parse_endpoint(doc: Any) -> tuple[str, list[str], str | None]:
    """(url, event types, description) from ``POST /v1/webhook-endpoints``, or
    :class:`InvalidInput` naming every bad field."""
    if not isinstance(doc, dict):
        raise InvalidInput("the body must be a JSON object")
    problems = [Problem(name, "unknown field") for name in sorted(set(doc) - ENDPOINT_FIELDS)]
    url = doc.get("url")
    if url is None:
        problems.append(Problem("url", "is required"))
    else:
        why = _url_problem(url)
        if why:
            problems.append(Problem("url", why))
    types: list[str] = []
    raw = doc.get("event_types")
    if raw is None:
        problems.append(Problem("event_types", "is required"))
    elif not isinstance(raw, list) or not raw:
        problems.append(Problem("event_types", "must be a non-empty list of event types"))
    else:
        for index, kind in enumerate(raw):
            if kind not in SUBSCRIBABLE_TYPES:
                problems.append(
                    Problem(
                        f"event_types[{index}]",
                        f"{kind!r} is not an event type; one of {', '.join(SUBSCRIBABLE_TYPES)}",
                    )
                )
            elif kind not in types:
                types.append(kind)
    description = doc.get("description")
    if description is not None and (
        not isinstance(description, str) or len(description) > MAX_DESCRIPTION
    ):
        problems.append(
            Problem("description", f"must be a string of at most {MAX_DESCRIPTION} characters")
        )
    if problems:
        raise InvalidInput("the webhook endpoint has problems", problems)
    return str(url), types, description


def _url_problem(url: Any) -> str | None:
    if not isinstance(url, str) or not url:
        return "must be an http:// or https:// URL"
    if len(url) > MAX_URL:
        return f"must be at most {MAX_URL} characters"
    try:
        parts = urlsplit(url)
        httpx.URL(url)
    except (ValueError, httpx.InvalidURL):
        return "is not a valid URL"
    if parts.scheme not in ("http", "https"):
        return "must be an http:// or https:// URL"
    if not parts.hostname:
        return "must name a host"
    if parts.fragment:
        return "must not have a #fragment"
    return None


async def check_destination(
    url: str, resolve: Resolve = system_resolve, *, allow_private: bool = False
) -> None:
    """:class:`InvalidInput` naming ``url`` unless its host resolves, and only to permitted
    addresses (``allow_private``: to any address). ``url`` has passed
    :func:`parse_endpoint`. The deliverer checks again on every attempt."""
    host, port = host_and_port(httpx.URL(url))
    try:
        await checked_addresses(
            host, port, resolve, allow_private=allow_private, timeout=RESOLVE_SECONDS
        )
    except RefusedDestination as error:
        raise InvalidInput(
            "the webhook endpoint has problems", [Problem("url", str(error))]
        ) from None


def _audit(
    request: Request,
    env: str,
    verb: str,
    endpoint_id: str,
    at: int,
    summary: Mapping[str, Any] | None = None,
) -> AuditEntry:
    return audit_entry(
        request, env, f"webhook_endpoint.{verb}", "webhook_endpoint", endpoint_id, at, summary
    )


@dataclass
class WebhookRoutes:
    """What the webhook and alert-rule routes need (``app.state.webhooks``)."""

    store: WebhookStore
    authenticate: Authenticate
    clock: Clock
    deliverer: Deliverer | None = None
    """With one, a test event is sent at once (in the background) rather than on the
    deliverer actor's next round."""
    allow_private: bool = False
    """Accept URLs whose host is not public (``TALLYRAY_WEBHOOK_ALLOW_PRIVATE``)."""
    resolve: Resolve = system_resolve
    """Looks host names up (tests inject their own)."""
    alert_rules: AlertRules | None = None


router = APIRouter()
_background: set[asyncio.Task[Any]] = set()


def include(app: FastAPI, routes: WebhookRoutes) -> None:
    """Serve the webhook-endpoint and alert-rule routes on ``app``."""
    app.state.webhooks = routes
    app.include_router(router)


def _routes(request: Request) -> WebhookRoutes:
    routes: WebhookRoutes = request.app.state.webhooks
    return routes


def _rules(request: Request) -> AlertRules:
    rules = _routes(request).alert_rules
    assert rules is not None, "alert-rule routes need WebhookRoutes.alert_rules"
    return rules


@router.post("/v1/webhook-endpoints", tags=["webhooks"], status_code=201)
async def post_endpoint(request: Request) -> Response:
    """`{"url", "event_types": [...], "description"?}` → the endpoint, with its signing
    `secret` (`whsec_...`): shown here only, keep it. The URL's host must resolve, and
    only to public addresses (not loopback, private, link-local, ...)."""
    w = _routes(request)
    env = await w.authenticate(request)
    url, types, description = parse_endpoint(await json_body(request, required=False))
    await check_destination(url, w.resolve, allow_private=w.allow_private)
    secret = new_secret()
    now = w.clock()
    summary = {"url": url, "event_types": types, "description": description}
    entry = _audit(request, env, "created", "", now, summary)
    endpoint = await run_in_threadpool(
        w.store.create_endpoint, env, url, types, description, secret, now, entry
    )
    return json_response({**endpoint.to_json(), "secret": secret}, 201)


@router.get("/v1/webhook-endpoints", tags=["webhooks"])
async def get_endpoints(
    request: Request, limit: int = DEFAULT_LIMIT, starting_after: str | None = None
) -> Response:
    """Webhook endpoints, oldest first."""
    w = _routes(request)
    env = await w.authenticate(request)
    page = PageRequest.of(limit, starting_after)
    endpoints = await run_in_threadpool(w.store.endpoints, env)
    found = page_of_list(endpoints, lambda e: e.id, page, "webhook endpoint")
    return json_response(
        {"endpoints": [e.to_json() for e in found.items], "has_more": found.has_more}
    )


@router.get("/v1/webhook-endpoints/{endpoint_id}", tags=["webhooks"])
async def get_endpoint(endpoint_id: str, request: Request) -> Response:
    w = _routes(request)
    env = await w.authenticate(request)
    return json_response((await run_in_threadpool(w.store.endpoint, env, endpoint_id)).to_json())


@router.delete("/v1/webhook-endpoints/{endpoint_id}", tags=["webhooks"])
async def delete_endpoint(endpoint_id: str, request: Request) -> Response:
    """Remove the endpoint and its delivery log."""
    w = _routes(request)
    env = await w.authenticate(request)
    entry = _audit(request, env, "deleted", endpoint_id, w.clock())
    await run_in_threadpool(w.store.delete_endpoint, env, endpoint_id, entry)
    return json_response({"deleted": endpoint_id})


@router.post("/v1/webhook-endpoints/{endpoint_id}/disable", tags=["webhooks"])
async def disable_endpoint(endpoint_id: str, request: Request) -> Response:
    """Optional body `{"reason"}`. Open deliveries are stopped; nothing is sent to the
    endpoint until it is enabled."""
    w = _routes(request)
    env = await w.authenticate(request)
    doc = await json_body(request, required=False) or {}
    if not isinstance(doc, dict) or set(doc) - {"reason"}:
        raise InvalidInput('the body is optional: {"reason": "..."}')
    reason = doc.get("reason") or "disabled over the API"
    if not isinstance(reason, str) or len(reason) > MAX_DESCRIPTION:
        message = f"must be a string of at most {MAX_DESCRIPTION} characters"
        raise InvalidInput(f"'reason' {message}", [Problem("reason", message)])
    now = w.clock()
    entry = _audit(request, env, "disabled", endpoint_id, now, {"reason": reason})
    endpoint = await run_in_threadpool(w.store.disable, env, endpoint_id, reason, now, entry)
    return json_response(endpoint.to_json())


@router.post("/v1/webhook-endpoints/{endpoint_id}/enable", tags=["webhooks"])
async def enable_endpoint(endpoint_id: str, request: Request) -> Response:
    """Send to the endpoint again, from the next message on."""
    w = _routes(request)
    env = await w.authenticate(request)
    entry = _audit(request, env, "enabled", endpoint_id, w.clock())
    endpoint = await run_in_threadpool(w.store.enable, env, endpoint_id, entry)
    return json_response(endpoint.to_json())


@router.get("/v1/webhook-endpoints/{endpoint_id}/deliveries", tags=["webhooks"])
async def get_deliveries(
    endpoint_id: str,
    request: Request,
    status: str | None = None,
    limit: int = DEFAULT_LIMIT,
    starting_after: str | None = None,
) -> Response:
    """The delivery log, newest first: message id, type, status (`pending`, `sending`,
    `succeeded`, `failed`, `stopped`), attempts, the last status code or error, and the
    next attempt. `?status=&limit=` (at most 1,000)."""
    w = _routes(request)
    env = await w.authenticate(request)
    if status is not None and status not in DELIVERY_STATUSES:
        raise InvalidInput(
            f"'status' must be one of {', '.join(DELIVERY_STATUSES)}",
            [Problem("status", status)],
        )
    page = PageRequest.of(limit, starting_after)
    found = await run_in_threadpool(w.store.deliveries, env, endpoint_id, status, page)
    return json_response({"deliveries": found.items, "has_more": found.has_more})


@router.post("/v1/webhook-endpoints/{endpoint_id}/test", tags=["webhooks"], status_code=202)
async def send_test(endpoint_id: str, request: Request) -> Response:
    """Send a `webhook.test` event to this endpoint only; follow it in the delivery
    log."""
    w = _routes(request)
    env = await w.authenticate(request)
    now = w.clock()
    payload = {"endpoint_id": endpoint_id, "message": "A test event, sent on request."}
    message_id, delivery_id = await run_in_threadpool(
        w.store.send_to_one, env, endpoint_id, TEST_EVENT, payload, now
    )
    if w.deliverer is not None:
        task = asyncio.create_task(w.deliverer.deliver_now(delivery_id, endpoint_id, now))
        _background.add(task)
        task.add_done_callback(_background.discard)
    return json_response(
        {"message_id": message_id, "delivery_id": delivery_id, "type": TEST_EVENT}, 202
    )


# -- alert rules -------------------------------------------------------------------------


@router.get("/v1/customers/{customer_id}/alert-rules", tags=["alerts"])
async def get_alert_rules(customer_id: str, request: Request) -> Response:
    """The customer's own alert rules, then its plan's defaults."""
    env = await _routes(request).authenticate(request)
    return json_response({"rules": await _rules(request).list(env, customer_id)})


@router.post("/v1/customers/{customer_id}/alert-rules", tags=["alerts"], status_code=201)
async def post_alert_rule(customer_id: str, request: Request) -> Response:
    """`{"kind": "balance_below" | "spend_above" | "usage_above" |
    "credits_used_percent", "threshold": "10.00", "meter"?, "name"?}`: evaluated by the
    customer's shard on every batch; fires `alert.triggered` / `alert.recovered`."""
    env = await _routes(request).authenticate(request)
    rules = _rules(request)
    doc = await json_body(request)
    summary = {"customer_id": customer_id, "rule": doc}
    entry = audit_entry(
        request, env, "alert_rule.created", "alert_rule", "", rules.clock(), summary
    )
    return json_response(await rules.add(env, customer_id, doc, entry), 201)


@router.delete("/v1/customers/{customer_id}/alert-rules/{rule_id}", tags=["alerts"])
async def delete_alert_rule(customer_id: str, rule_id: str, request: Request) -> Response:
    env = await _routes(request).authenticate(request)
    rules = _rules(request)
    summary = {"customer_id": customer_id}
    entry = audit_entry(
        request, env, "alert_rule.deleted", "alert_rule", rule_id, rules.clock(), summary
    )
    await rules.delete(env, customer_id, rule_id, entry)
    return json_response({"deleted": rule_id})
