"""The "invoicing" config block, validated (tallyray/invoicing/config.py): defaults, every
field, and each problem reported at its JSON path."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from tallyray.errors import ConfigError, InvalidInput
from tallyray.invoicing.config import LATE_EVENT_POLICIES, InvoicingConfig, parse_invoicing_config
from tallyray.invoicing.purchase_rules import TopUpRules

Doc = dict[str, Any]

#: The block of the module docstring: every field set.
FULL: Doc = {
    "seller": {
        "name": "Acme AI GmbH",
        "email": "billing@acme.ai",
        "vat_id": "DE123456788",
        "country": "DE",
        "address": {
            "line1": "Hauptstr. 1",
            "line2": "Hinterhaus",
            "postal_code": "10115",
            "city": "Berlin",
            "region": "BE",
            "country": "DE",
        },
    },
    "number_prefix": "ACME-",
    "credit_note_prefix": "ACME-CN-",
    "entity": "acme-gmbh",
    "locale": "de_DE",
    "payment_terms_days": 30,
    "auto_finalize": False,
    "late_events": "book_to_open_period",
    "dunning": {"retry_days": [1, 2, 4, 8]},
    "chunk_size": 250,
    "top_ups": {
        "minimum": "10.00",
        "maximum": "2000.00",
        "currencies": {"JPY": {"minimum": "1000", "maximum": "300000"}},
        "receipt_prefix": "ACME-R-",
        "priority": 0,
    },
}


def problems_of(raw: Any, where: str = "invoicing") -> dict[str, str]:
    """The problems ``parse_invoicing_config`` reports, by JSON path."""
    with pytest.raises(ConfigError) as caught:
        parse_invoicing_config(raw, where)
    error = caught.value
    assert isinstance(error, InvalidInput)
    n = len(error.problems)
    assert error.message == f"invalid configuration: {n} problem{'' if n == 1 else 's'}"
    problems = {p.where: p.message for p in error.problems}
    assert len(problems) == n  # one problem per path
    return problems


# --- defaults and valid blocks ---------------------------------------------------------------


@pytest.mark.parametrize("raw", [None, {}], ids=["absent", "empty"])
def test_defaults(raw: Doc | None) -> None:
    config = parse_invoicing_config(raw)
    assert config == InvoicingConfig()
    assert config.to_json() == {
        "seller": {},
        "number_prefix": "INV-",
        "credit_note_prefix": "CN-",
        "entity": "default",
        "locale": "en",
        "payment_terms_days": 14,
        "auto_finalize": True,
        "late_events": "reject",
        "dunning": {"retry_days": [3, 5, 7]},
        "chunk_size": 500,
        "top_ups": {
            "minimum": "5",
            "maximum": "10000",
            "currencies": {},
            "receipt_prefix": "RCT-",
            "priority": 1,
        },
    }


def test_every_field_set() -> None:
    config = parse_invoicing_config(FULL)
    assert config == InvoicingConfig(
        seller=FULL["seller"],
        number_prefix="ACME-",
        credit_note_prefix="ACME-CN-",
        entity="acme-gmbh",
        locale="de_DE",
        payment_terms_days=30,
        auto_finalize=False,
        late_events="book_to_open_period",
        retry_days=(1, 2, 4, 8),
        chunk_size=250,
        top_ups=TopUpRules(
            minimum=Decimal("10.00"),
            maximum=Decimal("2000.00"),
            currencies={"JPY": (Decimal(1000), Decimal(300000))},
            receipt_prefix="ACME-R-",
            priority=0,
        ),
    )
    # to_json gives back a block that parses to the same config
    assert config.to_json() == FULL
    assert parse_invoicing_config(config.to_json()) == config


@pytest.mark.parametrize(
    ("raw", "attribute", "expected"),
    [
        pytest.param({"number_prefix": ""}, "number_prefix", "", id="empty-number-prefix"),
        pytest.param({"number_prefix": "X" * 20}, "number_prefix", "X" * 20, id="prefix-20-chars"),
        pytest.param(
            {"credit_note_prefix": "C" * 20},
            "credit_note_prefix",
            "C" * 20,
            id="cn-prefix-20-chars",
        ),
        pytest.param({"entity": "e" * 20}, "entity", "e" * 20, id="entity-20-chars"),
        pytest.param({"locale": "en"}, "locale", "en", id="locale-en"),
        pytest.param({"locale": "ja"}, "locale", "ja", id="locale-ja"),
        pytest.param({"locale": "pt_BR"}, "locale", "pt_BR", id="locale-pt-br"),
        pytest.param({"payment_terms_days": 0}, "payment_terms_days", 0, id="terms-0-due-at-once"),
        pytest.param({"payment_terms_days": 365}, "payment_terms_days", 365, id="terms-365"),
        pytest.param({"chunk_size": 1}, "chunk_size", 1, id="chunk-1"),
        pytest.param({"chunk_size": 100_000}, "chunk_size", 100_000, id="chunk-100000"),
        pytest.param({"auto_finalize": True}, "auto_finalize", True, id="auto-finalize-true"),
        pytest.param({"late_events": "reject"}, "late_events", "reject", id="late-reject"),
        pytest.param({"dunning": {"retry_days": [1]}}, "retry_days", (1,), id="one-retry"),
        pytest.param(
            {"dunning": {"retry_days": [365]}}, "retry_days", (365,), id="retry-after-a-year"
        ),
        # no retries: the first failed payment makes the invoice uncollectible
        pytest.param({"dunning": {"retry_days": []}}, "retry_days", (), id="no-retries"),
        # explicit null is the default
        pytest.param({"dunning": None}, "retry_days", (3, 5, 7), id="dunning-null"),
        pytest.param({"seller": {}}, "seller", {}, id="empty-seller"),
        pytest.param(
            {"seller": {"country": None}}, "seller", {"country": None}, id="seller-country-null"
        ),
    ],
)
def test_valid_values(raw: Doc, attribute: str, expected: Any) -> None:
    assert getattr(parse_invoicing_config(raw), attribute) == expected


def test_late_event_policies() -> None:
    assert LATE_EVENT_POLICIES == ("reject", "book_to_open_period")
    for policy in LATE_EVENT_POLICIES:
        assert parse_invoicing_config({"late_events": policy}).late_events == policy


# --- bad fields, each at its JSON path -------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "where", "message"),
    [
        # the block itself
        pytest.param([], "invoicing", "must be a JSON object", id="block-not-an-object"),
        pytest.param("INV-", "invoicing", "must be a JSON object", id="block-a-string"),
        pytest.param(
            {"currency": "EUR"},
            "invoicing.currency",
            "unknown field (known: auto_finalize, chunk_size",
            id="unknown-field",
        ),
        # seller
        pytest.param(
            {"seller": "Acme"}, "invoicing.seller", "must be a JSON object", id="seller-a-string"
        ),
        pytest.param(
            {"seller": None}, "invoicing.seller", "must be a JSON object", id="seller-null"
        ),
        pytest.param(
            {"seller": {"phone": "+49"}},
            "invoicing.seller.phone",
            "unknown field (known: address, country, email, name, vat_id)",
            id="seller-unknown-field",
        ),
        pytest.param(
            {"seller": {"name": 7}}, "invoicing.seller.name", "must be a string", id="seller-name"
        ),
        pytest.param(
            {"seller": {"email": ["a@b.c"]}},
            "invoicing.seller.email",
            "must be a string",
            id="seller-email",
        ),
        pytest.param(
            {"seller": {"vat_id": 136695976}},
            "invoicing.seller.vat_id",
            "must be a string",
            id="seller-vat-id",
        ),
        pytest.param(
            {"seller": {"country": "de"}},
            "invoicing.seller.country",
            "write country codes in capitals: 'DE'",
            id="seller-country-lower-case",
        ),
        pytest.param(
            {"seller": {"country": "DEU"}},
            "invoicing.seller.country",
            "ISO 3166-1 alpha-2 country code",
            id="seller-country-alpha-3",
        ),
        pytest.param(
            {"seller": {"country": "D1"}},
            "invoicing.seller.country",
            "ISO 3166-1 alpha-2 country code",
            id="seller-country-digit",
        ),
        pytest.param(
            {"seller": {"country": 276}},
            "invoicing.seller.country",
            "ISO 3166-1 alpha-2 country code",
            id="seller-country-number",
        ),
        pytest.param(
            {"seller": {"address": "Hauptstr. 1"}},
            "invoicing.seller.address",
            "must be a JSON object",
            id="seller-address-a-string",
        ),
        pytest.param(
            {"seller": {"address": {"street": "Hauptstr."}}},
            "invoicing.seller.address.street",
            "unknown field",
            id="seller-address-unknown-field",
        ),
        # prefixes and entity: strings of at most 20 characters, entity not empty
        pytest.param(
            {"number_prefix": "X" * 21},
            "invoicing.number_prefix",
            "at most 20 characters",
            id="number-prefix-21-chars",
        ),
        pytest.param(
            {"number_prefix": 1},
            "invoicing.number_prefix",
            "must be a string",
            id="number-prefix-number",
        ),
        pytest.param(
            {"number_prefix": None},
            "invoicing.number_prefix",
            "must be a string",
            id="number-prefix-null",
        ),
        pytest.param(
            {"credit_note_prefix": "C" * 21},
            "invoicing.credit_note_prefix",
            "at most 20 characters",
            id="cn-prefix-21-chars",
        ),
        pytest.param({"entity": ""}, "invoicing.entity", "must be a string", id="entity-empty"),
        pytest.param(
            {"entity": "e" * 21}, "invoicing.entity", "at most 20 characters", id="entity-21-chars"
        ),
        # locale: anything Babel cannot parse
        pytest.param(
            {"locale": "xx"}, "invoicing.locale", "unknown locale 'xx'", id="locale-unknown"
        ),
        pytest.param(
            {"locale": "en-US"}, "invoicing.locale", "use e.g. 'en' or 'de_DE'", id="locale-dash"
        ),
        pytest.param({"locale": ""}, "invoicing.locale", "unknown locale ''", id="locale-empty"),
        pytest.param({"locale": None}, "invoicing.locale", "unknown locale None", id="locale-null"),
        pytest.param({"locale": 5}, "invoicing.locale", "unknown locale 5", id="locale-number"),
        # whole numbers in range, not bools, floats or strings
        pytest.param(
            {"payment_terms_days": -1},
            "invoicing.payment_terms_days",
            "from 0 to 365",
            id="terms-negative",
        ),
        pytest.param(
            {"payment_terms_days": 366},
            "invoicing.payment_terms_days",
            "from 0 to 365",
            id="terms-366",
        ),
        pytest.param(
            {"payment_terms_days": 14.0},
            "invoicing.payment_terms_days",
            "whole number",
            id="terms-float",
        ),
        pytest.param(
            {"payment_terms_days": "14"},
            "invoicing.payment_terms_days",
            "whole number",
            id="terms-string",
        ),
        pytest.param(
            {"payment_terms_days": True},
            "invoicing.payment_terms_days",
            "whole number",
            id="terms-bool",
        ),
        pytest.param({"chunk_size": 0}, "invoicing.chunk_size", "from 1 to 100000", id="chunk-0"),
        pytest.param(
            {"chunk_size": 100_001}, "invoicing.chunk_size", "from 1 to 100000", id="chunk-too-big"
        ),
        pytest.param({"chunk_size": True}, "invoicing.chunk_size", "whole number", id="chunk-bool"),
        pytest.param(
            {"auto_finalize": "yes"},
            "invoicing.auto_finalize",
            "must be true or false",
            id="auto-finalize-string",
        ),
        pytest.param(
            {"auto_finalize": 1},
            "invoicing.auto_finalize",
            "must be true or false",
            id="auto-finalize-1",
        ),
        pytest.param(
            {"late_events": "drop"},
            "invoicing.late_events",
            "must be one of reject, book_to_open_period",
            id="late-events-unknown",
        ),
        pytest.param(
            {"late_events": ["reject"]},
            "invoicing.late_events",
            "must be one of",
            id="late-events-list",
        ),
        # dunning
        pytest.param(
            {"dunning": {"retry_days": [0]}},
            "invoicing.dunning.retry_days",
            "(1 to 365)",
            id="retry-0-days",
        ),
        pytest.param(
            {"dunning": {"retry_days": [3, 366]}},
            "invoicing.dunning.retry_days",
            "(1 to 365)",
            id="retry-366-days",
        ),
        pytest.param(
            {"dunning": {"retry_days": [-3]}},
            "invoicing.dunning.retry_days",
            "(1 to 365)",
            id="retry-negative",
        ),
        pytest.param(
            {"dunning": {"retry_days": [3.0]}},
            "invoicing.dunning.retry_days",
            "whole numbers",
            id="retry-float",
        ),
        pytest.param(
            {"dunning": {"retry_days": [True]}},
            "invoicing.dunning.retry_days",
            "whole numbers",
            id="retry-bool",
        ),
        pytest.param(
            {"dunning": {"retry_days": "3,5,7"}},
            "invoicing.dunning.retry_days",
            "must be a list",
            id="retry-string",
        ),
        pytest.param(
            {"dunning": {"retry_days": 3}},
            "invoicing.dunning.retry_days",
            "must be a list",
            id="retry-number",
        ),
    ],
)
def test_bad_field(raw: Any, where: str, message: str) -> None:
    problems = problems_of(raw)
    assert list(problems) == [where]
    assert message in problems[where]


def test_every_problem_is_reported_at_once_under_the_given_path() -> None:
    raw = {
        "seller": {"country": "de", "name": 7, "fax": "0"},
        "locale": "klingon",
        "payment_terms_days": -1,
        "dunning": {"retry_days": [0]},
        "colour": "blue",
    }
    problems = problems_of(raw, where="config.invoicing")
    assert set(problems) == {
        "config.invoicing.colour",
        "config.invoicing.seller.fax",
        "config.invoicing.seller.name",
        "config.invoicing.seller.country",
        "config.invoicing.locale",
        "config.invoicing.payment_terms_days",
        "config.invoicing.dunning.retry_days",
    }


# --- fields that must be checked, not just accepted ---------------------------------------------


def test_unknown_dunning_field_is_reported() -> None:
    problems = problems_of({"dunning": {"retry_days": [3], "max_attempts": 4}})
    assert "invoicing.dunning.max_attempts" in problems


@pytest.mark.parametrize("dunning", [[3, 5, 7], "3,5,7"], ids=["list", "string"])
def test_dunning_not_an_object_is_reported_at_dunning(dunning: Any) -> None:
    problems = problems_of({"dunning": dunning})
    assert list(problems) == ["invoicing.dunning"]
    assert "must be a JSON object" in problems["invoicing.dunning"]


@pytest.mark.parametrize("country", ["XX", "ZZ", "EL"])
def test_seller_country_must_be_a_real_iso_country(country: str) -> None:
    problems = problems_of({"seller": {"country": country}})
    assert "invoicing.seller.country" in problems


@pytest.mark.parametrize(
    ("address", "where"),
    [
        pytest.param({"city": 7}, "invoicing.seller.address.city", id="city-a-number"),
        pytest.param({"line1": None}, "invoicing.seller.address.line1", id="line1-null"),
        pytest.param({"country": "Germany"}, "invoicing.seller.address.country", id="country-name"),
    ],
)
def test_seller_address_values_are_checked(address: Doc, where: str) -> None:
    problems = problems_of({"seller": {"address": address}})
    assert where in problems
