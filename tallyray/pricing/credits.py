"""Prepaid credit grants and how usage burns them. Pure: state in, state out.

Burn order: lowest ``priority`` number first, then the grant that expires first (grants that
never expire last), then the oldest, then by id so the order is total. A grant burns only
while it is active (``at < expires_at``); what is left of it at expiry is lost.

Spend can also go *down* within a period (a volume tier crossed into a cheaper price). A
negative cost first reduces spend that no grant covered, then gives credit back to the grants
that burned it, in reverse burn order, never above what a grant was granted and never to an
expired grant. ``docs/pricing.md`` explains this for the live balance.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from decimal import Decimal

from tallyray.errors import CurrencyError

__all__ = ["BILLING_MODES", "Burned", "CreditGrant", "Ledger", "burn_order"]

#: ``prepaid``: usage is limited by credit (plus overdraft); ``postpaid``: invoiced after the
#: period, limited only by a spend limit if one is set.
BILLING_MODES = ("prepaid", "postpaid")

ZERO = Decimal(0)


@dataclass(frozen=True, slots=True)
class CreditGrant:
    id: str
    amount: Decimal
    """What was granted."""
    currency: str
    remaining: Decimal
    priority: int = 1
    expires_at: int | None = None
    """Microseconds since the epoch; the grant is spent-out-of from ``created_at`` up to here."""
    created_at: int = 0

    @classmethod
    def new(
        cls,
        id: str,
        amount: Decimal,
        currency: str,
        *,
        priority: int = 1,
        expires_at: int | None = None,
        created_at: int = 0,
    ) -> CreditGrant:
        if not isinstance(amount, Decimal) or amount <= ZERO:
            raise ValueError("a credit grant's amount must be a positive Decimal")
        return cls(id, amount, currency, amount, priority, expires_at, created_at)

    def active_at(self, at: int) -> bool:
        return self.expires_at is None or at < self.expires_at

    @property
    def used(self) -> Decimal:
        return self.amount - self.remaining


@dataclass(frozen=True, slots=True)
class Burned:
    """How much of one grant one charge used (negative when credit was given back)."""

    grant_id: str
    amount: Decimal


def burn_order(grants: Iterable[CreditGrant]) -> list[CreditGrant]:
    return sorted(
        grants,
        key=lambda g: (
            g.priority,
            g.expires_at is None,  # grants that never expire burn after those that do
            g.expires_at or 0,
            g.created_at,
            g.id,
        ),
    )


@dataclass(frozen=True, slots=True)
class Ledger:
    """A customer's grants in one currency, and spend in that period that no grant covered."""

    currency: str
    grants: tuple[CreditGrant, ...] = ()
    uncovered: Decimal = ZERO

    def add_grant(self, grant: CreditGrant) -> Ledger:
        if grant.currency != self.currency:
            raise CurrencyError(
                f"credit grant in {grant.currency} cannot pay for usage in {self.currency}"
            )
        return replace(self, grants=(*self.grants, grant))

    def remaining(self, at: int) -> Decimal:
        """Credit left to spend at ``at`` (expired grants count for nothing)."""
        return sum((g.remaining for g in self.grants if g.active_at(at)), ZERO)

    def expired(self, at: int) -> Decimal:
        """Credit lost to expiry by ``at``."""
        return sum((g.remaining for g in self.grants if not g.active_at(at)), ZERO)

    def charge(self, cost: Decimal, at: int) -> tuple[Ledger, tuple[Burned, ...]]:
        """Book a cost (or, when negative, a reduction of cost) at time ``at``."""
        if cost > ZERO:
            return self._burn(cost, at)
        if cost < ZERO:
            return self._give_back(-cost, at)
        return self, ()

    def _burn(self, cost: Decimal, at: int) -> tuple[Ledger, tuple[Burned, ...]]:
        updated = {g.id: g for g in self.grants}
        burned: list[Burned] = []
        left = cost
        for grant in burn_order(g for g in self.grants if g.active_at(at) and g.remaining > 0):
            take = min(left, grant.remaining)
            updated[grant.id] = replace(grant, remaining=grant.remaining - take)
            burned.append(Burned(grant.id, take))
            left -= take
            if not left:
                break
        ledger = Ledger(
            self.currency, tuple(updated[g.id] for g in self.grants), self.uncovered + left
        )
        return ledger, tuple(burned)

    def _give_back(self, refund: Decimal, at: int) -> tuple[Ledger, tuple[Burned, ...]]:
        from_uncovered = min(refund, self.uncovered)
        left = refund - from_uncovered
        updated = {g.id: g for g in self.grants}
        burned: list[Burned] = []
        for grant in reversed(burn_order(g for g in self.grants if g.active_at(at))):
            if not left:
                break
            give = min(left, grant.used)
            if give:
                updated[grant.id] = replace(grant, remaining=grant.remaining + give)
                burned.append(Burned(grant.id, -give))
                left -= give
        # Whatever is still left was burned from grants that have since expired: that
        # credit is gone, and the reduction cannot bring spend below zero.
        ledger = Ledger(
            self.currency,
            tuple(updated[g.id] for g in self.grants),
            self.uncovered - from_uncovered,
        )
        return ledger, tuple(burned)
