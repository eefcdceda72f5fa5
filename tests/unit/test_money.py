"""Currencies, rounding, Money and parse_amount (tallyray/pricing/money.py)."""

from __future__ import annotations

from collections.abc import Callable
from decimal import ROUND_HALF_EVEN, ROUND_HALF_UP, Decimal

import pytest

from tallyray.errors import CurrencyError, InvalidInput
from tallyray.pricing.money import (
    DEFAULT_ROUNDING,
    Money,
    currency,
    decimal_text,
    parse_amount,
    round_amount,
)

D = Decimal


# --- currencies ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "minor_units", "quantum"),
    [
        ("JPY", 0, "1"),
        ("EUR", 2, "0.01"),
        ("USD", 2, "0.01"),
        ("KWD", 3, "0.001"),
        ("BHD", 3, "0.001"),
    ],
)
def test_minor_units_come_from_iso_4217(code: str, minor_units: int, quantum: str) -> None:
    cur = currency(code)
    assert cur.code == code
    assert cur.minor_units == minor_units
    assert str(cur.quantum) == quantum
    assert str(cur) == code


@pytest.mark.parametrize("code", ["EURO", "eur", "XYZ", "", None, 978])
def test_unknown_currency_code_is_refused(code: object) -> None:
    with pytest.raises(CurrencyError, match="ISO 4217") as caught:
        currency(code)  # type: ignore[arg-type]
    assert repr(code) in caught.value.message
    assert isinstance(caught.value, InvalidInput)


# --- rounding --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "amount", "rounding", "expected"),
    [
        # EUR: two decimals
        ("EUR", "0.005", ROUND_HALF_UP, "0.01"),  # half goes away from zero
        ("EUR", "0.005", ROUND_HALF_EVEN, "0.00"),  # half goes to the even cent (0)
        ("EUR", "0.015", ROUND_HALF_UP, "0.02"),
        ("EUR", "0.015", ROUND_HALF_EVEN, "0.02"),  # 1 is odd → up to 2
        ("EUR", "0.025", ROUND_HALF_UP, "0.03"),
        ("EUR", "0.025", ROUND_HALF_EVEN, "0.02"),  # 2 is even → stays
        ("EUR", "-0.005", ROUND_HALF_UP, "-0.01"),  # away from zero, downwards
        ("EUR", "12.344999", ROUND_HALF_UP, "12.34"),  # below the half: down either way
        ("EUR", "26.297062", ROUND_HALF_UP, "26.30"),
        ("EUR", "7", ROUND_HALF_UP, "7.00"),  # padded to the minor unit
        # JPY: whole yen
        ("JPY", "12.5", ROUND_HALF_UP, "13"),
        ("JPY", "12.5", ROUND_HALF_EVEN, "12"),
        ("JPY", "13.5", ROUND_HALF_EVEN, "14"),
        ("JPY", "4443.017", ROUND_HALF_UP, "4443"),
        ("JPY", "577.8", ROUND_HALF_EVEN, "578"),
        # KWD: three decimals (fils)
        ("KWD", "1.2345", ROUND_HALF_UP, "1.235"),
        ("KWD", "1.2345", ROUND_HALF_EVEN, "1.234"),
        ("KWD", "1.2355", ROUND_HALF_EVEN, "1.236"),  # 5 is odd → up
        ("KWD", "1", ROUND_HALF_UP, "1.000"),
    ],
)
def test_round_amount(code: str, amount: str, rounding: str, expected: str) -> None:
    assert str(round_amount(D(amount), currency(code), rounding)) == expected


def test_default_rounding_is_half_up() -> None:
    assert DEFAULT_ROUNDING == ROUND_HALF_UP
    # 0.005 EUR: half-up gives a cent, half-even would give 0.00
    assert str(round_amount(D("0.005"), currency("EUR"))) == "0.01"


# --- Money -----------------------------------------------------------------------------------


EUR = currency("EUR")
USD = currency("USD")


@pytest.mark.parametrize("amount", [1.5, 0.1, 1, "1.5"])
def test_money_needs_a_decimal_amount(amount: object) -> None:
    with pytest.raises(TypeError, match="Decimal"):
        Money(amount, EUR)  # type: ignore[arg-type]


def test_money_of_refuses_a_float() -> None:
    with pytest.raises(InvalidInput, match="string"):
        Money.of(0.1, "EUR")  # type: ignore[arg-type]


@pytest.mark.parametrize("factor", [1.5, True, "2"])
def test_money_multiplies_only_by_decimal_or_int(factor: object) -> None:
    with pytest.raises(TypeError):
        Money.of("1.00", "EUR") * factor


def test_money_refuses_to_combine_with_a_bare_number() -> None:
    with pytest.raises(TypeError):
        Money.of("1.00", "EUR") + D("1")
    with pytest.raises(TypeError):
        Money.of("1.00", "EUR") < 2  # noqa: B015


@pytest.mark.parametrize(
    "combine",
    [
        lambda a, b: a + b,
        lambda a, b: a - b,
        lambda a, b: a < b,
        lambda a, b: a <= b,
        lambda a, b: a > b,
        lambda a, b: a >= b,
    ],
    ids=["add", "sub", "lt", "le", "gt", "ge"],
)
def test_money_refuses_to_mix_currencies(combine: Callable[[Money, Money], object]) -> None:
    with pytest.raises(CurrencyError, match="cannot combine EUR with USD"):
        combine(Money.of("1.00", EUR), Money.of("1.00", USD))


def test_money_arithmetic_in_one_currency() -> None:
    a, b = Money.of("12.34", "EUR"), Money.of("0.66", "EUR")
    assert a + b == Money.of("13.00", "EUR")  # 12.34 + 0.66 = 13.00
    assert a - b == Money.of("11.68", "EUR")  # 12.34 − 0.66 = 11.68
    assert -a == Money.of("-12.34", "EUR")
    assert a * 3 == Money.of("37.02", "EUR")  # 12.34 × 3 = 37.02
    assert a * D("0.5") == Money.of("6.17", "EUR")  # 12.34 × 0.5 = 6.17
    assert (a + b).currency is EUR


def test_money_comparison_in_one_currency() -> None:
    small, big = Money.of("0.99", "EUR"), Money.of("1.00", "EUR")
    assert small < big and small <= big
    assert big > small and big >= small
    assert big <= Money.of("1", "EUR") and big >= Money.of("1.000", "EUR")
    # equal amounts written with different exponents are the same money
    assert Money.of("1.0", "EUR") == Money.of("1.00", "EUR")
    assert hash(Money.of("1.0", "EUR")) == hash(Money.of("1.00", "EUR"))
    # the same number in two currencies is not the same money
    assert Money.of("1.00", "EUR") != Money.of("1.00", "USD")


def test_money_zero_rounded_and_text() -> None:
    assert Money.zero("JPY") == Money.of(0, "JPY")
    assert Money.of("0.125", "EUR").rounded() == Money.of("0.13", "EUR")  # half-up
    assert Money.of("0.125", "EUR").rounded(ROUND_HALF_EVEN) == Money.of("0.12", "EUR")
    assert Money.of("12.30", "EUR").to_str() == "12.30"
    assert str(Money.of("12.30", "EUR")) == "12.30 EUR"
    assert str(Money.of(D("1E+3"), "JPY")) == "1000 JPY"  # never scientific notation


@pytest.mark.parametrize(
    ("amount", "code", "expected"),
    [
        ("12.34", "EUR", 1234),  # 12.34 × 10² = 1234 cents
        ("12.3", "EUR", 1230),  # fewer decimals than the minor unit is fine
        ("500", "JPY", 500),  # 500 × 10⁰
        ("1.235", "KWD", 1235),  # 1.235 × 10³ fils
        ("-0.05", "USD", -5),
        ("0", "BHD", 0),
    ],
)
def test_minor_units(amount: str, code: str, expected: int) -> None:
    result = Money.of(amount, code).minor_units()
    assert result == expected
    assert type(result) is int


@pytest.mark.parametrize(
    ("amount", "code"),
    [("12.345", "EUR"), ("0.5", "JPY"), ("1.2345", "KWD"), ("0.001", "USD")],
)
def test_minor_units_of_an_unrounded_amount_is_an_error(amount: str, code: str) -> None:
    with pytest.raises(ValueError, match="not rounded"):
        Money.of(amount, code).minor_units()


def test_minor_units_is_exact_for_a_very_large_amount() -> None:
    amount = D("12345678901234567890123456789.01")  # 31 significant digits
    assert Money(amount, EUR).minor_units() == 1234567890123456789012345678901


# --- parse_amount: the one parser of numbers from outside -----------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("0.1", "0.1"),
        ("0.000002", "0.000002"),
        ("1.50", "1.50"),  # trailing zero kept
        ("0.000000000001", "0.000000000001"),  # exactly 12 decimal places
        ("-3", "-3"),  # the sign is each field's business (sign=...)
        ("007", "7"),
        ("999999999999999", "999999999999999"),  # the largest whole number: 10^15 − 1
        ("-999999999999999.999999999999", "-999999999999999.999999999999"),
        (5, "5"),
        (0, "0"),
        (-(10**15) + 1, "-999999999999999"),
        (D("2.5"), "2.5"),
    ],
)
def test_parse_amount_accepts(value: object, expected: str) -> None:
    result = parse_amount(value)
    assert isinstance(result, Decimal)
    assert result.as_tuple() == D(expected).as_tuple()  # same digits and exponent


def test_parse_amount_refuses_a_json_float_and_says_to_write_a_string() -> None:
    with pytest.raises(InvalidInput, match="string") as caught:
        parse_amount(0.1)
    assert '"0.1"' in caught.value.message  # shows the fix: write "0.1"


PLAIN = "not a decimal in plain notation"
TOO_LARGE = "magnitude must be below 10\\^15"


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (True, "decimal string"),
        (False, "decimal string"),
        ("abc", PLAIN),
        ("", PLAIN),
        ("1,5", PLAIN),
        (" 1.50 ", PLAIN),  # no blanks
        ("+1", PLAIN),
        (".5", PLAIN),
        ("5.", PLAIN),
        ("1E+3", PLAIN),  # no exponents, however small
        ("1e9999999", PLAIN),  # made a shard's arithmetic overflow
        ("1e-5", PLAIN),
        ("NaN", PLAIN),
        ("sNaN", PLAIN),
        ("Infinity", PLAIN),
        ("-Infinity", PLAIN),
        ("0x10", PLAIN),
        ("１２", PLAIN),  # full-width digits are digits to Decimal, not to us
        ("1\x002", PLAIN),
        ("9" * 10_000_000, PLAIN),  # refused by its length before anything else
        ("1000000000000000", TOO_LARGE),  # 10^15
        ("-1000000000000000", TOO_LARGE),
        (10**15, TOO_LARGE),
        (10**400, TOO_LARGE),
        (D("1E+20"), TOO_LARGE),
        ("0.0000000000001", "more than 12 decimal places"),  # 13 places
        (None, "decimal string"),
        ([1], "decimal string"),
        ({"amount": "1"}, "decimal string"),
        (1.0, "write it as a string"),  # still a float, even if whole
        (float("nan"), "write it as a string"),
    ],
)
def test_parse_amount_rejects(value: object, message: str) -> None:
    with pytest.raises(InvalidInput, match=message) as caught:
        parse_amount(value)
    assert len(caught.value.message) < 300  # never repeats a huge input


def test_a_named_field_is_named_in_the_message_and_the_problem() -> None:
    with pytest.raises(InvalidInput) as caught:
        parse_amount("1e9999999", field="amount")
    assert caught.value.message.startswith("'amount' ")
    (problem,) = caught.value.problems
    assert problem.where == "amount" and "plain notation" in problem.message


@pytest.mark.parametrize(
    ("value", "sign", "message"),
    [
        ("-1", "non_negative", "must not be negative"),
        ("-0.01", "positive", "must be greater than zero"),
        ("0", "positive", "must be greater than zero"),
        ("0", "non_negative", None),
        ("-1", "any", None),
    ],
)
def test_parse_amount_sign(value: str, sign: str, message: str | None) -> None:
    if message is None:
        assert parse_amount(value, sign=sign) == D(value)  # type: ignore[arg-type]
    else:
        with pytest.raises(InvalidInput, match=message):
            parse_amount(value, sign=sign)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("value", "places", "ok"),
    [("10", 0, True), ("10.5", 0, False), ("10.50", 2, True), ("10.505", 2, False)],
)
def test_parse_amount_places_limit(value: str, places: int, ok: bool) -> None:
    if ok:
        assert parse_amount(value, places=places) == D(value)
    else:
        with pytest.raises(InvalidInput, match=f"more than {places} decimal places"):
            parse_amount(value, places=places)


@pytest.mark.parametrize("value", [D("NaN"), D("Infinity"), D("-Infinity")])
def test_parse_amount_rejects_a_non_finite_decimal(value: Decimal) -> None:
    with pytest.raises(InvalidInput):
        parse_amount(value)


def test_stored_decimals_are_read_without_bounds() -> None:
    # what Tallyray summed itself may exceed what any one input may be
    assert decimal_text("12345678901234567890.5") == D("12345678901234567890.5")
    with pytest.raises(ValueError):
        decimal_text("NaN")
