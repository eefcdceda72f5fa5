"""The retention horizon, by hand: the earliest of the retention, the dedup window, late
events, open periods and uninvoiced periods (tallyray/storage/retention.py)."""

from __future__ import annotations

import pytest

from tallyray.pricing.events import parse_timestamp
from tallyray.storage.retention import Horizon, SubscriptionSpan, retention_horizon

NOW = parse_timestamp("2026-11-20T10:00:00Z")
DAY = 86_400


def at(text: str) -> int:
    return parse_timestamp(text if "T" in text else f"{text}T00:00:00Z")


def monthly(start: str, env: str = "test", anchor: str | None = None) -> SubscriptionSpan:
    return SubscriptionSpan(env, at(start), None, "month", None if anchor is None else at(anchor))


CASES = [
    # (retention days, grace days, cutoffs, subscriptions, uninvoiced starts, horizon, rule)
    # now − 400 d = 2025-10-16 10:00, before everything else
    (400, 3, {}, [], [], "2025-10-16T10:00:00Z", "retention"),
    # now − 35 d = 2026-10-16 10:00: the dedup window outlasts a 1-day retention
    (1, 3, {}, [], [], "2026-10-16T10:00:00Z", "dedup window"),
    # 40 days of grace: now − 40 d = Oct 11, whose month started Oct 1 (before Oct 16)
    (1, 40, {}, [], [], "2026-10-01", "late events"),
    # a monthly customer, every shard closed October (cutoff Nov 1): its open period starts
    # Nov 1, after the dedup window's Oct 16
    (
        1,
        3,
        {"test": at("2026-11-01")},
        [monthly("2026-01-01")],
        [],
        "2026-10-16T10:00:00Z",
        "dedup window",
    ),
    # a shard has not closed October yet (cutoff Oct 1): October is still open
    (1, 3, {"test": at("2026-10-01")}, [monthly("2026-01-01")], [], "2026-10-01", "open period"),
    # anniversary periods from Jan 10: the period holding Nov 1 started Oct 10
    (
        1,
        3,
        {"test": at("2026-11-01")},
        [monthly("2026-01-10", anchor="2026-01-10")],
        [],
        "2026-10-10",
        "open period",
    ),
    # a yearly plan: its open period started Jan 1
    (
        1,
        3,
        {"test": at("2026-11-01")},
        [SubscriptionSpan("test", at("2025-03-01"), None, "year")],
        [],
        "2026-01-01",
        "open period",
    ),
    # no shard has closed a period in this environment: from the subscription's first period
    (1, 3, {}, [monthly("2026-08-10")], [], "2026-08-01", "open period"),
    # another environment's cutoff says nothing about this one
    (1, 3, {"live": at("2026-11-01")}, [monthly("2026-08-10")], [], "2026-08-01", "open period"),
    # a subscription that ended before the cutoff has no open period left
    (
        1,
        3,
        {"test": at("2026-11-01")},
        [SubscriptionSpan("test", at("2025-01-01"), at("2026-01-01"), "year")],
        [],
        "2026-10-16T10:00:00Z",
        "dedup window",
    ),
    # September closed but not invoiced
    (
        1,
        3,
        {"test": at("2026-11-01")},
        [monthly("2026-01-01")],
        [at("2026-09-01")],
        "2026-09-01",
        "uninvoiced period",
    ),
]


@pytest.mark.parametrize(
    ("days", "grace_days", "cutoffs", "subscriptions", "uninvoiced", "expected", "rule"), CASES
)
def test_the_horizon_is_the_earliest_instant_any_rule_still_needs(
    days: int,
    grace_days: int,
    cutoffs: dict[str, int | None],
    subscriptions: list[SubscriptionSpan],
    uninvoiced: list[int],
    expected: str,
    rule: str,
) -> None:
    horizon = retention_horizon(NOW, days, grace_days * DAY, cutoffs, subscriptions, uninvoiced)
    assert horizon == Horizon(at(expected), rule)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("horizon", "cut"),
    [
        ("2026-10-16T10:00:00Z", "2026-10-01"),  # removal works in whole months
        ("2026-10-01", "2026-10-01"),
        ("2027-01-01T00:00:00.000001Z", "2027-01-01"),
        ("1969-12-31T23:59:59Z", "1969-12-01"),
    ],
)
def test_removal_cuts_at_the_start_of_the_horizons_month(horizon: str, cut: str) -> None:
    assert Horizon(at(horizon), "retention").cut == at(cut)
