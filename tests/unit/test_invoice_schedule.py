"""Which periods are due for invoicing and who covered them (tallyray/invoicing/schedule.py)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tallyray.invoicing.schedule import Covered, due_periods, subscription_anchor
from tallyray.pricing.config import PricingConfig, parse_config
from tallyray.pricing.periods import Period, Proration
from tallyray.pricing.plans import Plan

US = 1_000_000
DAY = 86_400 * US


def us(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> int:
    """Microseconds since the epoch of a UTC moment: ``us(2026, 10, 15, 12)``."""
    return int(datetime(year, month, day, hour, minute, tzinfo=UTC).timestamp()) * US


CONFIG: dict[str, Any] = {
    "meters": [{"key": "requests", "event_type": "api", "aggregation": "count"}],
    "plans": [
        {
            "key": "starter",
            "name": "Starter",
            "currency": "EUR",
            "interval": "month",
            "base_fee": "31.00",
        },
        {
            "key": "pro",
            "name": "Pro",
            "currency": "EUR",
            "interval": "month",
            "base_fee": "49.00",
            "minimum": "100.00",
            "charges": [{"meter": "requests", "model": "per_unit", "unit_amount": "0.001"}],
        },
        {
            "key": "annual",
            "name": "Annual",
            "currency": "EUR",
            "interval": "year",
            "base_fee": "365.00",
        },
        {
            "key": "weekly",
            "name": "Weekly",
            "currency": "EUR",
            "interval": "week",
            "base_fee": "7.00",
        },
    ],
}


@pytest.fixture(scope="module")
def config() -> PricingConfig:
    return parse_config(CONFIG)


def sub(
    id: str,
    plan_key: str,
    start: int,
    end: int | None = None,
    anchor: str = "calendar",
    created_at: int = 0,
    plan_version: int = 1,
) -> dict[str, Any]:
    """A subscription row as the store returns it."""
    return {
        "id": id,
        "plan_key": plan_key,
        "plan_version": plan_version,
        "start": start,
        "end": end,
        "anchor": anchor,
        "discount": None,
        "created_at": created_at,
    }


def shape(
    due: list[tuple[Period, list[Covered]]],
) -> list[tuple[Period, list[tuple[str, int, int]]]]:
    """``due_periods``' answer as (period, [(subscription id, days, of_days), ...])."""
    return [
        (period, [(c.subscription["id"], c.proration.days, c.proration.of_days) for c in covered])
        for period, covered in due
    ]


OCT = Period(us(2026, 10, 1), us(2026, 11, 1))  # 31 days
NOV = Period(us(2026, 11, 1), us(2026, 12, 1))  # 30 days
DEC = Period(us(2026, 12, 1), us(2027, 1, 1))  # 31 days
NOV14_NOON = us(2026, 11, 14, 12)
JAN31_2027 = us(2027, 1, 31)


@pytest.mark.parametrize(
    ("subscriptions", "until", "after", "expected"),
    [
        # monthly from 1 Oct, invoiced on 1 Dec: October and November, both whole
        pytest.param(
            [sub("s1", "starter", us(2026, 10, 1))],
            us(2026, 12, 1),
            0,
            [(OCT, [("s1", 31, 31)]), (NOV, [("s1", 30, 30)])],
            id="monthly-from-1-oct",
        ),
        # one microsecond before 1 Dec November has not ended: it is not due
        pytest.param(
            [sub("s1", "starter", us(2026, 10, 1))],
            us(2026, 12, 1) - 1,
            0,
            [(OCT, [("s1", 31, 31)])],
            id="open-period-not-due",
        ),
        # nothing has ended yet
        pytest.param(
            [sub("s1", "starter", us(2026, 10, 1))],
            us(2026, 10, 31),
            0,
            [],
            id="nothing-ended-yet",
        ),
        # started 14 Nov 12:00: 16.5 days → a started day counts → 17 of 30
        pytest.param(
            [sub("s1", "starter", NOV14_NOON)],
            us(2026, 12, 1),
            0,
            [(NOV, [("s1", 17, 30)])],
            id="started-mid-november",
        ),
        # plan change on 15 Oct 00:00: 1..14 Oct on Starter (14 days), 15..31 Oct on Pro
        # (17 days), 14 + 17 = 31; November is all Pro
        pytest.param(
            [
                sub("old", "starter", us(2026, 10, 1), end=us(2026, 10, 15), created_at=1),
                sub("new", "pro", us(2026, 10, 15), created_at=2),
            ],
            us(2026, 12, 1),
            0,
            [(OCT, [("old", 14, 31), ("new", 17, 31)]), (NOV, [("new", 30, 30)])],
            id="plan-change-15-oct",
        ),
        # ended 10 Nov 18:00: 1 Nov → 10 Nov 18:00 = 9.75 days → 10 of 30; nothing after,
        # however late the run
        pytest.param(
            [sub("s1", "starter", us(2026, 10, 1), end=us(2026, 11, 10, 18))],
            us(2027, 3, 1),
            0,
            [(OCT, [("s1", 31, 31)]), (NOV, [("s1", 10, 30)])],
            id="ended-10-nov",
        ),
        # ended at 10 Nov 00:00: active 1..9 Nov = 9 days
        pytest.param(
            [sub("s1", "starter", us(2026, 10, 1), end=us(2026, 11, 10))],
            us(2027, 3, 1),
            0,
            [(OCT, [("s1", 31, 31)]), (NOV, [("s1", 9, 30)])],
            id="ended-10-nov-midnight",
        ),
        # ended exactly at the end of October: November is not billed at all
        pytest.param(
            [sub("s1", "starter", us(2026, 10, 1), end=us(2026, 11, 1))],
            us(2027, 3, 1),
            0,
            [(OCT, [("s1", 31, 31)])],
            id="ended-at-a-period-boundary",
        ),
        # anniversary: anchored on 14 Nov 12:00, periods run noon to noon on the 14th, each whole
        # (14 Nov → 14 Dec = 30 days, 14 Dec → 14 Jan = 31 days)
        pytest.param(
            [sub("s1", "starter", NOV14_NOON, anchor=str(NOV14_NOON))],
            us(2027, 1, 15),
            0,
            [
                (Period(NOV14_NOON, us(2026, 12, 14, 12)), [("s1", 30, 30)]),
                (Period(us(2026, 12, 14, 12), us(2027, 1, 14, 12)), [("s1", 31, 31)]),
            ],
            id="anniversary-14-nov-noon",
        ),
        # anniversary on 31 Jan 2027: → 28 Feb (28 days) → 31 Mar (31 days)
        pytest.param(
            [sub("s1", "starter", JAN31_2027, anchor=str(JAN31_2027))],
            us(2027, 4, 1),
            0,
            [
                (Period(JAN31_2027, us(2027, 2, 28)), [("s1", 28, 28)]),
                (Period(us(2027, 2, 28), us(2027, 3, 31)), [("s1", 31, 31)]),
            ],
            id="anniversary-31-jan",
        ),
        # after: periods that ended by 1 Nov were invoiced already (Oct ends at 1 Nov, not after)
        pytest.param(
            [sub("s1", "starter", us(2026, 10, 1))],
            us(2027, 1, 1),
            us(2026, 11, 1),
            [(NOV, [("s1", 30, 30)]), (DEC, [("s1", 31, 31)])],
            id="after-skips-invoiced-periods",
        ),
        # yearly plan: 2026 is due on 1 Jan 2027, 2027 is not
        pytest.param(
            [sub("s1", "annual", us(2026, 1, 1))],
            us(2027, 6, 1),
            0,
            [(Period(us(2026, 1, 1), us(2027, 1, 1)), [("s1", 365, 365)])],
            id="yearly",
        ),
        # weekly plan started Wednesday 25 Nov 2026: its first week (Mon 23 Nov → Mon 30 Nov)
        # is 5 days of 7, the next is whole
        pytest.param(
            [sub("s1", "weekly", us(2026, 11, 25))],
            us(2026, 12, 7),
            0,
            [
                (Period(us(2026, 11, 23), us(2026, 11, 30)), [("s1", 5, 7)]),
                (Period(us(2026, 11, 30), us(2026, 12, 7)), [("s1", 7, 7)]),
            ],
            id="weekly-from-a-wednesday",
        ),
        # a subscription that starts after the run: nothing due
        pytest.param([sub("s1", "starter", us(2027, 1, 1))], us(2026, 12, 1), 0, [], id="future"),
        pytest.param([], us(2026, 12, 1), 0, [], id="no-subscriptions"),
    ],
)
def test_due_periods(
    config: PricingConfig,
    subscriptions: list[dict[str, Any]],
    until: int,
    after: int,
    expected: list[tuple[Period, list[tuple[str, int, int]]]],
) -> None:
    due = due_periods(subscriptions, lambda key, version: config.plan(key), until, after)
    assert shape(due) == expected


def test_a_plan_change_splits_the_period_and_the_days_sum_to_the_period(
    config: PricingConfig,
) -> None:
    subscriptions = [
        sub("old", "starter", us(2026, 10, 1), end=us(2026, 10, 15), created_at=1),
        sub("new", "pro", us(2026, 10, 15), created_at=2, plan_version=3),
    ]
    seen: list[tuple[str, int]] = []

    def plan_of(key: str, version: int) -> Plan:
        seen.append((key, version))
        return config.plan(key)

    (october, (old, new)), _ = due_periods(subscriptions, plan_of, us(2026, 12, 1))
    assert october == OCT
    assert (old.plan.key, old.proration) == ("starter", Proration(14, 31))
    assert (new.plan.key, new.proration) == ("pro", Proration(17, 31))
    assert old.proration.days + new.proration.days == 31  # 14 + 17
    assert not old.proration.whole and not new.proration.whole
    assert new.subscription is subscriptions[1]  # the row itself, for its discount and version
    assert sorted(set(seen)) == [("pro", 3), ("starter", 1)]  # plans looked up by version


def test_subscriptions_are_taken_oldest_first_whatever_the_input_order(
    config: PricingConfig,
) -> None:
    old = sub("old", "starter", us(2026, 10, 1), end=us(2026, 10, 15), created_at=1)
    new = sub("new", "pro", us(2026, 10, 15), created_at=2)
    # same start: the one created first comes first
    twin_a = sub("a", "starter", us(2026, 10, 1), end=us(2026, 10, 1, 1), created_at=5)
    twin_b = sub("b", "pro", us(2026, 10, 1), end=us(2026, 10, 15), created_at=6)

    def plan_of(key: str, version: int) -> Plan:
        return config.plan(key)

    until = us(2026, 11, 1)
    assert shape(due_periods([new, old], plan_of, until)) == shape(
        due_periods([old, new], plan_of, until)
    )
    october = due_periods([twin_b, twin_a], plan_of, until)[0][1]
    assert [c.subscription["id"] for c in october] == ["a", "b"]


def test_a_mid_day_plan_change_bills_each_day_once(config: PricingConfig) -> None:
    subscriptions = [
        sub("old", "starter", us(2026, 10, 1), end=us(2026, 10, 15, 12), created_at=1),
        sub("new", "pro", us(2026, 10, 15, 12), created_at=2),
    ]
    (october, covered), _ = due_periods(subscriptions, lambda k, v: config.plan(k), us(2026, 12, 1))
    assert october == OCT
    assert sum(c.proration.days for c in covered) == 31


@given(change_day=st.integers(min_value=1, max_value=30), months=st.integers(1, 14))
def test_a_midnight_plan_change_covers_every_day_exactly_once(change_day: int, months: int) -> None:
    config = parse_config(CONFIG)
    change = us(2026, 10, 1) + change_day * DAY  # 2 Oct .. 31 Oct, 00:00
    subscriptions = [
        sub("old", "starter", us(2026, 10, 1), end=change, created_at=1),
        sub("new", "pro", change, created_at=2),
    ]
    until = us(2026 + (9 + months) // 12, (9 + months) % 12 + 1, 1)  # 1 Nov 2026 .. 1 Dec 2027
    due = due_periods(subscriptions, lambda k, v: config.plan(k), until)
    assert len(due) == months
    for period, covered in due:
        assert sum(c.proration.days for c in covered) == covered[0].proration.of_days
        assert period.end <= until


@pytest.mark.parametrize(
    ("anchor", "expected"),
    [
        pytest.param("calendar", None, id="calendar"),
        pytest.param(None, None, id="none"),
        pytest.param(str(NOV14_NOON), NOV14_NOON, id="microseconds-as-text"),
        pytest.param(NOV14_NOON, NOV14_NOON, id="microseconds-as-int"),
    ],
)
def test_subscription_anchor(anchor: Any, expected: int | None) -> None:
    assert subscription_anchor({"anchor": anchor}) == expected
    if anchor is None:
        assert subscription_anchor({}) is None  # a row without the column: calendar
