"""Types shared by the charge models: tiers in, itemized results out."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

ZERO = Decimal(0)


@dataclass(frozen=True, slots=True)
class Tier:
    """One tier of a tiered price.

    ``up_to`` is an inclusive upper bound on the quantity; ``None`` means no bound and is only
    allowed on the last tier.
    """

    up_to: Decimal | None
    unit_amount: Decimal
    flat_amount: Decimal = ZERO


@dataclass(frozen=True, slots=True)
class TierLine:
    """What one tier contributed: its quantity, prices and amount (full precision)."""

    tier: int
    from_quantity: Decimal
    up_to: Decimal | None
    quantity: Decimal
    unit_amount: Decimal
    flat_amount: Decimal
    amount: Decimal

    def to_json(self) -> dict[str, object]:
        return {
            "tier": self.tier,
            "from": format(self.from_quantity, "f"),
            "up_to": None if self.up_to is None else format(self.up_to, "f"),
            "quantity": format(self.quantity, "f"),
            "unit_amount": format(self.unit_amount, "f"),
            "flat_amount": format(self.flat_amount, "f"),
            "amount": format(self.amount.normalize() if self.amount else ZERO, "f"),
        }


@dataclass(frozen=True, slots=True)
class Priced:
    """A charge model's answer: the full-precision amount and how it was reached."""

    amount: Decimal
    unit_amount: Decimal | None = None
    tiers: tuple[TierLine, ...] = ()


def tier_floor(tiers: tuple[Tier, ...], index: int) -> Decimal:
    """The exclusive lower bound of tier ``index``: the previous tier's ``up_to``, or 0."""
    if index == 0:
        return ZERO
    bound = tiers[index - 1].up_to
    assert bound is not None, "only the last tier may be unbounded"
    return bound
