"""Currencies, amounts and rounding: the one home of money.

- Amounts are :class:`decimal.Decimal`. Floats are refused everywhere they could enter.
- A currency's minor unit (JPY 0, EUR 2, KWD 3) comes from Babel's copy of the CLDR/ISO 4217
  data, never from a table typed in here.
- Charge models price at full precision. Rounding happens once, when an invoice line is built
  (:func:`round_amount`), and the precise amount is kept beside the rounded one. Totals are
  sums of rounded lines.
- Integer minor units (``1234`` cents) exist only for payment-provider adapters
  (:meth:`Money.minor_units`).
"""

from __future__ import annotations

import decimal
import re
from dataclasses import dataclass
from decimal import Decimal
from functools import cache, lru_cache
from typing import Literal, NoReturn

from babel.numbers import get_currency_precision, list_currencies

from tallyray.errors import CurrencyError, InvalidInput, Problem

__all__ = [
    "DEFAULT_ROUNDING",
    "MAX_DECIMAL_PLACES",
    "MAX_MAGNITUDE",
    "ROUNDING_MODES",
    "Currency",
    "Money",
    "PRICING_CONTEXT",
    "currency",
    "decimal_text",
    "parse_amount",
    "round_amount",
    "shown",
]

#: Half away from zero, as most invoicing law and practice expects.
DEFAULT_ROUNDING = decimal.ROUND_HALF_UP

#: Rounding modes a deployment may choose (``"rounding"`` in the config file).
ROUNDING_MODES = frozenset(
    {
        decimal.ROUND_HALF_UP,
        decimal.ROUND_HALF_EVEN,
        decimal.ROUND_HALF_DOWN,
        decimal.ROUND_UP,
        decimal.ROUND_DOWN,
        decimal.ROUND_CEILING,
        decimal.ROUND_FLOOR,
    }
)

#: Arithmetic context for pricing: wide enough that quantity × 12-decimal unit price is exact,
#: and loud (``Inexact`` is not trapped, but overflow and invalid operations are).
PRICING_CONTEXT = decimal.Context(
    prec=60,
    rounding=DEFAULT_ROUNDING,
    traps=[decimal.InvalidOperation, decimal.DivisionByZero, decimal.Overflow],
)

#: Unit prices may carry up to this many decimal places (DESIGN.md).
MAX_DECIMAL_PLACES = 12


@dataclass(frozen=True, slots=True)
class Currency:
    """An ISO 4217 currency and the number of digits of its minor unit."""

    code: str
    minor_units: int

    @property
    def quantum(self) -> Decimal:
        """The smallest amount that can be invoiced: ``Decimal('0.01')`` for EUR."""
        return Decimal(1).scaleb(-self.minor_units)

    def __str__(self) -> str:
        return self.code


@cache
def _known_codes() -> frozenset[str]:
    return frozenset(list_currencies())


def currency(code: object) -> Currency:
    """The currency for an ISO 4217 code; :class:`CurrencyError` for an unknown one (or
    for anything that is not a string: a code from a JSON body may be an object)."""
    if not isinstance(code, str):
        raise CurrencyError(
            f"unknown currency code {shown(code)}: use an ISO 4217 code in capitals, such as 'EUR'"
        )
    return _currency(code)


@lru_cache(maxsize=512)
def _currency(code: str) -> Currency:
    if code not in _known_codes():
        raise CurrencyError(
            f"unknown currency code {code!r}: use an ISO 4217 code in capitals, such as 'EUR'"
        )
    return Currency(code, get_currency_precision(code))


def round_amount(amount: Decimal, cur: Currency, rounding: str = DEFAULT_ROUNDING) -> Decimal:
    """``amount`` rounded to the currency's minor unit: the single rounding point."""
    return amount.quantize(cur.quantum, rounding=rounding, context=PRICING_CONTEXT)


MAX_MAGNITUDE = Decimal(10) ** 15
"""Every number that enters from outside — an amount, rate, threshold or limit through the
API, the config or the portal, and every meter value of an event — is smaller than this in
magnitude (|x| < 10^15). Sums of them may grow larger; nothing a caller sends can make the
arithmetic overflow or a string of it huge."""

Sign = Literal["any", "non_negative", "positive"]

_PLAIN_DECIMAL = re.compile(r"-?[0-9]+(?:\.[0-9]+)?")
_LONGEST_TEXT = 64
"""No decimal within the bounds needs more characters than this (16 digits, a point, the
places and a sign), so longer text is refused before it is looked at."""


def shown(value: object, limit: int = 40) -> str:
    """``repr(value)`` cut to ``limit`` characters, for error messages: a message must never
    repeat megabytes of what it refuses."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def parse_amount(
    value: object,
    *,
    places: int = MAX_DECIMAL_PLACES,
    field: str | None = None,
    sign: Sign = "any",
) -> Decimal:
    """The one parser of decimal numbers from outside: a JSON string in plain decimal
    notation such as ``"0.000002"`` or ``"-12.5"``, or a whole JSON number.

    Refused, with :class:`InvalidInput` naming ``field`` (when given) and saying what to
    write instead: a JSON number with a fraction (``0.1``: it reached us as a binary float and
    may differ from what was written), exponents (``"1e3"``), ``NaN`` and infinities, spaces,
    more than ``places`` decimal places, a magnitude of :data:`MAX_MAGNITUDE` or more, and a
    negative (or zero) value where ``sign`` rules it out.
    """
    result = _decimal_from_outside(value, places, field)
    if sign != "any" and (result < 0 or (sign == "positive" and result == 0)):
        _refuse(
            field, "must be greater than zero" if sign == "positive" else "must not be negative"
        )
    return result


def _decimal_from_outside(value: object, places: int, field: str | None) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, str | int | float | Decimal):
        _refuse(field, f'must be a decimal string such as "1.50", not {shown(value)}')
    if isinstance(value, float):
        _refuse(
            field,
            f"{shown(value)} is a JSON number with a fraction (or too large to be an exact "
            f'integer); write it as a string: "{value!r}"',
        )
    if isinstance(value, int):
        result = Decimal(value)
    elif isinstance(value, str):
        if len(value) > _LONGEST_TEXT or not _PLAIN_DECIMAL.fullmatch(value):
            _refuse(
                field,
                f"{shown(value)} is not a decimal in plain notation: digits, an optional "
                'minus sign and decimal point, no exponent or spaces (e.g. "1250.75")',
            )
        result = Decimal(value)
    else:
        assert isinstance(value, Decimal)
        if not value.is_finite():
            _refuse(field, f"{shown(value)} is not a finite decimal number")
        result = value
    if abs(result) >= MAX_MAGNITUDE:
        _refuse(field, "is too large: its magnitude must be below 10^15 (1,000,000,000,000,000)")
    exponent = result.as_tuple().exponent
    if isinstance(exponent, int) and -exponent > places:
        _refuse(field, f"{shown(value)} has more than {places} decimal places")
    return result


def _refuse(field: str | None, message: str) -> NoReturn:
    if field is None:
        raise InvalidInput(message)
    raise InvalidInput(f"'{field}' {message}", [Problem(field, message)])


def decimal_text(value: object) -> Decimal:
    """A decimal that Tallyray itself stored as text (a balance, an invoice total): exact,
    with no bounds. Never for input from outside: that goes through :func:`parse_amount`."""
    if isinstance(value, Decimal):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return Decimal(value)
    if isinstance(value, str):
        try:
            result = Decimal(value)
        except decimal.InvalidOperation:
            raise ValueError(f"{shown(value)} is not a stored decimal") from None
        if result.is_finite():
            return result
    raise ValueError(f"{shown(value)} is not a stored decimal")


@dataclass(frozen=True, slots=True)
class Money:
    """An amount in one currency. Refuses floats and refuses to mix currencies."""

    amount: Decimal
    currency: Currency

    def __post_init__(self) -> None:
        if not isinstance(self.amount, Decimal):
            raise TypeError(f"Money needs a Decimal amount, not {type(self.amount).__name__}")

    @classmethod
    def of(cls, amount: Decimal | str | int, code: str | Currency) -> Money:
        cur = code if isinstance(code, Currency) else currency(code)
        if isinstance(amount, Decimal):
            return cls(decimal_text(amount), cur)
        return cls(parse_amount(amount, places=60), cur)

    @classmethod
    def zero(cls, code: str | Currency) -> Money:
        return cls.of(0, code)

    def _same(self, other: object) -> Money:
        if not isinstance(other, Money):
            raise TypeError(f"cannot combine Money with {type(other).__name__}")
        if other.currency != self.currency:
            raise CurrencyError(
                f"cannot combine {self.currency.code} with {other.currency.code}: "
                "convert one of them first"
            )
        return other

    def __add__(self, other: object) -> Money:
        return Money(self.amount + self._same(other).amount, self.currency)

    def __sub__(self, other: object) -> Money:
        return Money(self.amount - self._same(other).amount, self.currency)

    def __neg__(self) -> Money:
        return Money(-self.amount, self.currency)

    def __mul__(self, factor: object) -> Money:
        if isinstance(factor, bool) or not isinstance(factor, Decimal | int):
            raise TypeError(f"Money can be multiplied by Decimal or int, not {factor!r}")
        return Money(self.amount * factor, self.currency)

    def __lt__(self, other: object) -> bool:
        return self.amount < self._same(other).amount

    def __le__(self, other: object) -> bool:
        return self.amount <= self._same(other).amount

    def __gt__(self, other: object) -> bool:
        return self.amount > self._same(other).amount

    def __ge__(self, other: object) -> bool:
        return self.amount >= self._same(other).amount

    def rounded(self, rounding: str = DEFAULT_ROUNDING) -> Money:
        return Money(round_amount(self.amount, self.currency, rounding), self.currency)

    def minor_units(self) -> int:
        """The amount as an integer count of minor units, for payment providers only.

        The amount must already be rounded to the currency's minor unit.
        """
        scaled = self.amount.scaleb(self.currency.minor_units, context=PRICING_CONTEXT)
        if scaled != scaled.to_integral_value():
            raise ValueError(f"{self} is not rounded to the minor unit of {self.currency}")
        return int(scaled)

    def to_str(self) -> str:
        """The amount as a decimal string, e.g. ``"12.30"``."""
        return format(self.amount, "f")

    def __str__(self) -> str:
        return f"{self.to_str()} {self.currency.code}"
