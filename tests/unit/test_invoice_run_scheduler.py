"""When scheduled invoice runs are due (pure: no store, no Ray)."""

from __future__ import annotations

import pytest

from tallyray.cluster import Settings
from tallyray.invoicing.scheduler import RunSchedule, parse_schedule, slot_at, until_next_look
from tallyray.pricing.events import format_timestamp, parse_timestamp


@pytest.mark.parametrize(
    ("now", "at", "slot"),
    [
        # before today's time of day: yesterday's slot
        ("2026-11-04T01:59:59Z", "02:00", "2026-11-03T02:00:00Z"),
        ("2026-11-04T02:00:00Z", "02:00", "2026-11-04T02:00:00Z"),
        ("2026-11-04T23:59:59Z", "02:00", "2026-11-04T02:00:00Z"),
        ("2026-11-04T00:00:00Z", "00:00", "2026-11-04T00:00:00Z"),
        ("2026-01-01T00:10:00Z", "23:30", "2025-12-31T23:30:00Z"),  # across a year end
    ],
)
def test_the_slot_is_the_latest_time_of_day_at_or_before_now(now: str, at: str, slot: str) -> None:
    schedule = parse_schedule("live", at)
    assert format_timestamp(slot_at(parse_timestamp(now), schedule.at_seconds)) == slot


@pytest.mark.parametrize(
    ("now", "at", "sleep"),
    [
        ("2026-11-04T01:00:00Z", "02:00", 60.0),  # the slot is far: a look a minute
        ("2026-11-04T01:59:30Z", "02:00", 30.01),  # the next look is at the slot, a hair past
        ("2026-11-04T01:59:59.990000Z", "02:00", 0.02),
        ("2026-11-04T02:00:00Z", "02:00", 60.0),  # at the slot: tomorrow's is far
        ("2026-12-31T23:59:50Z", "00:00", 10.01),  # across a year end
    ],
)
def test_a_replica_looks_once_a_minute_and_at_the_slot(now: str, at: str, sleep: float) -> None:
    schedule = parse_schedule("live", at)
    assert until_next_look(parse_timestamp(now), schedule.at_seconds, 60.0) == pytest.approx(sleep)


@pytest.mark.parametrize(
    ("envs", "at", "expected"),
    [
        ("live,test", "02:00", RunSchedule(("live", "test"), 7200)),
        ("test", "23:45", RunSchedule(("test",), 85_500)),
        (" live , live ", "0:05", RunSchedule(("live",), 300)),
        ("off", "02:00", RunSchedule((), 7200)),
        ("", "02:00", RunSchedule((), 7200)),
    ],
)
def test_a_schedule_reads_its_environments_and_time_of_day(
    envs: str, at: str, expected: RunSchedule
) -> None:
    assert parse_schedule(envs, at) == expected


@pytest.mark.parametrize(
    ("envs", "at", "says"),
    [
        ("production", "02:00", "TALLYRAY_INVOICE_SCHEDULE must be 'off' or a list"),
        ("live,off", "02:00", "TALLYRAY_INVOICE_SCHEDULE"),
        ("live", "2am", "TALLYRAY_INVOICE_RUN_AT must be a time of day in UTC as HH:MM"),
        ("live", "24:00", "TALLYRAY_INVOICE_RUN_AT"),
    ],
)
def test_a_bad_schedule_says_what_to_fix(envs: str, at: str, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        parse_schedule(envs, at)


def test_the_settings_schedule_both_environments_at_two_by_default(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("TALLYRAY_INVOICE_SCHEDULE", raising=False)
    monkeypatch.delenv("TALLYRAY_INVOICE_RUN_AT", raising=False)
    assert Settings.load().run_schedule == RunSchedule(("live", "test"), 7200)
    monkeypatch.setenv("TALLYRAY_INVOICE_SCHEDULE", "off")
    assert Settings.load().run_schedule.envs == ()
    monkeypatch.setenv("TALLYRAY_INVOICE_RUN_AT", "25:00")
    with pytest.raises(ValueError, match="TALLYRAY_INVOICE_RUN_AT"):
        Settings.load()
