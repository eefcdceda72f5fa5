"""The "tax" config block and the VAT rates file, validated (tallyray/invoicing/tax/config.py,
eu_vat.py): every problem is reported at once, each at its JSON path."""

from __future__ import annotations

import copy
import json
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from tallyray.errors import ConfigError, InvalidInput
from tallyray.invoicing.tax import (
    EuVat,
    Jurisdiction,
    NoTax,
    Party,
    StaticVerifier,
    TaxConfig,
    UnavailableVerifier,
    build_engine,
    load_vat_rates,
    packaged_vat_rates,
    parse_tax_config,
    parse_vat_rates,
)

D = Decimal
Doc = dict[str, Any]
ON = 1_756_684_800_000_000  # 2025-09-01T00:00:00Z


def base() -> Doc:
    """A valid "tax" block; each bad case below breaks one thing in it."""
    return {
        "engine": "eu_vat",
        "seller_country": "DE",
        "seller_vat_id": "DE 136 695 976",
        "rates_file": None,
        "jurisdictions": {
            "US-CA": {"name": "Sales tax", "rate": "7.25"},
            "GB": {"name": "VAT", "rate": "20"},
        },
    }


def problems_of(doc: Any, where: str = "tax") -> dict[str, str]:
    with pytest.raises(ConfigError) as caught:
        parse_tax_config(doc, where)
    error = caught.value
    assert isinstance(error, InvalidInput)
    n = len(error.problems)
    assert error.message == f"invalid configuration: {n} problem{'' if n == 1 else 's'}"
    return {p.where: p.message for p in error.problems}


def test_the_base_block_is_valid() -> None:
    config = parse_tax_config(base())
    assert config == TaxConfig(
        engine="eu_vat",
        seller_country="DE",
        seller_vat_id="DE136695976",
        rates_file=None,
        jurisdictions={
            "US-CA": Jurisdiction("Sales tax", D("7.25")),
            "GB": Jurisdiction("VAT", D("20")),
        },
    )
    assert config.seller == Party("DE", vat_id="DE136695976")


@pytest.mark.parametrize(
    ("doc", "engine"),
    [
        pytest.param(None, "none", id="no-block-no-tax"),
        pytest.param({"engine": "none"}, "none", id="engine-none"),
        # The seller's details may stay with engine none (invoices print them).
        pytest.param(
            {"engine": "none", "seller_country": "DE", "seller_vat_id": "DE136695976"},
            "none",
            id="engine-none-with-seller",
        ),
        # Greece is GR, its VAT id EL; one typed without prefix gets EL.
        pytest.param(
            {"engine": "eu_vat", "seller_country": "GR", "seller_vat_id": "094259216"},
            "eu_vat",
            id="greek-seller",
        ),
        # A seller outside the EU needs no VAT id; one stdnum knows is checked (GB here).
        pytest.param({"engine": "eu_vat", "seller_country": "US"}, "eu_vat", id="us-seller"),
        pytest.param(
            {"engine": "eu_vat", "seller_country": "GB", "seller_vat_id": "GB 980 7806 84"},
            "eu_vat",
            id="gb-seller",
        ),
        # A seller outside the EU may configure EU countries as jurisdictions.
        pytest.param(
            {
                "engine": "eu_vat",
                "seller_country": "US",
                "jurisdictions": {"DE": {"rate": "19"}},
            },
            "eu_vat",
            id="us-seller-eu-jurisdiction",
        ),
    ],
)
def test_valid_blocks(doc: Doc | None, engine: str) -> None:
    assert parse_tax_config(doc).engine == engine


def test_seller_vat_ids_are_normalized() -> None:
    greek = {"engine": "eu_vat", "seller_country": "GR", "seller_vat_id": "094259216"}
    assert parse_tax_config(greek).seller_vat_id == "EL094259216"
    british = {"engine": "eu_vat", "seller_country": "GB", "seller_vat_id": "GB 980 7806 84"}
    assert parse_tax_config(british).seller_vat_id == "980780684"
    american = {"engine": "eu_vat", "seller_country": "US", "jurisdictions": {"DE": {"rate": "19"}}}
    assert parse_tax_config(american).jurisdictions["DE"] == Jurisdiction("Tax", D(19))


def changed(path: str, value: Any) -> Doc:
    """The base block with one dotted path (``jurisdictions/GB/rate``) set, or deleted (``...``)."""
    doc = copy.deepcopy(base())
    *parents, last = path.split("/")
    target = doc
    for name in parents:
        target = target[name]
    if value is ...:
        del target[last]
    else:
        target[last] = value
    return doc


# Each row breaks one field; the problem is reported at that field's path ("tax." + path).
@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        pytest.param("vat", "DE", "unknown field", id="unknown-field"),
        pytest.param("engine", ..., "must be one of 'eu_vat', 'none'", id="engine-missing"),
        pytest.param("engine", "avalara", "not 'avalara'", id="engine-unknown"),
        pytest.param("seller_country", ..., "is required", id="country-missing"),
        pytest.param("seller_country", "Germany", "ISO 3166-1 alpha-2", id="country-name"),
        pytest.param("seller_country", "de", "capitals: 'DE'", id="country-lower-case"),
        pytest.param("seller_country", "XX", "not 'XX'", id="country-unknown"),
        pytest.param("seller_country", "EU", "not 'EU'", id="country-eu-is-not-one"),
        pytest.param("seller_country", 49, "not 49", id="country-number"),
        pytest.param("seller_vat_id", ..., "reverse-charge invoices", id="vat-id-missing"),
        # DE136695976 with its last digit changed.
        pytest.param("seller_vat_id", "DE136695978",
                     "DE136695978 is not a valid VAT id (wrong check digit)",
                     id="vat-id-check-digit"),
        pytest.param("seller_vat_id", "FR40303265045",
                     "not a VAT id of DE (it should start with DE)", id="vat-id-other-country"),
        pytest.param("seller_vat_id", 136695976, "not 136695976", id="vat-id-number"),
        pytest.param("rates_file", "", "a file path or null", id="rates-file-empty"),
        pytest.param("rates_file", 5, "a file path or null", id="rates-file-number"),
        pytest.param("jurisdictions", [], "must be a JSON object", id="jurisdictions-list"),
        pytest.param("jurisdictions/usa-ca", {"rate": "1"}, "('US-CA')", id="key-lower-case"),
        pytest.param("jurisdictions/US-", {"rate": "1"}, "('US-CA')", id="key-empty-region"),
        pytest.param("jurisdictions/XX-CA", {"rate": "1"}, "not 'XX'", id="key-unknown-country"),
        pytest.param("jurisdictions/EL", {"rate": "24"}, "write Greece as GR", id="key-el"),
        # An EU seller's EU rates come from the rates table, not from here.
        pytest.param("jurisdictions/FR", {"rate": "20"}, "EU member state", id="key-eu-country"),
        pytest.param("jurisdictions/GB", "20", "must be an object", id="spec-string"),
        pytest.param("jurisdictions/GB/kind", "vat", "unknown field", id="spec-unknown-field"),
        pytest.param("jurisdictions/GB/name", "", "non-empty string", id="name-empty"),
        pytest.param("jurisdictions/GB/rate", ..., "not None", id="rate-missing"),
        # Rates are strings, like amounts: a JSON number is refused, even a whole one.
        pytest.param("jurisdictions/GB/rate", 20,
                     'not the JSON number 20: write "20"', id="rate-int"),
        pytest.param("jurisdictions/US-CA/rate", 7.25,
                     'not the JSON number 7.25: write "7.25"', id="rate-float"),
        pytest.param("jurisdictions/GB/rate", "-1", 'from "0" to "100"', id="rate-negative"),
        pytest.param("jurisdictions/GB/rate", "101", 'from "0" to "100"', id="rate-over-100"),
        pytest.param("jurisdictions/GB/rate", "20%", "not '20%'", id="rate-percent-sign"),
        pytest.param("jurisdictions/GB/rate", "1e1", "not '1e1'", id="rate-exponent"),
    ],
)  # fmt: skip
def test_bad_tax_blocks(path: str, value: Any, message: str) -> None:
    problems = problems_of(changed(path, value))
    where = "tax." + path.replace("/", ".")
    assert where in problems, problems
    assert message in problems[where]


@pytest.mark.parametrize(
    ("doc", "where", "message"),
    [
        pytest.param(["eu_vat"], "tax", "must be a JSON object", id="not-an-object"),
        # Settings that engine "none" would silently ignore are errors instead.
        pytest.param(
            {"engine": "none", "rates_file": "rates.json"},
            "tax.rates_file",
            "no effect with engine 'none'",
            id="none-with-rates-file",
        ),
        pytest.param(
            {"engine": "none", "jurisdictions": {"GB": {"rate": "20"}}},
            "tax.jurisdictions",
            "no effect with engine 'none'",
            id="none-with-jurisdictions",
        ),
        pytest.param(
            {"engine": "eu_vat", "seller_country": "GB", "seller_vat_id": "GB980780685"},
            "tax.seller_vat_id",
            "'GB980780685' is not a valid VAT id of GB",
            id="gb-seller-bad-vat-id",
        ),
        pytest.param(
            {"engine": "eu_vat", "seller_country": "EL", "seller_vat_id": "EL094259216"},
            "tax.seller_country",
            "write Greece as GR",
            id="seller-country-el",
        ),
    ],
)
def test_bad_tax_blocks_of_other_shapes(doc: Any, where: str, message: str) -> None:
    problems = problems_of(doc)
    assert message in problems[where], problems


def test_every_problem_is_reported_at_once_under_the_given_path() -> None:
    doc = {
        "engine": "eu_vat",
        "seller_country": "de",
        "jurisdictions": {"GB": {"rate": 20}, "FR": {"rate": "20"}},
        "extra": True,
    }
    assert sorted(problems_of(doc, where="settings.tax")) == [
        "settings.tax.extra",
        "settings.tax.jurisdictions.GB.rate",
        "settings.tax.seller_country",
    ]
    # With the country unreadable, neither the VAT id nor the FR key can be judged.


# ---------------------------------------------------------------------------------------------
# Building the engine


def test_build_engine() -> None:
    assert isinstance(build_engine(parse_tax_config(None)), NoTax)
    tax = build_engine(parse_tax_config(base()))
    assert isinstance(tax, EuVat)
    assert tax.seller == Party("DE", vat_id="DE136695976")
    assert tax.rates is packaged_vat_rates()
    # No verifier: nothing is confirmed, so nothing is reverse charged.
    decision = tax.decide(tax.seller, Party("FR", vat_id="FR40303265045"), ON)
    assert decision.kind == "oss"
    assert decision.evidence["verification"]["source"] == "unavailable"
    verified = build_engine(parse_tax_config(base()), StaticVerifier({"FR40303265045": True}))
    assert verified.decide(Party("DE"), Party("FR", vat_id="FR40303265045"), ON).kind == (
        "intra_eu_reverse_charge"
    )


def test_unparsed_config_is_refused() -> None:
    with pytest.raises(ConfigError, match="parse it first"):
        build_engine(TaxConfig(engine="eu_vat"), UnavailableVerifier())


# ---------------------------------------------------------------------------------------------
# The rates file


def packaged_doc() -> Doc:
    path = Path(__file__).resolve().parents[2] / "tallyray/invoicing/tax/eu_vat_rates.json"
    doc: Doc = json.loads(path.read_text("utf-8"))
    return doc


def test_an_operators_rates_file_replaces_the_packaged_one(tmp_path: Path) -> None:
    doc = packaged_doc()
    doc["as_of"] = "2026-01-01"
    doc["rates"]["FR"].append({"from": "2026-01-01", "standard": "21.2", "note": "made up"})
    (tmp_path / "rates.json").write_text(json.dumps(doc), "utf-8")
    config = parse_tax_config(base() | {"rates_file": "rates.json"})
    tax = build_engine(config, base_dir=tmp_path)
    decision = tax.decide(Party("DE"), Party("FR"), 1_767_225_600_000_000)  # 2026-01-01
    assert decision.rate == D("21.2")
    assert decision.evidence["rates_as_of"] == "2026-01-01"
    assert decision.evidence["rates_origin"] == str(tmp_path / "rates.json")
    assert load_vat_rates(tmp_path / "rates.json").as_of == date(2026, 1, 1)


@pytest.mark.parametrize(
    ("content", "where", "message"),
    [
        pytest.param(None, "", "cannot read the VAT rates file", id="missing-file"),
        pytest.param("{", "", "not valid JSON", id="not-json"),
        pytest.param('{"as_of": "2025-08-01"}', ":source", "where the rates come from",
                     id="bad-content"),
    ],
)  # fmt: skip
def test_rates_file_errors_name_the_file(
    tmp_path: Path, content: str | None, where: str, message: str
) -> None:
    path = tmp_path / "rates.json"
    if content is not None:
        path.write_text(content, "utf-8")
    with pytest.raises(ConfigError) as caught:
        load_vat_rates(path)
    problems = {p.where: p.message for p in caught.value.problems}
    assert message in problems[f"{path}{where}"], problems


def rates_changed(path: str, value: Any) -> Doc:
    """The packaged table with one path (``rates/FR/0/standard``) set, deleted (``...``), or
    with ``value`` appended to a list (``rates/FI/+``)."""
    doc = packaged_doc()
    *parents, last = path.split("/")
    target: Any = doc
    for name in parents:
        target = target[int(name)] if isinstance(target, list) else target[name]
    key: Any = int(last) if isinstance(target, list) and last != "+" else last
    if value is ...:
        del target[key]
    elif last == "+":
        target.append(value)
    else:
        target[key] = value
    return doc


FR_0 = "rates.FR[0]"
GB_2021 = [{"from": "2021-07-01", "standard": "20"}]


@pytest.mark.parametrize(
    ("path", "value", "where", "message"),
    [
        pytest.param("as_of", ..., "as_of", "YYYY-MM-DD", id="as-of-missing"),
        pytest.param("as_of", "2025-8-1", "as_of", "not '2025-8-1'", id="as-of-short"),
        # Python 3.11 would read "20250801" as a date; the file format does not.
        pytest.param("as_of", "20250801", "as_of", "not '20250801'", id="as-of-basic-format"),
        pytest.param("source", "", "source", "where the rates come from", id="source-empty"),
        pytest.param("version", 2, "version", "unknown field", id="unknown-field"),
        pytest.param("rates", [], "rates", "must be a JSON object", id="rates-list"),
        pytest.param("rates/DE", ..., "rates.DE", "every member state needs a rate",
                     id="member-missing"),
        pytest.param("rates/GB", GB_2021, "rates.GB", "not an EU member state", id="not-a-member"),
        pytest.param("rates/EL", GB_2021, "rates.EL", "write Greece as GR", id="greece-as-el"),
        pytest.param("rates/FR", [], "rates.FR", "non-empty list", id="no-periods"),
        pytest.param("rates/FR/0", "20", FR_0, "must be an object", id="period-string"),
        pytest.param("rates/FR/0/since", "2021-07-01", f"{FR_0}.since", "unknown field",
                     id="period-unknown-field"),
        pytest.param("rates/FR/0/note", 1, f"{FR_0}.note", "must be a string", id="note-number"),
        pytest.param("rates/FR/0/standard", ..., f"{FR_0}.standard", "not None",
                     id="rate-missing"),
        pytest.param("rates/FR/0/standard", 20, f"{FR_0}.standard", "not the JSON number 20",
                     id="rate-number"),
        pytest.param("rates/FR/0/standard", "20,0", f"{FR_0}.standard", "not '20,0'",
                     id="rate-decimal-comma"),
        pytest.param("rates/FR/0/standard", "100.5", f"{FR_0}.standard", 'from "0" to "100"',
                     id="rate-over-100"),
        pytest.param("rates/FR/0/standard", "-20", f"{FR_0}.standard", 'from "0" to "100"',
                     id="rate-negative"),
        pytest.param("rates/FR/0/from", ..., f"{FR_0}.from", "YYYY-MM-DD", id="from-missing"),
        pytest.param("rates/FR/0/from", "2021-02-30", f"{FR_0}.from", "not '2021-02-30'",
                     id="from-not-a-day"),
        # Finland has two periods (2013-01-01, 2024-09-01); a third must come after them.
        pytest.param("rates/FI/+", {"from": "2020-01-01", "standard": "24"}, "rates.FI[2].from",
                     "list periods oldest first", id="not-sorted"),
        pytest.param("rates/FI/+", {"from": "2024-09-01", "standard": "26"}, "rates.FI[2].from",
                     "one per date", id="same-date-twice"),
    ],
)  # fmt: skip
def test_bad_rates_tables(path: str, value: Any, where: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_vat_rates(rates_changed(path, value), where="rates.json:")
    problems = {p.where: p.message for p in caught.value.problems}
    assert message in problems[f"rates.json:{where}"], problems


def test_a_rates_table_must_be_an_object() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_vat_rates(["DE", "19"])
    assert "must be a JSON object" in caught.value.problems[0].message


def test_the_packaged_table_parses() -> None:
    rates = parse_vat_rates(packaged_doc())
    assert rates == packaged_vat_rates()
    assert rates.rate_on("DE", date(2025, 1, 1)).standard == D(19)
