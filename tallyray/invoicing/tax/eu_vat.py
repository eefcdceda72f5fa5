"""EU VAT on services sold electronically: the decision table, and the dated rates behind it.

For a seller established in a member state *S*, in this order:

===============================================  ===========================  ==============
buyer                                            kind                         rate
===============================================  ===========================  ==============
tax exempt                                       ``exempt``                   0
country unknown                                  ``domestic``                 S's standard
in S (with or without a VAT id)                  ``domestic``                 S's standard
other member state, VAT id verified              ``intra_eu_reverse_charge``  0
other member state, VAT id bad / refused /       ``oss``                      buyer country's
could not be verified                                                         standard
other member state, no VAT id                    ``oss``                      buyer country's
                                                                              standard
outside the EU, rate configured                  ``jurisdiction``             configured
outside the EU                                   ``export``                   0
===============================================  ===========================  ==============

A seller outside the EU charges only what the ``"jurisdictions"`` config lists (see
:meth:`EuVat.decide`). docs/tax.md has the full story.

Rates are data: ``eu_vat_rates.json`` lists, per member state, the periods of its standard
rate, so a rate change is a new line in a file and a supply is taxed at the rate of its day.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from functools import cache
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import Any

from tallyray.errors import ConfigError, InvalidInput, Problem
from tallyray.invoicing.tax.engine import Jurisdiction, Party, TaxDecision, parse_rate, supply_date
from tallyray.invoicing.tax.vat_ids import (
    EU_MEMBER_STATES,
    VatVerifier,
    Verification,
    check_vat_id,
)

__all__ = [
    "REVERSE_CHARGE_NOTE",
    "EXPORT_NOTE",
    "EuVat",
    "RatePeriod",
    "VatRates",
    "load_vat_rates",
    "packaged_vat_rates",
    "parse_vat_rates",
]

REVERSE_CHARGE_NOTE = (
    "Reverse charge: VAT to be accounted for by the recipient "
    "(Article 196, Council Directive 2006/112/EC)."
)
EXPORT_NOTE = "Export of services outside the EU: not subject to EU VAT"

_ZERO = Decimal(0)
_DATE = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$")
# How an invoice note names who refused a VAT id.
_SOURCE_NAMES = {"vies": "VIES", "static": "the list of checked VAT ids"}


# ---------------------------------------------------------------------------------------------
# The rates table


@dataclass(frozen=True, slots=True)
class RatePeriod:
    """A member state's standard rate (percent) from ``start`` until the next period."""

    start: date
    standard: Decimal


@dataclass(frozen=True, slots=True)
class VatRates:
    """Standard VAT rates of the 27 member states, as dated periods (oldest first).

    ``as_of`` is the day the table was last checked; ``origin`` says where it came from
    (``"packaged"`` or the operator's file), for the evidence on each invoice.
    """

    as_of: date
    source: str
    periods: Mapping[str, tuple[RatePeriod, ...]]
    origin: str = "packaged"

    def rate_on(self, country: str, day: date) -> RatePeriod:
        """The period of ``country``'s standard rate that ``day`` falls in.

        :class:`ConfigError` when the table does not reach back to ``day``: a supply is never
        taxed at a guessed rate.
        """
        periods = self.periods.get(country, ())
        found = [p for p in periods if p.start <= day]
        if not found:
            first = f"starts on {periods[0].start}" if periods else "has no rates"
            message = f"no VAT rate for {country} on {day}: the table for {country} {first}"
            raise ConfigError(message, [Problem(f"rates.{country}", message)])
        return found[-1]


def _date(value: Any) -> date | None:
    if not isinstance(value, str) or not _DATE.match(value):
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        return None


def parse_vat_rates(raw: Any, *, origin: str = "packaged", where: str = "") -> VatRates:
    """A rates table from decoded JSON, or :class:`ConfigError` naming every problem.

    The shape::

        {"as_of": "2025-08-01", "source": "...",
         "rates": {"DE": [{"from": "2007-01-01", "standard": "19"}, ...], ...}}

    All 27 member states (Greece as ``GR``), each with at least one period; ``from`` an ISO
    date (``YYYY-MM-DD``), periods oldest first; ``standard`` a decimal string from 0 to 100;
    an optional ``note`` per period. ``where`` prefixes each problem's path (the file name).
    """
    problems: list[Problem] = []

    def bad(path: str, message: str) -> None:
        problems.append(Problem(f"{where}{path}", message))

    if not isinstance(raw, dict):
        bad("", "a VAT rates table must be a JSON object with as_of, source and rates")
        raise ConfigError.of(problems)
    for name in sorted(set(raw) - {"as_of", "source", "rates"}):
        bad(name, "unknown field (known: as_of, rates, source)")
    as_of = _date(raw.get("as_of"))
    if as_of is None:
        bad("as_of", f"must be a date written YYYY-MM-DD, not {raw.get('as_of')!r}")
    source = raw.get("source")
    if not isinstance(source, str) or not source.strip():
        bad("source", "must say where the rates come from (a non-empty string)")
    table = raw.get("rates")
    periods: dict[str, tuple[RatePeriod, ...]] = {}
    if not isinstance(table, dict):
        bad("rates", "must be a JSON object: member state code → list of rate periods")
        table = {}
    for country in sorted(EU_MEMBER_STATES - set(table)):
        bad(f"rates.{country}", "missing: every member state needs a rate")
    for country, listed in table.items():
        at = f"rates.{country}"
        if country == "EL":
            bad(at, "write Greece as GR (ISO 3166-1); EL is only its VAT-id prefix")
            continue
        if country not in EU_MEMBER_STATES:
            bad(at, f"{country!r} is not an EU member state (ISO 3166-1 code in capitals)")
            continue
        parsed = _periods(listed, f"{where}{at}", problems)
        if parsed:
            periods[country] = parsed
    if problems:
        raise ConfigError.of(problems)
    assert as_of is not None and isinstance(source, str)
    return VatRates(as_of, source, MappingProxyType(periods), origin)


def _periods(listed: Any, at: str, problems: list[Problem]) -> tuple[RatePeriod, ...]:
    if not isinstance(listed, list) or not listed:
        problems.append(Problem(at, 'must be a non-empty list of {"from", "standard"} periods'))
        return ()
    result: list[RatePeriod] = []
    ok = True
    for i, item in enumerate(listed):
        here = f"{at}[{i}]"
        if not isinstance(item, dict):
            problems.append(Problem(here, 'must be an object {"from": ..., "standard": ...}'))
            ok = False
            continue
        for name in sorted(set(item) - {"from", "standard", "note"}):
            problems.append(
                Problem(f"{here}.{name}", "unknown field (known: from, note, standard)")
            )
            ok = False
        start = _date(item.get("from"))
        if start is None:
            message = f"must be a date written YYYY-MM-DD, not {item.get('from')!r}"
            problems.append(Problem(f"{here}.from", message))
            ok = False
        standard: Decimal | None = None
        try:
            standard = parse_rate(item.get("standard"))
        except InvalidInput as error:
            problems.append(Problem(f"{here}.standard", error.message))
            ok = False
        if "note" in item and not isinstance(item["note"], str):
            problems.append(Problem(f"{here}.note", "must be a string"))
            ok = False
        if ok and start is not None and standard is not None:
            if result and start <= result[-1].start:
                problems.append(
                    Problem(
                        f"{here}.from",
                        f"{start} is not after the period before it ({result[-1].start}): "
                        "list periods oldest first, one per date",
                    )
                )
                ok = False
            else:
                result.append(RatePeriod(start, standard))
    return tuple(result) if ok else ()


@cache
def packaged_vat_rates() -> VatRates:
    """The rates table shipped with Tallyray (``eu_vat_rates.json``)."""
    text = resources.files(__package__).joinpath("eu_vat_rates.json").read_text("utf-8")
    return parse_vat_rates(json.loads(text), origin="packaged", where="eu_vat_rates.json:")


def load_vat_rates(path: str | Path) -> VatRates:
    """An operator's rates table from a file (the ``"rates_file"`` config), validated."""
    try:
        text = Path(path).read_text("utf-8")
    except OSError as error:
        message = f"cannot read the VAT rates file {path}: {error.strerror or error}"
        raise ConfigError(message, [Problem(str(path), message)]) from None
    try:
        raw = json.loads(text)
    except ValueError as error:
        message = f"the VAT rates file {path} is not valid JSON: {error}"
        raise ConfigError(message, [Problem(str(path), message)]) from None
    return parse_vat_rates(raw, origin=str(path), where=f"{path}:")


# ---------------------------------------------------------------------------------------------
# The engine


def _country(code: str | None) -> str | None:
    """A party's country in capitals, Greece as GR; ``None`` when unknown."""
    if code is None or not code.strip():
        return None
    code = code.strip().upper()
    return "GR" if code == "EL" else code


def _region(country: str | None, region: str | None) -> str | None:
    if country is None or region is None or not region.strip():
        return None
    region = region.strip().upper()
    return region.removeprefix(f"{country}-")


class EuVat:
    """EU VAT for a seller configured in ``tallyray.json``, with a VAT-id verifier, a rates
    table and the rates of other jurisdictions (``"US-CA"``, ``"GB"``).

    The ``seller`` passed to :meth:`decide` wins; a field it leaves empty (no country, no VAT
    id) is taken from the configured seller, :attr:`seller`.
    """

    def __init__(
        self,
        seller: Party,
        verifier: VatVerifier,
        rates: VatRates,
        jurisdictions: Mapping[str, Jurisdiction] | None = None,
    ) -> None:
        if _country(seller.country) is None:
            raise ValueError("the EU VAT engine needs the seller's country")
        self._seller = seller
        self._verifier = verifier
        self._rates = rates
        self._jurisdictions: Mapping[str, Jurisdiction] = MappingProxyType(
            dict(jurisdictions or {})
        )

    @property
    def seller(self) -> Party:
        """The seller from the configuration."""
        return self._seller

    @property
    def rates(self) -> VatRates:
        return self._rates

    def _seller_for(self, given: Party) -> tuple[str, str | None, str | None]:
        configured = _country(self._seller.country)
        country = _country(given.country) or configured
        assert country is not None
        same = country == configured
        region = _region(country, given.region or (self._seller.region if same else None))
        vat_id = given.vat_id or (self._seller.vat_id if same else None)
        return country, region, vat_id

    def decide(self, seller: Party, buyer: Party, on: int) -> TaxDecision:
        """The tax on a supply from ``seller`` to ``buyer`` on ``on`` (microseconds, UTC)."""
        day = supply_date(on)
        s_country, s_region, s_vat_id = self._seller_for(seller)
        b_country = _country(buyer.country)
        b_region = _region(b_country, buyer.region)
        evidence: dict[str, Any] = {
            "engine": "eu_vat",
            "supply_date": day.isoformat(),
            "seller_country": s_country,
            "buyer_country": b_country,
            "buyer_region": b_region,
        }
        if buyer.tax_exempt:
            evidence["rule"] = "exempt"
            name = "VAT" if s_country in EU_MEMBER_STATES else "Tax"
            note = buyer.exempt_reason or "Tax exempt"
            return TaxDecision("exempt", name, None, _ZERO, note, evidence)
        if s_country not in EU_MEMBER_STATES:
            return self._outside_eu_seller(s_country, s_region, b_country, b_region, evidence)

        if b_country is None or b_country == s_country:
            evidence["rule"] = "buyer_country_unknown" if b_country is None else "domestic"
            if buyer.vat_id and buyer.vat_id.strip():
                evidence["buyer_vat_id"] = check_vat_id(buyer.vat_id, s_country).vat_id
            return self._at_rate("domestic", s_country, day, None, evidence)

        if b_country in EU_MEMBER_STATES:
            if not (buyer.vat_id and buyer.vat_id.strip()):
                evidence["rule"] = "oss_b2c"
                return self._at_rate("oss", b_country, day, None, evidence)
            return self._business_in_eu(b_country, buyer.vat_id, s_vat_id, day, on, evidence)

        found = self._jurisdiction(b_country, b_region)
        if found is not None:
            return self._configured("jurisdiction", *found, evidence)
        evidence["rule"] = "export"
        return TaxDecision("export", "VAT", None, _ZERO, EXPORT_NOTE, evidence)

    def _business_in_eu(
        self,
        b_country: str,
        typed: str,
        s_vat_id: str | None,
        day: date,
        now: int,
        evidence: dict[str, Any],
    ) -> TaxDecision:
        """A buyer in another member state who gave a VAT id: reverse charge only when the id
        is well-formed, belongs to the buyer's country and the verifier confirms it."""
        checked = check_vat_id(typed, b_country)
        vat_id = checked.vat_id
        evidence["seller_vat_id"] = check_vat_id(s_vat_id).vat_id if s_vat_id else None
        evidence["buyer_vat_id"] = vat_id
        if not checked.ok:
            verification = Verification(vat_id, False, "format", now, checked.error)
            rule, note = "vat_id_invalid", f"VAT id {vat_id} is not valid ({checked.error})"
        elif checked.country != b_country:
            detail = f"registered in {checked.country}, not in the buyer's country {b_country}"
            verification = Verification(vat_id, False, "format", now, detail)
            rule = "vat_id_country_mismatch"
            note = f"VAT id {vat_id} is not from the buyer's country ({b_country})"
        else:
            # ``decide`` knows no time but the supply date, so that is the verifier's ``now``;
            # a verifier with a clock of its own may record when it really asked.
            try:
                verification = self._verifier.verify(vat_id, now)
            except OSError as error:  # a verifier should answer None; a network error is that
                verification = Verification(vat_id, None, "unavailable", now, str(error))
            if verification.valid is True:
                evidence["rule"] = "reverse_charge"
                evidence["verification"] = verification.to_json()
                return TaxDecision(
                    "intra_eu_reverse_charge",
                    "VAT",
                    b_country,
                    _ZERO,
                    REVERSE_CHARGE_NOTE,
                    evidence,
                )
            if verification.valid is False:
                who = _SOURCE_NAMES.get(verification.source, verification.source)
                rule, note = (
                    "vat_id_not_registered",
                    f"VAT id {vat_id} is not valid according to {who}",
                )
            else:
                rule, note = "vat_id_unverified", f"VAT id {vat_id} could not be verified"
        evidence["rule"] = rule
        evidence["verification"] = verification.to_json()
        return self._at_rate("oss", b_country, day, f"{note}; VAT charged", evidence)

    def _at_rate(
        self, kind: str, country: str, day: date, note: str | None, evidence: dict[str, Any]
    ) -> TaxDecision:
        period = self._rates.rate_on(country, day)
        evidence["rates_as_of"] = self._rates.as_of.isoformat()
        evidence["rates_origin"] = self._rates.origin
        evidence["rate_from"] = period.start.isoformat()
        return TaxDecision(kind, "VAT", country, period.standard, note, evidence)

    def _jurisdiction(
        self, country: str | None, region: str | None
    ) -> tuple[str, Jurisdiction] | None:
        """The configured rate for ``COUNTRY-REGION``, else for ``COUNTRY``."""
        if country is None:
            return None
        keys = ([f"{country}-{region}"] if region else []) + [country]
        for key in keys:
            if key in self._jurisdictions:
                return key, self._jurisdictions[key]
        return None

    @staticmethod
    def _configured(
        kind: str, key: str, found: Jurisdiction, evidence: dict[str, Any]
    ) -> TaxDecision:
        evidence["rule"] = "jurisdiction"
        evidence["jurisdiction_key"] = key
        return TaxDecision(kind, found.name, key, found.rate, None, evidence)

    def _outside_eu_seller(
        self,
        s_country: str,
        s_region: str | None,
        b_country: str | None,
        b_region: str | None,
        evidence: dict[str, Any],
    ) -> TaxDecision:
        """A seller outside the EU: only the configured jurisdictions apply. A buyer in the
        seller's country (or of unknown country) is domestic; no configured rate, no tax."""
        evidence["seller_outside_eu"] = True
        if b_country is None or b_country == s_country:
            found = self._jurisdiction(s_country, b_region if b_country else s_region)
            kind = "domestic"
        else:
            found = self._jurisdiction(b_country, b_region)
            kind = "jurisdiction"
        if found is not None:
            return self._configured(kind, *found, evidence)
        evidence["rule"] = "no_rate_configured"
        return TaxDecision("none", "Tax", None, _ZERO, None, evidence)
