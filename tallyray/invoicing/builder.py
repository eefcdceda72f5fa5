"""Building an invoice from a closed period: pure, state in and document out.

The steps run in a fixed, named order (adjustments are steps, not flags):

1. ``base fee``    — each plan the customer had during the period, prorated by the days it
   covered;
2. ``usage``       — each charge of the plan at the period's end, itemized per tier;
3. ``minimum``     — a true-up to the plan's minimum commitment (prorated like the base fee);
4. ``discount``    — the subscription's discount, if any;
5. ``tax``         — one line per rate, on the subtotal (:mod:`tallyray.invoicing.tax`);
6. ``credits``     — prepaid credit the period's usage burned, as payment against the total.

Amounts are rated in the plan's currency at full precision, converted to the customer's
currency at the stored rate when the two differ, and rounded once per line to the customer's
currency. Subtotal, tax and total are sums of rounded lines.

Prepaid credits come after tax: a grant is a prepayment, not a discount, so it pays the
invoice (tax included) rather than lowering the taxable amount. A discount lowers it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal, localcontext
from typing import Any

from tallyray.errors import CurrencyError
from tallyray.invoicing.tax import TaxDecision
from tallyray.pricing.events import format_timestamp
from tallyray.pricing.meters import MeterSpec, Usage
from tallyray.pricing.models import price
from tallyray.pricing.models.base import TierLine
from tallyray.pricing.money import DEFAULT_ROUNDING, PRICING_CONTEXT, Currency, round_amount
from tallyray.pricing.periods import Period, Proration
from tallyray.pricing.plans import Plan, price_charge

__all__ = ["Discount", "ExchangeRate", "InvoiceInput", "Segment", "build_invoice"]

ZERO = Decimal(0)
HUNDRED = Decimal(100)


@dataclass(frozen=True, slots=True)
class Discount:
    """A subscription's discount: a percentage of the charges, or a fixed amount (in the
    plan's currency), never more than the charges."""

    description: str
    percent: Decimal | None = None
    amount: Decimal | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"description": self.description}
        if self.percent is not None:
            out["percent"] = format(self.percent, "f")
        if self.amount is not None:
            out["amount"] = format(self.amount, "f")
        return out


@dataclass(frozen=True, slots=True)
class Segment:
    """One subscription's share of the period: its plan and the days it covered."""

    plan: Plan
    plan_version: int
    proration: Proration
    discount: Discount | None = None


@dataclass(frozen=True, slots=True)
class ExchangeRate:
    """``1 base = rate quote``, as stored by the operator."""

    base: str
    quote: str
    rate: Decimal
    source: str
    as_of: int

    def to_json(self) -> dict[str, Any]:
        return {
            "from": self.base,
            "to": self.quote,
            "rate": format(self.rate, "f"),
            "source": self.source,
            "as_of": format_timestamp(self.as_of),
        }


@dataclass(frozen=True, slots=True)
class InvoiceInput:
    customer: Mapping[str, Any]
    """The buyer block of the document (id, name, email, country, vat_id, address)."""
    seller: Mapping[str, Any]
    locale: str
    currency: Currency
    """The customer's currency: every amount of the invoice is in it."""
    period: Period
    segments: Sequence[Segment]
    """Oldest first; the last one's plan rates the period's usage."""
    usage: Usage | None
    meters: Mapping[str, MeterSpec]
    burned: Mapping[str, Decimal]
    """Credit the period's usage burned, per grant, in the customer's currency."""
    tax: TaxDecision
    exchange_rate: ExchangeRate | None = None
    """Plan currency → customer currency (of the period's last plan)."""
    exchange_rates: Sequence[ExchangeRate] = ()
    """More rates, when the plans of the period are priced in different currencies."""
    rounding: str = DEFAULT_ROUNDING


def build_invoice(given: InvoiceInput) -> dict[str, Any]:
    """The invoice document of one customer and period (without id, number and status,
    which the store assigns)."""
    with localcontext(PRICING_CONTEXT):
        return _Builder(given).build()


class _Builder:
    def __init__(self, given: InvoiceInput) -> None:
        self.given = given
        code = given.currency.code
        rates = [*([given.exchange_rate] if given.exchange_rate else []), *given.exchange_rates]
        for r in rates:
            if r.quote != code:
                raise CurrencyError(
                    f"an exchange rate {r.base}→{r.quote} cannot convert to the invoice's {code}"
                )
        self.rates = {r.base: r for r in rates}
        used = {s.plan.currency.code for s in given.segments} - {code}
        unused = set(self.rates) - used
        if unused:
            raise CurrencyError(
                f"exchange rate {sorted(unused)[0]}→{code} given, but no plan of the period is "
                f"priced in {sorted(unused)[0]}"
            )
        self.rate: Decimal | None = None
        self.use(given.segments[-1])

    # -- conversion and rounding ---------------------------------------------------------

    def use(self, segment: Segment) -> ExchangeRate | None:
        """Convert from ``segment``'s plan currency from now on; returns the rate used."""
        plan_code, code = segment.plan.currency.code, self.given.currency.code
        if plan_code == code:
            self.rate = None
            return None
        found = self.rates.get(plan_code)
        if found is None:
            raise CurrencyError(
                f"no exchange rate {plan_code}→{code} to convert plan "
                f"{segment.plan.key!r} to the invoice's currency"
            )
        self.rate = found.rate
        return found

    def convert(self, amount: Decimal) -> Decimal:
        return amount if self.rate is None else amount * self.rate

    def round(self, amount: Decimal) -> Decimal:
        return round_amount(amount, self.given.currency, self.given.rounding)

    def line(self, kind: str, description: str, precise: Decimal, **extra: Any) -> dict[str, Any]:
        """A line from a full-precision amount in the plan's currency."""
        converted = self.convert(precise)
        return {
            "kind": kind,
            "description": description,
            **extra,
            "amount": _text(self.round(converted)),
            "precise_amount": _text(converted.normalize() if converted else ZERO),
        }

    # -- the steps -----------------------------------------------------------------------

    def base_fees(self) -> list[dict[str, Any]]:
        lines = []
        last = self.given.segments[-1]
        for segment in self.given.segments:
            plan, part = segment.plan, segment.proration
            if not plan.base_fee or not part.days:
                continue
            rate = self.use(segment)
            fee = plan.base_fee if part.whole else plan.base_fee * part.days / part.of_days
            extra: dict[str, Any] = {"plan": plan.key}
            if not part.whole:
                extra["proration"] = part.to_json()
            if rate is not None and segment is not last:
                extra["exchange_rate"] = rate.to_json()
            lines.append(self.line("base_fee", f"{plan.name} base fee", fee, **extra))
        self.use(last)
        return lines

    def usage(self) -> list[dict[str, Any]]:
        plan = self.given.segments[-1].plan
        usage = self.given.usage
        lines = []
        for charge in plan.charges:
            quantity, priced = (
                (ZERO, price(ZERO, charge.model))
                if usage is None
                else price_charge(charge, usage, self.given.meters)
            )
            extra: dict[str, Any] = {"meter": charge.meter, "quantity": _text(quantity)}
            if priced.unit_amount is not None:
                extra["unit_amount"] = _text(self.convert(priced.unit_amount).normalize())
            if priced.tiers:
                extra["tiers"] = [self.tier(t) for t in priced.tiers]
            lines.append(self.line("usage", charge.describe(), priced.amount, **extra))
        return lines

    def tier(self, tier: TierLine) -> dict[str, Any]:
        out = tier.to_json()
        for name in ("unit_amount", "flat_amount", "amount"):
            out[name] = _text(self.convert(Decimal(str(out[name]))).normalize())
        return out

    def minimum(self, charged: Decimal) -> list[dict[str, Any]]:
        commitment = ZERO
        for segment in self.given.segments:
            plan, part = segment.plan, segment.proration
            if plan.minimum is None or not part.days:
                continue
            self.use(segment)
            share = plan.minimum if part.whole else plan.minimum * part.days / part.of_days
            commitment += self.round(self.convert(share))
        self.use(self.given.segments[-1])
        if charged >= commitment:
            return []
        gap = commitment - charged
        return [
            {
                "kind": "minimum",
                "description": f"Minimum commitment true-up (minimum {_text(commitment)})",
                "amount": _text(gap),
                "precise_amount": _text(gap),
            }
        ]

    def discount(self, charged: Decimal) -> list[dict[str, Any]]:
        discount = self.given.segments[-1].discount
        if discount is None or charged <= ZERO:
            return []
        if discount.percent is not None:
            off = self.round(charged * discount.percent / HUNDRED)
        else:
            off = self.round(self.convert(discount.amount or ZERO))
        off = min(off, charged)
        return [
            {
                "kind": "discount",
                "description": discount.description,
                "amount": _text(-off),
                "precise_amount": _text(-off),
            }
        ]

    def taxes(self, subtotal: Decimal) -> list[dict[str, Any]]:
        decision = self.given.tax
        if decision.kind == "none":
            return []
        taxable = max(subtotal, ZERO)
        return [
            {
                "name": decision.name,
                "jurisdiction": decision.jurisdiction,
                "rate": _text(decision.rate.normalize()),
                "kind": decision.kind,
                "taxable_amount": _text(taxable),
                "amount": _text(self.round(decision.tax_on(taxable))),
            }
        ]

    def credits(self, total: Decimal) -> list[dict[str, Any]]:
        left = max(total, ZERO)
        out = []
        for grant_id, burned in sorted(self.given.burned.items()):
            amount = min(self.round(burned), left)
            if amount <= ZERO:
                continue
            left -= amount
            out.append(
                {"grant_id": grant_id, "description": "Prepaid credits", "amount": _text(-amount)}
            )
        return out

    def build(self) -> dict[str, Any]:
        given = self.given
        last = given.segments[-1]
        lines = self.base_fees() + self.usage()
        charged = sum((Decimal(line["amount"]) for line in lines), ZERO)
        lines += self.minimum(charged)
        charged = sum((Decimal(line["amount"]) for line in lines), ZERO)
        lines += self.discount(charged)
        subtotal = sum((Decimal(line["amount"]) for line in lines), ZERO)
        taxes = self.taxes(subtotal)
        tax = sum((Decimal(t["amount"]) for t in taxes), ZERO)
        total = subtotal + tax
        credits = self.credits(total)
        applied = self.round(-sum((Decimal(c["amount"]) for c in credits), ZERO))
        subtotal, tax, total = self.round(subtotal), self.round(tax), self.round(total)
        notes = [given.tax.note] if given.tax.note else []
        return {
            "object": "invoice",
            "customer": dict(given.customer),
            "seller": dict(given.seller),
            "locale": given.locale,
            "currency": given.currency.code,
            "period": {
                "start": format_timestamp(given.period.start),
                "end": format_timestamp(given.period.end),
            },
            "plan": {
                "key": last.plan.key,
                "version": last.plan_version,
                "name": last.plan.name,
                "currency": last.plan.currency.code,
            },
            "exchange_rate": None if (rate := self.use(last)) is None else rate.to_json(),
            "lines": lines,
            "subtotal": _text(subtotal),
            "taxes": taxes,
            "tax": _text(tax),
            "total": _text(total),
            "credits": credits,
            "credits_applied": _text(applied),
            "amount_due": _text(total - applied),
            "notes": notes,
            "tax_decision": given.tax.to_json(),
        }


def _text(value: Decimal) -> str:
    return format(value, "f")
