"""``graduated``: each tier's price applies to the units that fall inside that tier.

A tier is *entered* when the quantity exceeds the tier below it (the first tier: when the
quantity exceeds zero); its ``flat_amount`` is then charged once. Zero units cost nothing.

Example, tiers ``[≤1,000 at 0] [≤10,000 at 0.002, flat 5] [∞ at 0.001]`` and 12,000 units:
1,000 × 0 + (9,000 × 0.002 + 5) + 2,000 × 0.001 = 0 + 23 + 2 = 25.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from tallyray.pricing.models.base import ZERO, Priced, Tier, TierLine, tier_floor


@dataclass(frozen=True, slots=True)
class Graduated:
    tiers: tuple[Tier, ...]


def price_graduated(quantity: Decimal, spec: Graduated) -> Priced:
    lines: list[TierLine] = []
    total = ZERO
    for index, tier in enumerate(spec.tiers):
        floor = tier_floor(spec.tiers, index)
        if quantity <= floor:
            break
        top = quantity if tier.up_to is None else min(quantity, tier.up_to)
        units = top - floor
        amount = units * tier.unit_amount + tier.flat_amount
        total += amount
        lines.append(
            TierLine(
                tier=index + 1,
                from_quantity=floor,
                up_to=tier.up_to,
                quantity=units,
                unit_amount=tier.unit_amount,
                flat_amount=tier.flat_amount,
                amount=amount,
            )
        )
    return Priced(amount=total, tiers=tuple(lines))
