"""Meters, plans, customers, subscriptions and credits: what an account is made of.

Writes go to the catalog (or, for credits, to the customer's shard, which books the grant
in its own commit) and are audited in the same transaction; the shards that hold the
customers are refreshed afterwards.
"""

from __future__ import annotations

import hashlib
from decimal import Decimal
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from tallyray.errors import Conflict, InvalidInput, Problem
from tallyray.pricing.events import format_timestamp
from tallyray.pricing.money import currency, parse_amount, shown
from tallyray.pricing.periods import ANCHORS
from tallyray.serve.api import api_of
from tallyray.serve.auth import audit_entry
from tallyray.serve.http import (
    json_body,
    json_object,
    json_response,
    text_field,
    timestamp_field,
)
from tallyray.storage.catalog import (
    CANCEL_AT,
    CUSTOMER_FIELDS,
    customer_from_json,
    new_id,
)
from tallyray.storage.pages import DEFAULT_LIMIT, PageRequest, page_of_list

__all__ = ["router"]

router = APIRouter()

SUBSCRIPTION_FIELDS = frozenset({"customer_id", "plan", "start", "anchor", "discount"})
GRANT_FIELDS = frozenset({"amount", "currency", "expires_at", "priority"})


# -- meters and plans --------------------------------------------------------------------


@router.post("/v1/meters", tags=["catalog"], status_code=201)
async def post_meter(request: Request) -> Response:
    """Create a meter. A meter cannot change once created (`409`); posting the same
    definition again changes nothing."""
    api = api_of(request)
    env = await api.authenticate(request)
    doc = await json_body(request)
    now = api.clock()
    entry = audit_entry(request, env, "meter.created", "meter", _key_of(doc), now, doc)
    meter = await run_in_threadpool(api.catalog.add_meter, env, doc, now, entry)
    await api.refresh(env, [])
    return json_response({"key": meter.key, **doc}, 201)


@router.get("/v1/meters", tags=["catalog"])
async def get_meters(
    request: Request, limit: int = DEFAULT_LIMIT, starting_after: str | None = None
) -> Response:
    """The environment's meters by key; `starting_after` takes a meter's key."""
    api = api_of(request)
    env = await api.authenticate(request)
    page = PageRequest.of(limit, starting_after)
    rows = await run_in_threadpool(api.catalog.meter_definitions, env)
    found = page_of_list(rows, lambda m: str(m["key"]), page, "meter")
    return json_response({"meters": found.items, "has_more": found.has_more})


@router.post("/v1/plans", tags=["catalog"], status_code=201)
async def post_plan(request: Request) -> Response:
    """Create a plan; posting an existing key with changes makes a new version
    (subscriptions keep theirs). With `"draft": true` the version is a draft: stored and
    simulated, not subscribable until published; posting a draft again replaces it."""
    api = api_of(request)
    env = await api.authenticate(request)
    doc = await json_body(request)
    draft = _draft_flag(doc)
    now = api.clock()
    action = "plan.draft_saved" if draft else "plan.created"
    entry = audit_entry(request, env, action, "plan", _key_of(doc), now, doc)
    _, version = await run_in_threadpool(api.catalog.add_plan, env, doc, now, entry, draft)
    await api.refresh(env, [])
    status = "draft" if draft else "published"
    return json_response({**doc, "version": version, "status": status}, 201)


@router.get("/v1/plans", tags=["catalog"])
async def get_plans(
    request: Request, limit: int = DEFAULT_LIMIT, starting_after: str | None = None
) -> Response:
    """The latest published version of every plan, by key, with `status` and the version
    of its draft (`draft_version`, or `null`); a key with only a draft shows the draft.
    `starting_after` takes a plan's key."""
    api = api_of(request)
    env = await api.authenticate(request)
    page = PageRequest.of(limit, starting_after)
    catalog = await run_in_threadpool(api.catalog.env_catalog, env)
    shown = {**catalog.drafts, **catalog.latest}
    plans = [
        {
            **catalog.raw_plans[(key, version)],
            "key": key,
            "version": version,
            "status": catalog.status(key, version),
            "draft_version": catalog.drafts.get(key),
        }
        for key, version in sorted(shown.items())
    ]
    found = page_of_list(plans, lambda p: str(p["key"]), page, "plan")
    return json_response({"plans": found.items, "has_more": found.has_more})


@router.get("/v1/plans/{key}", tags=["catalog"])
async def get_plan(key: str, request: Request, version: int | None = None) -> Response:
    api = api_of(request)
    env = await api.authenticate(request)
    catalog = await run_in_threadpool(api.catalog.env_catalog, env)
    if version is None and key not in catalog.latest and key in catalog.drafts:
        version = catalog.drafts[key]  # only a draft so far
    catalog.plan(key, version)  # 404 when missing
    chosen = version or catalog.latest[key]
    return json_response(
        {
            **catalog.raw_plans[(key, chosen)],
            "version": chosen,
            "status": catalog.status(key, chosen),
            "draft_version": catalog.drafts.get(key),
        }
    )


# -- customers and subscriptions ---------------------------------------------------------


@router.post("/v1/customers", tags=["customers"], status_code=201)
async def post_customer(request: Request) -> Response:
    """Create a customer, or update the fields given (its currency cannot change)."""
    api = api_of(request)
    env = await api.authenticate(request)
    doc = json_object(await json_body(request), CUSTOMER_FIELDS, frozenset({"id", "currency"}))
    record = customer_from_json(env, doc)
    now = api.clock()
    entry = audit_entry(request, env, "customer.saved", "customer", record.id, now, doc)
    saved = await run_in_threadpool(api.catalog.upsert_customer, record, now, frozenset(doc), entry)
    await api.refresh_customer(env, saved.id)
    return json_response(saved.to_json(), 201)


@router.get("/v1/customers", tags=["customers"])
async def get_customers(
    request: Request, limit: int = DEFAULT_LIMIT, starting_after: str | None = None
) -> Response:
    """The environment's customers by id, each with its active subscription."""
    api = api_of(request)
    env = await api.authenticate(request)
    page = PageRequest.of(limit, starting_after)
    found = await run_in_threadpool(api.catalog.customer_page, env, page)
    return json_response(
        {"customers": [c.to_json() for c in found.items], "has_more": found.has_more}
    )


@router.get("/v1/customers/{customer_id}", tags=["customers"])
async def get_customer(customer_id: str, request: Request) -> Response:
    api = api_of(request)
    env = await api.authenticate(request)
    record = await run_in_threadpool(api.catalog.customer, env, customer_id)
    return json_response(record.to_json())


@router.post("/v1/subscriptions", tags=["customers"], status_code=201)
async def post_subscription(request: Request) -> Response:
    """Subscribe a customer to the latest version of a plan, ending the subscription it had
    (a plan change: the day of the change belongs to the new plan)."""
    api = api_of(request)
    env = await api.authenticate(request)
    doc = json_object(
        await json_body(request), SUBSCRIPTION_FIELDS, frozenset({"customer_id", "plan"})
    )
    customer_id, plan_key = text_field(doc, "customer_id"), text_field(doc, "plan")
    assert customer_id is not None and plan_key is not None
    now = api.clock()
    start = now if doc.get("start") is None else timestamp_field(doc["start"], "start")
    anchor = doc.get("anchor", "calendar")
    if anchor not in ANCHORS:
        raise InvalidInput(
            f"'anchor' must be one of {', '.join(ANCHORS)}", [Problem("anchor", str(anchor))]
        )
    discount = _discount(doc.get("discount"))
    entry = audit_entry(request, env, "subscription.created", "subscription", "", now, doc)
    sub_id, version = await run_in_threadpool(
        api.catalog.subscribe, env, customer_id, plan_key, start, now, anchor, discount, entry
    )
    await api.refresh_customer(env, customer_id)
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


@router.get("/v1/subscriptions", tags=["customers"])
async def get_subscriptions(
    request: Request,
    customer_id: str | None = None,
    limit: int = DEFAULT_LIMIT,
    starting_after: str | None = None,
) -> Response:
    """Subscriptions, ended ones too, oldest first (`?customer_id=` for one customer's)."""
    api = api_of(request)
    env = await api.authenticate(request)
    page = PageRequest.of(limit, starting_after)
    if customer_id is not None:
        await run_in_threadpool(api.catalog.customer, env, customer_id)  # 404 when unknown
    found = await run_in_threadpool(
        api.catalog.subscription_page, env, customer_id, page, api.clock()
    )
    return json_response({"subscriptions": found.items, "has_more": found.has_more})


@router.post("/v1/subscriptions/{subscription_id}/cancel", tags=["customers"])
async def cancel_subscription(subscription_id: str, request: Request) -> Response:
    """End a subscription: `{"at": "period_end"}` (the default) at the end of its current
    period, or `{"at": "now"}`. The period it ends in is invoiced with its base fee prorated
    to the days it covered, and its usage (to the period's end) under its plan; nothing is
    invoiced after it. Cancelling again answers the same; an ended subscription is a 409."""
    api = api_of(request)
    env = await api.authenticate(request)
    body = await json_body(request, required=False)
    doc = json_object({} if body is None else body, frozenset({"at"}))
    at = doc.get("at", "period_end")
    if at not in CANCEL_AT:
        raise InvalidInput(
            f"'at' must be one of {', '.join(CANCEL_AT)}", [Problem("at", shown(at))]
        )
    now = api.clock()
    entry = audit_entry(
        request, env, "subscription.canceled", "subscription", subscription_id, now, {"at": at}
    )
    ended = await run_in_threadpool(api.catalog.cancel, env, subscription_id, at, now, entry)
    await api.refresh_customer(env, ended["customer_id"])
    return json_response(ended)


# -- credits and the balance -------------------------------------------------------------


@router.post("/v1/customers/{customer_id}/credits", tags=["customers"], status_code=201)
async def post_credits(customer_id: str, request: Request) -> Response:
    """Grant prepaid credit. Burns by priority (lower first), then earliest expiry."""
    api = api_of(request)
    env = await api.authenticate(request)
    doc = json_object(await json_body(request), GRANT_FIELDS, frozenset({"amount"}))
    record = await run_in_threadpool(api.catalog.customer, env, customer_id)
    cur = currency(doc.get("currency", record.currency))
    amount = parse_amount(doc["amount"], places=cur.minor_units, field="amount", sign="positive")
    priority = doc.get("priority", 1)
    if isinstance(priority, bool) or not isinstance(priority, int) or priority < 0:
        raise InvalidInput("'priority' must be a whole number ≥ 0 (lower burns first)")
    now = api.clock()
    expires_at = None
    if doc.get("expires_at") is not None:
        expires_at = timestamp_field(doc["expires_at"], "expires_at")
        if expires_at <= now:
            raise InvalidInput("'expires_at' is in the past", [Problem("expires_at", "past")])
    key = request.headers.get("idempotency-key")
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
    summary = {"customer_id": customer_id, **doc}
    entry = audit_entry(
        request, env, "credit_grant.created", "credit_grant", grant["id"], now, summary
    )
    router_ = api.router
    booked = await router_.call(
        router_.index(env, customer_id),
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
    expires = grant["expires_at"]
    return json_response(
        {
            **grant,
            "expires_at": None if expires is None else format_timestamp(expires),
            "created_at": format_timestamp(grant["created_at"]),
        },
        status,
    )


@router.get("/v1/customers/{customer_id}/balance", tags=["customers"])
async def get_balance(customer_id: str, request: Request) -> Response:
    """The live balance, answered from the shard's memory."""
    api = api_of(request)
    env = await api.authenticate(request)
    index = api.router.index(env, customer_id)
    return json_response(await api.router.call(index, "balance", env, customer_id))


# -- helpers -----------------------------------------------------------------------------


def _key_of(doc: Any) -> str:
    """The ``key`` of a meter or plan body, for its audit entry (the store checks it)."""
    key = doc.get("key") if isinstance(doc, dict) else None
    return key if isinstance(key, str) else ""


def _draft_flag(doc: Any) -> bool:
    """Take ``"draft"`` out of a plan body (it is not part of the plan)."""
    if not isinstance(doc, dict) or "draft" not in doc:
        return False
    draft = doc.pop("draft")
    if not isinstance(draft, bool):
        raise InvalidInput("'draft' must be true or false", [Problem("draft", shown(draft))])
    return draft


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
    if description is not None and (not isinstance(description, str) or len(description) > 200):
        raise InvalidInput(
            "discount description must be a string of at most 200 characters",
            [Problem("discount.description", "not a short string")],
        )
    pct = out.get("percent")
    out["description"] = description or (f"Discount {pct}%" if pct else "Discount")
    return out
