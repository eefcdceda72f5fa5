"""Billing periods: which period a moment falls in, for a plan's interval.

Periods are calendar-anchored in UTC (a monthly plan's periods run from the 1st, 00:00 UTC, to
the 1st of the next month; weeks start on Monday). Times are microseconds since the epoch, as
everywhere in the pricing engine.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

__all__ = ["Period", "period_of"]

_US = 1_000_000


def _to_us(moment: datetime) -> int:
    delta = moment - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * _US + delta.microseconds


def _from_us(ts: int) -> datetime:
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=ts)


class Period(tuple[int, int]):
    """``[start, end)`` in microseconds since the epoch."""

    __slots__ = ()

    def __new__(cls, start: int, end: int) -> Period:
        return super().__new__(cls, (start, end))

    @property
    def start(self) -> int:
        return self[0]

    @property
    def end(self) -> int:
        return self[1]

    def __contains__(self, ts: object) -> bool:
        return isinstance(ts, int) and self[0] <= ts < self[1]


def period_of(ts: int, interval: str) -> Period:
    """The calendar period of ``interval`` (day, week, month, year) that holds ``ts``."""
    moment = _from_us(ts)
    day = moment.replace(hour=0, minute=0, second=0, microsecond=0)
    if interval == "day":
        start, end = day, day + timedelta(days=1)
    elif interval == "week":
        start = day - timedelta(days=day.weekday())
        end = start + timedelta(days=7)
    elif interval == "month":
        start = day.replace(day=1)
        end = (
            start.replace(year=start.year + 1, month=1)
            if start.month == 12
            else start.replace(month=start.month + 1)
        )
    elif interval == "year":
        start = day.replace(month=1, day=1)
        end = start.replace(year=start.year + 1)
    else:
        raise ValueError(f"unknown interval {interval!r}")
    return Period(_to_us(start), _to_us(end))
