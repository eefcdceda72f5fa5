"""An upper bound on what new usage can cost, without pricing it.

The live account prices lazily, but alerts need to know whether a commit *could* have
crossed a threshold. When a plan's cost grows at most linearly in each meter's quantity, the
cost of a usage delta is bounded by ``Σ rate × (positive part of the quantity added)`` plus a
constant per fold, which is a handful of multiplications instead of re-rating the plan:

==============  ===============================================  ==========================
model           bound on cost(q + Δ) − cost(q), for Δ ≥ 0         condition
==============  ===============================================  ==========================
``per_unit``    ``unit_amount × Δ``                               ``unit_amount ≥ 0``
``graduated``   ``max(unit_amount) × Δ + Σ flat_amount``          amounts ≥ 0
``package``     ``package_amount × (Δ / package_size + 1)``       ``package_amount ≥ 0``
``volume``      none: crossing a tier re-prices every unit
``percentage``  ``percent / 100 × Δ``, without a per-event clamp   ``percent ≥ 0``
``dynamic``     ``Δ`` (the prices the events carry)
==============  ===============================================  ==========================

Only ``sum`` and ``count`` meters add their quantities up. A meter with a charge that has no
bound (on another aggregation, or a model above without one) makes the bound of any usage
that touches it unknown (``None``: the caller prices); usage of the other meters is still
bounded, so a plan with a seats charge on ``volume`` bounds its token usage. A negative value
lowers a quantity and, under these models, never raises the cost, so only positive states
count.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import ROUND_CEILING, Decimal, localcontext

from tallyray.pricing.meters import MeterSpec, Usage
from tallyray.pricing.models import Dynamic, Graduated, Package, Percentage, PerUnit
from tallyray.pricing.models.base import ZERO
from tallyray.pricing.plans import Plan

__all__ = ["SpendBound", "meters_that_can_lower_cost", "spend_bound"]


@dataclass(frozen=True, slots=True)
class SpendBound:
    """Per charged meter: (cost per unit of quantity at most, constant per fold that touches
    it), or ``None`` when its cost has no such bound."""

    rates: Mapping[str, tuple[Decimal, Decimal] | None]

    def of(self, delta: Usage, folds: int = 1) -> Decimal | None:
        """The most that folding ``delta`` into any usage can add to the plan's cost
        (``None``: unknown); ``folds``: the most if its events were folded in that many
        batches, one after the other (each pays a touched meter's constant)."""
        total = ZERO
        groups = delta.groups
        for key, bound in self.rates.items():
            states = groups.get(key)
            if not states:
                continue
            if bound is None:
                return None
            added = 0  # a loop, not sum() over a generator: a delta holds a group or two
            for s in states.values():
                if s > 0:
                    added += s
            if added:
                rate, constant = bound
                total += rate * added + constant * folds
        return total


def spend_bound(plan: Plan, meters: Mapping[str, MeterSpec]) -> SpendBound:
    """The plan's bound, meter by meter."""
    rates: dict[str, tuple[Decimal, Decimal] | None] = {}
    for charge in plan.charges:
        spec = meters.get(charge.meter)
        found = _model_bound(charge.model)
        so_far = rates.get(charge.meter, (ZERO, ZERO))
        if spec is None or spec.aggregation not in ("sum", "count") or found is None:
            rates[charge.meter] = None
        elif so_far is not None:
            rates[charge.meter] = (so_far[0] + found[0], so_far[1] + found[1])
    return SpendBound(rates)


def meters_that_can_lower_cost(plan: Plan, meters: Mapping[str, MeterSpec]) -> frozenset[str]:
    """The meters whose new usage can make the plan's cost go *down*: a charge on
    ``volume`` pricing (crossing a tier re-prices every unit cheaper), a ``latest`` or
    ``weighted_sum`` meter (the newest reading may be smaller), or a meter that takes negative
    values. Every other charge's cost only grows with usage."""
    lowering: set[str] = set()
    for charge in plan.charges:
        meter = meters.get(charge.meter)
        if meter is None:
            continue
        if (
            charge.model_name == "volume"
            or meter.aggregation in ("latest", "weighted_sum")  # a gauge may go down
            or meter.allow_negative
        ):
            lowering.add(charge.meter)
    return frozenset(lowering)


def _model_bound(model: object) -> tuple[Decimal, Decimal] | None:
    if isinstance(model, PerUnit):
        return (model.unit_amount, ZERO) if model.unit_amount >= 0 else None
    if isinstance(model, Graduated):
        if any(t.flat_amount < 0 or t.unit_amount < 0 for t in model.tiers):
            return None
        # Entering tiers adds their flat amounts: at most all of them between two quantities.
        return max(t.unit_amount for t in model.tiers), sum(
            (t.flat_amount for t in model.tiers), ZERO
        )
    if isinstance(model, Package):
        if model.package_amount < 0 or model.package_size <= 0:
            return None
        with localcontext() as ctx:
            ctx.rounding = ROUND_CEILING  # a bound rounds up
            return model.package_amount / model.package_size, model.package_amount
    if isinstance(model, Percentage):
        # A per-event minimum charges events whatever their value: no bound by quantity.
        return None if model.clamped else (model.rate, ZERO)
    if isinstance(model, Dynamic):
        return Decimal(1), ZERO
    return None
