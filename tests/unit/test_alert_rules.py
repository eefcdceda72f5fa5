"""The one alert-rule parser and validator (tallyray.pricing.alert_rules): every kind, and
every bad input, with the same answer from the rule parser and from a plan's config."""

from __future__ import annotations

from decimal import Decimal as D
from typing import Any

import pytest

from tallyray.errors import ConfigError, InvalidInput, Problem
from tallyray.pricing.alert_rules import (
    RULE_KINDS,
    AlertRule,
    parse_rule,
    plan_rules,
    rule_problems,
    unusable_plan_rules,
)
from tallyray.pricing.config import parse_config

METERS = ["input_tokens", "requests"]

GOOD = [
    # (rule JSON, kind, threshold, meter, description)
    ({"kind": "balance_below", "threshold": "5.00"}, "balance_below", "5.00", None,
     "available balance below 5.00"),
    ({"kind": "balance_below", "threshold": "-10"}, "balance_below", "-10", None,
     "available balance below -10"),
    ({"kind": "spend_above", "threshold": "0"}, "spend_above", "0", None,
     "period spend above 0"),
    ({"kind": "spend_above", "threshold": 100}, "spend_above", "100", None,
     "period spend above 100"),
    ({"kind": "usage_above", "threshold": "1000000", "meter": "input_tokens"}, "usage_above",
     "1000000", "input_tokens", "input_tokens usage above 1000000"),
    ({"kind": "credits_used_percent", "threshold": "100"}, "credits_used_percent", "100",
     None, "credits used at 100%"),
    ({"kind": "credits_used_percent", "threshold": "0.5", "name": "early"},
     "credits_used_percent", "0.5", None, "early"),
]  # fmt: skip


@pytest.mark.parametrize(("doc", "kind", "threshold", "meter", "description"), GOOD)
def test_good_rules_parse(
    doc: dict[str, Any], kind: str, threshold: str, meter: str | None, description: str
) -> None:
    rule = parse_rule(doc, METERS, "r1")
    assert (rule.kind, rule.threshold, rule.meter) == (kind, D(threshold), meter)
    assert rule.describe() == description
    assert rule_problems(doc, METERS) == []


def test_every_kind_has_a_good_case() -> None:
    assert {kind for _, kind, *_ in GOOD} == set(RULE_KINDS)


PERCENT = "is a percentage of the credit used, from 0 to 100 (above 0), not {}"
BAD = [
    # (rule JSON, [(field, message)])
    ({"kind": "credits_used_percent", "threshold": "150"}, [("threshold", PERCENT.format("150"))]),
    ({"kind": "credits_used_percent", "threshold": "0"}, [("threshold", PERCENT.format("0"))]),
    ({"kind": "credits_used_percent", "threshold": "-5"}, [("threshold", PERCENT.format("-5"))]),
    ({"kind": "spend_above", "threshold": "-1"},
     [("threshold", "must not be negative: a period's spend starts at 0")]),
    ({"kind": "usage_above", "threshold": "-1", "meter": "requests"},
     [("threshold", "must not be negative: a meter's usage starts at 0")]),
    ({"kind": "usage_above", "threshold": "10"},
     [("meter", "must name a meter for a usage_above rule (meters: input_tokens, requests)")]),
    ({"kind": "usage_above", "threshold": "10", "meter": "nope"},
     [("meter", "must name a meter for a usage_above rule (meters: input_tokens, requests)")]),
    ({"kind": "spend_above", "threshold": "10", "meter": "requests"},
     [("meter", "only usage_above rules name a meter, not spend_above")]),
    ({"kind": "balance_above", "threshold": "10"},
     [("kind", "must be one of balance_below, spend_above, usage_above, credits_used_percent, "
               "not 'balance_above'")]),
    ({"kind": "spend_above"}, [("threshold", 'is required: a decimal string such as "50"')]),
    ({"kind": "spend_above", "threshold": 1.5},
     [("threshold", '1.5 is a JSON number with a fraction (or too large to be an exact '
                    'integer); write it as a string: "1.5"')]),
    ({"kind": "spend_above", "threshold": "ten"},
     [("threshold", "'ten' is not a decimal in plain notation: digits, an optional minus sign "
                    'and decimal point, no exponent or spaces (e.g. "1250.75")')]),
    ({"kind": "spend_above", "threshold": "1", "name": ""},
     [("name", "must be a string of 1 to 200 characters")]),
    ({"kind": "spend_above", "threshold": "1", "name": "x" * 201},
     [("name", "must be a string of 1 to 200 characters")]),
    ({"kind": "spend_above", "threshold": "1", "colour": "red"},
     [("colour", "unknown field (known: kind, meter, name, threshold)")]),
    ("spend_above", [("", 'an alert rule is a JSON object: {"kind", "threshold", ...}')]),
]  # fmt: skip


@pytest.mark.parametrize(("doc", "expected"), BAD)
def test_bad_rules_are_refused_naming_the_field(doc: Any, expected: list[tuple[str, str]]) -> None:
    assert [(p.where, p.message) for p in rule_problems(doc, METERS)] == expected
    with pytest.raises(InvalidInput) as caught:
        parse_rule(doc, METERS, "r1")
    assert caught.value.http_status == 422
    assert [(p.where, p.message) for p in caught.value.problems] == expected


def _config(alerts: list[Any]) -> dict[str, Any]:
    return {
        "meters": [
            {"key": "input_tokens", "event_type": "llm", "aggregation": "sum",
             "value": "input_tokens"},
            {"key": "requests", "event_type": "llm", "aggregation": "count"},
        ],
        "plans": [{"key": "pro", "currency": "EUR", "interval": "month", "alerts": alerts}],
    }  # fmt: skip


@pytest.mark.parametrize(("doc", "expected"), [b for b in BAD if isinstance(b[0], dict)])
def test_a_plan_refuses_the_same_rules_with_the_same_messages(
    doc: dict[str, Any], expected: list[tuple[str, str]]
) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(_config([{"kind": "spend_above", "threshold": "1"}, doc]))
    assert [(p.where, p.message) for p in caught.value.problems] == [
        (f"plans[0].alerts[1].{where}", message) for where, message in expected
    ]


def test_a_plan_with_good_rules_is_accepted_and_its_rules_are_what_the_shard_evaluates() -> None:
    alerts = [doc for doc, *_ in GOOD]
    config = parse_config(_config(alerts))
    assert "pro" in config.plans
    rules = plan_rules("pro", alerts, METERS)
    assert [r.id for r in rules] == [f"plan-pro-{i}" for i in range(len(GOOD))]
    assert {r.source for r in rules} == {"plan"}


def test_a_stored_rule_that_no_longer_parses_is_left_out_and_named() -> None:
    # a plan stored before the checks were one: its 150% rule cannot be evaluated
    alerts = [
        {"kind": "spend_above", "threshold": "1"},
        {"kind": "credits_used_percent", "threshold": "150"},
    ]
    assert [r.id for r in plan_rules("old", alerts, METERS)] == ["plan-old-0"]
    assert unusable_plan_rules(alerts, METERS) == [
        Problem("alerts[1].threshold", PERCENT.format("150"))
    ]


CROSSING = [
    # (kind, threshold, value, crossed, recovered) — the band is 5% of the threshold
    ("balance_below", "10", "9.99", True, False),
    ("balance_below", "10", "10", False, False),  # recovers at 10 + 0.50
    ("balance_below", "10", "10.50", False, True),
    ("spend_above", "100", "100", False, False),  # recovers below 100 - 5
    ("spend_above", "100", "94.99", False, True),
    ("spend_above", "100", "100.01", True, False),
    ("usage_above", "1000", "950", False, False),
    ("usage_above", "1000", "949", False, True),
    ("credits_used_percent", "80", "80", True, False),
    ("credits_used_percent", "80", "75.99", False, True),
]


@pytest.mark.parametrize(("kind", "threshold", "value", "crossed", "recovered"), CROSSING)
def test_crossed_and_recovered(
    kind: Any, threshold: str, value: str, crossed: bool, recovered: bool
) -> None:
    rule = AlertRule("r", kind, D(threshold), "m" if kind == "usage_above" else None)
    assert rule.crossed(D(value)) is crossed
    assert rule.recovered(D(value)) is recovered
