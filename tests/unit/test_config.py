"""Meters, plans and settings from JSON, validated (tallyray/pricing/config.py)."""

from __future__ import annotations

import copy
import decimal
import json
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from tallyray.errors import ConfigError, InvalidInput
from tallyray.pricing.config import parse_config, parse_meter, parse_plan
from tallyray.pricing.models import Graduated, Package, PerUnit, Volume

D = Decimal
Doc = dict[str, Any]


def base() -> Doc:
    """A valid configuration; each bad case below breaks one thing in it."""
    return {
        "meters": [
            {
                "key": "input_tokens",
                "event_type": "llm.completion",
                "aggregation": "sum",
                "value": "input_tokens",
                "group_by": ["model"],
            },
            {"key": "requests", "event_type": "llm.completion", "aggregation": "count"},
        ],
        "plans": [
            {
                "key": "pro",
                "name": "Pro",
                "currency": "EUR",
                "interval": "month",
                "base_fee": "49.00",
                "charges": [
                    {
                        "meter": "input_tokens",
                        "filter": {"model": "gpt-4o"},
                        "model": "per_unit",
                        "unit_amount": "0.0000025",
                    },
                    {
                        "meter": "input_tokens",
                        "model": "graduated",
                        "tiers": [
                            {"up_to": 1000, "unit_amount": "0"},
                            {"up_to": 10000, "unit_amount": "0.002"},
                            {"up_to": None, "unit_amount": "0.001"},
                        ],
                    },
                ],
            }
        ],
    }


def problems_of(doc: Doc) -> dict[str, str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(doc)
    error = caught.value
    assert isinstance(error, InvalidInput)
    n = len(error.problems)
    assert error.message == f"invalid configuration: {n} problem{'' if n == 1 else 's'}"
    return {p.where: p.message for p in error.problems}


def test_the_base_document_is_valid() -> None:
    config = parse_config(base())
    assert sorted(config.meters.meters) == ["input_tokens", "requests"]
    assert list(config.plans) == ["pro"]


# Each case: what to break, the exact place named, and words of the fix in the message.
def plan(doc: Doc) -> Doc:
    return doc["plans"][0]


def charge(doc: Doc, i: int = 0) -> Doc:
    return plan(doc)["charges"][i]


def tier(doc: Doc, i: int) -> Doc:
    return charge(doc, 1)["tiers"][i]


BAD_CASES: list[tuple[str, Callable[[Doc], object], str, str]] = [
    (
        "amount-as-json-float",
        lambda d: charge(d).update(unit_amount=0.1),
        "plans[0].charges[0].unit_amount",
        'write it as a string: "0.1"',
    ),
    (
        "unknown-charge-model",
        lambda d: charge(d).update(model="tiered"),
        "plans[0].charges[0].model",
        "unknown charge model 'tiered'; known: per_unit, package, graduated, volume",
    ),
    (
        "tiers-out-of-order",
        lambda d: tier(d, 1).update(up_to=500),
        "plans[0].charges[1].tiers[1].up_to",
        "tiers must rise: 500 is not above the previous tier's 1000",
    ),
    (
        "tiers-equal-bounds",
        lambda d: tier(d, 1).update(up_to=1000),
        "plans[0].charges[1].tiers[1].up_to",
        "tiers must rise: 1000 is not above the previous tier's 1000",
    ),
    (
        "last-tier-bounded",
        lambda d: tier(d, 2).update(up_to=20000),
        "plans[0].charges[1].tiers[2].up_to",
        'the last tier must have "up_to": null',
    ),
    (
        "last-tier-up-to-missing",
        lambda d: tier(d, 2).pop("up_to"),
        "plans[0].charges[1].tiers[2].up_to",
        "is required: a quantity, or null on the last tier",
    ),
    (
        "null-up-to-before-last",
        lambda d: tier(d, 1).update(up_to=None),
        "plans[0].charges[1].tiers[1].up_to",
        "only the last tier may be unbounded (null)",
    ),
    (
        "zero-up-to",
        lambda d: tier(d, 0).update(up_to=0),
        "plans[0].charges[1].tiers[0].up_to",
        "must be greater than zero",
    ),
    (
        "no-tiers",
        lambda d: charge(d, 1).update(tiers=[]),
        "plans[0].charges[1].tiers",
        'must be a non-empty list of tiers; the last one has "up_to": null',
    ),
    (
        "charge-on-unknown-meter",
        lambda d: charge(d).update(meter="output_tokens"),
        "plans[0].charges[0].meter",
        "unknown meter 'output_tokens' (meters: input_tokens, requests)",
    ),
    (
        "charge-filter-not-in-group-by",
        lambda d: charge(d).update(filter={"region": "eu"}),
        "plans[0].charges[0].filter.region",
        "add 'region' to meter 'input_tokens''s group_by",
    ),
    (
        "unknown-currency",
        lambda d: plan(d).update(currency="EURO"),
        "plans[0].currency",
        "unknown currency code 'EURO': use an ISO 4217 code in capitals, such as 'EUR'",
    ),
    (
        "lowercase-currency",
        lambda d: plan(d).update(currency="eur"),
        "plans[0].currency",
        "unknown currency code 'eur'",
    ),
    (
        "missing-currency",
        lambda d: plan(d).pop("currency"),
        "plans[0].currency",
        "must be an ISO 4217 code",
    ),
    (
        "unknown-interval",
        lambda d: plan(d).update(interval="monthly"),
        "plans[0].interval",
        "must be one of day, week, month, year, not 'monthly'",
    ),
    (
        "unknown-aggregation",
        lambda d: d["meters"][1].update(aggregation="avg"),
        "meters[1].aggregation",
        "must be one of sum, count, max, unique_count, latest, weighted_sum, not 'avg'",
    ),
    (
        "sum-meter-without-value",
        lambda d: d["meters"][0].pop("value"),
        "meters[0].value",
        'a sum meter needs a property path such as "tokens"',
    ),
    (
        "value-path-with-empty-part",
        lambda d: d["meters"][0].update(value="usage..tokens"),
        "meters[0].value",
        "needs a property path",
    ),
    (
        "count-meter-with-value",
        lambda d: d["meters"][1].update(value="input_tokens"),
        "meters[1].value",
        "a count meter counts events and takes no value",
    ),
    (
        "unknown-plan-field",
        lambda d: plan(d).update(base_fees="10.00"),
        "plans[0].base_fees",
        "unknown field (known: alerts, base_fee, charges, currency, description, "
        "entitlements, interval, key, limits, minimum, name, unpriced)",
    ),
    (
        "unknown-charge-field",
        lambda d: charge(d).update(unit_amout="1"),
        "plans[0].charges[0].unit_amout",
        "unknown field (known: description, filter, meter, model, unit_amount)",
    ),
    (
        "unknown-meter-field",
        lambda d: d["meters"][1].update(groupby=["model"]),
        "meters[1].groupby",
        "unknown field (known: aggregation, allow_negative, description, event_type, filter, "
        "group_by, key, name, unit, value)",
    ),
    (
        "unknown-tier-field",
        lambda d: tier(d, 0).update(flat="1"),
        "plans[0].charges[1].tiers[0].flat",
        "unknown field (known: flat_amount, unit_amount, up_to)",
    ),
    (
        "duplicate-meter-key",
        lambda d: d["meters"].append(
            {"key": "requests", "event_type": "api.call", "aggregation": "count"}
        ),
        "meters[2].key",
        "'requests' is already used by meters[1]",
    ),
    (
        "duplicate-plan-key",
        lambda d: d["plans"].append(
            {"key": "pro", "currency": "USD", "interval": "year", "charges": []}
        ),
        "plans[1].key",
        "'pro' is already used by plans[0]",
    ),
    (
        "jpy-base-fee-with-decimals",
        lambda d: plan(d).update(currency="JPY", base_fee="10.5"),
        "plans[0].base_fee",
        "'10.5' has more than 0 decimal places",
    ),
    (
        "eur-minimum-with-three-decimals",
        lambda d: plan(d).update(minimum="100.001"),
        "plans[0].minimum",
        "'100.001' has more than 2 decimal places",
    ),
    (
        "unit-amount-with-13-decimals",
        lambda d: charge(d).update(unit_amount="0.0000000000001"),
        "plans[0].charges[0].unit_amount",
        "has more than 12 decimal places",
    ),
    (
        "negative-amount",
        lambda d: charge(d).update(unit_amount="-0.01"),
        "plans[0].charges[0].unit_amount",
        "must not be negative (use credits for discounts)",
    ),
    (
        "missing-unit-amount",
        lambda d: charge(d).pop("unit_amount"),
        "plans[0].charges[0].unit_amount",
        'is required: a decimal string such as "0.10"',
    ),
    (
        "amount-not-a-number",
        lambda d: tier(d, 1).update(unit_amount="two cents"),
        "plans[0].charges[1].tiers[1].unit_amount",
        "'two cents' is not a decimal in plain notation",
    ),
    (
        "fractional-package-size",
        lambda d: plan(d)["charges"].append(
            {
                "meter": "requests",
                "model": "package",
                "package_size": "1.5",
                "package_amount": "2.00",
            }
        ),
        "plans[0].charges[2].package_size",
        "must be a whole number of units",
    ),
    (
        "unknown-rounding",
        lambda d: d.update(rounding="bankers"),
        "rounding",
        "unknown rounding mode 'bankers'; use one of ceiling, down, floor, half_down, "
        "half_even, half_up, up",
    ),
    (
        "bad-plan-key",
        lambda d: plan(d).update(key="my plan!"),
        "plans[0].key",
        "must be 1–64 letters, digits, '_', '.', ':' or '-', not 'my plan!'",
    ),
    (
        "meter-filter-float",
        lambda d: d["meters"][1].update(filter={"tier": 1.5}),
        "meters[1].filter.tier",
        "must be a string, integer or boolean, or a non-empty list of them",
    ),
    (
        "meter-filter-empty-list",
        lambda d: d["meters"][1].update(filter={"tier": []}),
        "meters[1].filter.tier",
        "a non-empty list",
    ),
    (
        "group-by-twice",
        lambda d: d["meters"][0].update(group_by=["model", "model"]),
        "meters[0].group_by",
        "names a property twice",
    ),
    (
        "meters-not-a-list",
        lambda d: d.update(meters={"input_tokens": {}}),
        "meters",
        "must be a list of meters, not an object",
    ),
    (
        "charge-not-an-object",
        lambda d: plan(d)["charges"].append("per_unit"),
        "plans[0].charges[2]",
        "must be a JSON object, not a string",
    ),
]


@pytest.mark.parametrize(
    ("mutate", "where", "fragment"),
    [case[1:] for case in BAD_CASES],
    ids=[case[0] for case in BAD_CASES],
)
def test_bad_config(mutate: Callable[[Doc], object], where: str, fragment: str) -> None:
    doc = base()
    mutate(doc)
    problems = problems_of(doc)
    assert where in problems, f"no problem at {where!r}; got {problems}"
    assert fragment in problems[where]


def test_a_broken_meter_is_named_by_the_charges_that_use_it() -> None:
    doc = base()
    doc["meters"][0].pop("value")
    assert problems_of(doc) == {
        "meters[0].value": 'a sum meter needs a property path such as "tokens"',
        "plans[0].charges[0].meter": "meter 'input_tokens' is invalid (see its problems)",
        "plans[0].charges[1].meter": "meter 'input_tokens' is invalid (see its problems)",
    }


def test_several_problems_are_all_reported_at_once() -> None:
    doc = base()
    doc["meters"][1]["aggregation"] = "avg"
    plan(doc).update(currency="EURO", interval="monthly")
    charge(doc).update(unit_amount=0.1)
    tier(doc, 1)["up_to"] = 500
    doc["rounding"] = "bankers"
    problems = problems_of(doc)
    assert set(problems) == {
        "rounding",
        "meters[1].aggregation",
        "plans[0].currency",
        "plans[0].interval",
        "plans[0].charges[0].unit_amount",
        "plans[0].charges[1].tiers[1].up_to",
    }


def test_a_top_level_document_must_be_an_object() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config([])
    assert [(p.where, p.message) for p in caught.value.problems] == [
        ("", "must be a JSON object, not an array")
    ]


def test_unknown_top_level_field_names_the_field() -> None:
    doc = base()
    doc["meter"] = doc.pop("meters")  # typo
    problems = problems_of(doc)
    assert "meter" in problems
    assert problems["meter"].startswith("unknown field (known: customers, invoicing, meters, plans")


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: plan(d).update(currency=["EUR"]),
        lambda d: charge(d).update(model=["per_unit"]),
        lambda d: d.update(rounding=["half_up"]),
        lambda d: d["meters"][1].update(key=["requests"]),
        lambda d: plan(d).update(key={"id": "pro"}),
        lambda d: charge(d).update(meter=["input_tokens"]),
    ],
    ids=["currency", "model", "rounding", "meter-key", "plan-key", "charge-meter"],
)
def test_an_unhashable_value_is_a_config_error(mutate: Callable[[Doc], object]) -> None:
    doc = base()
    mutate(doc)
    with pytest.raises(ConfigError):
        parse_config(doc)


# --- what valid configurations give ----------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (None, decimal.ROUND_HALF_UP),  # the default
        ("half_even", decimal.ROUND_HALF_EVEN),
        ("HALF_DOWN", decimal.ROUND_HALF_DOWN),
        ("ROUND_CEILING", decimal.ROUND_CEILING),
        ("floor", decimal.ROUND_FLOOR),
    ],
)
def test_rounding_mode(raw: str | None, expected: str) -> None:
    doc = base()
    if raw is not None:
        doc["rounding"] = raw
    assert parse_config(doc).rounding == expected


def test_the_example_config_parses(example_config_path: Path) -> None:
    config = parse_config(json.loads(example_config_path.read_text(encoding="utf-8")))
    assert config.rounding == decimal.ROUND_HALF_UP
    assert sorted(config.meters.meters) == [
        "gpu_seconds",
        "input_tokens",
        "output_tokens",
        "requests",
        "seats",
    ]
    assert sorted(config.plans) == ["gpu", "pro", "starter"]

    seats = config.meters.meters["seats"]
    assert (seats.event_type, seats.aggregation, seats.value) == (
        "seat.active",
        "unique_count",
        ("user_id",),
    )
    assert config.meters.meters["input_tokens"].group_by == ("model",)

    pro = config.plan("pro")
    assert (pro.currency.code, pro.interval, pro.base_fee, pro.minimum) == (
        "EUR",
        "month",
        D("49.00"),
        D("100.00"),
    )
    assert [c.model_name for c in pro.charges] == [
        "per_unit",
        "per_unit",
        "graduated",
        "per_unit",
        "package",
        "volume",
    ]
    assert pro.charges[0].filter == {"model": frozenset({"gpt-4o"})}
    assert pro.charges[0].model == PerUnit(D("0.0000025"))
    mini = pro.charges[2].model
    assert isinstance(mini, Graduated)
    assert [(t.up_to, t.unit_amount, t.flat_amount) for t in mini.tiers] == [
        (D(1_000_000), D(0), D(0)),
        (D(10_000_000), D("0.00000015"), D(0)),
        (None, D("0.0000001"), D("5.00")),
    ]
    assert pro.charges[4].model == Package(D(1000), D("2.00"))
    assert isinstance(pro.charges[5].model, Volume)
    assert pro.meters_used() == frozenset({"input_tokens", "output_tokens", "requests", "seats"})

    gpu = config.plan("gpu")
    assert (gpu.currency.code, gpu.currency.minor_units, gpu.base_fee) == ("JPY", 0, D(1000))
    assert config.plan("starter").minimum is None


def test_unknown_plan_lists_the_plans(example_config_path: Path) -> None:
    config = parse_config(json.loads(example_config_path.read_text(encoding="utf-8")))
    with pytest.raises(InvalidInput, match=r"no plan 'enterprise' .*\(plans: gpu, pro, starter\)"):
        config.plan("enterprise")


def test_parse_meter_and_parse_plan_name_their_own_paths() -> None:
    meter = parse_meter({"key": "n", "event_type": "x", "aggregation": "count"})
    assert (meter.key, meter.value, meter.group_by) == ("n", None, ())
    with pytest.raises(ConfigError) as caught:
        parse_meter({"key": "n", "event_type": "x", "aggregation": "sum"})
    assert [p.where for p in caught.value.problems] == ["meter.value"]

    plan_ = parse_plan(
        {"key": "p", "currency": "KWD", "interval": "year", "minimum": "1.500"}, {"n": meter}
    )
    assert (plan_.name, plan_.minimum, plan_.charges) == ("p", D("1.500"), ())
    with pytest.raises(ConfigError) as caught:
        parse_plan({"key": "p", "currency": "KWD", "interval": "year", "minimum": "1.5001"}, {})
    assert [p.where for p in caught.value.problems] == ["plan.minimum"]


def test_amounts_may_be_whole_json_numbers_or_strings() -> None:
    doc = base()
    charge(doc)["unit_amount"] = 2  # a whole JSON number is exact
    tier(doc, 0)["up_to"] = "1000"  # a bound may be a string too
    config = parse_config(copy.deepcopy(doc))
    charges = config.plan("pro").charges
    assert charges[0].model == PerUnit(D(2))
    assert isinstance(charges[1].model, Graduated)
    assert charges[1].model.tiers[0].up_to == D(1000)
