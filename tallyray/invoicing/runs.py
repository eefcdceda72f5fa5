"""Invoice runs: closed periods in, invoices out, as Ray tasks over chunks of customers.

A run covers every period that ended by its ``until``. The customers with a subscription are
cut into chunks; each chunk is one Ray task (:func:`invoice_chunk_task`) that reads the
chunk's subscriptions, closed-period records and earlier invoices, builds the missing invoices
(:mod:`tallyray.invoicing.builder`) and writes them in one transaction.

Idempotent by construction: the store holds at most one invoice per customer and period, and
a chunk skips periods already invoiced. Running a run twice, two runs at once, or resuming a
run that crashed half way never bills a period twice; numbers stay gapless because they are
taken in the transaction that writes the invoices.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from tallyray.credentials import database_url
from tallyray.invoicing.builder import (
    Discount,
    ExchangeRate,
    InvoiceInput,
    Segment,
    build_invoice,
)
from tallyray.invoicing.config import InvoicingConfig, parse_invoicing_config
from tallyray.invoicing.schedule import Covered, due_periods
from tallyray.invoicing.tax import Party, TaxEngine, build_engine, parse_tax_config
from tallyray.pricing.config import parse_config
from tallyray.pricing.meters import Usage
from tallyray.pricing.money import currency
from tallyray.pricing.periods import Period
from tallyray.storage.billing import BillingStore
from tallyray.storage.catalog import Catalog, CustomerRecord, EnvCatalog
from tallyray.storage.db import make_engine

log = logging.getLogger("tallyray.invoicing")

__all__ = ["RunSpec", "context", "invoice_chunk", "invoice_chunk_task", "period_input"]

_DAY = 86_400 * 1_000_000


@dataclass(frozen=True)
class RunSpec:
    """What every chunk of a run needs; plain data, so it crosses the Ray boundary."""

    database_url: str | None
    """``None`` in a deployment: the task reads it from the secrets file."""
    env: str
    run_id: str | None
    until: int
    finalize: bool
    invoicing: Mapping[str, Any]
    """The raw ``"invoicing"`` config block."""
    tax: Mapping[str, Any] | None
    """The raw ``"tax"`` config block."""
    rounding: str | None = None
    secrets_file: str | None = None


class _Context:
    """Parsed config, engines and catalog of one process, reused across chunks."""

    def __init__(self, spec: RunSpec) -> None:
        engine = make_engine(database_url(spec.database_url, spec.secrets_file))
        self.catalog = Catalog(engine)
        self.billing = BillingStore(engine)
        self.config: InvoicingConfig = parse_invoicing_config(spec.invoicing)
        self.tax: TaxEngine = build_engine(parse_tax_config(spec.tax))
        self.env: EnvCatalog = self.catalog.env_catalog(spec.env)
        self.rounding = parse_config({"rounding": spec.rounding or "half_up"}).rounding


_contexts: dict[tuple[str, str], tuple[_Context, float]] = {}


def context(spec: RunSpec) -> _Context:
    """The process's parsed config, engines and catalog for ``spec`` (refreshed every 30 s)."""
    key = (spec.database_url or spec.secrets_file or "", spec.env)
    hit = _contexts.get(key)
    if hit is None or time.monotonic() - hit[1] > 30:
        if hit is not None:
            hit[0].catalog.engine.dispose()  # a fresh catalog next: let the old pool go
        hit = _contexts[key] = (_Context(spec), time.monotonic())
    return hit[0]


def buyer_party(record: CustomerRecord) -> Party:
    return Party(
        country=record.country,
        region=record.billing.get("region"),
        vat_id=record.vat_id,
        tax_exempt=bool(record.billing.get("tax_exempt")),
        exempt_reason=record.billing.get("exempt_reason"),
    )


def seller_party(config: InvoicingConfig) -> Party:
    """The seller as the tax engine sees it: unknown here, so the ``"tax"`` block's
    ``seller_country`` and ``seller_vat_id`` decide (``read_config`` checks they agree with
    the invoice's seller block)."""
    del config
    return Party(country=None)


def buyer_block(record: CustomerRecord) -> dict[str, Any]:
    return {
        "id": record.id,
        "name": record.name,
        "email": record.email,
        "country": record.country,
        "vat_id": record.vat_id,
        "address": dict(record.address) if record.address else None,
    }


def invoice_chunk(spec: RunSpec, customer_ids: Sequence[str], now: int) -> dict[str, Any]:
    """Build and write the missing invoices of these customers. Returns how many customers
    were done, how many invoices written, and an error per customer that could not be."""
    ctx = context(spec)
    env = spec.env
    records = ctx.catalog.customers(env, customer_ids)
    subscriptions = ctx.catalog.subscriptions(env, customer_ids, before=spec.until)
    invoiced = ctx.billing.invoiced_periods(env, customer_ids)
    closed = ctx.billing.closed_periods(env, customer_ids, spec.until)
    docs: list[dict[str, Any]] = []
    errors: list[dict[str, Any]] = []
    for customer_id in customer_ids:
        record = records.get(customer_id)
        if record is None:
            continue
        try:
            docs += _customer_invoices(
                ctx, spec, record, subscriptions.get(customer_id, []), invoiced, closed, now
            )
        except Exception as error:  # noqa: BLE001 — one customer must not stop the run
            log.warning("invoice run: customer %s: %s", customer_id, error)
            errors.append({"customer_id": customer_id, "message": str(error)})
    written = ctx.billing.add_invoices(
        env,
        docs,
        run_id=spec.run_id,
        finalize=spec.finalize,
        prefix=ctx.config.number_prefix,
        entity=ctx.config.entity,
        due_days=ctx.config.payment_terms_days,
        now=now,
    )
    result = {"done": len(customer_ids), "invoices": written, "errors": errors}
    if spec.run_id is not None:
        ctx.billing.run_progress(spec.run_id, len(customer_ids), written, errors)
    return result


def _customer_invoices(
    ctx: _Context,
    spec: RunSpec,
    record: CustomerRecord,
    subscriptions: Sequence[Mapping[str, Any]],
    invoiced: set[tuple[str, int]],
    closed: Mapping[tuple[str, int], Mapping[str, Any]],
    now: int,
) -> list[dict[str, Any]]:
    plan_of: Callable[[str, int], Any] = ctx.env.plan
    docs = []
    for period, covered in due_periods(subscriptions, plan_of, spec.until):
        if (record.id, period.start) in invoiced:
            continue
        row = closed.get((record.id, period.start))
        doc = build_invoice(
            period_input(
                ctx,
                spec.env,
                record,
                period,
                covered,
                usage=None
                if row is None
                else ctx.env.meters.usage_from_json(row["usage"], period.end),
                burned={}
                if row is None
                else {gid: Decimal(amount) for gid, amount in row["burned"].items()},
            )
        )
        doc.update(
            customer_id=record.id,
            period_start=period.start,
            period_end=period.end,
            payment_provider=record.billing.get("payment_provider"),
        )
        docs.append(doc)
    return docs


def period_input(
    ctx: _Context,
    env: str,
    record: CustomerRecord,
    period: Period,
    covered: Sequence[Covered],
    usage: Usage | None,
    burned: Mapping[str, Decimal],
) -> InvoiceInput:
    """What the invoice builder needs for one customer and period: the segments the
    subscriptions ``covered`` (the last one's discount applies), the exchange rates from
    their plans' currencies, the tax decision, and the period's ``usage``.

    Invoice runs pass the usage the shard closed the period with; the pricing sandbox
    (:mod:`tallyray.simulation`) passes replayed usage and segments under a draft plan."""
    cur = currency(record.currency)
    last = covered[-1]
    rates = []
    for code in sorted({c.plan.currency.code for c in covered} - {cur.code}):
        found = ctx.billing.rate(env, code, cur.code, period.end)
        if found is None:
            raise LookupError(
                f"no exchange rate {code}→{cur.code} on or before the end of the period; "
                "add one with POST /v1/exchange-rates"
            )
        rates.append(ExchangeRate(code, cur.code, found[0], found[1], found[2]))
    segments = [
        Segment(
            c.plan,
            c.subscription["plan_version"],
            c.proration,
            _discount(c.subscription.get("discount")) if c is last else None,
        )
        for c in covered
    ]
    decision = ctx.tax.decide(seller_party(ctx.config), buyer_party(record), period.end - 1)
    return InvoiceInput(
        customer=buyer_block(record),
        seller=ctx.config.seller,
        locale=record.billing.get("locale") or ctx.config.locale,
        currency=cur,
        period=period,
        segments=segments,
        usage=usage,
        meters=ctx.env.meters.meters,
        burned=burned,
        tax=decision,
        exchange_rates=rates,
        rounding=ctx.rounding,
    )


def _discount(raw: Mapping[str, Any] | None) -> Discount | None:
    if not raw:
        return None
    return Discount(
        description=raw.get("description") or "Discount",
        percent=None if raw.get("percent") is None else Decimal(raw["percent"]),
        amount=None if raw.get("amount") is None else Decimal(raw["amount"]),
    )


def _chunk_task(spec: RunSpec, customer_ids: list[str], now: int) -> dict[str, Any]:
    from tallyray.logs import configure_logging

    configure_logging()
    return invoice_chunk(spec, customer_ids, now)


def invoice_chunk_task() -> Any:
    """The Ray remote function for one chunk (made on first use: importing this module must
    not need Ray). Retried by Ray if its worker dies: a chunk is idempotent."""
    import ray

    global _remote
    if _remote is None:
        _remote = ray.remote(num_cpus=0, max_retries=3)(_chunk_task)
    return _remote


_remote: Any = None
