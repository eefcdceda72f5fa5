"""A provider's "paid" marks an invoice paid only with the exact amount due and currency.

Both sides are compared in whole minor units of their currency (``Money.minor_units``).
"""

from __future__ import annotations

from decimal import Decimal

import pytest

from tallyray.invoicing.payments import ProviderEvent
from tallyray.invoicing.payments.matching import amount_mismatch


def paid(amount: str | None, currency: str | None) -> ProviderEvent:
    return ProviderEvent(
        "stripe",
        "evt_1",
        "payment.succeeded",
        False,
        "inv_1",
        "pi_1",
        amount=None if amount is None else Decimal(amount),
        currency=currency,
    )


@pytest.mark.parametrize(
    ("due", "code", "amount", "currency", "matches"),
    [
        ("99.00", "EUR", "99.00", "EUR", True),  # 9900 = 9900 cents
        ("99.00", "EUR", "99", "EUR", True),  # 99 × 10² = 9900: the same amount
        ("99.00", "EUR", "98.99", "EUR", False),  # 9899 ≠ 9900: one cent short
        ("99.00", "EUR", "99.01", "EUR", False),  # a cent more is not "paid" either
        ("99.00", "EUR", "99.00", "USD", False),  # the same number in another currency
        ("1234", "JPY", "1234", "JPY", True),  # zero-decimal: 1234 = 1234
        ("1.235", "KWD", "1.235", "KWD", True),  # 1235 fils
        ("1.235", "KWD", "1.230", "KWD", False),  # 1230 ≠ 1235 fils
        ("1500", "CLP", "1500.50", "CLP", False),  # half a peso is no CLP minor unit at all
        ("99.00", "EUR", "99.00", "XYZ", False),  # an unknown currency never matches
        ("99.00", "EUR", None, "EUR", False),  # an event without an amount
        ("99.00", "EUR", "99.00", None, False),  # or without a currency
    ],
)
def test_amount_mismatch(
    due: str, code: str, amount: str | None, currency: str | None, matches: bool
) -> None:
    mismatch = amount_mismatch(Decimal(due), code, paid(amount, currency))

    assert (mismatch is None) is matches


def test_a_mismatch_says_what_was_expected_and_received() -> None:
    # 99.00 EUR due = 9900 cents; 98.00 USD received = 9800 cents of another currency
    assert amount_mismatch(Decimal("99.00"), "EUR", paid("98.00", "USD")) == {
        "expected": {"amount": "99.00", "currency": "EUR", "minor_units": 9900},
        "received": {"amount": "98.00", "currency": "USD", "minor_units": 9800},
    }
    assert amount_mismatch(Decimal("1500"), "CLP", paid("1500.50", "CLP")) == {
        "expected": {"amount": "1500", "currency": "CLP", "minor_units": 1500},
        "received": {"amount": "1500.50", "currency": "CLP", "minor_units": None},
    }
