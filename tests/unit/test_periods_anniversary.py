"""Anniversary-anchored periods and proration (tallyray/pricing/periods.py).

Calendar periods are in test_periods.py; here a period repeats from an anchor (the
subscription's start), and ``prorate`` says how many whole days of a period a span covered.
"""

from __future__ import annotations

import calendar
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tallyray.pricing.periods import Period, Proration, period_of, prorate
from tallyray.pricing.plans import INTERVALS

US = 1_000_000
DAY = 86_400 * US


def us(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0, micro: int = 0
) -> int:
    """Microseconds since the epoch of a UTC moment: ``us(2027, 1, 31, 15, 30)``."""
    moment = datetime(year, month, day, hour, minute, second, tzinfo=UTC)
    return int(moment.timestamp()) * US + micro


def moment_of(ts: int) -> datetime:
    """The UTC moment of ``ts`` microseconds since the epoch."""
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=ts)


JAN31_2027 = us(2027, 1, 31)  # 2027 is not a leap year: February has 28 days
JAN31_2028 = us(2028, 1, 31)  # 2028 is: February has 29
FEB29_2028 = us(2028, 2, 29)
WED_0900 = us(2026, 11, 25, 9)  # 2026-11-25 is a Wednesday
NOV14_1200 = us(2026, 11, 14, 12)


# --- which anchored period holds which moment --------------------------------------------


def t(text: str) -> int:
    """Microseconds since the epoch of a UTC moment written as text: ``t("2027-02-28T15:30")``."""
    moment = datetime.fromisoformat(text).replace(tzinfo=UTC)
    return (moment - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)


def case(id: str, anchor: str, interval: str, ts: str, period: str) -> Any:
    """One row: anchored on ``anchor``, the ``interval`` period holding ``ts`` is ``period``,
    written ``"start .. end"``."""
    start, end = period.split(" .. ")
    return pytest.param(t(anchor), interval, t(ts), t(start), t(end), id=id)


@pytest.mark.parametrize(
    ("anchor", "interval", "ts", "start", "end"),
    [
        # monthly on the 31st, common year: 31 Jan → 28 Feb → 31 Mar → 30 Apr → 31 May
        case("m31-anchor-itself", "2027-01-31", "month", "2027-01-31", "2027-01-31 .. 2027-02-28"),
        case("m31-mid-february", "2027-01-31", "month", "2027-02-15", "2027-01-31 .. 2027-02-28"),
        case("m31-feb-28-starts", "2027-01-31", "month", "2027-02-28", "2027-02-28 .. 2027-03-31"),
        case("m31-march-30", "2027-01-31", "month", "2027-03-30T23:00", "2027-02-28 .. 2027-03-31"),
        # back to the 31st in March: counted from the anchor, not from 28 Feb
        case("m31-march-31", "2027-01-31", "month", "2027-03-31", "2027-03-31 .. 2027-04-30"),
        case("m31-april-30", "2027-01-31", "month", "2027-05-01", "2027-04-30 .. 2027-05-31"),
        # across a year end: 31 Dec → 31 Jan
        case("m31-year-end", "2027-01-31", "month", "2028-01-01", "2027-12-31 .. 2028-01-31"),
        # leap year: 31 Jan → 29 Feb → 31 Mar
        case("leap-feb-28", "2028-01-31", "month", "2028-02-28T23:00", "2028-01-31 .. 2028-02-29"),
        case("leap-feb-29", "2028-01-31", "month", "2028-02-29", "2028-02-29 .. 2028-03-31"),
        # the 2027 anchor reaches the leap February a year later: 29 Feb, no drift
        case("m31-next-leap-feb", "2027-01-31", "month", "2028-03-01", "2028-02-29 .. 2028-03-31"),
        # monthly on the 30th: 28 Feb, then 30 Mar (not 28 Mar)
        case("m30-february", "2027-01-30", "month", "2027-03-01", "2027-02-28 .. 2027-03-30"),
        case("m30-march", "2027-01-30", "month", "2027-03-30", "2027-03-30 .. 2027-04-30"),
        # an anchor with a time of day keeps it: 31 Jan 15:30 → 28 Feb 15:30 → 31 Mar 15:30
        case("m31-1530-last-us", "2027-01-31T15:30", "month", "2027-02-28T15:29:59.999999",
             "2027-01-31T15:30 .. 2027-02-28T15:30"),
        case("m31-1530-next", "2027-01-31T15:30", "month", "2027-02-28T15:30",
             "2027-02-28T15:30 .. 2027-03-31T15:30"),
        # yearly on 29 Feb: 28 Feb in common years, 29 Feb again in 2032
        case("y-feb29-first-year", "2028-02-29", "year", "2028-12-31", "2028-02-29 .. 2029-02-28"),
        case("y-feb29-common-year", "2028-02-29", "year", "2029-03-01", "2029-02-28 .. 2030-02-28"),
        case("y-feb29-eve", "2028-02-29", "year", "2032-02-28T23:00", "2031-02-28 .. 2032-02-29"),
        case("y-feb29-next-leap", "2028-02-29", "year", "2032-02-29", "2032-02-29 .. 2033-02-28"),
        # weekly from Wednesday 25 Nov 2026 09:00: 7 × 24 h from the anchor, not from Monday
        case("w-wed-0900-tuesday", "2026-11-25T09:00", "week", "2026-12-01T23:00",
             "2026-11-25T09:00 .. 2026-12-02T09:00"),
        case("w-wed-0900-boundary", "2026-11-25T09:00", "week", "2026-12-02T09:00",
             "2026-12-02T09:00 .. 2026-12-09T09:00"),
        # daily from 14 Nov 12:00: noon to noon
        case("d-noon-morning", "2026-11-14T12:00", "day", "2026-11-20T11:59",
             "2026-11-19T12:00 .. 2026-11-20T12:00"),
        case("d-noon-boundary", "2026-11-14T12:00", "day", "2026-11-20T12:00",
             "2026-11-20T12:00 .. 2026-11-21T12:00"),
        # moments before the anchor: the periods repeat backwards too.
        # 31 Jan 2027 − 1 month = 31 Dec 2026 (after 15 Dec) → − 2 months = 30 Nov 2026
        case("m31-before-anchor", "2027-01-31", "month", "2026-12-15", "2026-11-30 .. 2026-12-31"),
        case("m31-just-before", "2027-01-31", "month", "2027-01-30T23:59:59.999999",
             "2026-12-31 .. 2027-01-31"),
        case("y-feb29-before", "2028-02-29", "year", "2027-06-01", "2027-02-28 .. 2028-02-29"),
        case("w-before-anchor", "2026-11-25T09:00", "week", "2026-11-18T09:00",
             "2026-11-18T09:00 .. 2026-11-25T09:00"),
        case("d-before-anchor", "2026-11-14T12:00", "day", "2026-11-13T00:00",
             "2026-11-12T12:00 .. 2026-11-13T12:00"),
    ],
)  # fmt: skip
def test_anchored_period_of(anchor: int, interval: str, ts: int, start: int, end: int) -> None:
    period = period_of(ts, interval, anchor)
    assert period == Period(start, end)
    assert ts in period


def test_monthly_on_the_31st_never_drifts() -> None:
    # fourteen consecutive periods from 31 Jan 2027: each start is the anchor's day clamped to
    # that month's length, so the short months do not pull later starts to the 28th
    expected = [
        us(2027, 1, 31),
        us(2027, 2, 28),
        us(2027, 3, 31),
        us(2027, 4, 30),
        us(2027, 5, 31),
        us(2027, 6, 30),
        us(2027, 7, 31),
        us(2027, 8, 31),
        us(2027, 9, 30),
        us(2027, 10, 31),
        us(2027, 11, 30),
        us(2027, 12, 31),
        us(2028, 1, 31),
        us(2028, 2, 29),
        us(2028, 3, 31),
    ]
    starts = []
    period = period_of(JAN31_2027, "month", JAN31_2027)
    for _ in range(len(expected)):
        starts.append(period.start)
        period = period_of(period.end, "month", JAN31_2027)
    assert starts == expected


@pytest.mark.parametrize(
    ("interval", "anchor", "length_days"),
    [
        pytest.param("day", NOV14_1200, 1, id="day"),
        pytest.param("week", WED_0900, 7, id="week"),
        pytest.param("month", JAN31_2027, 28, id="month-31-jan-to-28-feb"),
        pytest.param("month", JAN31_2028, 29, id="month-31-jan-to-29-feb-leap"),
        pytest.param("month", us(2027, 3, 31), 30, id="month-31-mar-to-30-apr"),
        pytest.param("year", FEB29_2028, 365, id="year-29-feb-2028-to-28-feb-2029"),
        pytest.param("year", us(2027, 3, 1), 366, id="year-spanning-a-leap-day"),
    ],
)
def test_first_anchored_period_length(interval: str, anchor: int, length_days: int) -> None:
    assert period_of(anchor, interval, anchor) == (anchor, anchor + length_days * DAY)


@pytest.mark.parametrize("interval", ["", "days", "Month", "quarter"])
def test_unknown_interval_raises_with_an_anchor_too(interval: str) -> None:
    with pytest.raises(ValueError, match="unknown interval"):
        period_of(us(2027, 2, 1), interval, JAN31_2027)


def test_calendar_and_anchor_agree_when_the_anchor_is_a_calendar_start() -> None:
    # anchored on 1 Jan 00:00 UTC, monthly and yearly periods are the calendar ones
    anchor = us(2026, 1, 1)
    for ts in (us(2026, 2, 14), us(2026, 12, 31, 23), us(2028, 2, 29, 12)):
        for interval in ("month", "year"):
            assert period_of(ts, interval, anchor) == period_of(ts, interval)


# --- invariants ----------------------------------------------------------------------------

moments = st.integers(min_value=us(1971, 1, 1), max_value=us(2099, 12, 31))


@given(ts=moments, anchor=moments, interval=st.sampled_from(INTERVALS))
def test_anchored_periods_hold_their_moment_and_tile(ts: int, anchor: int, interval: str) -> None:
    period = period_of(ts, interval, anchor)
    assert period.start <= ts < period.end
    # the next period starts where this one ends, and the one before ends where it starts
    assert period_of(period.end, interval, anchor).start == period.end
    assert period_of(period.start - 1, interval, anchor).end == period.start
    assert period_of(period.start, interval, anchor) == period
    assert period_of(period.end - 1, interval, anchor) == period


@given(ts=moments, anchor=moments, interval=st.sampled_from(["month", "year"]))
def test_anchored_month_and_year_starts_are_the_anchor_clamped(
    ts: int, anchor: int, interval: str
) -> None:
    # the start keeps the anchor's time of day, its month (yearly), and its day of the month
    # clamped to the month's last day: never a drifted day such as the 28th after February
    start, origin = moment_of(period_of(ts, interval, anchor).start), moment_of(anchor)
    assert start.time() == origin.time()
    if interval == "year":
        assert start.month == origin.month
    month_days = calendar.monthrange(start.year, start.month)[1]
    assert start.day == min(origin.day, month_days)


@given(ts=moments, anchor=moments, interval=st.sampled_from(["day", "week"]))
def test_anchored_days_and_weeks_are_fixed_lengths_from_the_anchor(
    ts: int, anchor: int, interval: str
) -> None:
    length = DAY * (1 if interval == "day" else 7)
    period = period_of(ts, interval, anchor)
    assert period.end - period.start == length
    assert (period.start - anchor) % length == 0


# --- proration -----------------------------------------------------------------------------

NOV = Period(us(2026, 11, 1), us(2026, 12, 1))  # 30 days
FEB_2027 = Period(us(2027, 2, 1), us(2027, 3, 1))  # 28 days
FEB_2028 = Period(us(2028, 2, 1), us(2028, 3, 1))  # 29 days, leap year
ANCHORED_FEB = period_of(JAN31_2027, "month", JAN31_2027)  # 31 Jan → 28 Feb 2027: 28 days


@pytest.mark.parametrize(
    ("period", "active_from", "active_to", "days", "of_days"),
    [
        # 14 Nov 12:00 → 1 Dec = 16.5 days; a started day counts → 17 of 30
        pytest.param(NOV, us(2026, 11, 14, 12), None, 17, 30, id="starts-14-nov-noon"),
        # 14 Nov 00:00 → 1 Dec = exactly 17 days
        pytest.param(NOV, us(2026, 11, 14), None, 17, 30, id="starts-14-nov-midnight"),
        # 30 Nov 23:59 → 1 Dec: one started day
        pytest.param(NOV, us(2026, 11, 30, 23, 59), None, 1, 30, id="starts-last-minute"),
        # active since October, ended 10 Nov 00:00: 1 Nov → 10 Nov = 9 days (through 9 Nov)
        pytest.param(NOV, us(2026, 10, 1), us(2026, 11, 10), 9, 30, id="ends-10-nov-midnight"),
        # ended 10 Nov 18:00: 1 Nov → 10 Nov 18:00 = 9.75 days → 10
        pytest.param(NOV, us(2026, 10, 1), us(2026, 11, 10, 18), 10, 30, id="ends-10-nov-evening"),
        # 14 Nov 12:00 → 20 Nov 06:00 touches 14, 15, …, 20 Nov: 7 days
        pytest.param(NOV, us(2026, 11, 14, 12), us(2026, 11, 20, 6), 7, 30, id="inside-the-period"),
        # a single microsecond is a started day
        pytest.param(NOV, us(2026, 11, 14), us(2026, 11, 14) + 1, 1, 30, id="one-microsecond"),
        # the whole period, however far the span reaches beyond it
        pytest.param(NOV, us(2026, 11, 1), None, 30, 30, id="whole-open-ended"),
        pytest.param(NOV, us(2025, 1, 1), us(2027, 1, 1), 30, 30, id="whole-wider-span"),
        pytest.param(NOV, us(2026, 11, 1), us(2026, 12, 1), 30, 30, id="whole-exact"),
        # no overlap: 0 days
        pytest.param(NOV, us(2026, 12, 1), None, 0, 30, id="starts-at-period-end"),
        pytest.param(NOV, us(2026, 10, 1), us(2026, 11, 1), 0, 30, id="ended-at-period-start"),
        pytest.param(NOV, us(2026, 10, 1), us(2026, 10, 15), 0, 30, id="ended-before"),
        pytest.param(NOV, us(2026, 11, 20), us(2026, 11, 10), 0, 30, id="ends-before-it-starts"),
        # February: 28 days in 2027, 29 in 2028
        pytest.param(FEB_2027, us(2027, 2, 15), None, 14, 28, id="feb-2027-from-15th"),  # 15..28
        pytest.param(FEB_2028, us(2028, 2, 15), None, 15, 29, id="feb-2028-from-15th"),  # 15..29
        pytest.param(FEB_2028, us(2028, 1, 1), None, 29, 29, id="feb-2028-whole"),
        # an anchored period: 31 Jan → 28 Feb 2027 is 28 days; from 14 Feb 00:00 = 14 days
        pytest.param(ANCHORED_FEB, us(2027, 2, 14), None, 14, 28, id="anchored-from-14-feb"),
    ],
)
def test_prorate(
    period: Period, active_from: int, active_to: int | None, days: int, of_days: int
) -> None:
    part = prorate(period, active_from, active_to)
    assert part == Proration(days, of_days)
    assert (part.days, part.of_days) == (days, of_days)
    assert part.whole is (days == of_days)
    assert part.to_json() == {"days": days, "of_days": of_days}


@given(
    start=moments,
    interval=st.sampled_from(INTERVALS),
    offsets=st.tuples(st.integers(-400 * DAY, 400 * DAY), st.integers(-400 * DAY, 400 * DAY)),
    open_ended=st.booleans(),
)
def test_prorate_is_between_zero_and_the_whole_period(
    start: int, interval: str, offsets: tuple[int, int], open_ended: bool
) -> None:
    period = period_of(start, interval)
    active_from = period.start + offsets[0]
    active_to = None if open_ended else period.start + offsets[1]
    part = prorate(period, active_from, active_to)
    assert part.of_days == (period.end - period.start) // DAY
    assert 0 <= part.days <= part.of_days
    covers_all = active_from <= period.start and (active_to is None or active_to >= period.end)
    assert part.whole is (part.days == part.of_days)
    if covers_all:
        assert part.whole  # (not the converse: a started day counts, so 1 µs short is whole)
    if active_to is not None and (active_to <= period.start or active_to <= active_from):
        assert part.days == 0


@given(start=moments, interval=st.sampled_from(INTERVALS), data=st.data())
def test_a_cut_at_a_day_boundary_splits_the_days_exactly(
    start: int, interval: str, data: st.DataObject
) -> None:
    period = period_of(start, interval)
    of_days = (period.end - period.start) // DAY
    cut = period.start + data.draw(st.integers(0, of_days)) * DAY
    before = prorate(period, period.start, cut)
    after = prorate(period, cut, None)
    assert before.days + after.days == of_days
