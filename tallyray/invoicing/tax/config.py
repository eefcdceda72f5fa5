"""The ``"tax"`` block of ``tallyray.json``, validated, and the engine it describes.

::

    "tax": {"engine": "eu_vat", "seller_country": "DE", "seller_vat_id": "DE136695976",
            "rates_file": null,
            "jurisdictions": {"US-CA": {"name": "Sales tax", "rate": "7.25"},
                              "GB": {"name": "VAT", "rate": "20"}}}

:func:`parse_tax_config` reads no files and reports every problem at once, each at its JSON
path (``tax.jurisdictions.US-CA.rate``). :func:`build_engine` makes the engine; it reads the
operator's ``rates_file`` if there is one, once, at start-up.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from types import MappingProxyType
from typing import Any

from babel import Locale
from stdnum import exceptions as stdnum_errors
from stdnum.util import get_cc_module

from tallyray.errors import ConfigError, InvalidInput, Problem
from tallyray.invoicing.tax.engine import Jurisdiction, NoTax, Party, TaxEngine, parse_rate
from tallyray.invoicing.tax.eu_vat import EuVat, VatRates, load_vat_rates, packaged_vat_rates
from tallyray.invoicing.tax.vat_ids import (
    EU_MEMBER_STATES,
    StaticVerifier,
    UnavailableVerifier,
    VatVerifier,
    check_vat_id,
    vat_prefix,
)

__all__ = ["ENGINES", "TaxConfig", "build_engine", "country_problem", "parse_tax_config"]

#: The values of ``"engine"``.
ENGINES = ("eu_vat", "none")

_FIELDS = frozenset(
    {"engine", "seller_country", "seller_vat_id", "rates_file", "jurisdictions", "vat_id_checks"}
)
_JURISDICTION_FIELDS = frozenset({"name", "rate"})
_JURISDICTION_KEY = re.compile(r"^([A-Z]{2})(?:-([A-Z0-9]{1,3}))?$")
# CLDR territory codes that are not countries: regions, groupings, pseudo-locales.
_NOT_COUNTRIES = frozenset({"EU", "EZ", "UN", "QO", "ZZ", "XA", "XB"})


@dataclass(frozen=True, slots=True)
class TaxConfig:
    """The ``"tax"`` block, validated. ``seller_vat_id`` is normalized (``DE136695976``)."""

    engine: str = "none"
    seller_country: str | None = None
    seller_vat_id: str | None = None
    rates_file: str | None = None
    jurisdictions: Mapping[str, Jurisdiction] = field(default_factory=lambda: MappingProxyType({}))
    vat_id_checks: Mapping[str, bool] = field(default_factory=lambda: MappingProxyType({}))
    """VAT ids the operator has checked (in VIES, say) and the answer: the verifier used
    while the online check cannot be reached. An id not listed is not verified."""

    @property
    def seller(self) -> Party:
        return Party(self.seller_country, vat_id=self.seller_vat_id)


@cache
def _countries() -> frozenset[str]:
    """ISO 3166-1 alpha-2 codes, from Babel's copy of the CLDR (as currencies are)."""
    territories = Locale.parse("en").territories
    return (
        frozenset(
            code
            for code in territories
            if isinstance(code, str) and len(code) == 2 and code.isalpha()
        )
        - _NOT_COUNTRIES
    )


def country_problem(value: Any) -> str | None:
    """What is wrong with ``value`` as an ISO 3166-1 alpha-2 country code, if anything."""
    if value == "EL":
        return "write Greece as GR (ISO 3166-1); EL is only its VAT-id prefix"
    if isinstance(value, str) and value.upper() in _countries() and value != value.upper():
        return f"write country codes in capitals: {value.upper()!r}"
    if not isinstance(value, str) or value not in _countries():
        return f"must be an ISO 3166-1 alpha-2 country code such as 'DE', not {value!r}"
    return None


def parse_tax_config(raw: Mapping[str, Any] | None, where: str = "tax") -> TaxConfig:
    """The ``"tax"`` block from decoded JSON (``None``: no tax), or :class:`ConfigError`
    listing every problem with its JSON path."""
    if raw is None:
        return TaxConfig()
    problems: list[Problem] = []

    def bad(name: str, message: str) -> None:
        problems.append(Problem(f"{where}.{name}" if name else where, message))

    if not isinstance(raw, dict):
        bad("", f"must be a JSON object, not {type(raw).__name__}")
        raise ConfigError.of(problems)
    for name in sorted(set(raw) - _FIELDS):
        bad(name, f"unknown field (known: {', '.join(sorted(_FIELDS))})")

    engine = raw.get("engine")
    if engine not in ENGINES:
        bad("engine", f"must be one of {', '.join(map(repr, ENGINES))}, not {engine!r}")

    country = raw.get("seller_country")
    if country is None:
        if engine == "eu_vat":
            bad("seller_country", "is required with engine 'eu_vat': where the seller is")
    elif (problem := country_problem(country)) is not None:
        bad("seller_country", problem)
        country = None

    vat_id = _seller_vat_id(raw.get("seller_vat_id"), country, engine, bad)

    rates_file = raw.get("rates_file")
    if rates_file is not None:
        if not isinstance(rates_file, str) or not rates_file.strip():
            bad("rates_file", f"must be a file path or null, not {rates_file!r}")
            rates_file = None
        elif engine == "none":
            bad("rates_file", "has no effect with engine 'none'")

    jurisdictions = _jurisdictions(raw.get("jurisdictions"), engine, country, where, problems)

    checks = raw.get("vat_id_checks", {})
    if not isinstance(checks, dict) or not all(
        isinstance(k, str) and isinstance(v, bool) for k, v in checks.items()
    ):
        bad("vat_id_checks", 'must map VAT ids to true or false: {"FR40303265045": true}')
        checks = {}
    for key in checks:
        if not check_vat_id(key).ok:
            bad(f"vat_id_checks.{key}", f"{key!r} is not a valid VAT id")

    if problems:
        raise ConfigError.of(problems)
    assert isinstance(engine, str)
    return TaxConfig(
        engine=engine,
        seller_country=country,
        seller_vat_id=vat_id,
        rates_file=rates_file,
        jurisdictions=MappingProxyType(jurisdictions),
        vat_id_checks=MappingProxyType(dict(checks)),
    )


def _seller_vat_id(
    value: Any, country: str | None, engine: Any, bad: Callable[[str, str], None]
) -> str | None:
    """The seller's VAT id, normalized: an EU seller's must pass stdnum's check and carry its
    country's prefix; another country's is checked when stdnum knows its format."""
    in_eu = country in EU_MEMBER_STATES
    if value is None:
        if engine == "eu_vat" and in_eu:
            bad(
                "seller_vat_id",
                "is required for a seller in the EU: reverse-charge invoices must carry it",
            )
        return None
    if not isinstance(value, str) or not value.strip():
        bad("seller_vat_id", f"must be a VAT id such as 'DE136695976', not {value!r}")
        return None
    if country is None:
        return value.strip()
    if in_eu:
        checked = check_vat_id(value, country)
        if not checked.ok:
            bad("seller_vat_id", f"{checked.vat_id} is not a valid VAT id ({checked.error})")
            return None
        if checked.country != country:
            bad(
                "seller_vat_id",
                f"{checked.vat_id} is not a VAT id of {country} "
                f"(it should start with {vat_prefix(country)})",
            )
            return None
        return checked.vat_id
    module = get_cc_module(country.lower(), "vat")
    if module is None:
        return value.strip()
    try:
        return str(module.validate(value))
    except stdnum_errors.ValidationError as error:
        bad("seller_vat_id", f"{value!r} is not a valid VAT id of {country}: {error}")
        return None


def _jurisdictions(
    raw: Any, engine: Any, seller_country: str | None, where: str, problems: list[Problem]
) -> dict[str, Jurisdiction]:
    at = f"{where}.jurisdictions"
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        problems.append(Problem(at, "must be a JSON object: 'COUNTRY' or 'COUNTRY-REGION' → rate"))
        return {}
    if engine == "none" and raw:
        problems.append(Problem(at, "has no effect with engine 'none'"))
    result: dict[str, Jurisdiction] = {}
    for key, spec in raw.items():
        here = f"{at}.{key}"
        match = _JURISDICTION_KEY.match(key)
        if match is None:
            problems.append(
                Problem(here, "a key is a country ('GB') or a country and region ('US-CA')")
            )
            continue
        if (problem := country_problem(match.group(1))) is not None:
            problems.append(Problem(here, problem))
            continue
        if match.group(1) in EU_MEMBER_STATES and seller_country in EU_MEMBER_STATES:
            problems.append(
                Problem(
                    here,
                    f"{match.group(1)} is an EU member state: its VAT comes from the rates "
                    "table (change it with rates_file)",
                )
            )
            continue
        if not isinstance(spec, dict):
            problems.append(Problem(here, 'must be an object {"name": ..., "rate": "..."}'))
            continue
        for name in sorted(set(spec) - _JURISDICTION_FIELDS):
            problems.append(Problem(f"{here}.{name}", "unknown field (known: name, rate)"))
        name = spec.get("name", "Tax")
        if not isinstance(name, str) or not name.strip():
            problems.append(Problem(f"{here}.name", f"must be a non-empty string, not {name!r}"))
            continue
        try:
            rate = parse_rate(spec.get("rate"))
        except InvalidInput as error:
            problems.append(Problem(f"{here}.rate", error.message))
            continue
        result[key] = Jurisdiction(name.strip(), rate)
    return result


def build_engine(
    config: TaxConfig,
    verifier: VatVerifier | None = None,
    *,
    rates: VatRates | None = None,
    base_dir: str | Path | None = None,
) -> TaxEngine:
    """The engine the configuration describes.

    ``verifier`` checks buyers' VAT ids; without one, the operator's ``vat_id_checks`` (a
    :class:`StaticVerifier`) or else :class:`UnavailableVerifier` (no id is ever confirmed,
    so no reverse charge). ``rates`` replaces the table; otherwise the
    ``rates_file`` (relative to ``base_dir``, the directory of ``tallyray.json``) or the
    packaged table.
    """
    if config.engine == "none":
        return NoTax()
    if config.engine != "eu_vat" or config.seller_country is None:
        raise ConfigError(f"cannot build a tax engine from {config!r}: parse it first")
    if rates is None:
        if config.rates_file is None:
            rates = packaged_vat_rates()
        else:
            path = Path(config.rates_file)
            if base_dir is not None and not path.is_absolute():
                path = Path(base_dir) / path
            rates = load_vat_rates(path)
    return EuVat(
        seller=config.seller,
        verifier=verifier
        if verifier is not None
        else StaticVerifier(config.vat_id_checks)
        if config.vat_id_checks
        else UnavailableVerifier(),
        rates=rates,
        jurisdictions=config.jurisdictions,
    )
