"""Dunning: when to try a failed payment again, and when to give up. Pure.

With ``retry_days = (3, 5, 7)`` a payment that fails on attempt 1 is tried again 3 days later,
then 5 days after the second failure, then 7 days after the third; a fourth failure makes the
invoice uncollectible.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["next_attempt"]

_DAY = 86_400 * 1_000_000


def next_attempt(failed_attempt: int, now: int, retry_days: Sequence[int]) -> int | None:
    """When to try again after attempt number ``failed_attempt`` (1-based) failed at
    ``now``; ``None`` when the schedule is spent."""
    if failed_attempt < 1:
        raise ValueError("attempts are numbered from 1")
    if failed_attempt > len(retry_days):
        return None
    return now + retry_days[failed_attempt - 1] * _DAY
