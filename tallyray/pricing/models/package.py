"""``package``: units are sold in whole packages; a started package is a whole one.

1,001 requests at 1,000 per package cost two packages.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_CEILING, Decimal

from tallyray.pricing.models.base import ZERO, Priced, TierLine


@dataclass(frozen=True, slots=True)
class Package:
    package_size: Decimal
    package_amount: Decimal


def price_package(quantity: Decimal, spec: Package) -> Priced:
    if quantity <= ZERO:
        return Priced(amount=ZERO, unit_amount=spec.package_amount)
    packages = (quantity / spec.package_size).to_integral_value(rounding=ROUND_CEILING)
    amount = packages * spec.package_amount
    line = TierLine(
        tier=1,
        from_quantity=ZERO,
        up_to=None,
        quantity=packages,
        unit_amount=spec.package_amount,
        flat_amount=ZERO,
        amount=amount,
    )
    return Priced(amount=amount, unit_amount=spec.package_amount, tiers=(line,))
