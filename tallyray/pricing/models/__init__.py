"""Charge models: one module each, one explicit registry.

Each model is a frozen spec and a pure ``price(quantity, spec) -> Priced``. The registry maps
the JSON name of a model (``"model": "graduated"``) to its pricing function; parsing a spec
from JSON lives in :mod:`tallyray.pricing.config`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from decimal import Decimal, localcontext
from typing import Any

from tallyray.pricing.models.base import Priced, Tier, TierLine
from tallyray.pricing.models.dynamic import Dynamic, price_dynamic
from tallyray.pricing.models.graduated import Graduated, price_graduated
from tallyray.pricing.models.package import Package, price_package
from tallyray.pricing.models.per_unit import PerUnit, price_per_unit
from tallyray.pricing.models.percentage import Percentage, price_percentage
from tallyray.pricing.models.volume import Volume, price_volume
from tallyray.pricing.money import PRICING_CONTEXT

__all__ = [
    "MODELS",
    "ChargeModel",
    "Dynamic",
    "Graduated",
    "Package",
    "PerUnit",
    "Percentage",
    "Priced",
    "Tier",
    "TierLine",
    "Volume",
    "incremental_cost",
    "price",
]

ChargeModel = PerUnit | Package | Graduated | Volume | Percentage | Dynamic

#: JSON model name → (spec type, pricing function).
MODELS: Mapping[str, tuple[type[Any], Callable[[Decimal, Any], Priced]]] = {
    "per_unit": (PerUnit, price_per_unit),
    "package": (Package, price_package),
    "graduated": (Graduated, price_graduated),
    "volume": (Volume, price_volume),
    "percentage": (Percentage, price_percentage),
    "dynamic": (Dynamic, price_dynamic),
}

_BY_TYPE: Mapping[type[Any], Callable[[Decimal, Any], Priced]] = {
    spec_type: fn for spec_type, fn in MODELS.values()
}


def price(quantity: Decimal, spec: ChargeModel) -> Priced:
    """Price ``quantity`` units under ``spec``, itemized, at full precision. (A ``percentage``
    with a per-event minimum or maximum is priced from its events instead: see
    :func:`tallyray.pricing.plans.price_charge`.)"""
    with localcontext(PRICING_CONTEXT):
        return _BY_TYPE[type(spec)](quantity, spec)


def incremental_cost(before: Decimal, after: Decimal, spec: ChargeModel) -> Decimal:
    """What moving from ``before`` to ``after`` units costs: ``cost(after) − cost(before)``.

    For every model but ``volume`` this is ≥ 0 when ``after ≥ before``; for volume it can be
    negative when the total crosses into a cheaper tier.
    """
    with localcontext(PRICING_CONTEXT):
        fn = _BY_TYPE[type(spec)]
        return fn(after, spec).amount - fn(before, spec).amount
