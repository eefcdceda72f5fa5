"""Charge models (tallyray/pricing/models): per_unit, package, graduated, volume."""

from __future__ import annotations

from decimal import Decimal, localcontext

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tallyray.pricing.models import (
    ChargeModel,
    Graduated,
    Package,
    PerUnit,
    Tier,
    Volume,
    incremental_cost,
    price,
)
from tallyray.pricing.money import PRICING_CONTEXT

D = Decimal


def tiers(*rows: tuple[str | None, str] | tuple[str | None, str, str]) -> tuple[Tier, ...]:
    """``("1000", "0.002", "5")`` → Tier(up_to=1000, unit_amount=0.002, flat_amount=5)."""
    return tuple(Tier(None if r[0] is None else D(r[0]), *(D(x) for x in r[1:])) for r in rows)


# The worked example of docs/pricing.md.
LLM_TIERS = tiers(("1000000", "0"), ("10000000", "0.000002"), (None, "0.0000015", "5.00"))
# Every tier has a flat amount, to show when each is charged.
FLAT_TIERS = tiers(("10", "1", "3"), ("20", "0.5", "2"), (None, "0.25", "1"))
# The seats example: 15.00 a seat up to 10, 12.00 up to 50, then 9.00.
SEAT_TIERS = tiers(("10", "15.00"), ("50", "12.00"), (None, "9.00"))


# --- per_unit --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("quantity", "unit_amount", "expected"),
    [
        ("0", "0.000002", "0"),  # 0 × 0.000002 = 0
        ("1", "0.000002", "0.000002"),
        ("9000000", "0.000002", "18"),  # 9,000,000 × 0.000002 = 18.00
        ("13148531", "0.000002", "26.297062"),  # 13,148,531 × 0.000002 = 26.297062
        ("1.5", "0.1234", "0.1851"),  # 1.5 × 0.1234 = 0.1851
        ("36005.0", "0.1234", "4443.017"),  # 36,005 × 0.1234 = 4,443.017
    ],
)
def test_per_unit(quantity: str, unit_amount: str, expected: str) -> None:
    priced = price(D(quantity), PerUnit(D(unit_amount)))
    assert priced.amount == D(expected)
    assert priced.unit_amount == D(unit_amount)
    assert priced.tiers == ()


# --- package ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("quantity", "size", "expected_packages", "expected"),
    [
        ("0", "1000", None, "0"),  # nothing used, nothing charged, no line
        ("1", "1000", "1", "2.00"),  # ⌈1 / 1,000⌉ = 1 × 2.00 = 2.00
        ("0.5", "1000", "1", "2.00"),  # ⌈0.5 / 1,000⌉ = 1: a started package is a whole one
        ("1000", "1000", "1", "2.00"),  # ⌈1,000 / 1,000⌉ = 1 × 2.00 = 2.00
        ("1001", "1000", "2", "4.00"),  # ⌈1,001 / 1,000⌉ = 2 × 2.00 = 4.00
        ("2500", "1000", "3", "6.00"),  # ⌈2,500 / 1,000⌉ = 3 × 2.00 = 6.00
        ("2.5", "1", "3", "6.00"),  # ⌈2.5 / 1⌉ = 3 × 2.00 = 6.00
    ],
)
def test_package(quantity: str, size: str, expected_packages: str | None, expected: str) -> None:
    priced = price(D(quantity), Package(package_size=D(size), package_amount=D("2.00")))
    assert priced.amount == D(expected)
    assert priced.unit_amount == D("2.00")
    if expected_packages is None:
        assert priced.tiers == ()
    else:
        (line,) = priced.tiers
        assert line.quantity == D(expected_packages)
        assert line.unit_amount == D("2.00")
        assert line.amount == D(expected)


# --- graduated -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "quantity", "expected", "tiers_entered"),
    [
        (LLM_TIERS, "0", "0", 0),  # zero units: no tier entered, no line
        (LLM_TIERS, "1", "0", 1),  # 1 × 0 = 0
        (LLM_TIERS, "1000000", "0", 1),  # on the bound: stays in tier 1 → 1,000,000 × 0
        # 1,000,000 × 0 + 1 × 0.000002 = 0.000002
        (LLM_TIERS, "1000001", "0.000002", 2),
        # 1,000,000 × 0 + 9,000,000 × 0.000002 = 18.00; tier 3 (and its flat 5) not entered
        (LLM_TIERS, "10000000", "18", 2),
        # 0 + 18.00 + (1 × 0.0000015 + 5.00) = 23.0000015
        (LLM_TIERS, "10000001", "23.0000015", 3),
        # 1,000,000 × 0 + 9,000,000 × 0.000002 + (2,000,000 × 0.0000015 + 5.00) = 26.00
        (LLM_TIERS, "12000000", "26", 3),
        (FLAT_TIERS, "0", "0", 0),  # tier 1's flat 3 is not charged for zero units
        (FLAT_TIERS, "0.5", "3.5", 1),  # 0.5 × 1 + 3 = 3.5
        (FLAT_TIERS, "10", "13", 1),  # 10 × 1 + 3 = 13
        (FLAT_TIERS, "10.5", "15.25", 2),  # 13 + (0.5 × 0.5 + 2) = 15.25
        (FLAT_TIERS, "20", "20", 2),  # 13 + (10 × 0.5 + 2) = 20
        (FLAT_TIERS, "24", "22", 3),  # 20 + (4 × 0.25 + 1) = 22
    ],
)
def test_graduated(
    spec: tuple[Tier, ...], quantity: str, expected: str, tiers_entered: int
) -> None:
    priced = price(D(quantity), Graduated(spec))
    assert priced.amount == D(expected)
    assert len(priced.tiers) == tiers_entered
    assert sum(line.amount for line in priced.tiers) == priced.amount
    assert sum(line.quantity for line in priced.tiers) == D(quantity)


def test_graduated_itemizes_each_tier() -> None:
    # 12,000,000 units over the docs example:
    # tier 1: (0, 1,000,000]           1,000,000 × 0                 = 0
    # tier 2: (1,000,000, 10,000,000]  9,000,000 × 0.000002          = 18.00
    # tier 3: (10,000,000, ∞)          2,000,000 × 0.0000015 + 5.00  = 8.00
    lines = price(D(12_000_000), Graduated(LLM_TIERS)).tiers
    got = [
        (t.tier, t.from_quantity, t.up_to, t.quantity, t.unit_amount, t.flat_amount, t.amount)
        for t in lines
    ]
    assert got == [
        (1, D(0), D(1_000_000), D(1_000_000), D(0), D(0), D(0)),
        (2, D(1_000_000), D(10_000_000), D(9_000_000), D("0.000002"), D(0), D(18)),
        (3, D(10_000_000), None, D(2_000_000), D("0.0000015"), D("5.00"), D(8)),
    ]
    assert lines[2].to_json() == {
        "tier": 3,
        "from": "10000000",
        "up_to": None,
        "quantity": "2000000",
        "unit_amount": "0.0000015",
        "flat_amount": "5.00",
        "amount": "8",
    }


def test_graduated_line_quantities_at_a_bound() -> None:
    # 10 units on FLAT_TIERS: exactly on tier 1's bound → one line of 10 units, 10 × 1 + 3
    (line,) = price(D(10), Graduated(FLAT_TIERS)).tiers
    assert (line.tier, line.quantity, line.amount) == (1, D(10), D(13))


# --- volume ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "quantity", "expected", "tier"),
    [
        (SEAT_TIERS, "0", "0", None),  # zero units cost nothing, no line
        (SEAT_TIERS, "1", "15", 1),  # 1 × 15.00
        (SEAT_TIERS, "10", "150", 1),  # on the bound: lower tier, 10 × 15.00 = 150.00
        (SEAT_TIERS, "11", "132", 2),  # all 11 at tier 2: 11 × 12.00 = 132.00
        (SEAT_TIERS, "50", "600", 2),  # 50 × 12.00 = 600.00
        (SEAT_TIERS, "51", "459", 3),  # 51 × 9.00 = 459.00
        (FLAT_TIERS, "0", "0", None),  # tier 1's flat is not charged for zero units
        (FLAT_TIERS, "4", "7", 1),  # 4 × 1 + 3 = 7
        (FLAT_TIERS, "12", "8", 2),  # 12 × 0.5 + 2 = 8
        (FLAT_TIERS, "20", "12", 2),  # on the bound: 20 × 0.5 + 2 = 12
        (FLAT_TIERS, "30", "8.5", 3),  # 30 × 0.25 + 1 = 8.5
    ],
)
def test_volume(spec: tuple[Tier, ...], quantity: str, expected: str, tier: int | None) -> None:
    priced = price(D(quantity), Volume(spec))
    assert priced.amount == D(expected)
    if tier is None:
        assert priced.tiers == ()
        return
    (line,) = priced.tiers
    assert line.tier == tier
    assert line.quantity == D(quantity)  # every unit is priced in that one tier
    assert line.unit_amount == spec[tier - 1].unit_amount == priced.unit_amount
    assert line.flat_amount == spec[tier - 1].flat_amount
    assert line.amount == D(expected)


def test_volume_line_names_the_tier_bounds() -> None:
    (line,) = price(D(11), Volume(SEAT_TIERS)).tiers
    assert (line.from_quantity, line.up_to) == (D(10), D(50))


# --- incremental cost ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "before", "after", "expected"),
    [
        # 9,001,000 × 0.000002 − 1,000 × 0.000002 = 18.002 − 0.002 = 18.00
        (PerUnit(D("0.000002")), "1000", "9001000", "18"),
        # ⌈1,001/1,000⌉ × 2 − ⌈999/1,000⌉ × 2 = 4.00 − 2.00 = 2.00
        (Package(D(1000), D("2.00")), "999", "1001", "2"),
        # both in the 2nd package: 4.00 − 4.00 = 0
        (Package(D(1000), D("2.00")), "1001", "1500", "0"),
        # 999,999 → 1,000,002: 1 unit at 0 + 2 units at 0.000002 = 0.000004
        (Graduated(LLM_TIERS), "999999", "1000002", "0.000004"),
        # 10,000,000 → 10,000,001 enters tier 3: 1 × 0.0000015 + flat 5.00 = 5.0000015
        (Graduated(LLM_TIERS), "10000000", "10000001", "5.0000015"),
        # docs: 100 users at 1.00 = 100.00 → 101 users at 0.80 = 80.80: 80.80 − 100.00 = −19.20
        (Volume(tiers(("100", "1.00"), (None, "0.80"))), "100", "101", "-19.20"),
        # 10 seats × 15.00 = 150.00 → 11 seats × 12.00 = 132.00: −18.00
        (Volume(SEAT_TIERS), "10", "11", "-18"),
        # 0 → 5 seats: 5 × 15.00 = 75.00
        (Volume(SEAT_TIERS), "0", "5", "75"),
    ],
)
def test_incremental_cost(spec: ChargeModel, before: str, after: str, expected: str) -> None:
    cost = incremental_cost(D(before), D(after), spec)
    assert cost == D(expected)
    assert cost == price(D(after), spec).amount - price(D(before), spec).amount


# --- properties ------------------------------------------------------------------------------

amounts = st.decimals(min_value=0, max_value=100, places=6)
quantities = st.decimals(min_value=0, max_value=2_000_000, places=3)


@st.composite
def tier_lists(draw: st.DrawFn) -> tuple[Tier, ...]:
    """1–5 valid tiers: rising positive bounds, the last unbounded, non-negative prices."""
    bounds = draw(
        st.lists(
            st.decimals(min_value="0.001", max_value=1_000_000, places=3),
            max_size=4,
            unique=True,
        )
    )
    ups: list[Decimal | None] = [*sorted(bounds), None]
    return tuple(
        Tier(up_to, draw(amounts), draw(st.one_of(st.just(D(0)), amounts))) for up_to in ups
    )


models = st.one_of(
    amounts.map(PerUnit),
    st.builds(
        Package,
        package_size=st.integers(min_value=1, max_value=10_000).map(D),
        package_amount=amounts,
    ),
    tier_lists().map(Graduated),
    tier_lists().map(Volume),
)


@given(spec=tier_lists(), a=quantities, b=quantities)
def test_graduated_price_is_monotone_in_quantity(
    spec: tuple[Tier, ...], a: Decimal, b: Decimal
) -> None:
    low, high = sorted((a, b))
    assert price(low, Graduated(spec)).amount <= price(high, Graduated(spec)).amount


@given(spec=tier_lists(), quantity=quantities)
def test_graduated_lines_add_up(spec: tuple[Tier, ...], quantity: Decimal) -> None:
    priced = price(quantity, Graduated(spec))
    with localcontext(PRICING_CONTEXT):
        assert sum((t.quantity for t in priced.tiers), D(0)) == quantity
        assert sum((t.amount for t in priced.tiers), D(0)) == priced.amount


@given(spec=models, steps=st.lists(quantities, min_size=1, max_size=8))
def test_incremental_costs_over_a_split_add_up_to_the_price(
    spec: ChargeModel, steps: list[Decimal]
) -> None:
    """However a period's quantity arrives in batches, the live balance (the sum of each
    batch's incremental cost) ends where the invoice (the price of the total) does."""
    with localcontext(PRICING_CONTEXT):
        total = D(0)
        spent = D(0)
        for step in steps:
            spent += incremental_cost(total, total + step, spec)
            total += step
        assert spent == price(total, spec).amount


@given(spec=models)
def test_zero_units_cost_nothing_under_any_model(spec: ChargeModel) -> None:
    priced = price(D(0), spec)
    assert priced.amount == 0
    assert priced.tiers == ()
