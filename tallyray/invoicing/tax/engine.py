"""The tax engine's interface: who sells, who buys, and what tax applies on a supply date.

A :class:`TaxEngine` answers one question, :meth:`~TaxEngine.decide`: given the seller, the
buyer and the supply date, which tax applies at which rate, with what note on the invoice and
what evidence for the record. It does no rounding (invoicing rounds per currency, once), reads
no clock (the supply date is passed in) and talks to no outside system except through a
:class:`~tallyray.invoicing.tax.vat_ids.VatVerifier` handed to its constructor.

Two engines ship: :class:`NoTax` here, and :class:`~tallyray.invoicing.tax.eu_vat.EuVat`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any, Protocol

from tallyray.errors import InvalidInput
from tallyray.pricing.money import PRICING_CONTEXT

__all__ = [
    "TAX_KINDS",
    "Jurisdiction",
    "NoTax",
    "Party",
    "TaxDecision",
    "TaxEngine",
    "parse_rate",
    "supply_date",
]

#: Every value of :attr:`TaxDecision.kind`.
TAX_KINDS = frozenset(
    {"domestic", "intra_eu_reverse_charge", "oss", "export", "exempt", "jurisdiction", "none"}
)

_ZERO = Decimal(0)
_RATE = re.compile(r"^[0-9]{1,3}(\.[0-9]{1,6})?$")


def parse_rate(value: object) -> Decimal:
    """A tax rate in percent from JSON: a decimal string from ``"0"`` to ``"100"`` with at most
    six decimal places (``"19"``, ``"25.5"``, ``"8.875"``); :class:`InvalidInput` otherwise.

    A JSON number is refused, even a whole one, so that every rate is written the same way and
    none passes through a binary float.
    """
    if isinstance(value, str) and _RATE.match(value):
        rate = Decimal(value)
        if rate <= 100:
            return rate
    if isinstance(value, int | float) and not isinstance(value, bool):
        raise InvalidInput(
            f'must be a decimal string, not the JSON number {value!r}: write "{value}"'
        )
    raise InvalidInput(
        f'must be a percentage from "0" to "100" as a decimal string, such as "19" or "25.5"; '
        f"not {value!r}"
    )


@dataclass(frozen=True, slots=True)
class Party:
    """A seller or a buyer, as far as tax is concerned.

    ``country`` is an ISO 3166-1 alpha-2 code in capitals (``"DE"``; Greece is ``"GR"``, and
    ``"EL"``, its VAT prefix, is read as Greece too), or ``None`` when unknown. ``region`` is
    the subdivision part of an ISO 3166-2 code (``"CA"`` for ``US-CA``). ``vat_id`` is kept as
    the customer typed it; the engine normalizes it.
    """

    country: str | None
    region: str | None = None
    vat_id: str | None = None
    tax_exempt: bool = False
    exempt_reason: str | None = None


@dataclass(frozen=True, slots=True)
class Jurisdiction:
    """A tax outside the EU VAT tables, from the ``"jurisdictions"`` config: its printed name
    and its rate in percent."""

    name: str
    rate: Decimal

    def __post_init__(self) -> None:
        if not isinstance(self.rate, Decimal):
            raise TypeError(f"a tax rate is a Decimal, not {type(self.rate).__name__}")


@dataclass(frozen=True, slots=True)
class TaxDecision:
    """Which tax applies to a supply, and why.

    ``rate`` is in percent (``Decimal("19")``). ``note`` is printed on the invoice (a
    reverse-charge or export note, an exemption reason, a warning that a VAT id could not be
    verified). ``evidence`` is JSON-able and stored with the invoice: the rule applied, the
    rates table used, the VAT-id check.
    """

    kind: str
    name: str
    jurisdiction: str | None
    rate: Decimal
    note: str | None
    evidence: dict[str, Any]

    def __post_init__(self) -> None:
        if self.kind not in TAX_KINDS:
            raise ValueError(f"unknown tax decision kind {self.kind!r}")
        if not isinstance(self.rate, Decimal):
            raise TypeError(f"a tax rate is a Decimal, not {type(self.rate).__name__}")
        if not _ZERO <= self.rate <= 100:
            raise ValueError(f"a tax rate is a percentage from 0 to 100, not {self.rate}")

    def tax_on(self, taxable: Decimal) -> Decimal:
        """The tax on ``taxable`` at full precision (``taxable × rate / 100``), not rounded."""
        if isinstance(taxable, bool) or not isinstance(taxable, Decimal | int):
            raise TypeError(f"tax is computed on a Decimal amount, not {taxable!r}")
        # The pricing context (60 digits) for both steps: the default one keeps only 28.
        product = PRICING_CONTEXT.multiply(Decimal(taxable), self.rate)
        return product.scaleb(-2, context=PRICING_CONTEXT)

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "name": self.name,
            "jurisdiction": self.jurisdiction,
            "rate": format(self.rate, "f"),
            "note": self.note,
            "evidence": self.evidence,
        }

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> TaxDecision:
        """A decision stored with :meth:`to_json`, read back."""
        return cls(
            kind=doc["kind"],
            name=doc["name"],
            jurisdiction=doc["jurisdiction"],
            rate=Decimal(doc["rate"]),
            note=doc["note"],
            evidence=dict(doc["evidence"]),
        )


class TaxEngine(Protocol):
    """Decides the tax on a supply. ``on`` is the supply date, microseconds since the epoch
    (UTC); only its calendar day in UTC matters."""

    def decide(self, seller: Party, buyer: Party, on: int) -> TaxDecision: ...


def supply_date(on: int) -> date:
    """The UTC calendar day of ``on`` (microseconds since the epoch)."""
    if isinstance(on, bool) or not isinstance(on, int):
        raise TypeError(f"the supply date is microseconds since the epoch (an int), not {on!r}")
    return (datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=on)).date()


class NoTax:
    """The engine for ``"engine": "none"``: no tax on anything, no note."""

    def decide(self, seller: Party, buyer: Party, on: int) -> TaxDecision:
        return TaxDecision(
            kind="none",
            name="Tax",
            jurisdiction=None,
            rate=_ZERO,
            note=None,
            evidence={
                "engine": "none",
                "rule": "no_tax",
                "supply_date": supply_date(on).isoformat(),
            },
        )
