"""Does a provider's "paid" match the invoice? Exactly, in integer minor units, or not at all.

A webhook saying a payment succeeded marks an invoice paid only when it paid the amount due in
the invoice's currency. Both sides become whole minor units of their own currency
(:meth:`~tallyray.pricing.money.Money.minor_units`, ISO 4217 / CLDR digits) before they are
compared, so ``99.00 EUR`` and ``99 EUR`` agree, and ``99.00 EUR`` never agrees with
``99.00 USD``. An amount that cannot be written in whole minor units of its currency (Adyen's
``CLP 150050``, 1500.50 pesos), an unknown currency or a missing amount never matches.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from tallyray.errors import CurrencyError
from tallyray.invoicing.payments.base import ProviderEvent
from tallyray.pricing.money import Money

__all__ = ["amount_mismatch"]


def amount_mismatch(
    amount_due: Decimal, currency_code: str, event: ProviderEvent
) -> dict[str, Any] | None:
    """``None`` when ``event`` paid exactly ``amount_due`` in ``currency_code``; otherwise the
    expected and the received amount, to keep with the refused payment."""
    expected = Money.of(amount_due, currency_code)
    received = _minor_units(event.amount, event.currency)
    if event.currency == expected.currency.code and received == expected.minor_units():
        return None
    return {
        "expected": {
            "amount": expected.to_str(),
            "currency": expected.currency.code,
            "minor_units": expected.minor_units(),
        },
        "received": {
            "amount": None if event.amount is None else format(event.amount, "f"),
            "currency": event.currency,
            "minor_units": received,
        },
    }


def _minor_units(amount: Decimal | None, currency_code: str | None) -> int | None:
    if amount is None or currency_code is None:
        return None
    try:
        return Money.of(amount, currency_code).minor_units()
    except (CurrencyError, ValueError):  # unknown code, or finer than the currency's unit
        return None
