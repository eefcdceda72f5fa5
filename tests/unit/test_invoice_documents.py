"""Invoice documents: HTML and PDF from the invoice JSON, amounts and dates localized by Babel.

Expected strings are Babel's exact output: ``\\xa0`` is a no-break space, ``\\u202f`` a narrow
no-break space (French thousands), ``￥`` the full-width yen sign CLDR uses for Japanese.
"""

from __future__ import annotations

import copy
import io
import re
from decimal import Decimal
from typing import Any

import pypdf
import pytest

from tallyray.errors import CurrencyError, InvalidInput
from tallyray.invoicing.documents import (
    format_day,
    format_money,
    format_quantity,
    render_html,
    render_pdf,
)

REVERSE_CHARGE = (
    "Reverse charge: VAT to be accounted for by the recipient "
    "(Article 196, Council Directive 2006/112/EC)."
)


def _address(line1: str, postal_code: str, city: str, country: str) -> dict[str, Any]:
    return {
        "line1": line1,
        "line2": None,
        "postal_code": postal_code,
        "city": city,
        "region": None,
        "country": country,
    }


SELLER = {
    "name": "Tallyray Labs GmbH",
    "email": "billing@tallyray.example",
    "vat_id": "DE999999999",
    "country": "DE",
    "address": _address("Torstraße 1", "10119", "Berlin", "DE"),
}

# 49.00 base fee (17 of 31 days, prorated upstream)
# + 21.50 input tokens: 1,000,000 × 0 + 11,000,000 × 0.0000015 + 5.00 flat
# +  4.00 output tokens: 2,000,000 × 0.000002
# +  0.04 GPU seconds: 3.5 × 0.012 = 0.042
# = 74.54; minimum 110.00 → true-up 35.46; − 10.00 discount = 100.00 subtotal;
# VAT 19 % of 100.00 = 19.00 → total 119.00; − 20.00 prepaid credits → 99.00 due.
# The renderer formats these figures; it never recomputes them.
EUR_DE: dict[str, Any] = {
    "object": "invoice",
    "id": "inv_8f3a01",
    "number": "TR-000042",
    "status": "finalized",
    "env": "live",
    "customer": {
        "id": "cus_1",
        "name": "Acme <script>alert(1)</script> GmbH",
        "email": "ap@acme.example",
        "country": "DE",
        "vat_id": "DE123456789",
        "address": _address("Leopoldstraße 5", "80802", "München", "DE"),
    },
    "seller": SELLER,
    "locale": "de_DE",
    "currency": "EUR",
    "period": {"start": "2026-10-01T00:00:00Z", "end": "2026-11-01T00:00:00Z"},
    "issued_at": "2026-11-01T02:00:00Z",
    "due_at": "2026-11-15T00:00:00Z",
    "plan": {"key": "pro", "version": 3, "name": "Pro", "currency": "EUR"},
    "exchange_rate": None,
    "lines": [
        {
            "kind": "base_fee",
            "description": "Pro base fee",
            "amount": "49.00",
            "precise_amount": "49",
            "proration": {"days": 17, "of_days": 31},
        },
        {
            "kind": "usage",
            "description": "input_tokens (model=gpt-4o)",
            "meter": "input_tokens",
            "quantity": "12000000",
            "amount": "21.50",
            "precise_amount": "21.5",
            "tiers": [
                {
                    "tier": 1,
                    "from": "0",
                    "up_to": "1000000",
                    "quantity": "1000000",
                    "unit_amount": "0",
                    "flat_amount": "0",
                    "amount": "0",
                },
                {
                    "tier": 2,
                    "from": "1000000",
                    "up_to": None,
                    "quantity": "11000000",
                    "unit_amount": "0.0000015",
                    "flat_amount": "5.00",
                    "amount": "21.5",
                },
            ],
        },
        {
            "kind": "usage",
            "description": "output_tokens (model=gpt-4o)",
            "meter": "output_tokens",
            "quantity": "2000000",
            "unit_amount": "0.000002",
            "amount": "4.00",
            "precise_amount": "4",
        },
        {
            "kind": "usage",
            "description": "gpu_seconds",
            "meter": "gpu_seconds",
            "quantity": "3.5",
            "unit_amount": "0.012",
            "amount": "0.04",
            "precise_amount": "0.042",
        },
        {
            "kind": "minimum",
            "description": "Minimum commitment true-up (minimum 110.00)",
            "amount": "35.46",
            "precise_amount": "35.458",
        },
        {
            "kind": "discount",
            "description": "Launch discount 10.00",
            "amount": "-10.00",
            "precise_amount": "-10",
        },
    ],
    "subtotal": "100.00",
    "taxes": [
        {
            "name": "VAT",
            "jurisdiction": "DE",
            "rate": "19",
            "taxable_amount": "100.00",
            "amount": "19.00",
        }
    ],
    "tax": "19.00",
    "total": "119.00",
    "credits": [{"grant_id": "cg_1", "description": "Prepaid credits", "amount": "-20.00"}],
    "credits_applied": "20.00",
    "amount_due": "99.00",
    "notes": [],
    "credit_note_for": None,
    "reason": None,
}


def _variant(base: dict[str, Any], **changes: Any) -> dict[str, Any]:
    doc = copy.deepcopy(base)
    doc.update(changes)
    return doc


def _line(description: str, amount: str, **extra: Any) -> dict[str, Any]:
    return {"kind": "usage", "description": description, "amount": amount, **extra}


# The same supply to a business in France: no German VAT, the buyer accounts for it.
# 100.00 + 0.00 = 100.00; − 20.00 credits → 80.00 due.
REVERSE_CHARGE_DE = _variant(
    EUR_DE,
    number="TR-000048",
    customer={
        "id": "cus_4",
        "name": "Société Exemple SARL",
        "email": "compta@exemple.example",
        "country": "FR",
        "vat_id": "FR40303265045",
        "address": _address("12 rue de la Paix", "75002", "Paris", "FR"),
    },
    taxes=[
        {
            "name": "VAT",
            "jurisdiction": "FR",
            "rate": "0",
            "taxable_amount": "100.00",
            "amount": "0.00",
        }
    ],
    tax="0.00",
    total="100.00",
    amount_due="80.00",
    notes=[REVERSE_CHARGE],
)

USD_EN = _variant(
    EUR_DE,
    number="TR-000043",
    locale="en",
    currency="USD",
    customer={
        "id": "cus_2",
        "name": "Globex Inc.",
        "email": "ap@globex.example",
        "country": "US",
        "vat_id": None,
        "address": {
            "line1": "1 Market St",
            "line2": "Suite 400",
            "postal_code": "94105",
            "city": "San Francisco",
            "region": "CA",
            "country": "US",
        },
    },
    plan={"key": "pro", "version": 3, "name": "Pro", "currency": "EUR"},
    exchange_rate={
        "from": "EUR",
        "to": "USD",
        "rate": "1.0854",
        "source": "ECB",
        "as_of": "2026-10-31T16:00:00Z",
    },
    lines=[_line("output_tokens", "1234.50", quantity="2469000", unit_amount="0.0005")],
    subtotal="1234.50",
    taxes=[
        {
            "name": "Sales tax",
            "jurisdiction": "US-CA",
            "rate": "7.25",
            "taxable_amount": "1234.50",
            "amount": "89.50",
        }
    ],
    tax="89.50",
    total="1324.00",
    credits=[],
    credits_applied="0.00",
    amount_due="1324.00",
    notes=[],
)

# ￥: 1,000 calls × ¥4.9 = ¥4,900; + 10% consumption tax ¥490 = ¥5,390.
JPY_JA = _variant(
    EUR_DE,
    number="TR-000044",
    locale="ja_JP",
    currency="JPY",
    customer={
        "id": "cus_3",
        "name": "株式会社テスト",
        "email": "keiri@test.example",
        "country": "JP",
        "vat_id": "T1234567890123",
        "address": None,
    },
    lines=[_line("api_calls", "4900", quantity="1000", unit_amount="4.9")],
    subtotal="4900",
    taxes=[
        {
            "name": "JCT",
            "jurisdiction": "JP",
            "rate": "10",
            "taxable_amount": "4900",
            "amount": "490",
        }
    ],
    tax="490",
    total="5390",
    credits=[],
    credits_applied="0",
    amount_due="5390",
    notes=[],
)

# KWD has three decimals: 250 × 0.130 = 32.500.
KWD_EN = _variant(
    EUR_DE,
    number="TR-000045",
    locale="en",
    currency="KWD",
    lines=[_line("seats", "32.500", quantity="250", unit_amount="0.13")],
    subtotal="32.500",
    taxes=[],
    tax="0.000",
    total="32.500",
    credits=[],
    credits_applied="0.000",
    amount_due="32.500",
    notes=[],
)

DRAFT = _variant(EUR_DE, number=None, status="draft", issued_at=None, due_at=None, env="test")

VOID = _variant(EUR_DE, status="void", locale="fr_FR")

CREDIT_NOTE = _variant(
    EUR_DE,
    object="credit_note",
    id="cn_51c2",
    number="TR-000046",
    due_at=None,
    lines=[
        {
            "kind": "usage",
            "description": "Refund: duplicate usage batch",
            "amount": "-42.00",
            "precise_amount": "-42",
        }
    ],
    subtotal="-42.00",
    taxes=[],
    tax="0.00",
    total="-42.00",
    credits=[],
    credits_applied="0.00",
    amount_due="-42.00",
    notes=[],
    credit_note_for={"id": "inv_77aa", "number": "TR-000041"},
    reason="Events ingested twice on 2026-10-12",
)

# 200 lines of 1.00 each: subtotal 200.00, no tax.
MANY_LINES = _variant(
    EUR_DE,
    number="TR-000047",
    locale="en",
    lines=[_line(f"meter_{i:03d}", "1.00", quantity=str(i * 1000)) for i in range(1, 201)],
    subtotal="200.00",
    taxes=[],
    tax="0.00",
    total="200.00",
    credits=[],
    credits_applied="0.00",
    amount_due="200.00",
    notes=[],
)

DOCS = {
    "eur_de": EUR_DE,
    "reverse_charge": REVERSE_CHARGE_DE,
    "usd_en": USD_EN,
    "jpy_ja": JPY_JA,
    "kwd_en": KWD_EN,
    "draft": DRAFT,
    "void": VOID,
    "credit_note": CREDIT_NOTE,
    "many_lines": MANY_LINES,
}


def _pdf_text(pdf: bytes) -> str:
    reader = pypdf.PdfReader(io.BytesIO(pdf))
    text = "\n".join(page.extract_text() for page in reader.pages)
    return _spaces(text)


def _spaces(text: str) -> str:
    """Every run of white space (no-break spaces included) as one plain space."""
    return re.sub(r"[\s\xa0\u202f]+", " ", text)


# --------------------------------------------------------------------------- formatting


@pytest.mark.parametrize(
    ("amount", "code", "locale", "expected"),
    [
        ("119.00", "EUR", "de_DE", "119,00\xa0€"),
        (Decimal("119"), "EUR", "de_DE", "119,00\xa0€"),  # padded to the minor unit
        ("-10.00", "EUR", "de_DE", "-10,00\xa0€"),
        ("-0.00", "EUR", "de_DE", "0,00\xa0€"),  # never a negative zero
        ("1234.5", "EUR", "fr_FR", "1\u202f234,50\xa0€"),
        ("1234567.50", "USD", "en", "$1,234,567.50"),
        ("12345", "JPY", "ja_JP", "￥12,345"),  # JPY: no decimals
        ("12345", "JPY", "de_DE", "12.345\xa0¥"),
        ("1.234", "KWD", "en", "KWD1.234"),  # KWD: three decimals
        ("32.5", "KWD", "en", "KWD32.500"),
        ("0.005", "EUR", "en", "€0.01"),  # half-up, as invoices round (Babel alone: €0.00)
    ],
)
def test_format_money(amount: str | Decimal, code: str, locale: str, expected: str) -> None:
    assert format_money(amount, code, locale) == expected


@pytest.mark.parametrize(
    ("amount", "code", "locale", "expected"),
    [
        ("0.000002", "EUR", "de_DE", "0,000002\xa0€"),
        ("0.0000015", "USD", "en", "$0.0000015"),
        ("0.5", "EUR", "en", "€0.50"),  # never fewer decimals than the minor unit
        ("4.9", "JPY", "ja_JP", "￥4.9"),  # a unit price may have decimals JPY amounts lack
        ("5", "KWD", "en", "KWD5.000"),
        ("12.345678901234", "EUR", "en", "€12.345678901234"),
    ],
)
def test_format_money_exact_keeps_every_decimal(
    amount: str, code: str, locale: str, expected: str
) -> None:
    assert format_money(amount, code, locale, exact=True) == expected


@pytest.mark.parametrize(
    ("value", "locale", "length", "expected"),
    [
        ("2026-11-01T02:00:00Z", "de_DE", "long", "1. November 2026"),
        ("2026-10-31T16:00:00Z", "en", "long", "October 31, 2026"),
        ("2026-11-15", "fr_FR", "long", "15 novembre 2026"),
        (1_793_491_200_000_000, "ja_JP", "long", "2026年11月1日"),  # µs since the epoch
        ("2026-10-31T23:30:00-05:00", "en", "long", "October 31, 2026"),  # the day as written
        ("2026-10-31T16:00:00Z", "de_DE", "medium", "31.10.2026"),
    ],
)
def test_format_day(value: str | int, locale: str, length: str, expected: str) -> None:
    assert format_day(value, locale, format=length) == expected


@pytest.mark.parametrize(
    ("quantity", "locale", "expected"),
    [
        ("12000000", "de_DE", "12.000.000"),
        ("12000000", "fr_FR", "12\u202f000\u202f000"),
        ("3.5", "de_DE", "3,5"),
        ("1234567.125", "en", "1,234,567.125"),  # never rounded to three places or fewer
        ("0.000000000001", "en", "0.000000000001"),
    ],
)
def test_format_quantity(quantity: str, locale: str, expected: str) -> None:
    assert format_quantity(quantity, locale) == expected


@pytest.mark.parametrize(
    ("call", "error"),
    [
        (lambda: format_money("1.00", "XYZ", "en"), CurrencyError),
        (lambda: format_money(1.5, "EUR", "en"), InvalidInput),  # type: ignore[arg-type]
        (lambda: format_money("one", "EUR", "en"), InvalidInput),
        (lambda: format_day("31/10/2026", "en"), InvalidInput),
        (lambda: render_html({"lines": []}), InvalidInput),  # no currency
    ],
)
def test_bad_input_is_refused(call: Any, error: type[Exception]) -> None:
    with pytest.raises(error):
        call()


def test_unknown_locale_falls_back_to_english() -> None:
    assert format_money("5", "EUR", "xx_YY") == "€5.00"
    assert 'lang="en"' in render_html(_variant(EUR_DE, locale="xx_YY"))


# --------------------------------------------------------------------------- HTML


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        (
            "eur_de",
            [
                '<html lang="de-DE" dir="ltr">',
                "<h1>Invoice</h1>",
                "TR-000042",
                "1. November 2026",  # issued
                "15. November 2026",  # due
                "1. Oktober 2026 – 31. Oktober 2026",  # end exclusive: 1 Nov → 31 Oct
                "Tallyray Labs GmbH",
                "Torstraße 1",
                "10119 Berlin",
                "VAT ID: DE999999999",
                "VAT ID: DE123456789",
                "ap@acme.example",
                "80802 München",
                "Deutschland",  # the country, named in the invoice's language
                "Prorated: 17 of 31 days",
                "12.000.000",
                "2.000.000",
                "0,000002\xa0€",  # unit price in full
                "4,00\xa0€",
                "3,5",
                "0,012\xa0€",
                "0,04\xa0€",
                '<tr class="tier kind-tier">',
                "Tier 1: 0 – 1.000.000",
                "Tier 2: 1.000.000 and above",
                "11.000.000",
                "0,0000015\xa0€ + 5,00\xa0€ flat",
                "21,50\xa0€",
                "-10,00\xa0€",
                "100,00\xa0€",
                "VAT 19\xa0% (DE) on 100,00\xa0€",
                "19,00\xa0€",
                "119,00\xa0€",
                "Prepaid credits",
                "-20,00\xa0€",
                "Amount due",
                "<strong>99,00\xa0€</strong>",
            ],
        ),
        (
            "reverse_charge",
            [
                "Société Exemple SARL",
                "75002 Paris",
                "Frankreich",
                "VAT ID: FR40303265045",
                "VAT 0\xa0% (FR) on 100,00\xa0€",
                "0,00\xa0€",
                "<strong>80,00\xa0€</strong>",
                f'<p class="note">{REVERSE_CHARGE}</p>',
            ],
        ),
        (
            "usd_en",
            [
                '<html lang="en" dir="ltr">',
                "1 Market St",
                "Suite 400",
                "San Francisco, CA 94105",
                "United States",
                "2,469,000",
                "$0.0005",
                "Sales tax 7.25% (US-CA) on $1,234.50",
                "$89.50",
                "$1,324.00",
                "Converted from EUR at 1.0854 (ECB, October 31, 2026)",
                "October 1, 2026 – October 31, 2026",
            ],
        ),
        (
            "jpy_ja",
            [
                '<html lang="ja-JP" dir="ltr">',
                "株式会社テスト",
                "2026年11月1日",
                "2026年10月1日 – 2026年10月31日",
                "￥4.9",
                "JCT 10% (JP) on ￥4,900",
                "￥490",
                "<strong>￥5,390</strong>",
            ],
        ),
        ("kwd_en", ["KWD0.130", "KWD32.500", "Tax", "KWD0.000", "<strong>KWD32.500</strong>"]),
        ("draft", ['<p class="draft">DRAFT</p>', "TEST MODE", "<title>Invoice DRAFT"]),
        (
            "void",
            [
                '<html lang="fr-FR"',
                '<p class="stamp"><span class="visually-hidden">Status: </span>VOID</p>',
                "1 octobre 2026 – 31 octobre 2026",
                "119,00\xa0€",
            ],
        ),
        (
            "credit_note",
            [
                "<h1>Credit note</h1>",
                "Credit note for invoice TR-000041",
                "Reason: Events ingested twice on 2026-10-12",
                "Amount credited",
                "-42,00\xa0€",
            ],
        ),
        ("many_lines", ["meter_001", "meter_200", "200,000", "€200.00"]),
    ],
)
def test_html_shows(name: str, expected: list[str]) -> None:
    html = render_html(DOCS[name])
    missing = [text for text in expected if text not in html]
    assert not missing


@pytest.mark.parametrize(
    ("name", "absent"),
    [
        (
            "eur_de",
            ["DRAFT", "TEST MODE", 'class="stamp"', "Credit note", "Converted from", "Reverse"],
        ),
        ("usd_en", ["Reverse charge", "Prepaid credits", "Deutschland"]),
        ("kwd_en", ["Credits applied", "Converted from"]),
        ("credit_note", ["Amount due", "Due date"]),
        ("draft", ["Issue date", "Due date", "TR-000042"]),
    ],
)
def test_html_omits(name: str, absent: list[str]) -> None:
    html = render_html(DOCS[name])
    present = [text for text in absent if text in html]
    assert not present


@pytest.mark.parametrize("name", sorted(DOCS))
def test_absent_values_are_left_out_not_printed(name: str) -> None:
    html, text = render_html(DOCS[name]), _pdf_text(render_pdf(DOCS[name]))
    for word in ("None", "null", "nan"):
        assert word not in html
        assert word not in text


def test_html_escapes_names() -> None:
    html = render_html(EUR_DE)
    assert "Acme &lt;script&gt;alert(1)&lt;/script&gt; GmbH" in html
    assert "<script" not in html


def test_html_is_self_contained_and_accessible() -> None:
    html = render_html(EUR_DE)
    assert "<script" not in html and "http://" not in html and "https://" not in html
    assert "<link" not in html and "@import" not in html and "url(" not in html
    assert html.count('<th scope="col"') == 4
    assert '<th scope="row">Pro base fee' in html
    assert "<caption>Invoice lines</caption>" in html
    assert "<style>" in html


def test_html_tolerates_a_bare_document() -> None:
    html = render_html({"currency": "EUR"})
    assert "<h1>Invoice</h1>" in html and "DRAFT" in html


def test_credits_applied_without_itemized_credits() -> None:
    doc = _variant(EUR_DE, credits=None, credits_applied="20.00")
    assert "Credits applied" in render_html(doc)
    assert "-20,00\xa0€" in render_html(doc)


@pytest.mark.parametrize(
    ("start", "end", "expected"),
    [
        ("2026-10-01T00:00:00Z", "2026-11-01T00:00:00Z", "October 1, 2026 – October 31, 2026"),
        ("2028-02-01T00:00:00Z", "2028-03-01T00:00:00Z", "February 1, 2028 – February 29, 2028"),
        # A period cut short at noon includes that day.
        ("2026-10-01T00:00:00Z", "2026-10-15T12:00:00Z", "October 1, 2026 – October 15, 2026"),
        ("2026-10-01T00:00:00Z", "2026-10-02T00:00:00Z", "<dd>October 1, 2026</dd>"),  # one day
    ],
)
def test_period_end_is_exclusive(start: str, end: str, expected: str) -> None:
    doc = _variant(EUR_DE, locale="en", period={"start": start, "end": end})
    assert expected in render_html(doc)


# --------------------------------------------------------------------------- PDF


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        (
            "eur_de",
            [
                "Invoice",
                "TR-000042",
                "Tallyray Labs GmbH",
                "Acme <script>alert(1)</script> GmbH",
                "VAT ID: DE999999999",
                "VAT ID: DE123456789",
                "1. Oktober 2026 – 31. Oktober 2026",
                "Tier 2: 1.000.000 and above",
                "0,0000015 € + 5,00 € flat",
                "VAT 19 % (DE) on 100,00 €",
                "119,00 €",
                "Amount due 99,00 €",
            ],
        ),
        (
            "reverse_charge",
            [
                "TR-000048",
                "Société Exemple SARL",
                "VAT ID: FR40303265045",
                "VAT 0 % (FR) on 100,00 €",
                "Amount due 80,00 €",
                REVERSE_CHARGE,
            ],
        ),
        (
            "usd_en",
            [
                "TR-000043",
                "Globex Inc.",
                "Amount due $1,324.00",
                "Converted from EUR at 1.0854 (ECB, October 31, 2026)",
            ],
        ),
        (
            "jpy_ja",
            [
                "TR-000044",
                "株式会社テスト",
                "VAT ID: T1234567890123",
                # Vera has no kanji and no full-width yen: the PDF's dates take the shorter
                # form it can draw, its amounts the ordinary yen sign (the HTML keeps both).
                "2026/11/01",
                "2026/10/01 – 2026/10/31",
                "¥4.9",
                "Amount due ¥5,390",
            ],
        ),
        ("kwd_en", ["TR-000045", "KWD0.130", "Amount due KWD32.500"]),
        ("draft", ["DRAFT", "TEST MODE", "Amount due 99,00 €"]),
        ("void", ["VOID", "TR-000042", "Amount due 99,00 €"]),
        (
            "credit_note",
            [
                "Credit note",
                "TR-000046",
                "Credit note for invoice TR-000041",
                "Reason: Events ingested twice",
                "Amount credited -42,00 €",
            ],
        ),
        ("many_lines", ["meter_001", "meter_200", "Amount due €200.00"]),
    ],
)
def test_pdf_shows(name: str, expected: list[str]) -> None:
    pdf = render_pdf(DOCS[name])
    assert pdf.startswith(b"%PDF-")
    text = _pdf_text(pdf)
    missing = [s for s in expected if _spaces(s) not in text]
    assert not missing


def test_pdf_with_many_lines_runs_over_pages_and_repeats_the_header() -> None:
    reader = pypdf.PdfReader(io.BytesIO(render_pdf(MANY_LINES)))
    assert len(reader.pages) > 1
    for page in reader.pages:
        text = page.extract_text()
        assert "Invoice TR-000047" in text  # the footer names the document on every page
        if "meter_" in text:
            assert "Unit price" in text  # the table header repeats where lines continue
    assert "Page 2" in reader.pages[1].extract_text()


def test_pdf_is_a4_with_metadata_and_deterministic() -> None:
    pdf = render_pdf(EUR_DE)
    assert render_pdf(EUR_DE) == pdf
    reader = pypdf.PdfReader(io.BytesIO(pdf))
    width, height = reader.pages[0].mediabox.width, reader.pages[0].mediabox.height
    assert (round(width), round(height)) == (595, 842)  # A4 in points
    assert reader.metadata is not None
    assert reader.metadata.title == "Invoice TR-000042"
    assert reader.metadata.author == "Tallyray Labs GmbH"


@pytest.mark.parametrize(
    ("name", "locale", "expected"),
    [
        ("Ærø Öl & Söhne", "de_DE", "Ærø Öl & Söhne"),  # Latin-1, in Vera
        ("Wrocław Łukasz", "pl_PL", "Wrocław Łukasz"),
        ("Иван Петров", "en", "Иван Петров"),  # Cyrillic: a CID font
        # Vera lacks ą ę ń ś ź ż: the PDF draws the bare letter; the HTML keeps the accent.
        ("Łódź Gdańsk", "pl_PL", "Łódz Gdansk"),
    ],
)
def test_pdf_draws_names_vera_lacks(name: str, locale: str, expected: str) -> None:
    doc = _variant(EUR_DE, locale=locale)
    doc["customer"] = {**doc["customer"], "name": name}
    assert expected in _pdf_text(render_pdf(doc))
    assert name.replace("&", "&amp;") in render_html(doc)


@pytest.mark.parametrize(
    ("code", "locale", "amount_due", "html", "pdf"),
    [
        ("EUR", "de_DE", "99.00", "99,00\xa0€", "Amount due 99,00 €"),
        ("GBP", "en_GB", "99.00", "£99.00", "Amount due £99.00"),
        # Vera has no ₹ or ₺: the PDF names the currency by its code instead.
        ("INR", "en_IN", "123456.50", "₹1,23,456.50", "Amount due INR1,23,456.50"),
        ("TRY", "tr_TR", "99.00", "₺99,00", "Amount due TRY99,00"),
    ],
)
def test_pdf_names_currencies_whose_symbol_vera_lacks(
    code: str, locale: str, amount_due: str, html: str, pdf: str
) -> None:
    doc = {"currency": code, "locale": locale, "number": "TR-1", "amount_due": amount_due}
    assert f"<strong>{html}</strong>" in render_html(doc)
    assert pdf in _pdf_text(render_pdf(doc))


def test_pdf_tolerates_a_bare_document() -> None:
    assert "DRAFT" in _pdf_text(render_pdf({"currency": "EUR"}))
