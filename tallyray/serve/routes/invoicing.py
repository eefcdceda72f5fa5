"""The invoicing part of the HTTP API: invoice runs, invoices and their documents, credit
notes, exchange rates, payments and the payment providers' webhooks.

Routes are thin: they authenticate, check the body, and call
:class:`~tallyray.invoicing.service.Billing`.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response
from starlette.concurrency import run_in_threadpool

from tallyray.errors import CurrencyError, InvalidInput, Problem
from tallyray.invoicing.documents import render_html, render_pdf
from tallyray.invoicing.service import Billing
from tallyray.pricing.events import format_timestamp
from tallyray.pricing.money import currency, parse_amount
from tallyray.serve.api import api_of
from tallyray.serve.auth import audit_entry
from tallyray.serve.http import json_response, object_body, timestamp_field
from tallyray.storage.audit import AuditEntry
from tallyray.storage.pages import DEFAULT_LIMIT, PageRequest, page_of_list

__all__ = ["router"]


def _moment(doc: dict[str, Any], name: str) -> int | None:
    value = doc.get(name)
    return None if value is None else timestamp_field(value, name)


def _flag(doc: dict[str, Any], name: str) -> bool | None:
    value = doc.get(name)
    if value is not None and not isinstance(value, bool):
        raise InvalidInput(f"'{name}' must be true or false", [Problem(name, "not a boolean")])
    return value


def _pdf(document: dict[str, Any]) -> Response:
    name = document.get("number") or document["id"]
    return Response(
        render_pdf(document),
        media_type="application/pdf",
        headers={"Content-Disposition": f'inline; filename="{name}.pdf"'},
    )


router = APIRouter(tags=["invoicing"])


def _invoice_audit(
    billing: Billing, request: Request, env: str, verb: str, invoice_id: str
) -> AuditEntry:
    return audit_entry(request, env, f"invoice.{verb}", "invoice", invoice_id, billing.clock())


# -- invoice runs --------------------------------------------------------------------


@router.post("/v1/invoice-runs", tags=["invoicing"], status_code=202)
async def post_invoice_run(request: Request) -> Response:
    """Close the periods that ended by `until` (default: now less the grace window) on
    every shard, and invoice them in Ray tasks. Idempotent: a period is never invoiced
    twice. `force: true` closes periods still in their grace window."""
    api = api_of(request)
    billing = api.billing
    env = await api.authenticate(request)
    doc = await object_body(request, frozenset({"until", "force", "finalize"}), empty_ok=True)
    entry = audit_entry(request, env, "invoice_run.started", "invoice_run", "", billing.clock())
    run = await billing.start_run(
        env, _moment(doc, "until"), bool(_flag(doc, "force")), _flag(doc, "finalize"), entry
    )
    return json_response(run, 202)


@router.get("/v1/invoice-runs", tags=["invoicing"])
async def get_invoice_runs(
    request: Request, limit: int = DEFAULT_LIMIT, starting_after: str | None = None
) -> Response:
    """Invoice runs, newest first."""
    api = api_of(request)
    store = api.billing.store
    env = await api.authenticate(request)
    page = PageRequest.of(limit, starting_after)
    found = await run_in_threadpool(store.runs, env, page, api.billing.clock())
    return json_response({"runs": found.items, "has_more": found.has_more})


@router.get("/v1/invoice-runs/{run_id}", tags=["invoicing"])
async def get_invoice_run(run_id: str, request: Request) -> Response:
    api = api_of(request)
    store = api.billing.store
    env = await api.authenticate(request)
    return json_response(await run_in_threadpool(store.run, env, run_id, api.billing.clock()))


@router.post("/v1/invoice-runs/{run_id}/resume", tags=["invoicing"], status_code=202)
async def resume_invoice_run(run_id: str, request: Request) -> Response:
    """Finish a run that failed, ended with errors, or is `interrupted` (its driving process
    stopped): only what is missing is invoiced. `409` while its driver still reports."""
    api = api_of(request)
    billing = api.billing
    env = await api.authenticate(request)
    entry = audit_entry(request, env, "invoice_run.resumed", "invoice_run", run_id, billing.clock())
    return json_response(await billing.resume_run(env, run_id, entry), 202)


# -- invoices ------------------------------------------------------------------------


@router.get("/v1/invoices", tags=["invoicing"])
async def get_invoices(
    request: Request,
    customer_id: str | None = None,
    status: str | None = None,
    run_id: str | None = None,
    limit: int = DEFAULT_LIMIT,
    starting_after: str | None = None,
) -> Response:
    """Invoices, newest period first; `?customer_id&status&run_id` narrow the list."""
    api = api_of(request)
    store = api.billing.store
    env = await api.authenticate(request)
    page = PageRequest.of(limit, starting_after)
    found = await run_in_threadpool(store.invoices, env, customer_id, status, run_id, page)
    return json_response({"invoices": found.items, "has_more": found.has_more})


@router.get("/v1/invoices/{invoice_id}.pdf", tags=["invoicing"])
async def get_invoice_pdf(invoice_id: str, request: Request) -> Response:
    api = api_of(request)
    store = api.billing.store
    env = await api.authenticate(request)
    document = await run_in_threadpool(store.invoice, env, invoice_id)
    return await run_in_threadpool(_pdf, document)


@router.get("/v1/invoices/{invoice_id}.html", tags=["invoicing"])
async def get_invoice_html(invoice_id: str, request: Request) -> Response:
    api = api_of(request)
    store = api.billing.store
    env = await api.authenticate(request)
    document = await run_in_threadpool(store.invoice, env, invoice_id)
    return HTMLResponse(render_html(document))


@router.get("/v1/invoices/{invoice_id}", tags=["invoicing"])
async def get_invoice(invoice_id: str, request: Request) -> Response:
    api = api_of(request)
    store = api.billing.store
    env = await api.authenticate(request)
    document = await run_in_threadpool(store.invoice, env, invoice_id)
    document["credit_notes"] = await run_in_threadpool(store.credit_notes, env, invoice_id)
    return json_response(document)


@router.get("/v1/invoices/{invoice_id}/payments", tags=["invoicing"])
async def get_invoice_payments(invoice_id: str, request: Request) -> Response:
    api = api_of(request)
    store = api.billing.store
    env = await api.authenticate(request)
    await run_in_threadpool(store.invoice, env, invoice_id)  # 404 if not ours
    return json_response({"payments": await run_in_threadpool(store.payments, env, invoice_id)})


@router.post("/v1/invoices/{invoice_id}/finalize", tags=["invoicing"])
async def finalize_invoice(invoice_id: str, request: Request) -> Response:
    """Give a draft its number and make it immutable; payment collection starts."""
    api = api_of(request)
    billing = api.billing
    env = await api.authenticate(request)
    entry = _invoice_audit(billing, request, env, "finalized", invoice_id)
    return json_response(await billing.finalize(env, invoice_id, entry))


@router.post("/v1/invoices/{invoice_id}/void", tags=["invoicing"])
async def void_invoice(invoice_id: str, request: Request) -> Response:
    api = api_of(request)
    billing = api.billing
    env = await api.authenticate(request)
    entry = _invoice_audit(billing, request, env, "voided", invoice_id)
    return json_response(await billing.move(env, invoice_id, "void", entry))


@router.post("/v1/invoices/{invoice_id}/mark-paid", tags=["invoicing"])
async def mark_invoice_paid(invoice_id: str, request: Request) -> Response:
    """For payments outside a provider (a bank transfer, with the manual provider)."""
    api = api_of(request)
    billing = api.billing
    env = await api.authenticate(request)
    entry = _invoice_audit(billing, request, env, "marked_paid", invoice_id)
    return json_response(await billing.move(env, invoice_id, "paid", entry))


@router.post("/v1/invoices/{invoice_id}/mark-uncollectible", tags=["invoicing"])
async def mark_invoice_uncollectible(invoice_id: str, request: Request) -> Response:
    api = api_of(request)
    billing = api.billing
    env = await api.authenticate(request)
    entry = _invoice_audit(billing, request, env, "marked_uncollectible", invoice_id)
    return json_response(await billing.move(env, invoice_id, "uncollectible", entry))


@router.post("/v1/invoices/{invoice_id}/pay", tags=["invoicing"])
async def pay_invoice(invoice_id: str, request: Request) -> Response:
    """Try to collect a finalized invoice now, through the customer's provider."""
    api = api_of(request)
    billing, store = api.billing, api.billing.store
    env = await api.authenticate(request)
    invoice = await run_in_threadpool(store.invoice, env, invoice_id)
    if invoice["status"] != "finalized" or Decimal(invoice["amount_due"]) <= 0:
        raise InvalidInput(
            f"invoice {invoice_id} is {invoice['status']} with {invoice['amount_due']} "
            f"{invoice['currency']} due; only a finalized invoice with an amount due is paid"
        )
    entry = _invoice_audit(billing, request, env, "payment_requested", invoice_id)
    await run_in_threadpool(store.make_due, env, invoice_id, billing.clock(), entry)
    invoice = await run_in_threadpool(store.invoice, env, invoice_id)
    return json_response(await billing.collect(env, invoice))


@router.post("/v1/payments/collect", tags=["invoicing"])
async def collect_payments(request: Request) -> Response:
    """Collect every invoice whose next payment attempt is due (the dunning schedule);
    the server also does this on its own every few minutes."""
    api = api_of(request)
    billing = api.billing
    env = await api.authenticate(request)
    return json_response({"attempted": await billing.collect_due(env)})


# -- credit notes --------------------------------------------------------------------


@router.post("/v1/invoices/{invoice_id}/credit-notes", tags=["invoicing"], status_code=201)
async def post_credit_note(invoice_id: str, request: Request) -> Response:
    """Correct a finalized invoice: `{"reason", "amount"?}` (default: all not yet
    credited)."""
    api = api_of(request)
    billing = api.billing
    env = await api.authenticate(request)
    doc = await object_body(request, frozenset({"reason", "amount"}))
    entry = audit_entry(
        request,
        env,
        "credit_note.created",
        "credit_note",
        "",
        billing.clock(),
        {"invoice_id": invoice_id, **doc},
    )
    return json_response(await billing.credit_note(env, invoice_id, doc, entry), 201)


@router.get("/v1/credit-notes/{note_id}.pdf", tags=["invoicing"])
async def get_credit_note_pdf(note_id: str, request: Request) -> Response:
    api = api_of(request)
    store = api.billing.store
    env = await api.authenticate(request)
    document = await run_in_threadpool(store.credit_note, env, note_id)
    return await run_in_threadpool(_pdf, document)


@router.get("/v1/credit-notes/{note_id}", tags=["invoicing"])
async def get_credit_note(note_id: str, request: Request) -> Response:
    api = api_of(request)
    store = api.billing.store
    env = await api.authenticate(request)
    return json_response(await run_in_threadpool(store.credit_note, env, note_id))


# -- exchange rates ------------------------------------------------------------------


@router.post("/v1/exchange-rates", tags=["invoicing"], status_code=201)
async def post_exchange_rate(request: Request) -> Response:
    """`{"from": "USD", "to": "EUR", "rate": "0.9213", "source"?, "as_of"?}`: 1 USD =
    0.9213 EUR from `as_of` on. Invoices use the latest rate at their period's end."""
    api = api_of(request)
    billing, store = api.billing, api.billing.store
    env = await api.authenticate(request)
    doc = await object_body(request, frozenset({"from", "to", "rate", "source", "as_of"}))
    problems = []
    codes = {}
    for name in ("from", "to"):
        try:
            codes[name] = currency(doc.get(name)).code
        except CurrencyError as error:
            problems.append(Problem(name, error.message))
    try:
        rate = parse_amount(doc.get("rate"), field="rate", sign="positive")
    except InvalidInput as error:
        problems += error.problems
    source = doc.get("source", "manual")
    if not isinstance(source, str) or not 0 < len(source) <= 200:
        problems.append(Problem("source", "must be a string of 1 to 200 characters"))
    if problems:
        raise InvalidInput("the exchange rate has problems", problems)
    if codes["from"] == codes["to"]:
        raise InvalidInput("'from' and 'to' must be different currencies")
    now = billing.clock()
    as_of = _moment(doc, "as_of") or now
    entry = audit_entry(
        request,
        env,
        "exchange_rate.created",
        "exchange_rate",
        f"{codes['from']}/{codes['to']}",
        now,
        {"rate": format(rate, "f"), "source": source, "as_of": format_timestamp(as_of)},
    )
    await run_in_threadpool(
        store.add_rate, env, codes["from"], codes["to"], rate, source, as_of, now, entry
    )
    return json_response(
        {
            "from": codes["from"],
            "to": codes["to"],
            "rate": format(rate, "f"),
            "source": source,
            "as_of": doc.get("as_of"),
        },
        201,
    )


@router.get("/v1/exchange-rates", tags=["invoicing"])
async def get_exchange_rates(
    request: Request, limit: int = DEFAULT_LIMIT, starting_after: str | None = None
) -> Response:
    """Stored exchange rates by pair and date; `starting_after` takes a rate's `id`."""
    api = api_of(request)
    store = api.billing.store
    env = await api.authenticate(request)
    page = PageRequest.of(limit, starting_after)
    rates = await run_in_threadpool(store.rates, env)
    found = page_of_list(rates, lambda r: str(r["id"]), page, "exchange rate")
    return json_response({"rates": found.items, "has_more": found.has_more})


# -- provider webhooks ---------------------------------------------------------------


@router.post("/v1/providers/{provider}/webhook", tags=["invoicing"])
async def provider_webhook(provider: str, request: Request) -> Response:
    """A payment provider's webhook (Stripe, Adyen). Authenticated by its signature on
    the raw body, not by an API key; each provider event is processed once."""
    billing = api_of(request).billing
    body = await request.body()
    headers = {k.lower(): v for k, v in request.headers.items()}
    fresh = await billing.webhook(provider, headers, body)
    if provider == "adyen":
        return Response("[accepted]", media_type="text/plain")
    return json_response({"received": True, "processed": fresh})
