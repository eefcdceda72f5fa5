"""Auto-recharge's pure rules: settings, the crossing, the cap, the retry policy."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from tallyray.actors.alerting import crossings
from tallyray.errors import InvalidInput
from tallyray.pricing.recharge_rules import (
    RECHARGE_REQUESTED,
    RETRY_DELAYS,
    RechargeSettings,
    after_decline,
    charge_decision,
    month_of,
    parse_settings,
    purchase_id_of,
    trigger_rule,
)

H = 3600 * 1_000_000
SETTINGS = RechargeSettings(True, Decimal("10"), Decimal("50"), Decimal("120"), "EUR")


def test_settings_parse_in_the_customers_currency() -> None:
    doc = {"threshold": "10", "amount": "50.00", "monthly_cap": "120"}
    assert parse_settings(doc, "EUR") == SETTINGS
    assert parse_settings({**doc, "enabled": False}, "EUR").enabled is False


@pytest.mark.parametrize(
    ("doc", "field"),
    [
        ({"amount": "50", "monthly_cap": "100"}, "threshold"),
        ({"threshold": "10", "amount": "0", "monthly_cap": "100"}, "amount"),
        ({"threshold": "10", "amount": "50.001", "monthly_cap": "100"}, "amount"),  # EUR cents
        ({"threshold": "-1", "amount": "50", "monthly_cap": "100"}, "threshold"),
        ({"threshold": "10", "amount": "50", "monthly_cap": "40"}, "monthly_cap"),  # < amount
        ({"threshold": "10", "amount": "50", "monthly_cap": "100", "enabled": "yes"}, "enabled"),
        ({"threshold": "10", "amount": "50", "monthly_cap": "100", "every": "day"}, "every"),
    ],
)
def test_bad_settings_name_the_field(doc: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        parse_settings(doc, "EUR")
    assert field in [p.where for p in caught.value.problems]


@pytest.mark.parametrize(
    ("charged", "action"),
    [
        ("0", "charge"),  # 0 + 50 ≤ 120
        ("50", "charge"),  # 50 + 50 ≤ 120
        ("70", "charge"),  # 70 + 50 = 120: the cap itself is allowed
        ("100", "capped"),  # 100 + 50 = 150 > 120: nothing, not a partial 20
    ],
)
def test_the_monthly_cap_allows_whole_recharges_only(charged: str, action: str) -> None:
    decision = charge_decision(SETTINGS, Decimal(charged))
    assert decision.action == action
    assert decision.amount == (Decimal("50") if action == "charge" else 0)


def test_nothing_is_charged_once_auto_recharge_is_off() -> None:
    off = RechargeSettings(False, Decimal("10"), Decimal("50"), Decimal("120"), "EUR")
    assert charge_decision(off, Decimal(0)).action == "disabled"
    assert charge_decision(None, Decimal(0)).action == "disabled"
    assert trigger_rule(off) is None


@pytest.mark.parametrize(
    ("attempt", "retry_in"),
    [(1, 1 * H), (2, 6 * H), (3, 24 * H), (4, None)],  # then turned off
)
def test_a_decline_is_retried_after_1h_6h_24h_then_given_up(
    attempt: int, retry_in: int | None
) -> None:
    at = 1_000 * H
    assert after_decline(attempt, at) == (None if retry_in is None else at + retry_in)
    assert len(RETRY_DELAYS) == 3


def test_ids_are_the_same_whoever_makes_them() -> None:
    crossing = "recharge:test:cust-1:3"
    assert purchase_id_of(crossing, 1) == purchase_id_of(crossing, 1)
    assert purchase_id_of(crossing, 1) != purchase_id_of(crossing, 2)
    assert purchase_id_of(crossing, 1).startswith("pur_")
    assert month_of(1_796_083_200_000_000) == "2026-12"  # 2026-12-01T00:00:00Z


def crossed(values: list[str], state: dict[str, Any], period: int = 0) -> list[str]:
    rule = trigger_rule(SETTINGS)
    assert rule is not None
    fired = []
    for value in values:
        for firing in crossings(
            [rule], {rule.id: Decimal(value)}, state, period, "test:c", {"customer_id": "c"}
        ):
            assert firing.type == RECHARGE_REQUESTED
            fired.append(firing.id)
    return fired


def test_one_crossing_is_one_request_until_the_balance_is_back_at_the_threshold() -> None:
    state: dict[str, Any] = {}
    # Down through 10 and on down: one crossing; back to exactly 10 re-arms (no band).
    assert crossed(["30", "12", "9.99", "5", "-3", "8"], state) == ["recharge:test:c:1"]
    assert crossed(["10", "9"], state) == ["recharge:test:c:2"]
    # A new period does not re-arm it (an alert's state would start afresh)...
    assert crossed(["8", "7"], state, period=1) == []
    # ...and the counter goes on: a crossing's id is never reused.
    assert crossed(["60", "4"], state, period=1) == ["recharge:test:c:3"]
