"""A linear forecast of a period's spend: what the period will cost if the customer keeps
spending at the rate it has so far. Pure: no clock, no I/O; Decimal only.

::

    elapsed  = (now − start) / (end − start)        clamped to [0, 1]
    forecast = spent / elapsed                      (none while elapsed is 0)

A period that has ended forecasts what was spent. The result keeps full precision; the caller
rounds it for display like any other amount.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

__all__ = ["Forecast", "elapsed_fraction", "forecast_spend", "period_forecast"]

ZERO = Decimal(0)
ONE = Decimal(1)


@dataclass(frozen=True, slots=True)
class Forecast:
    spent: Decimal
    elapsed: Decimal
    """The fraction of the period that has passed, from 0 to 1."""
    projected: Decimal | None
    """The spend expected by the period's end; ``None`` at its very start."""


def elapsed_fraction(start: int, end: int, now: int) -> Decimal:
    """How much of ``[start, end)`` has passed at ``now`` (any one time unit), 0 to 1."""
    if end <= start:
        raise ValueError("a period ends after it starts")
    if now <= start:
        return ZERO
    if now >= end:
        return ONE
    return Decimal(now - start) / Decimal(end - start)


def forecast_spend(spent: Decimal, elapsed: Decimal) -> Decimal | None:
    """``spent`` so far, scaled up to the whole period; ``None`` when no time has passed."""
    if not ZERO <= elapsed <= ONE:
        raise ValueError(f"the elapsed fraction must be from 0 to 1, not {elapsed}")
    if elapsed == ZERO:
        return None
    return spent / elapsed


def period_forecast(spent: Decimal, start: int, end: int, now: int) -> Forecast:
    elapsed = elapsed_fraction(start, end, now)
    return Forecast(spent=spent, elapsed=elapsed, projected=forecast_spend(spent, elapsed))
