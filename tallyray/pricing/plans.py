"""Plans and rating: usage in, itemized and rounded lines out.

Rating runs as named steps in a fixed order (adjustments are steps, not flags):

1. ``usage lines`` — each charge prices the quantity of its meter (narrowed by its filter),
   at full precision, itemized per tier (:func:`price_charge`; a ``percentage`` charge with a
   per-event minimum or maximum prices the sum of its events' clamped amounts, which the
   meters keep as a :class:`~tallyray.pricing.meters.PerEventSum`);
2. ``base fee`` — once per period;
3. ``minimum true-up`` — when base fee + usage charges fall below the plan's minimum;

Credits (:mod:`tallyray.pricing.credits`) and tax (invoicing) come after, in that order.
Every line is rounded to the currency's minor unit once, when it is built; the precise amount
stays beside the rounded one, and totals are sums of rounded lines.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal, localcontext
from typing import Any

from tallyray.pricing.meters import Filter, MeterSpec, PerEventSum, Usage
from tallyray.pricing.models import ChargeModel, Percentage, Priced, TierLine, price
from tallyray.pricing.models.base import ZERO
from tallyray.pricing.models.percentage import event_amount, price_clamped
from tallyray.pricing.money import DEFAULT_ROUNDING, PRICING_CONTEXT, Currency, round_amount
from tallyray.pricing.quotas import Entitlement, UnitLimit
from tallyray.pricing.unpriced import DEFAULT_UNPRICED, UnpricedMode

__all__ = [
    "INTERVALS",
    "Charge",
    "Line",
    "Plan",
    "Preview",
    "per_event_sums",
    "price_charge",
    "rate",
    "usage_cost",
]

INTERVALS = ("day", "week", "month", "year")


@dataclass(frozen=True, slots=True)
class Charge:
    """A price on one meter's quantity, optionally narrowed to some of its groups."""

    meter: str
    model: ChargeModel
    model_name: str
    filter: Filter = field(default_factory=dict)
    description: str | None = None

    def describe(self) -> str:
        if self.description:
            return self.description
        if not self.filter:
            return self.meter
        narrowed = ", ".join(
            f"{name}={'|'.join(sorted(map(str, values)))}" for name, values in self.filter.items()
        )
        return f"{self.meter} ({narrowed})"


@dataclass(frozen=True, slots=True)
class Plan:
    key: str
    name: str
    currency: Currency
    interval: str
    base_fee: Decimal = ZERO
    minimum: Decimal | None = None
    charges: tuple[Charge, ...] = ()
    limits: tuple[UnitLimit, ...] = ()
    """Usage limits in units over a window (:mod:`tallyray.pricing.quotas`)."""
    entitlements: tuple[Entitlement, ...] = ()
    """Features the plan allows or not (:mod:`tallyray.pricing.quotas`)."""
    unpriced: UnpricedMode = DEFAULT_UNPRICED
    """What an event with usage no charge prices gets (:mod:`tallyray.pricing.unpriced`)."""

    def meters_used(self) -> frozenset[str]:
        return frozenset(c.meter for c in self.charges)


@dataclass(frozen=True, slots=True)
class Line:
    """One invoice line. ``amount`` is rounded; ``precise_amount`` is what it was rounded from."""

    kind: str
    """``base_fee``, ``usage`` or ``minimum`` (later also ``credit``, ``tax``)."""
    description: str
    amount: Decimal
    precise_amount: Decimal
    meter: str | None = None
    quantity: Decimal | None = None
    unit_amount: Decimal | None = None
    tiers: tuple[TierLine, ...] = ()

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind, "description": self.description}
        if self.meter is not None:
            out["meter"] = self.meter
        if self.quantity is not None:
            out["quantity"] = format(self.quantity, "f")
        if self.unit_amount is not None:
            out["unit_amount"] = format(self.unit_amount, "f")
        out["amount"] = format(self.amount, "f")
        out["precise_amount"] = format(
            self.precise_amount.normalize() if self.precise_amount else ZERO, "f"
        )
        if self.tiers:
            out["tiers"] = [t.to_json() for t in self.tiers]
        return out


@dataclass(frozen=True, slots=True)
class Preview:
    """An invoice preview: the lines of one period under one plan, before credits and tax."""

    plan: str
    currency: Currency
    lines: tuple[Line, ...]
    subtotal: Decimal
    total: Decimal

    def to_json(self) -> dict[str, Any]:
        return {
            "plan": self.plan,
            "currency": self.currency.code,
            "lines": [line.to_json() for line in self.lines],
            "subtotal": format(self.subtotal, "f"),
            "total": format(self.total, "f"),
        }


def charge_quantity(charge: Charge, usage: Usage, meters: Mapping[str, MeterSpec]) -> Decimal:
    return usage.quantity(meters[charge.meter], charge.filter)


def per_event_sum(charge: Charge) -> PerEventSum | None:
    """What the meters must keep for ``charge`` beyond its meter's own state: the sum of its
    events' clamped amounts for a clamped ``percentage``; ``None`` for every other charge.

    The key is made of the charge's terms, so charges (of any plan) with the same terms share
    one sum, and a sum is found again from the charge alone."""
    model = charge.model
    if not isinstance(model, Percentage) or not model.clamped:
        return None
    terms = ":".join(
        "" if d is None else format(d.normalize(), "f")
        for d in (model.percent, model.minimum, model.maximum)
    )
    return PerEventSum(f"%percentage:{charge.meter}:{terms}", charge.meter, _clamp(model))


def _clamp(model: Percentage) -> Callable[[Decimal], Decimal]:
    return lambda value: event_amount(value, model)


def per_event_sums(plans: Iterable[Plan]) -> list[PerEventSum]:
    """Every per-event sum the charges of ``plans`` need (build the meter set with them)."""
    found: dict[str, PerEventSum] = {}
    for plan in plans:
        for charge in plan.charges:
            derived = per_event_sum(charge)
            if derived is not None:
                found.setdefault(derived.key, derived)
    return list(found.values())


def price_charge(
    charge: Charge, usage: Usage, meters: Mapping[str, MeterSpec]
) -> tuple[Decimal, Priced]:
    """One charge over a period's usage: (the quantity its line shows, the priced amount),
    at full precision. Every rating path (live spend, invoices, ``tallyray price``) prices a
    charge here, so they agree to the last digit."""
    meter = meters[charge.meter]
    quantity = usage.quantity(meter, charge.filter)
    derived = per_event_sum(charge)
    if derived is None:
        return quantity, price(quantity, charge.model)
    assert isinstance(charge.model, Percentage)
    amounts = usage.quantity(derived.spec(meter), charge.filter)
    with localcontext(PRICING_CONTEXT):
        return quantity, price_clamped(amounts, charge.model)


def charge_costs(
    plan: Plan,
    usage: Usage,
    meters: Mapping[str, MeterSpec],
    known: Sequence[Decimal] | None = None,
    touched: frozenset[str] | None = None,
) -> list[Decimal]:
    """Full-precision cost of each usage charge. With ``known`` (the costs before a change)
    and ``touched`` (the meters the change touched), only the charges on those meters are
    priced again: a live account re-rates only what a batch can have moved."""
    with localcontext(PRICING_CONTEXT):
        return [
            known[i]
            if known is not None and touched is not None and c.meter not in touched
            else price_charge(c, usage, meters)[1].amount
            for i, c in enumerate(plan.charges)
        ]


def usage_cost(plan: Plan, usage: Usage, meters: Mapping[str, MeterSpec]) -> Decimal:
    """Full-precision cost of the plan's usage charges (no base fee, minimum or rounding):
    what a live balance counts as spend."""
    with localcontext(PRICING_CONTEXT):
        return sum(
            (price_charge(c, usage, meters)[1].amount for c in plan.charges),
            ZERO,
        )


# ---------------------------------------------------------------------------------------------
# The steps.


def usage_lines(
    plan: Plan, usage: Usage, meters: Mapping[str, MeterSpec], rounding: str
) -> list[Line]:
    lines = []
    for charge in plan.charges:
        quantity, priced = price_charge(charge, usage, meters)
        lines.append(
            Line(
                kind="usage",
                description=charge.describe(),
                meter=charge.meter,
                quantity=quantity,
                unit_amount=priced.unit_amount,
                precise_amount=priced.amount,
                amount=round_amount(priced.amount, plan.currency, rounding),
                tiers=priced.tiers,
            )
        )
    return lines


def base_fee_line(plan: Plan, rounding: str) -> list[Line]:
    if not plan.base_fee:
        return []
    return [
        Line(
            kind="base_fee",
            description=f"{plan.name} base fee",
            amount=round_amount(plan.base_fee, plan.currency, rounding),
            precise_amount=plan.base_fee,
        )
    ]


def minimum_true_up(plan: Plan, lines: Sequence[Line]) -> list[Line]:
    """A line that lifts the charges so far up to the plan's minimum, if they fall below."""
    if plan.minimum is None:
        return []
    charged = sum((line.amount for line in lines), ZERO)
    if charged >= plan.minimum:
        return []
    gap = plan.minimum - charged
    return [
        Line(
            kind="minimum",
            description=f"Minimum commitment true-up (minimum {format(plan.minimum, 'f')})",
            amount=gap,
            precise_amount=gap,
        )
    ]


def rate(
    plan: Plan,
    usage: Usage,
    meters: Mapping[str, MeterSpec],
    rounding: str = DEFAULT_ROUNDING,
) -> Preview:
    """Rate one period's usage under ``plan``: base fee, usage lines, minimum true-up."""
    with localcontext(PRICING_CONTEXT):
        lines = base_fee_line(plan, rounding)
        lines += usage_lines(plan, usage, meters, rounding)
        lines += minimum_true_up(plan, lines)
        subtotal = sum((line.amount for line in lines), ZERO)
    return Preview(
        plan=plan.key,
        currency=plan.currency,
        lines=tuple(lines),
        subtotal=subtotal,
        total=subtotal,
    )
