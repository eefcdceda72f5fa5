"""Billing periods: which period a moment falls in, for a plan's interval, and proration.

Periods are calendar-anchored in UTC by default (a monthly plan's periods run from the 1st,
00:00 UTC, to the 1st of the next month; weeks start on Monday). With an *anchor* (a
subscription billed on its anniversary) they start at the anchor's moment and repeat every
interval: anchored on 31 January, monthly periods start on 28 (or 29) February, 31 March,
30 April, ... — always counted from the anchor, so a short month does not shift later ones.
Times are microseconds since the epoch, as everywhere in the pricing engine.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

__all__ = ["ANCHORS", "Period", "Proration", "covered_until", "period_of", "prorate"]

#: ``calendar``: periods start on the calendar boundary; ``anniversary``: on the subscription's
#: start, repeating every interval.
ANCHORS = ("calendar", "anniversary")
_DAY = 86_400 * 1_000_000

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


#: The period :func:`period_of` found last, per (interval, anchor): a shard asks for the
#: open period on every quota check and every committed batch, and nearly always the same
#: one. Bounded (cleared when full): anchors are per subscription.
_LAST: dict[tuple[str, int | None], Period] = {}
_LAST_MAX = 4096


def period_of(ts: int, interval: str, anchor: int | None = None) -> Period:
    """The period of ``interval`` (day, week, month, year) that holds ``ts``: calendar
    periods, or periods repeating from ``anchor`` when one is given."""
    key = (interval, anchor)
    last = _LAST.get(key)
    if last is not None and last[0] <= ts < last[1]:
        return last
    period = _period_of(ts, interval, anchor)
    if len(_LAST) >= _LAST_MAX:
        _LAST.clear()
    _LAST[key] = period
    return period


def _period_of(ts: int, interval: str, anchor: int | None) -> Period:
    if anchor is not None:
        return _anchored(ts, interval, anchor)
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


def _add_months(moment: datetime, months: int) -> datetime:
    """``moment`` moved by whole months, its day clamped to the month's last day."""
    index = moment.year * 12 + moment.month - 1 + months
    year, month = divmod(index, 12)
    month += 1
    next_first = datetime(year + (month == 12), month % 12 + 1, 1, tzinfo=UTC)
    last_day = (next_first - timedelta(days=1)).day
    return moment.replace(year=year, month=month, day=min(moment.day, last_day))


def _anchored(ts: int, interval: str, anchor: int) -> Period:
    if interval in ("day", "week"):
        length = _DAY * (1 if interval == "day" else 7)
        first = anchor + (ts - anchor) // length * length
        return Period(first, first + length)
    if interval not in ("month", "year"):
        raise ValueError(f"unknown interval {interval!r}")
    step = 1 if interval == "month" else 12
    origin, moment = _from_us(anchor), _from_us(ts)
    n = ((moment.year - origin.year) * 12 + moment.month - origin.month) // step
    start = _add_months(origin, n * step)
    if start > moment:
        n -= 1
        start = _add_months(origin, n * step)
    return Period(_to_us(start), _to_us(_add_months(origin, (n + 1) * step)))


class Proration(tuple[int, int]):
    """The part of a period a subscription covered: ``days`` of ``of_days``, whole days.

    A started day counts as a day (a subscription that starts at 15:00 pays for that day), so
    a subscription covering the whole period is never prorated."""

    __slots__ = ()

    def __new__(cls, days: int, of_days: int) -> Proration:
        return super().__new__(cls, (days, of_days))

    @property
    def days(self) -> int:
        return self[0]

    @property
    def of_days(self) -> int:
        return self[1]

    @property
    def whole(self) -> bool:
        return self[0] >= self[1]

    def to_json(self) -> dict[str, int]:
        return {"days": self[0], "of_days": self[1]}


def prorate(
    period: Period, active_from: int, active_to: int | None, continued: bool = False
) -> Proration:
    """How much of ``period`` the span ``[active_from, active_to)`` covers, in whole days
    (``active_to`` ``None``: still active).

    Days are counted from the period's start: the span covers every day it touches, so a
    subscription that starts or ends during a day pays for that day. When another
    subscription *continues* from ``active_to`` (a plan change), the day of the change
    belongs to the new one only, so no day is billed twice."""
    of_days = -(-(period.end - period.start) // _DAY)
    start = max(period.start, active_from)
    end = period.end if active_to is None else min(period.end, active_to)
    if end <= start:
        return Proration(0, of_days)
    first = (start - period.start) // _DAY
    offset = end - period.start
    last = offset // _DAY if continued and end < period.end else -(-offset // _DAY)
    return Proration(max(0, min(last, of_days) - first), of_days)


def covered_until(end: int, interval: str, anchor: int | None = None) -> int:
    """The end of the period a subscription ending at ``end`` ends in: the invoice prices
    that whole period's usage under its plan, so the live account must too."""
    return period_of(end - 1, interval, anchor).end
