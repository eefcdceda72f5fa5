"""``volume``: every unit at the price of the tier the total falls in, plus that tier's
``flat_amount``. Zero units cost nothing.

Unlike graduated pricing the total is not monotone: crossing into a cheaper tier can lower
it (see ``docs/pricing.md`` for what a live balance does then).
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from tallyray.pricing.models.base import ZERO, Priced, Tier, TierLine, tier_floor


@dataclass(frozen=True, slots=True)
class Volume:
    tiers: tuple[Tier, ...]


def price_volume(quantity: Decimal, spec: Volume) -> Priced:
    if quantity <= ZERO:
        return Priced(amount=ZERO)
    for index, tier in enumerate(spec.tiers):
        if tier.up_to is None or quantity <= tier.up_to:
            amount = quantity * tier.unit_amount + tier.flat_amount
            line = TierLine(
                tier=index + 1,
                from_quantity=tier_floor(spec.tiers, index),
                up_to=tier.up_to,
                quantity=quantity,
                unit_amount=tier.unit_amount,
                flat_amount=tier.flat_amount,
                amount=amount,
            )
            return Priced(amount=amount, unit_amount=tier.unit_amount, tiers=(line,))
    raise AssertionError("a validated volume spec always ends with an unbounded tier")
