"""Saved payment methods and auto-recharge, per customer.

- ``GET /v1/customers/{id}/payment-methods``: the saved cards (brand, last 4, expiry);
- ``POST /v1/customers/{id}/payment-methods/setup``: the provider's page to add a card (or
  replace one, with ``replaces``); the card is saved by the provider's signed webhook;
- ``DELETE /v1/customers/{id}/payment-methods/{method_id}``: forget a card;
- ``GET`` / ``PUT`` / ``DELETE /v1/customers/{id}/auto-recharge``: the settings.

See docs/payments.md.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from fastapi import APIRouter, Request
from fastapi.responses import Response

from tallyray.errors import InvalidInput, Problem
from tallyray.serve.api import api_of
from tallyray.serve.auth import audit_entry
from tallyray.serve.http import json_body, json_object, json_response

__all__ = ["SETUP_FIELDS", "check_url", "router"]

router = APIRouter()

SETUP_FIELDS = frozenset({"success_url", "cancel_url", "replaces"})


def check_url(doc: dict[str, Any], name: str) -> str:
    """An absolute http(s) URL from the body, or a 422 naming ``name``."""
    url = doc.get(name)
    if not isinstance(url, str) or len(url) > 2000:
        raise InvalidInput(
            f"'{name}' must be an http:// or https:// URL", [Problem(name, "not a URL")]
        )
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise InvalidInput(
            f"'{name}' must be an absolute http:// or https:// URL", [Problem(name, url[:80])]
        )
    return url


@router.get("/v1/customers/{customer_id}/payment-methods", tags=["payment methods"])
async def get_payment_methods(customer_id: str, request: Request) -> Response:
    """The customer's saved cards, its default (the one off-session charges use) first."""
    api = api_of(request)
    env = await api.authenticate(request)
    methods = await api.billing.methods.list(env, customer_id)
    return json_response({"payment_methods": methods})


@router.post(
    "/v1/customers/{customer_id}/payment-methods/setup",
    tags=["payment methods"],
    status_code=201,
)
async def post_payment_method_setup(customer_id: str, request: Request) -> Response:
    """`{"success_url", "cancel_url", "replaces"?}`: the provider's own page (`url`) where the
    customer saves a card. Nothing is saved when the customer comes back: the provider's
    signed webhook saves it, as the new default (removing the card it `replaces`)."""
    api = api_of(request)
    env = await api.authenticate(request)
    doc = json_object(
        await json_body(request), SETUP_FIELDS, frozenset({"success_url", "cancel_url"})
    )
    replaces = doc.get("replaces")
    if replaces is not None and not isinstance(replaces, str):
        raise InvalidInput(
            "'replaces' must be a saved payment method's id", [Problem("replaces", "not an id")]
        )
    setup = await api.billing.methods.start_setup(
        env, customer_id, check_url(doc, "success_url"), check_url(doc, "cancel_url"), replaces
    )
    return json_response(setup, 201)


@router.delete("/v1/customers/{customer_id}/payment-methods/{method_id}", tags=["payment methods"])
async def delete_payment_method(customer_id: str, method_id: str, request: Request) -> Response:
    """Forget a saved card (and detach it at the provider). When it was the default, the
    newest other card becomes the default."""
    api = api_of(request)
    env = await api.authenticate(request)
    entry = audit_entry(
        request,
        env,
        "payment_method.removed",
        "payment_method",
        method_id,
        api.clock(),
        {"customer_id": customer_id},
    )
    return json_response(await api.billing.methods.remove(env, customer_id, method_id, entry))


@router.get("/v1/customers/{customer_id}/auto-recharge", tags=["payment methods"])
async def get_auto_recharge(customer_id: str, request: Request) -> Response:
    api = api_of(request)
    env = await api.authenticate(request)
    return json_response(await api.billing.recharges.get(env, customer_id))


@router.put("/v1/customers/{customer_id}/auto-recharge", tags=["payment methods"])
async def put_auto_recharge(customer_id: str, request: Request) -> Response:
    """`{"enabled", "threshold", "amount", "monthly_cap"}` in the customer's currency: when
    the available balance falls below `threshold`, the default saved card is charged
    `amount` off session, at most `monthly_cap` a calendar month (UTC). Needs a saved card."""
    api = api_of(request)
    env = await api.authenticate(request)
    doc = await json_body(request)
    entry = audit_entry(
        request,
        env,
        "auto_recharge.updated",
        "customer",
        customer_id,
        api.clock(),
        {"customer_id": customer_id, "settings": doc if isinstance(doc, dict) else None},
    )
    return json_response(await api.billing.recharges.put(env, customer_id, doc, entry))


@router.delete("/v1/customers/{customer_id}/auto-recharge", tags=["payment methods"])
async def delete_auto_recharge(customer_id: str, request: Request) -> Response:
    api = api_of(request)
    env = await api.authenticate(request)
    entry = audit_entry(
        request,
        env,
        "auto_recharge.deleted",
        "customer",
        customer_id,
        api.clock(),
        {"customer_id": customer_id},
    )
    return json_response(await api.billing.recharges.delete(env, customer_id, entry))
