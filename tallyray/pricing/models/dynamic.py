"""``dynamic``: each event carries its own price, in the plan's currency.

The charge's meter is a ``sum`` meter over the price property, so the charge is that sum,
the quantity itself. The price is the event's **total** (not a unit price to multiply by
another property): a gateway knows what a call cost, and a total keeps the meter an
ordinary sum (a product per event would need a per-event state like ``percentage``'s clamp).
An event with a unit price and a quantity sends their product.

Example, events priced 0.0125, 0.30 and 1.2 (JSON numbers, read as the decimals written):
0.0125 + 0.30 + 1.2 = 1.5125, rounded once on the line (EUR: 1.51).
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from tallyray.pricing.models.base import Priced


@dataclass(frozen=True, slots=True)
class Dynamic:
    """No parameters: the events set the price."""


def price_dynamic(quantity: Decimal, spec: Dynamic) -> Priced:
    return Priced(amount=quantity)
