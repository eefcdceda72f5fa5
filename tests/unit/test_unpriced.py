"""Unpriced usage (tallyray.pricing.unpriced and the account's part of it): which usage a
plan prices, under each mode, as tables.

The plan ``pro`` (EUR, monthly) prices:

- ``output_tokens`` of ``gpt-4o`` at 0.00001 and of ``mini`` at 0.000001 (every charge on
  the meter filters by model: another model is unpriced);
- ``input_tokens`` of every model at 0.000002 (a charge without a filter: all priced);
- not ``gpu_seconds`` at all (outside the plan: never unpriced).
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from tallyray.actors.account import CustomerAccount, Profile
from tallyray.errors import ConfigError
from tallyray.pricing import parse_config
from tallyray.pricing.events import Event, parse_timestamp
from tallyray.pricing.unpriced import PricedLookup, lookup_for

D = Decimal
NOW = parse_timestamp("2026-11-10T12:00:00Z")
NOV = parse_timestamp("2026-11-01T00:00:00Z")
DEC = parse_timestamp("2026-12-01T00:00:00Z")


def _config(mode: str | None) -> Any:
    plan: dict[str, Any] = {
        "key": "pro",
        "currency": "EUR",
        "interval": "month",
        "charges": [
            {"meter": "output_tokens", "filter": {"model": "gpt-4o"}, "model": "per_unit",
             "unit_amount": "0.00001"},
            {"meter": "output_tokens", "filter": {"model": ["mini"]}, "model": "per_unit",
             "unit_amount": "0.000001"},
            {"meter": "input_tokens", "model": "per_unit", "unit_amount": "0.000002"},
        ],
    }  # fmt: skip
    if mode is not None:
        plan["unpriced"] = mode
    return parse_config(
        {
            "meters": [
                {
                    "key": "input_tokens",
                    "event_type": "llm",
                    "aggregation": "sum",
                    "value": "input_tokens",
                    "group_by": ["model"],
                },
                {
                    "key": "output_tokens",
                    "event_type": "llm",
                    "aggregation": "sum",
                    "value": "output_tokens",
                    "group_by": ["model"],
                },
                {
                    "key": "gpu_seconds",
                    "event_type": "gpu",
                    "aggregation": "sum",
                    "value": "seconds",
                    "group_by": ["gpu"],
                },
            ],
            "plans": [plan],
        }  # fmt: skip
    )


def llm(model: str, output: int = 1000, n: int = 0) -> Event:
    props = {"model": model, "input_tokens": 100, "output_tokens": output}
    return (f"e-{model}-{n}", "acme", "llm", NOW, props)


def gpu(kind: str) -> Event:
    return (f"g-{kind}", "acme", "gpu", NOW, {"gpu": kind, "seconds": 10})


@pytest.mark.parametrize(
    ("mode", "expected"),
    [(None, "flag"), ("flag", "flag"), ("allow", "allow"), ("reject", "reject")],
)
def test_the_mode_defaults_to_flag(mode: str | None, expected: str) -> None:
    assert _config(mode).plans["pro"].unpriced == expected


def test_an_unknown_mode_is_refused_naming_the_field() -> None:
    with pytest.raises(ConfigError) as caught:
        _config("ignore")
    assert [(p.where, p.message) for p in caught.value.problems] == [
        (
            "plans[0].unpriced",
            "must be one of reject, allow, flag (what an event that no charge prices gets), "
            "not 'ignore'",
        )
    ]


PRICED = [
    # (event, the (meter, group) nobody prices)
    (llm("gpt-4o"), []),
    (llm("mini"), []),
    (llm("gpt-5"), [("output_tokens", ("gpt-5",))]),  # input_tokens of gpt-5: priced (no filter)
    (llm("gpt-5", output=0), [("output_tokens", ("gpt-5",))]),  # a zero is usage too
    (gpu("h100"), []),  # gpu_seconds: outside the plan
    (("x", "acme", "other", NOW, {}), []),  # no meter counts it
]


@pytest.mark.parametrize(("event", "unpriced"), PRICED)
def test_is_this_event_priced(event: Event, unpriced: list[tuple[str, tuple[str, ...]]]) -> None:
    config = _config(None)
    lookup = PricedLookup(config.plans["pro"], config.meters.meters)
    assert lookup.open_meters == {"output_tokens"}
    found = lookup.event_unpriced(config.meters, event)
    assert [(m.key, g) for m, g in found] == unpriced


def test_the_lookup_is_one_per_plan_and_answers_per_group() -> None:
    config = _config(None)
    plan, meters = config.plans["pro"], config.meters.meters
    lookup = lookup_for(plan, meters)
    assert lookup_for(plan, meters) is lookup
    usage = config.meters.fold([llm("gpt-4o"), llm("gpt-5"), llm("gpt-5", n=1), llm("o3")])
    assert {m: sorted(g) for m, g in lookup.unpriced_groups(usage).items()} == {
        "output_tokens": [("gpt-5",), ("o3",)]
    }


def _account(mode: str | None) -> CustomerAccount:
    config = _config(mode)
    return CustomerAccount(
        Profile("acme", "EUR", config.plans["pro"], "postpaid", plan_version=3), config.meters
    )


@pytest.mark.parametrize(
    ("mode", "flagged", "events_flagged", "new"),
    [
        # two gpt-5 events and one o3 event out of four: two groups, three events
        ("flag", {("pro", 3, "output_tokens", ("gpt-5",)): 2,
                  ("pro", 3, "output_tokens", ("o3",)): 1}, 3, 2),
        # reject: refused at ingress; what slips through (a plan changed a moment ago) is
        # flagged, never free without a word
        ("reject", {("pro", 3, "output_tokens", ("gpt-5",)): 2,
                    ("pro", 3, "output_tokens", ("o3",)): 1}, 3, 2),
        ("allow", {}, 0, 0),
    ],
)  # fmt: skip
def test_recording_flags_unpriced_usage_per_plan_group_and_period(
    mode: str, flagged: dict[Any, int], events_flagged: int, new: int
) -> None:
    account = _account(mode)
    account.record([llm("gpt-4o"), llm("gpt-5"), llm("gpt-5", n=1), llm("o3")], NOW)
    assert account.flagged.get(NOV, {}) == flagged
    news = account.take_flags()
    assert (news.events, len(news.new)) == (events_flagged, new)
    # unpriced usage is free: 4 × 100 input tokens × 0.000002 + 1,000 gpt-4o × 0.00001
    assert account.period_spend(NOW) == D("0.0108")


def test_a_group_is_new_once_per_period() -> None:
    account = _account("flag")
    account.record([llm("gpt-5")], NOW)
    assert len(account.take_flags().new) == 1
    account.record([llm("gpt-5", n=1)], NOW)
    news = account.take_flags()
    assert (news.events, news.new) == (1, [])
    december = (
        "e-dec",
        "acme",
        "llm",
        DEC + 1,
        {"model": "gpt-5", "input_tokens": 1, "output_tokens": 5},
    )
    account.record([december], DEC + 1)
    assert account.take_flags().new == [(DEC, ("pro", 3, "output_tokens", ("gpt-5",)))]


def test_a_flagged_record_and_the_snapshot() -> None:
    account = _account("flag")
    account.record([llm("gpt-5", output=700), llm("gpt-5", output=300, n=1)], NOW)
    key = ("pro", 3, "output_tokens", ("gpt-5",))
    assert account.flag_row(NOV, key) == {
        "customer_id": "acme",
        "plan_key": "pro",
        "plan_version": 3,
        "meter": "output_tokens",
        "groups": {"model": "gpt-5"},
        "period_start": NOV,
        "period_end": DEC,
        "events": 2,
        "quantity": "1000",  # 700 + 300
    }
    config = _config("flag")
    restored = CustomerAccount.restore(account.snapshot(), account.profile, config.meters, NOW)
    assert restored.flagged == account.flagged


@pytest.mark.parametrize(
    ("mode", "event", "allowed", "refusal"),
    [
        ("reject", llm("gpt-5"), False, "unpriced"),
        ("reject", llm("gpt-4o"), True, None),
        ("reject", gpu("h100"), True, None),
        ("flag", llm("gpt-5"), True, None),
        ("allow", llm("gpt-5"), True, None),
    ],
)
def test_quota_checks_say_no_to_unpriced_usage_under_reject(
    mode: str, event: Event, allowed: bool, refusal: str | None
) -> None:
    answer = _account(mode).check([event], NOW)
    assert (answer.allowed, answer.refusal) == (allowed, refusal)
    if refusal is not None:
        assert answer.reason == (
            "unpriced usage: plan 'pro' has no charge for meter 'output_tokens' (model=gpt-5) "
            "and refuses usage it does not price; add a charge that covers it to the plan, "
            'or set the plan\'s "unpriced" to "flag" or "allow"'
        )
