"""The tax engine: EU VAT decisions, dated rates, VAT ids and verifiers (tallyray/invoicing/tax).

The seller in every EU case is a German company, DE136695976. The VAT ids below are real
examples that pass python-stdnum's format and check-digit tests (from its documentation);
whether they are registered is up to each test's verifier.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal, localcontext

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tallyray.errors import ConfigError
from tallyray.invoicing.tax import (
    EU_MEMBER_STATES,
    EXPORT_NOTE,
    REVERSE_CHARGE_NOTE,
    EuVat,
    Jurisdiction,
    NoTax,
    Party,
    StaticVerifier,
    TaxDecision,
    UnavailableVerifier,
    VatVerifier,
    Verification,
    check_vat_id,
    packaged_vat_rates,
    supply_date,
)
from tallyray.pricing.money import PRICING_CONTEXT

D = Decimal
SELLER = Party("DE", vat_id="DE136695976")
JURISDICTIONS = {
    "US-CA": Jurisdiction("Sales tax", D("7.25")),
    "GB": Jurisdiction("VAT", D("20")),
}
# Registered according to the test verifier; anything else it does not know.
REGISTERED = {
    "FR40303265045": True,
    "EL094259216": True,
    "ATU13585627": False,
}


def at(text: str) -> int:
    """``"2025-01-01"`` or ``"2024-08-31T23:59:59.999999"`` (UTC) → microseconds since epoch."""
    moment = datetime.fromisoformat(text).replace(tzinfo=UTC)
    return (moment - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)


ON = at("2025-09-01")


class Recording:
    """A verifier that remembers what it was asked, answering like another one."""

    def __init__(self, inner: VatVerifier) -> None:
        self.inner = inner
        self.asked: list[str] = []

    def verify(self, vat_id: str, now: int) -> Verification:
        self.asked.append(vat_id)
        return self.inner.verify(vat_id, now)


def engine(verifier: VatVerifier | None = None) -> EuVat:
    return EuVat(
        SELLER,
        verifier if verifier is not None else StaticVerifier(REGISTERED),
        packaged_vat_rates(),
        JURISDICTIONS,
    )


# ---------------------------------------------------------------------------------------------
# The decision table


@pytest.mark.parametrize(
    ("buyer", "kind", "jurisdiction", "rate", "note", "rule"),
    [
        # Germany's standard rate, whether or not the buyer is a business.
        pytest.param(Party("DE"), "domestic", "DE", "19", None, "domestic", id="domestic-b2c"),
        pytest.param(
            Party("DE", vat_id="DE 123456788"),
            "domestic", "DE", "19", None, "domestic",
            id="domestic-b2b",
        ),
        # Verified French business: the buyer accounts for the VAT.
        pytest.param(
            Party("FR", vat_id="FR40303265045"),
            "intra_eu_reverse_charge", "FR", "0", REVERSE_CHARGE_NOTE, "reverse_charge",
            id="intra-eu-b2b-verified",
        ),
        # Last digit changed: stdnum's check digit fails, so no reverse charge; French VAT.
        pytest.param(
            Party("FR", vat_id="FR40303265046"),
            "oss", "FR", "20",
            "VAT id FR40303265046 is not valid (wrong check digit); VAT charged",
            "vat_id_invalid",
            id="intra-eu-b2b-bad-check-digit",
        ),
        pytest.param(
            Party("FR", vat_id="FR4030326504"),
            "oss", "FR", "20",
            "VAT id FR4030326504 is not valid (wrong length); VAT charged",
            "vat_id_invalid",
            id="intra-eu-b2b-wrong-length",
        ),
        # A valid German id given by a French buyer: it is not the buyer's.
        pytest.param(
            Party("FR", vat_id="DE136695976"),
            "oss", "FR", "20",
            "VAT id DE136695976 is not from the buyer's country (FR); VAT charged",
            "vat_id_country_mismatch",
            id="intra-eu-b2b-prefix-of-another-country",
        ),
        # Well-formed, but the verifier says it is not registered.
        pytest.param(
            Party("AT", vat_id="ATU13585627"),
            "oss", "AT", "20",
            "VAT id ATU13585627 is not valid according to the list of checked VAT ids; "
            "VAT charged",
            "vat_id_not_registered",
            id="intra-eu-b2b-verifier-says-invalid",
        ),
        # Well-formed, but the verifier does not know it: never a silent reverse charge.
        pytest.param(
            Party("IT", vat_id="IT00743110157"),
            "oss", "IT", "22",
            "VAT id IT00743110157 could not be verified; VAT charged",
            "vat_id_unverified",
            id="intra-eu-b2b-verifier-does-not-know",
        ),
        # Consumers in other member states pay their own country's rate (OSS).
        pytest.param(Party("FR"), "oss", "FR", "20", None, "oss_b2c", id="b2c-fr-20"),
        pytest.param(Party("HU"), "oss", "HU", "27", None, "oss_b2c", id="b2c-hu-27"),
        pytest.param(Party("LU"), "oss", "LU", "17", None, "oss_b2c", id="b2c-lu-17"),
        pytest.param(Party("FI"), "oss", "FI", "25.5", None, "oss_b2c", id="b2c-fi-25.5"),
        pytest.param(Party("GR"), "oss", "GR", "24", None, "oss_b2c", id="b2c-gr-24"),
        pytest.param(Party("FR", vat_id="  "), "oss", "FR", "20", None, "oss_b2c", id="blank-id"),
        # Greece: VAT ids start with EL; GR typed by the customer is read as EL.
        pytest.param(
            Party("GR", vat_id="EL 094259216"),
            "intra_eu_reverse_charge", "GR", "0", REVERSE_CHARGE_NOTE, "reverse_charge",
            id="greece-el-prefix",
        ),
        pytest.param(
            Party("GR", vat_id="GR094259216"),
            "intra_eu_reverse_charge", "GR", "0", REVERSE_CHARGE_NOTE, "reverse_charge",
            id="greece-gr-prefix-read-as-el",
        ),
        pytest.param(
            Party("GR", vat_id="094259216"),
            "intra_eu_reverse_charge", "GR", "0", REVERSE_CHARGE_NOTE, "reverse_charge",
            id="greece-no-prefix-gets-el",
        ),
        pytest.param(
            Party("EL", vat_id="EL094259216"),
            "intra_eu_reverse_charge", "GR", "0", REVERSE_CHARGE_NOTE, "reverse_charge",
            id="greece-country-written-el",
        ),
        # A French id typed without its prefix gets the buyer's.
        pytest.param(
            Party("fr", vat_id="40 303 265 045"),
            "intra_eu_reverse_charge", "FR", "0", REVERSE_CHARGE_NOTE, "reverse_charge",
            id="no-prefix-lower-case-country",
        ),
        # Outside the EU: no EU VAT, unless a rate is configured for the place.
        pytest.param(Party("US"), "export", None, "0", EXPORT_NOTE, "export", id="export-us"),
        pytest.param(
            Party("US", region="NY"), "export", None, "0", EXPORT_NOTE, "export", id="export-us-ny"
        ),
        pytest.param(
            Party("US", region="CA"),
            "jurisdiction", "US-CA", "7.25", None, "jurisdiction",
            id="configured-us-ca",
        ),
        pytest.param(
            Party("US", region="US-CA"),
            "jurisdiction", "US-CA", "7.25", None, "jurisdiction",
            id="configured-us-ca-region-written-in-full",
        ),
        pytest.param(
            Party("GB", region="ENG"),
            "jurisdiction", "GB", "20", None, "jurisdiction",
            id="configured-gb-country-when-no-region-rate",
        ),
        # Exempt buyers pay nothing, wherever they are; the reason is printed.
        pytest.param(
            Party("DE", tax_exempt=True, exempt_reason="§ 4 Nr. 21 UStG"),
            "exempt", None, "0", "§ 4 Nr. 21 UStG", "exempt",
            id="exempt-with-reason",
        ),
        pytest.param(
            Party("US", region="CA", tax_exempt=True),
            "exempt", None, "0", "Tax exempt", "exempt",
            id="exempt-without-reason",
        ),
        # Nothing known about the buyer's country: the seller's own rate.
        pytest.param(
            Party(None, vat_id="FR40303265045"),
            "domestic", "DE", "19", None, "buyer_country_unknown",
            id="buyer-country-unknown",
        ),
    ],
)  # fmt: skip
def test_eu_vat_decisions(
    buyer: Party, kind: str, jurisdiction: str | None, rate: str, note: str | None, rule: str
) -> None:
    decision = engine().decide(SELLER, buyer, ON)
    assert (decision.kind, decision.jurisdiction, decision.rate, decision.note) == (
        kind,
        jurisdiction,
        D(rate),
        note,
    )
    assert decision.evidence["rule"] == rule
    assert json.loads(json.dumps(decision.to_json())) == decision.to_json()


def test_reverse_charge_evidence_names_both_vat_ids_and_the_verification() -> None:
    decision = engine().decide(SELLER, Party("FR", vat_id="fr 403 032 650 45"), ON)
    assert decision.evidence == {
        "engine": "eu_vat",
        "rule": "reverse_charge",
        "supply_date": "2025-09-01",
        "seller_country": "DE",
        "seller_vat_id": "DE136695976",
        "buyer_country": "FR",
        "buyer_region": None,
        "buyer_vat_id": "FR40303265045",
        "verification": {
            "vat_id": "FR40303265045",
            "valid": True,
            "source": "static",
            "checked_at": ON,
            "detail": None,
        },
    }


def test_oss_evidence_names_the_rates_table_and_period() -> None:
    decision = engine().decide(SELLER, Party("FI"), ON)
    assert decision.evidence == {
        "engine": "eu_vat",
        "rule": "oss_b2c",
        "supply_date": "2025-09-01",
        "seller_country": "DE",
        "buyer_country": "FI",
        "buyer_region": None,
        "rates_as_of": "2025-08-01",
        "rates_origin": "packaged",
        "rate_from": "2024-09-01",
    }


def test_unavailable_verifier_never_gives_a_reverse_charge() -> None:
    decision = engine(UnavailableVerifier()).decide(SELLER, Party("FR", vat_id="FR40303265045"), ON)
    assert (decision.kind, decision.rate) == ("oss", D(20))
    assert decision.note == "VAT id FR40303265045 could not be verified; VAT charged"
    assert decision.evidence["verification"] == {
        "vat_id": "FR40303265045",
        "valid": None,
        "source": "unavailable",
        "checked_at": ON,
        "detail": "VIES cannot be reached from here",
    }


class Vies:
    """Stands in for a VIES verifier: answers ``valid`` with source "vies"."""

    def __init__(self, valid: bool | None = None, error: Exception | None = None) -> None:
        self.valid, self.error = valid, error

    def verify(self, vat_id: str, now: int) -> Verification:
        if self.error is not None:
            raise self.error
        return Verification(vat_id, self.valid, "vies", now)


@pytest.mark.parametrize(
    ("verifier", "kind", "note"),
    [
        pytest.param(Vies(True), "intra_eu_reverse_charge", REVERSE_CHARGE_NOTE, id="vies-valid"),
        # The note names VIES as the one who refused the id.
        pytest.param(
            Vies(False),
            "oss",
            "VAT id FR40303265045 is not valid according to VIES; VAT charged",
            id="vies-invalid",
        ),
        # A verifier that breaks the protocol by raising a network error counts as no answer.
        pytest.param(
            Vies(error=TimeoutError("timed out")),
            "oss",
            "VAT id FR40303265045 could not be verified; VAT charged",
            id="vies-network-error",
        ),
    ],
)
def test_a_pluggable_verifier(verifier: VatVerifier, kind: str, note: str) -> None:
    decision = engine(verifier).decide(SELLER, Party("FR", vat_id="FR40303265045"), ON)
    assert (decision.kind, decision.note) == (kind, note)


@pytest.mark.parametrize(
    ("buyer", "asked"),
    [
        # Only a well-formed id of the buyer's own country goes to the verifier.
        pytest.param(Party("FR", vat_id="FR 40303265045"), ["FR40303265045"], id="well-formed"),
        pytest.param(Party("FR", vat_id="FR40303265046"), [], id="bad-check-digit"),
        pytest.param(Party("FR", vat_id="DE136695976"), [], id="other-country"),
        pytest.param(Party("DE", vat_id="DE136695976"), [], id="domestic"),
        pytest.param(Party("FR"), [], id="no-id"),
        pytest.param(Party("US", vat_id="FR40303265045"), [], id="export"),
    ],
)
def test_when_the_verifier_is_asked(buyer: Party, asked: list[str]) -> None:
    recording = Recording(StaticVerifier(REGISTERED))
    engine(recording).decide(SELLER, buyer, ON)
    assert recording.asked == asked


# ---------------------------------------------------------------------------------------------
# Dated rates


@pytest.mark.parametrize(
    ("country", "moment", "rate", "rate_from"),
    [
        # Finland 24 → 25.5 on 1 September 2024; the day is taken in UTC.
        pytest.param("FI", "2024-08-31T23:59:59.999999", "24", "2013-01-01", id="fi-before"),
        pytest.param("FI", "2024-09-01", "25.5", "2024-09-01", id="fi-from"),
        # Estonia 20 → 22 on 1 January 2024, → 24 on 1 July 2025.
        pytest.param("EE", "2023-12-31", "20", "2009-07-01", id="ee-2023"),
        pytest.param("EE", "2024-01-01", "22", "2024-01-01", id="ee-2024"),
        pytest.param("EE", "2025-07-01", "24", "2025-07-01", id="ee-2025-07"),
        # Slovakia 20 → 23 on 1 January 2025.
        pytest.param("SK", "2024-12-31", "20", "2011-01-01", id="sk-2024"),
        pytest.param("SK", "2025-01-01", "23", "2025-01-01", id="sk-2025"),
        # Romania 19 → 21 on 1 August 2025.
        pytest.param("RO", "2025-07-31", "19", "2017-01-01", id="ro-before"),
        pytest.param("RO", "2025-08-01", "21", "2025-08-01", id="ro-from"),
        # Luxembourg's one-year cut to 16 in 2023.
        pytest.param("LU", "2023-06-30", "16", "2023-01-01", id="lu-2023"),
        pytest.param("LU", "2024-01-01", "17", "2024-01-01", id="lu-2024"),
    ],
)
def test_b2c_rate_is_the_rate_of_the_supply_day(
    country: str, moment: str, rate: str, rate_from: str
) -> None:
    decision = engine().decide(SELLER, Party(country), at(moment))
    assert (decision.kind, decision.rate) == ("oss", D(rate))
    assert decision.evidence["rate_from"] == rate_from


@pytest.mark.parametrize(
    ("moment", "rate"),
    [
        # Germany's temporary 16 % in the second half of 2020.
        pytest.param("2020-06-30", "19", id="before"),
        pytest.param("2020-07-01", "16", id="during"),
        pytest.param("2020-12-31T23:59:59", "16", id="last-second"),
        pytest.param("2021-01-01", "19", id="after"),
    ],
)
def test_domestic_rate_change(moment: str, rate: str) -> None:
    assert engine().decide(SELLER, Party("DE"), at(moment)).rate == D(rate)


def test_a_supply_before_the_table_starts_is_an_error_not_a_guess() -> None:
    # France's rates in the packaged table start on 2021-07-01.
    with pytest.raises(ConfigError, match="no VAT rate for FR on 2021-06-30") as caught:
        engine().decide(SELLER, Party("FR"), at("2021-06-30"))
    assert caught.value.problems[0].where == "rates.FR"


def test_every_member_state_has_a_rate() -> None:
    rates = packaged_vat_rates()
    assert len(EU_MEMBER_STATES) == 27
    assert set(rates.periods) == EU_MEMBER_STATES
    for country in sorted(EU_MEMBER_STATES):
        rate = rates.rate_on(country, rates.as_of).standard
        assert D(15) <= rate <= D(28), country  # the EU minimum is 15 %; the highest is 27 %
    assert rates.source


# ---------------------------------------------------------------------------------------------
# Sellers outside the EU, and no tax at all


US_SELLER = Party("US", region="CA")
US_JURISDICTIONS = {
    "US-CA": Jurisdiction("Sales tax", D("7.25")),
    "US": Jurisdiction("Sales tax", D("0")),
    "DE": Jurisdiction("VAT", D("19")),
}


@pytest.mark.parametrize(
    ("buyer", "kind", "jurisdiction", "rate"),
    [
        # Same country: domestic, region first, then country.
        pytest.param(Party("US", region="CA"), "domestic", "US-CA", "7.25", id="same-region"),
        pytest.param(Party("US", region="OR"), "domestic", "US", "0", id="same-country"),
        # Unknown country: the seller's own place.
        pytest.param(Party(None), "domestic", "US-CA", "7.25", id="buyer-unknown"),
        # Elsewhere: only what is configured; the EU rules do not apply.
        pytest.param(Party("DE"), "jurisdiction", "DE", "19", id="configured-abroad"),
        pytest.param(Party("FR", vat_id="FR40303265045"), "none", None, "0", id="not-configured"),
    ],
)
def test_seller_outside_the_eu_uses_only_the_jurisdictions(
    buyer: Party, kind: str, jurisdiction: str | None, rate: str
) -> None:
    tax = EuVat(US_SELLER, StaticVerifier(REGISTERED), packaged_vat_rates(), US_JURISDICTIONS)
    decision = tax.decide(US_SELLER, buyer, ON)
    assert (decision.kind, decision.jurisdiction, decision.rate) == (kind, jurisdiction, D(rate))
    assert decision.note is None
    assert decision.evidence["seller_outside_eu"] is True


def test_the_configured_seller_fills_what_the_given_one_leaves_out() -> None:
    decision = engine().decide(Party(None), Party("FR", vat_id="FR40303265045"), ON)
    assert decision.evidence["seller_country"] == "DE"
    assert decision.evidence["seller_vat_id"] == "DE136695976"


def test_no_tax() -> None:
    decision = NoTax().decide(SELLER, Party("FR", vat_id="FR40303265045"), ON)
    assert decision.to_json() == {
        "kind": "none",
        "name": "Tax",
        "jurisdiction": None,
        "rate": "0",
        "note": None,
        "evidence": {"engine": "none", "rule": "no_tax", "supply_date": "2025-09-01"},
    }


# ---------------------------------------------------------------------------------------------
# Tax arithmetic and the decision's JSON


def decision_at(rate: str) -> TaxDecision:
    return TaxDecision("domestic", "VAT", "DE", D(rate), None, {})


@pytest.mark.parametrize(
    ("rate", "taxable", "tax"),
    [
        pytest.param("19", "100.00", "19", id="19-percent"),  # 100.00 × 19 / 100
        pytest.param("25.5", "33.33", "8.49915", id="25.5-percent"),  # 33.33 × 25.5 / 100
        pytest.param("7.25", "0.000001", "0.0000000725", id="tiny-amount"),  # not rounded
        pytest.param("0", "1234.56", "0", id="zero-rate"),
        pytest.param("20", "-50.00", "-10", id="credit-note"),  # negative lines too
        # 60 significant digits: no float, no 28-digit default context.
        pytest.param(
            "21",
            "12345678901234567890.123456789012",
            "2592592569259259256.92592592569252",
            id="wide",
        ),
    ],
)
def test_tax_on_is_exact(rate: str, taxable: str, tax: str) -> None:
    assert decision_at(rate).tax_on(D(taxable)) == D(tax)


def test_tax_on_refuses_floats() -> None:
    with pytest.raises(TypeError, match="Decimal"):
        decision_at("19").tax_on(100.0)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("make", "error"),
    [
        pytest.param(lambda: decision_at("101"), ValueError, id="rate-over-100"),
        pytest.param(lambda: decision_at("-1"), ValueError, id="negative-rate"),
        pytest.param(
            lambda: TaxDecision("vat", "VAT", None, D(0), None, {}), ValueError, id="unknown-kind"
        ),
        pytest.param(
            lambda: TaxDecision("none", "Tax", None, 0.19, None, {}),  # type: ignore[arg-type]
            TypeError,
            id="float-rate",
        ),
        pytest.param(lambda: supply_date(1.5), TypeError,  # type: ignore[arg-type]
                     id="float-supply-date"),
        pytest.param(lambda: EuVat(Party(None), UnavailableVerifier(), packaged_vat_rates()),
                     ValueError, id="seller-without-country"),
    ],
)  # fmt: skip
def test_refused_values(make: object, error: type[Exception]) -> None:
    assert callable(make)
    with pytest.raises(error):
        make()


def test_decision_json_round_trip() -> None:
    decision = engine().decide(SELLER, Party("FR", vat_id="FR40303265045"), ON)
    assert TaxDecision.from_json(json.loads(json.dumps(decision.to_json()))) == decision
    verification = Verification("FR40303265045", None, "unavailable", ON, "down")
    assert Verification.from_json(verification.to_json()) == verification


# ---------------------------------------------------------------------------------------------
# VAT ids


NOT_EU = "unknown country prefix or wrong format"


@pytest.mark.parametrize(
    ("typed", "default", "vat_id", "country", "error"),
    [
        pytest.param("DE 136 695 976", None, "DE136695976", "DE", None, id="spaces"),
        pytest.param("de136695976", None, "DE136695976", "DE", None, id="lower-case"),
        pytest.param("136695976", "DE", "DE136695976", "DE", None, id="prefix-added"),
        pytest.param("U13585627", "AT", "ATU13585627", "AT", None, id="austria-u-prefix-added"),
        pytest.param("ES B-64717838", None, "ESB64717838", "ES", None, id="spain-letter"),
        pytest.param("NL004495445B01", None, "NL004495445B01", "NL", None, id="netherlands"),
        pytest.param("BE 428759497", None, "BE0428759497", "BE", None, id="belgium-leading-0"),
        pytest.param("EL094259216", None, "EL094259216", "GR", None, id="greece-el"),
        pytest.param("GR094259216", None, "EL094259216", "GR", None, id="greece-gr-becomes-el"),
        pytest.param("094259216", "GR", "EL094259216", "GR", None, id="greece-prefix-added"),
        pytest.param("FR40303265046", None, "FR40303265046", "FR", "wrong check digit",
                     id="check-digit"),
        pytest.param("FR4030326504", None, "FR4030326504", "FR", "wrong length", id="length"),
        pytest.param("136695976", None, "136695976", None, NOT_EU, id="no-prefix-no-default"),
        pytest.param("US123456789", None, "US123456789", "US", NOT_EU, id="not-eu"),
        # Northern Ireland (goods only) and non-Union OSS numbers pass stdnum, but are not a
        # member state's.
        pytest.param("XI980780684", None, "XI980780684", "XI",
                     "XI is not an EU member state's prefix", id="northern-ireland"),
        pytest.param("EU372000041", None, "EU372000041", "EU",
                     "EU is not an EU member state's prefix", id="non-union-oss"),
        pytest.param(" - ", "DE", "", None, "empty", id="empty"),
    ],
)  # fmt: skip
def test_check_vat_id(
    typed: str, default: str | None, vat_id: str, country: str | None, error: str | None
) -> None:
    checked = check_vat_id(typed, default)
    assert (checked.vat_id, checked.country, checked.error) == (vat_id, country, error)
    assert checked.ok is (error is None)


@pytest.mark.parametrize(
    ("asked", "valid", "detail"),
    [
        pytest.param("FR40303265045", True, None, id="listed-valid"),
        pytest.param("ATU13585627", False, None, id="listed-invalid"),
        pytest.param("EL094259216", True, None, id="listed-as-gr-asked-as-el"),
        pytest.param("IT00743110157", None, "not in the list of checked VAT ids", id="unlisted"),
    ],
)
def test_static_verifier(asked: str, valid: bool | None, detail: str | None) -> None:
    verifier = StaticVerifier(
        {"FR 403 032 650 45": True, "ATU13585627": False, "GR094259216": True}
    )
    assert verifier.verify(asked, ON) == Verification(asked, valid, "static", ON, detail)


# ---------------------------------------------------------------------------------------------
# Invariants


amounts = st.decimals(
    min_value=D("-1000000000"), max_value=D("1000000000"), places=12, allow_nan=False
)
rates = st.decimals(min_value=D(0), max_value=D(100), places=6, allow_nan=False)


@given(rate=rates, a=amounts, b=amounts)
def test_tax_is_exact_and_additive(rate: Decimal, a: Decimal, b: Decimal) -> None:
    # Exact at full precision, so splitting a taxable amount never changes the tax.
    decision = TaxDecision("domestic", "VAT", "DE", rate, None, {})
    with localcontext(PRICING_CONTEXT):  # the test's own sums need the 60 digits too
        assert decision.tax_on(a) + decision.tax_on(b) == decision.tax_on(a + b)
        assert decision.tax_on(a) * 100 == a * rate


@given(
    country=st.sampled_from(sorted(EU_MEMBER_STATES - {"DE"})),
    vat_id=st.one_of(
        st.sampled_from(["FR40303265045", "EL094259216", "ATU13585627", "IT00743110157"]),
        st.text(alphabet="ABDEFGILRTU0123456789 -", max_size=16),
    ),
    answer=st.sampled_from([True, False, None]),
)
def test_reverse_charge_only_with_a_confirmed_id_of_the_buyers_country(
    country: str, vat_id: str, answer: bool | None
) -> None:
    tax = engine(Vies(answer))
    decision = tax.decide(SELLER, Party(country, vat_id=vat_id), ON)
    if decision.kind == "intra_eu_reverse_charge":
        assert answer is True
        checked = check_vat_id(vat_id, country)
        assert checked.ok and checked.country == country
        assert decision.evidence["verification"]["valid"] is True
    else:
        # Anyone else in another member state pays that state's VAT.
        assert decision.kind == "oss"
        assert decision.rate == packaged_vat_rates().rate_on(country, supply_date(ON)).standard
