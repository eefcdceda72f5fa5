"""``percentage``: a share of a value the event carries (the provider's cost of a model call,
a payment's amount), optionally clamped **per event** to a ``minimum`` and a ``maximum``.

The charge's meter is a ``sum`` meter over that value, so without a clamp the charge is
``quantity × percent / 100`` (quantity: the sum of the values). A clamp cannot be applied to
a sum: 20 % with a minimum of 0.01 per event charges two events of cost 0.01 and 1.00 at
0.01 + 0.20 = 0.21, not 20 % of 1.01 = 0.202. So a clamped charge prices each event as it is
folded (:func:`event_amount`) and the meters keep the sum of those amounts beside the meter's
own state (a :class:`~tallyray.pricing.meters.PerEventSum`); :func:`price_clamped` turns that
sum into the charge. Every per-event amount is kept at full precision: the line is rounded
once, like every other line.

Example, 20 % with minimum 0.01 and maximum 2.00, events of cost 0.02, 0.50 and 30.00:
0.01 (0.004 lifted to the minimum) + 0.10 + 2.00 (6.00 capped) = 2.11.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from tallyray.pricing.models.base import Priced

HUNDRED = Decimal(100)


@dataclass(frozen=True, slots=True)
class Percentage:
    percent: Decimal
    """20 for 20 %; may be above 100 (cost plus a margin: 120)."""
    minimum: Decimal | None = None
    """The least one event is charged, in the plan's currency."""
    maximum: Decimal | None = None
    """The most one event is charged, in the plan's currency."""

    @property
    def rate(self) -> Decimal:
        """The share as a fraction: 0.2 for 20 %."""
        return self.percent / HUNDRED

    @property
    def clamped(self) -> bool:
        return self.minimum is not None or self.maximum is not None


def event_amount(value: Decimal, spec: Percentage) -> Decimal:
    """What one event with this value is charged: its share, lifted to the minimum and capped
    at the maximum."""
    amount = value * spec.percent / HUNDRED
    if spec.minimum is not None and amount < spec.minimum:
        amount = spec.minimum
    if spec.maximum is not None and amount > spec.maximum:
        amount = spec.maximum
    return amount


def price_percentage(quantity: Decimal, spec: Percentage) -> Priced:
    """The charge without a per-event clamp: the share of the summed values. (A clamped
    charge is priced by :func:`price_clamped` from the sum of per-event amounts.)"""
    return Priced(amount=quantity * spec.percent / HUNDRED, unit_amount=spec.rate)


def price_clamped(amounts: Decimal, spec: Percentage) -> Priced:
    """A clamped charge from the sum of its events' clamped amounts. No ``unit_amount``: the
    amount is not the quantity times one price."""
    return Priced(amount=amounts)
