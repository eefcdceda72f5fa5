"""Calendar billing periods in microseconds (tallyray/pricing/periods.py)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tallyray.pricing.events import parse_timestamp
from tallyray.pricing.periods import Period, covered_until, period_of
from tallyray.pricing.plans import INTERVALS

US = 1_000_000
DAY = 86_400 * US


def us(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0, micro: int = 0
) -> int:
    """Microseconds since the epoch of a UTC moment: ``us(2026, 11, 28, 10)``."""
    moment = datetime(year, month, day, hour, minute, second, tzinfo=UTC)
    return int(moment.timestamp()) * US + micro


def test_us_helper_is_exact() -> None:
    # 2026-01-01 is 20,454 days after 1970-01-01: 20,454 × 86,400 s = 1,767,225,600 s
    assert us(2026, 1, 1) == 1_767_225_600 * US
    assert us(1970, 1, 1, 0, 0, 0, 1) == 1


# --- one table: which period holds which moment -------------------------------------------


@pytest.mark.parametrize(
    ("ts", "interval", "start", "end"),
    [
        # day: midnight to midnight UTC
        (us(2026, 11, 28, 10, 30), "day", us(2026, 11, 28), us(2026, 11, 29)),
        (us(2026, 11, 28, 23, 59, 59, 999_999), "day", us(2026, 11, 28), us(2026, 11, 29)),
        # the last day of a month runs into the 1st of the next
        (us(2026, 11, 30, 12), "day", us(2026, 11, 30), us(2026, 12, 1)),
        # 2028 is a leap year: Feb 28 → Feb 29 → Mar 1
        (us(2028, 2, 28, 12), "day", us(2028, 2, 28), us(2028, 2, 29)),
        (us(2028, 2, 29, 12), "day", us(2028, 2, 29), us(2028, 3, 1)),
        # week: Monday 00:00 to the next Monday. 2026-11-23 is a Monday.
        (us(2026, 11, 23), "week", us(2026, 11, 23), us(2026, 11, 30)),  # Monday itself
        (us(2026, 11, 25, 9), "week", us(2026, 11, 23), us(2026, 11, 30)),  # Wednesday
        (us(2026, 11, 29, 23, 59), "week", us(2026, 11, 23), us(2026, 11, 30)),  # Sunday
        # a week across a month and a year: Mon 2026-12-28 .. Mon 2027-01-04
        (us(2027, 1, 1, 8), "week", us(2026, 12, 28), us(2027, 1, 4)),
        # month: the 1st to the 1st
        (us(2026, 11, 15), "month", us(2026, 11, 1), us(2026, 12, 1)),
        (us(2026, 4, 30, 23), "month", us(2026, 4, 1), us(2026, 5, 1)),  # 30-day month
        # December → January of the next year
        (us(2026, 12, 31, 23, 59, 59), "month", us(2026, 12, 1), us(2027, 1, 1)),
        (us(2027, 1, 1), "month", us(2027, 1, 1), us(2027, 2, 1)),
        # February: 28 days in 2026, 29 in the leap year 2028
        (us(2026, 2, 14), "month", us(2026, 2, 1), us(2026, 3, 1)),
        (us(2028, 2, 29, 12), "month", us(2028, 2, 1), us(2028, 3, 1)),
        # year: Jan 1 to Jan 1
        (us(2026, 7, 4), "year", us(2026, 1, 1), us(2027, 1, 1)),
        (us(2026, 12, 31, 23, 59, 59, 999_999), "year", us(2026, 1, 1), us(2027, 1, 1)),
        (us(2028, 2, 29), "year", us(2028, 1, 1), us(2029, 1, 1)),
        # before the epoch still works (negative microseconds)
        (us(1969, 12, 31, 12), "day", us(1969, 12, 31), us(1970, 1, 1)),
    ],
)
def test_period_of(ts: int, interval: str, start: int, end: int) -> None:
    period = period_of(ts, interval)
    assert (period.start, period.end) == (start, end)
    assert period == Period(start, end)
    assert ts in period


@pytest.mark.parametrize(
    ("interval", "start", "length_days"),
    [
        ("day", us(2026, 11, 28), 1),
        ("week", us(2026, 11, 23), 7),
        ("month", us(2026, 2, 1), 28),  # February 2026
        ("month", us(2028, 2, 1), 29),  # February 2028, a leap year
        ("month", us(2026, 12, 1), 31),  # December
        ("year", us(2026, 1, 1), 365),
        ("year", us(2028, 1, 1), 366),  # leap year
    ],
)
def test_period_length(interval: str, start: int, length_days: int) -> None:
    assert period_of(start, interval) == (start, start + length_days * DAY)


@pytest.mark.parametrize(
    ("interval", "start", "previous_start"),
    [
        ("day", us(2027, 1, 1), us(2026, 12, 31)),
        ("week", us(2026, 11, 30), us(2026, 11, 23)),
        ("month", us(2027, 1, 1), us(2026, 12, 1)),  # January → back into December
        ("month", us(2028, 3, 1), us(2028, 2, 1)),  # leap February: 29 days back
        ("year", us(2027, 1, 1), us(2026, 1, 1)),
    ],
)
def test_a_period_start_belongs_to_that_period_not_the_one_before(
    interval: str, start: int, previous_start: int
) -> None:
    assert period_of(start, interval).start == start
    before = period_of(start - 1, interval)  # one microsecond earlier
    assert before == (previous_start, start)
    assert start not in before


@pytest.mark.parametrize("interval", ["", "days", "Month", "quarter", "hour"])
def test_unknown_interval_raises(interval: str) -> None:
    with pytest.raises(ValueError, match="unknown interval"):
        period_of(us(2026, 1, 1), interval)


def test_period_contains_only_integers_inside_half_open_range() -> None:
    period = Period(10, 20)
    assert 10 in period
    assert 19 in period
    assert 20 not in period  # [start, end): the end is the next period's start
    assert 9 not in period
    assert 15.0 not in period  # microseconds are integers
    assert "15" not in period


# --- invariants ----------------------------------------------------------------------------

moments = st.integers(min_value=us(1971, 1, 1), max_value=us(2099, 12, 31))


@given(ts=moments, interval=st.sampled_from(INTERVALS))
def test_period_holds_its_moment_and_tiles_the_time_line(ts: int, interval: str) -> None:
    period = period_of(ts, interval)
    assert period.start <= ts < period.end
    # the end of one period is the start of the next, and the one before ends at our start
    assert period_of(period.end, interval).start == period.end
    assert period_of(period.start - 1, interval).end == period.start
    # every moment inside maps to the same period
    assert period_of(period.start, interval) == period
    assert period_of(period.end - 1, interval) == period


@given(ts=moments, interval=st.sampled_from(INTERVALS))
def test_period_starts_on_the_calendar_boundary(ts: int, interval: str) -> None:
    start = datetime.fromtimestamp(period_of(ts, interval).start / US, tz=UTC)
    assert (start.hour, start.minute, start.second, start.microsecond) == (0, 0, 0, 0)
    if interval == "week":
        assert start.weekday() == 0  # Monday
    if interval in ("month", "year"):
        assert start.day == 1
    if interval == "year":
        assert start.month == 1


@pytest.mark.parametrize(
    ("end", "interval", "anchor", "until"),
    [
        # cancelled mid-period: the plan prices that whole period
        ("2026-11-20T10:00:00Z", "month", None, "2026-12-01T00:00:00Z"),
        # cancelled at a period's end: the period before is the last
        ("2026-12-01T00:00:00Z", "month", None, "2026-12-01T00:00:00Z"),
        ("2026-12-01T00:00:00.000001Z", "month", None, "2027-01-01T00:00:00Z"),
        ("2026-11-20T10:00:00Z", "day", None, "2026-11-21T00:00:00Z"),
        # anniversary-billed from the 15th
        ("2026-11-20T10:00:00Z", "month", "2026-01-15T00:00:00Z", "2026-12-15T00:00:00Z"),
    ],
)
def test_covered_until_is_the_end_of_the_period_a_subscription_ends_in(
    end: str, interval: str, anchor: str | None, until: str
) -> None:
    start = None if anchor is None else parse_timestamp(anchor)
    assert covered_until(parse_timestamp(end), interval, start) == parse_timestamp(until)
