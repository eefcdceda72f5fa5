"""Rating a period's usage under a plan (tallyray/pricing/plans.py)."""

from __future__ import annotations

from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

import pytest

from tallyray.pricing.config import PricingConfig, parse_config
from tallyray.pricing.events import Event
from tallyray.pricing.meters import MeterSet, MeterSpec, Usage
from tallyray.pricing.models import Graduated, PerUnit, Tier
from tallyray.pricing.money import currency
from tallyray.pricing.plans import Charge, Plan, Preview, rate, usage_cost

D = Decimal

LLM_CONFIG: dict[str, Any] = {
    "meters": [
        {
            "key": "input_tokens",
            "event_type": "llm",
            "aggregation": "sum",
            "value": "input_tokens",
            "group_by": ["model"],
        },
        {"key": "requests", "event_type": "llm", "aggregation": "count"},
    ],
    "plans": [
        {
            "key": "pro",
            "name": "Pro",
            "currency": "EUR",
            "interval": "month",
            "base_fee": "49.00",
            "minimum": "100.00",
            "charges": [
                {
                    "meter": "input_tokens",
                    "filter": {"model": "gpt-4o"},
                    "model": "per_unit",
                    "unit_amount": "0.0000025",
                },
                {
                    "meter": "input_tokens",
                    "filter": {"model": "gpt-4o-mini"},
                    "model": "graduated",
                    "description": "gpt-4o-mini input tokens",
                    "tiers": [
                        {"up_to": 1_000_000, "unit_amount": "0"},
                        {"up_to": 10_000_000, "unit_amount": "0.000002"},
                        {"up_to": None, "unit_amount": "0.0000015", "flat_amount": "5.00"},
                    ],
                },
                {
                    "meter": "requests",
                    "model": "package",
                    "package_size": 1000,
                    "package_amount": "2.00",
                    "description": "API requests (per 1,000)",
                },
            ],
        },
        {
            "key": "flat",
            "name": "Flat",
            "currency": "EUR",
            "interval": "month",
            "charges": [{"meter": "input_tokens", "model": "per_unit", "unit_amount": "0.000001"}],
        },
    ],
}


@pytest.fixture(scope="module")
def llm() -> PricingConfig:
    return parse_config(LLM_CONFIG)


def llm_usage(config: PricingConfig, gpt4o: int, mini: int, requests: int) -> Usage:
    """Usage with ``gpt4o`` / ``mini`` input tokens, spread over ``requests`` events."""
    evts = [Event("a", "acme", "llm", 0, {"model": "gpt-4o", "input_tokens": gpt4o})]
    evts.append(Event("b", "acme", "llm", 0, {"model": "gpt-4o-mini", "input_tokens": mini}))
    evts += [
        Event(f"r{i}", "acme", "llm", 0, {"model": "o1", "input_tokens": 0})
        for i in range(requests - 2)
    ]
    return config.meters.fold(evts)


def amounts(preview: Preview) -> list[tuple[str, str]]:
    return [(line.kind, str(line.amount)) for line in preview.lines]


def test_rate_below_the_minimum_adds_a_true_up(llm: PricingConfig) -> None:
    usage = llm_usage(llm, gpt4o=2_000_000, mini=12_000_000, requests=1_500)
    preview = rate(llm.plan("pro"), usage, llm.meters.meters)
    assert amounts(preview) == [
        ("base_fee", "49.00"),
        ("usage", "5.00"),  # 2,000,000 × 0.0000025 = 5.00
        # 1,000,000 × 0 + 9,000,000 × 0.000002 + (2,000,000 × 0.0000015 + 5.00) = 26.00
        ("usage", "26.00"),
        ("usage", "4.00"),  # ⌈1,500 / 1,000⌉ = 2 × 2.00 = 4.00
        ("minimum", "16.00"),  # 49 + 5 + 26 + 4 = 84.00 < 100.00 → 100.00 − 84.00 = 16.00
    ]
    assert preview.subtotal == preview.total == D("100.00")
    assert preview.plan == "pro" and preview.currency == currency("EUR")
    base, gpt4o, mini, requests, minimum = preview.lines
    assert base.description == "Pro base fee"
    assert (gpt4o.meter, gpt4o.quantity, gpt4o.unit_amount) == (
        "input_tokens",
        D(2_000_000),
        D("0.0000025"),
    )
    assert gpt4o.description == "input_tokens (model=gpt-4o)"  # no description: the filter
    assert (mini.description, mini.quantity, len(mini.tiers)) == (
        "gpt-4o-mini input tokens",
        D(12_000_000),
        3,
    )
    assert requests.quantity == D(1_500)
    assert minimum.description == "Minimum commitment true-up (minimum 100.00)"


def test_rate_above_the_minimum_has_no_true_up(llm: PricingConfig) -> None:
    usage = llm_usage(llm, gpt4o=10_000_000, mini=12_000_000, requests=1_500)
    preview = rate(llm.plan("pro"), usage, llm.meters.meters)
    assert amounts(preview) == [
        ("base_fee", "49.00"),
        ("usage", "25.00"),  # 10,000,000 × 0.0000025 = 25.00
        ("usage", "26.00"),
        ("usage", "4.00"),
    ]
    assert preview.subtotal == D("104.00")  # 49 + 25 + 26 + 4 = 104.00 ≥ 100.00


def test_rate_with_no_usage_still_lists_each_charge(llm: PricingConfig) -> None:
    preview = rate(llm.plan("pro"), llm.meters.empty_usage(), llm.meters.meters)
    assert amounts(preview) == [
        ("base_fee", "49.00"),
        ("usage", "0.00"),
        ("usage", "0.00"),
        ("usage", "0.00"),
        ("minimum", "51.00"),  # 100.00 − 49.00 = 51.00
    ]
    assert preview.subtotal == D("100.00")


def test_plan_without_base_fee_or_minimum(llm: PricingConfig) -> None:
    usage = llm_usage(llm, gpt4o=2_000_000, mini=12_000_000, requests=2)
    preview = rate(llm.plan("flat"), usage, llm.meters.meters)
    # no filter: every model's tokens, 14,000,000 × 0.000001 = 14.00
    assert amounts(preview) == [("usage", "14.00")]
    assert preview.lines[0].description == "input_tokens"
    assert preview.subtotal == D("14.00")


def test_charge_filters_split_one_meter_by_group(llm: PricingConfig) -> None:
    usage = llm_usage(llm, gpt4o=1_000, mini=2_000_000, requests=2)
    _, gpt4o, mini, _, _ = rate(llm.plan("pro"), usage, llm.meters.meters).lines
    assert gpt4o.quantity == D(1_000)  # only gpt-4o's tokens
    assert gpt4o.precise_amount == D("0.0025")  # 1,000 × 0.0000025
    assert mini.quantity == D(2_000_000)  # only gpt-4o-mini's tokens
    # 1,000,000 × 0 + 1,000,000 × 0.000002 = 2.00
    assert mini.precise_amount == D(2)


def test_usage_cost_is_the_full_precision_sum_of_usage_charges(llm: PricingConfig) -> None:
    usage = llm_usage(llm, gpt4o=1_000, mini=2_000_001, requests=2)
    # 1,000 × 0.0000025 = 0.0025
    # 1,000,000 × 0 + 1,000,001 × 0.000002 = 2.000002
    # ⌈2 / 1,000⌉ = 1 × 2.00 = 2.00
    # 0.0025 + 2.000002 + 2.00 = 4.002502 (no base fee, no minimum, no rounding)
    assert usage_cost(llm.plan("pro"), usage, llm.meters.meters) == D("4.002502")


# --- rounding --------------------------------------------------------------------------------

TOKENS = MeterSpec("tokens", "llm", "sum", ("n",), {}, ("model",))


def per_model_usage(**tokens: Any) -> Usage:
    meters = MeterSet([TOKENS])
    return meters.fold(
        [Event(m, "acme", "llm", 0, {"model": m, "n": n}) for m, n in tokens.items()]
    )


def per_model_plan(code: str, unit_amount: str, *models: str, base_fee: str = "0") -> Plan:
    charges = tuple(
        Charge("tokens", PerUnit(D(unit_amount)), "per_unit", {"model": frozenset({m})})
        for m in models
    )
    return Plan("p", "P", currency(code), "month", D(base_fee), None, charges)


def test_subtotal_is_the_sum_of_rounded_lines() -> None:
    plan = per_model_plan("EUR", "0.001", "a", "b", "c")
    usage = per_model_usage(a=5, b=5, c=5)
    preview = rate(plan, usage, {"tokens": TOKENS})
    # each line: 5 × 0.001 = 0.005 → 0.01 (half-up)
    assert [(str(line.amount), line.precise_amount) for line in preview.lines] == [
        ("0.01", D("0.005")),
        ("0.01", D("0.005")),
        ("0.01", D("0.005")),
    ]
    # 0.01 + 0.01 + 0.01 = 0.03; rounding the precise sum would give 0.015 → 0.02
    assert str(preview.subtotal) == "0.03"
    assert usage_cost(plan, usage, {"tokens": TOKENS}) == D("0.015")


@pytest.mark.parametrize(
    ("code", "unit_amount", "base_fee", "rounding", "lines", "subtotal"),
    [
        # JPY, whole yen: 36,005.0 × 0.1234 = 4,443.017 → 4,443; 18,000 × 0.0321 = 577.8 → 578
        ("JPY", "0.1234", "1000", None, ["1000", "4443"], "5443"),
        # KWD, three decimals: 1,000 × 0.0012345 = 1.2345 → 1.235 half-up
        ("KWD", "0.0012345", "5.5", None, ["5.500", "1.235"], "6.735"),
        # … and 1.234 half-even (4 is even)
        ("KWD", "0.0012345", "5.5", ROUND_HALF_EVEN, ["5.500", "1.234"], "6.734"),
        # EUR: 1,000 × 0.0012345 = 1.2345 → 1.23 (two decimals)
        ("EUR", "0.0012345", "5.5", None, ["5.50", "1.23"], "6.73"),
    ],
)
def test_lines_are_rounded_to_the_currency_minor_unit(
    code: str,
    unit_amount: str,
    base_fee: str,
    rounding: str | None,
    lines: list[str],
    subtotal: str,
) -> None:
    plan = per_model_plan(code, unit_amount, "a", base_fee=base_fee)
    usage = per_model_usage(a=36_000 if code == "JPY" else 1_000)
    if code == "JPY":  # 36,000 + 5.0 GPU seconds: a fractional value makes a Decimal
        usage.merge(MeterSet([TOKENS]).fold([Event("x", "c", "llm", 0, {"model": "a", "n": 5.0})]))
    args = () if rounding is None else (rounding,)
    preview = rate(plan, usage, {"tokens": TOKENS}, *args)
    assert [str(line.amount) for line in preview.lines] == lines
    assert str(preview.subtotal) == subtotal == str(preview.total)


def test_jpy_plan_from_two_filtered_charges() -> None:
    # The GPU plan of the example config: per-GPU prices on one meter grouped by gpu.
    gpu = MeterSpec("gpu_seconds", "gpu.job", "sum", ("seconds",), {}, ("gpu",))
    usage = MeterSet([gpu]).fold(
        [
            Event("1", "c", "gpu.job", 0, {"gpu": "h100", "seconds": 36_000}),
            Event("2", "c", "gpu.job", 0, {"gpu": "h100", "seconds": 5.0}),
            Event("3", "c", "gpu.job", 0, {"gpu": "a10", "seconds": 18_000}),
        ]
    )
    charges = (
        Charge("gpu_seconds", PerUnit(D("0.1234")), "per_unit", {"gpu": frozenset({"h100"})}),
        Charge("gpu_seconds", PerUnit(D("0.0321")), "per_unit", {"gpu": frozenset({"a10"})}),
    )
    plan = Plan("gpu", "GPU cloud", currency("JPY"), "month", D(1000), None, charges)
    preview = rate(plan, usage, {"gpu_seconds": gpu})
    # 1,000 + round(36,005 × 0.1234 = 4,443.017) + round(18,000 × 0.0321 = 577.8)
    #   = 1,000 + 4,443 + 578 = 6,021
    assert [str(line.amount) for line in preview.lines] == ["1000", "4443", "578"]
    assert str(preview.subtotal) == "6021"
    assert preview.to_json()["subtotal"] == "6021"


def test_minimum_is_compared_with_rounded_lines() -> None:
    # 3 lines of 0.005 → 0.01 each = 0.03 rounded; the minimum 0.03 is met, though the
    # precise spend (0.015) is below it.
    plan = per_model_plan("EUR", "0.001", "a", "b", "c")
    plan = Plan(plan.key, plan.name, plan.currency, plan.interval, D(0), D("0.03"), plan.charges)
    preview = rate(plan, per_model_usage(a=5, b=5, c=5), {"tokens": TOKENS})
    assert [line.kind for line in preview.lines] == ["usage", "usage", "usage"]
    assert str(preview.subtotal) == "0.03"


def test_preview_json_has_strings_for_every_amount() -> None:
    tiers = (Tier(D(10), D("0.5")), Tier(None, D("0.25")))
    plan = Plan(
        "g",
        "G",
        currency("EUR"),
        "month",
        D("1.50"),
        None,
        (Charge("tokens", Graduated(tiers), "graduated"),),
    )
    out = rate(plan, per_model_usage(a=12), {"tokens": TOKENS}).to_json()
    # base 1.50; usage 10 × 0.5 + 2 × 0.25 = 5.50
    assert out["currency"] == "EUR"
    assert (out["subtotal"], out["total"]) == ("7.00", "7.00")
    assert out["lines"][0] == {
        "kind": "base_fee",
        "description": "G base fee",
        "amount": "1.50",
        "precise_amount": "1.5",
    }
    usage_line = out["lines"][1]
    assert (usage_line["quantity"], usage_line["amount"], usage_line["precise_amount"]) == (
        "12",
        "5.50",
        "5.5",
    )
    assert [t["amount"] for t in usage_line["tiers"]] == ["5", "0.5"]
