"""Amounts as integer minor units: exact or refused, never rounded.

``to_minor_units`` uses the currency's own minor unit (CLDR, as ``pricing/money.py``); each
provider's ``AmountRules`` uses the provider's published table, which differs for a few
currencies (Stripe: ISK and HUF are two-decimal; Adyen: CLP is two-decimal, CVE zero).
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from tallyray.errors import CurrencyError, InvalidInput
from tallyray.invoicing.payments import (
    ADYEN_AMOUNTS,
    STRIPE_AMOUNTS,
    PaymentResult,
    ProviderEvent,
    to_minor_units,
)


@pytest.mark.parametrize(
    ("amount", "code", "expected"),
    [
        ("12.34", "EUR", 1234),  # 12.34 × 10² = 1234
        ("12.3", "EUR", 1230),
        ("12.340", "EUR", 1234),  # trailing zeros are not extra precision
        ("0.01", "EUR", 1),
        ("1E+2", "EUR", 10000),
        ("-12.34", "EUR", -1234),  # a credit stays exact too
        ("1234", "JPY", 1234),  # JPY has no minor unit: × 10⁰
        ("1234.0", "JPY", 1234),
        ("1.235", "KWD", 1235),  # 1.235 × 10³ = 1235 fils
        ("1.2345", "CLF", 12345),  # four decimals
        ("0", "USD", 0),
    ],
)
def test_to_minor_units(amount: str, code: str, expected: int) -> None:
    assert to_minor_units(Decimal(amount), code) == expected


@pytest.mark.parametrize(
    ("amount", "code"),
    [
        ("12.345", "EUR"),
        ("0.001", "USD"),
        ("1234.5", "JPY"),
        ("1.2345", "KWD"),
    ],
)
def test_to_minor_units_refuses_more_digits_than_the_currency_has(amount: str, code: str) -> None:
    with pytest.raises(ValueError, match=f"more decimal places than the .* that {code} allows"):
        to_minor_units(Decimal(amount), code)


def test_to_minor_units_takes_a_providers_digits() -> None:
    # Stripe writes ISK with two decimals: 500 × 10² = 50000.
    assert to_minor_units(Decimal("500"), "ISK", digits=2) == 50000
    with pytest.raises(ValueError):
        to_minor_units(Decimal("10.50"), "CVE", digits=0)


@pytest.mark.parametrize(
    ("amount", "error"),
    [
        (12.34, TypeError),  # a float never becomes money
        (1234, TypeError),
        (Decimal("NaN"), ValueError),
        (Decimal("Infinity"), ValueError),
    ],
)
def test_to_minor_units_refuses_non_decimals(amount: object, error: type[Exception]) -> None:
    with pytest.raises(error):
        to_minor_units(amount, "EUR")  # type: ignore[arg-type]


def test_to_minor_units_refuses_unknown_currencies() -> None:
    with pytest.raises(CurrencyError, match="unknown currency code 'EURO'"):
        to_minor_units(Decimal("1"), "EURO")


@pytest.mark.parametrize(
    ("amount", "code", "expected"),
    [
        ("12.34", "EUR", 1234),
        ("1234", "JPY", 1234),
        ("1500", "UGX", 1500),  # zero-decimal at Stripe too
        ("1.230", "KWD", 1230),  # three decimals, last digit 0
        ("2.500", "BHD", 2500),
        ("500", "ISK", 50000),  # two-decimal in Stripe's API: 500 × 10² (a multiple of 100)
        ("1500", "HUF", 150000),  # CLDR has no decimals for HUF, Stripe has two
        ("5000", "COP", 500000),
    ],
)
def test_stripe_amounts(amount: str, code: str, expected: int) -> None:
    assert STRIPE_AMOUNTS.minor_units(Decimal(amount), code) == expected


@pytest.mark.parametrize(
    ("amount", "code", "error", "message"),
    [
        ("1.235", "KWD", CurrencyError, r"only in multiples of 0.010 KWD; 1.235 KWD is not one"),
        ("0.005", "OMR", CurrencyError, r"only in multiples of 0.010 OMR"),
        ("1.235", "LYD", CurrencyError, r"LYD amounts with 2 decimal places"),
        ("0", "EUR", InvalidInput, r"nothing to collect"),
        ("-5.00", "EUR", InvalidInput, r"nothing to collect"),
        ("1", "XXX1", CurrencyError, r"unknown currency code"),
    ],
)
def test_stripe_amounts_refused(
    amount: str, code: str, error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        STRIPE_AMOUNTS.minor_units(Decimal(amount), code)


@pytest.mark.parametrize(
    ("amount", "code", "expected"),
    [
        ("12.34", "EUR", 1234),
        ("1234", "JPY", 1234),
        ("1.235", "KWD", 1235),  # Adyen takes all three decimals
        ("1500", "CLP", 150000),  # Adyen: CLP has two decimals, "differs from standard"
        ("15000", "IDR", 15000),  # Adyen: IDR has none
        ("100", "CVE", 100),  # Adyen: CVE has none
    ],
)
def test_adyen_amounts(amount: str, code: str, expected: int) -> None:
    assert ADYEN_AMOUNTS.minor_units(Decimal(amount), code) == expected


@pytest.mark.parametrize(
    ("amount", "code", "message"),
    [
        ("100.50", "CVE", r"CVE amounts with 0 decimal places"),
        ("500", "ISK", r"Adyen payments in ISK are not supported"),
    ],
)
def test_adyen_amounts_refused(amount: str, code: str, message: str) -> None:
    with pytest.raises(CurrencyError, match=message):
        ADYEN_AMOUNTS.minor_units(Decimal(amount), code)


@pytest.mark.parametrize(
    ("rules", "value", "code", "amount"),
    [
        # what a provider reports, back to a Decimal with the provider's own digits
        (STRIPE_AMOUNTS, 1234, "EUR", "12.34"),  # 1234 / 10²
        (STRIPE_AMOUNTS, 1234, "JPY", "1234"),  # / 10⁰
        (STRIPE_AMOUNTS, 1230, "KWD", "1.230"),  # / 10³
        (STRIPE_AMOUNTS, 50000, "ISK", "500.00"),  # Stripe's ISK is two-decimal
        (STRIPE_AMOUNTS, 150000, "HUF", "1500.00"),
        (ADYEN_AMOUNTS, 150000, "CLP", "1500.00"),  # Adyen's CLP is two-decimal
        (ADYEN_AMOUNTS, 15000, "IDR", "15000"),  # Adyen's IDR has none
        (ADYEN_AMOUNTS, 150050, "CLP", "1500.50"),  # exact, even finer than CLDR's CLP
    ],
)
def test_provider_amounts_back_to_decimals(rules: Any, value: int, code: str, amount: str) -> None:
    result = rules.decimal_amount(value, code)
    assert result == Decimal(amount)
    if code != "CLP" or value % 100 == 0:
        assert rules.minor_units(result, code) == value  # the inverse of minor_units


def test_results_and_events_check_their_vocabulary() -> None:
    result = PaymentResult("stripe", "failed", "pi_1", "cus_1", 1234, "card_declined", "No.")
    assert result.to_json() == {
        "provider": "stripe",
        "status": "failed",
        "reference": "pi_1",
        "provider_customer_id": "cus_1",
        "amount_minor": 1234,
        "failure_code": "card_declined",
        "failure_message": "No.",
    }
    with pytest.raises(ValueError, match="unknown payment status 'paid'"):
        PaymentResult("stripe", "paid", None, None, None)
    with pytest.raises(ValueError, match="unknown event kind 'charge.succeeded'"):
        ProviderEvent("stripe", "evt_1", "charge.succeeded", False, None, None)
