"""Top-ups: a customer buys prepaid credit on its payment provider's hosted page.

``POST /v1/customers/{id}/top-ups`` answers with the pending purchase and the page to pay on;
the credit is booked when the provider's signed webhook says it was paid
(``POST /v1/providers/{provider}/webhook``), never when the customer comes back. See
:mod:`tallyray.invoicing.purchases` and docs/payments.md.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response
from starlette.concurrency import run_in_threadpool

from tallyray.errors import NotFound
from tallyray.invoicing.purchases import check_return_url, purchase_json
from tallyray.serve.api import api_of
from tallyray.serve.auth import audit_entry
from tallyray.serve.http import json_body, json_object, json_response
from tallyray.storage.pages import DEFAULT_LIMIT, PageRequest

__all__ = ["RETURNED_PATH", "router"]

router = APIRouter()

TOP_UP_FIELDS = frozenset({"amount", "currency", "return_url"})

#: Where a customer lands after the hosted page when the caller gave no ``return_url``.
RETURNED_PATH = "/top-ups/returned"


@router.post("/v1/customers/{customer_id}/top-ups", tags=["customers"], status_code=201)
async def post_top_up(customer_id: str, request: Request) -> Response:
    """Start a top-up: `{"amount", "currency"?, "return_url"?}` → `201` with the pending
    purchase and `checkout_url`, the provider's hosted page (Stripe Checkout, Adyen hosted
    checkout). The currency defaults to the customer's; the amount must be within the
    configured limits (`invoicing.top_ups`). The credit is booked once the provider's signed
    webhook says it was paid."""
    api = api_of(request)
    env = await api.authenticate(request)
    doc = json_object(await json_body(request), TOP_UP_FIELDS, frozenset({"amount"}))
    if doc.get("return_url") is not None:
        return_url = check_return_url(doc["return_url"])
    else:
        root = str(request.scope.get("root_path", ""))
        return_url = f"{str(request.base_url).rstrip('/')}{root}{RETURNED_PATH}"
    now = api.clock()
    entry = audit_entry(request, env, "credit_purchase.created", "customer", customer_id, now, doc)
    purchase = await api.billing.purchases.start_top_up(
        env, customer_id, doc["amount"], doc.get("currency"), return_url, entry
    )
    return json_response(purchase_json(purchase), 201)


@router.get("/v1/customers/{customer_id}/top-ups", tags=["customers"])
async def get_top_ups(
    customer_id: str,
    request: Request,
    limit: int = DEFAULT_LIMIT,
    starting_after: str | None = None,
) -> Response:
    """The customer's top-ups, newest first; `starting_after` takes a top-up's `id`."""
    api = api_of(request)
    env = await api.authenticate(request)
    page = PageRequest.of(limit, starting_after)
    await run_in_threadpool(api.catalog.customer, env, customer_id)  # 404 when unknown
    store = api.billing.purchases.store
    found = await run_in_threadpool(store.of_customer, env, customer_id, page, "top_up")
    return json_response(
        {"top_ups": [purchase_json(p) for p in found.items], "has_more": found.has_more}
    )


@router.get("/v1/top-ups/{top_up_id}", tags=["customers"])
async def get_top_up(top_up_id: str, request: Request) -> Response:
    """One top-up: its status (`pending`, `paid`, `failed`, `canceled`), the grant it booked
    and its receipt once paid."""
    api = api_of(request)
    env = await api.authenticate(request)
    purchase = await run_in_threadpool(api.billing.purchases.store.get, env, top_up_id)
    if purchase["kind"] != "top_up":
        raise NotFound(f"no top-up {top_up_id!r} in the {env} environment")
    return json_response(purchase_json(purchase))


@router.get(RETURNED_PATH, include_in_schema=False)
async def top_up_returned() -> Response:
    """Where a customer lands after the provider's page. Coming back proves nothing (anyone
    can open this URL): it says what happens next and changes nothing."""
    return HTMLResponse(
        "<!doctype html><html lang=en><meta charset=utf-8><title>Payment received</title>"
        "<p>Thank you. The credit appears on your balance as soon as the payment provider "
        "confirms the payment, usually within a minute.</p></html>",
        headers={"Cache-Control": "no-store", "X-Robots-Tag": "noindex"},
    )
