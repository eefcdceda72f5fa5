"""Dunning: when a failed payment is tried again (tallyray/invoicing/dunning.py)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tallyray.invoicing.dunning import next_attempt

US = 1_000_000
DAY = 86_400 * US
NOW = 1_796_083_200_000_000  # 2026-12-01T00:00:00Z
DEFAULT = (3, 5, 7)


@pytest.mark.parametrize(
    ("failed_attempt", "retry_days", "expected"),
    [
        # retry_days (3, 5, 7): the 1st failure waits 3 days, the 2nd 5, the 3rd 7
        pytest.param(1, DEFAULT, NOW + 3 * DAY, id="first-failure-3-days"),
        pytest.param(2, DEFAULT, NOW + 5 * DAY, id="second-failure-5-days"),
        pytest.param(3, DEFAULT, NOW + 7 * DAY, id="third-failure-7-days"),
        # the 4th failure spends the schedule: uncollectible
        pytest.param(4, DEFAULT, None, id="fourth-failure-spent"),
        pytest.param(99, DEFAULT, None, id="long-after-spent"),
        # a one-step schedule
        pytest.param(1, (1,), NOW + 1 * DAY, id="single-retry"),
        pytest.param(2, (1,), None, id="single-retry-spent"),
        # no retries at all: the first failure is final
        pytest.param(1, (), None, id="no-retries"),
        # days are whole 24-hour steps in microseconds: 365 × 86,400,000,000
        pytest.param(1, (365,), NOW + 31_536_000_000_000, id="a-year-later"),
        # a list works as well as a tuple (the config stores a tuple)
        pytest.param(2, [2, 4], NOW + 4 * DAY, id="list-schedule"),
    ],
)
def test_next_attempt(
    failed_attempt: int, retry_days: tuple[int, ...], expected: int | None
) -> None:
    assert next_attempt(failed_attempt, NOW, retry_days) == expected


@pytest.mark.parametrize("failed_attempt", [0, -1], ids=["zero", "negative"])
def test_attempts_are_numbered_from_one(failed_attempt: int) -> None:
    with pytest.raises(ValueError, match="numbered from 1"):
        next_attempt(failed_attempt, NOW, DEFAULT)


def test_the_next_attempt_is_relative_to_the_failure_not_a_fixed_clock() -> None:
    # the same failure an hour later is retried an hour later
    hour = 3_600 * US
    assert next_attempt(1, NOW + hour, DEFAULT) == NOW + hour + 3 * DAY


@given(
    retry_days=st.lists(st.integers(1, 365), max_size=10),
    now=st.integers(0, 4_102_444_800 * US),  # up to 2100
)
def test_a_schedule_gives_one_retry_per_step_then_none(retry_days: list[int], now: int) -> None:
    # walking the attempts: attempt n waits retry_days[n − 1], strictly later than its failure
    at = now
    for attempt, days in enumerate(retry_days, start=1):
        retry = next_attempt(attempt, at, retry_days)
        assert retry == at + days * DAY
        assert retry > at
        at = retry
    assert next_attempt(len(retry_days) + 1, at, retry_days) is None
    # the whole walk waited sum(retry_days) days
    assert at - now == sum(retry_days) * DAY
