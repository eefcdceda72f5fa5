"""``per_unit``: every unit at one price."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from tallyray.pricing.models.base import Priced


@dataclass(frozen=True, slots=True)
class PerUnit:
    unit_amount: Decimal


def price_per_unit(quantity: Decimal, spec: PerUnit) -> Priced:
    return Priced(amount=quantity * spec.unit_amount, unit_amount=spec.unit_amount)
