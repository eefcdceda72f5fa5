"""Invoice and credit-note documents: HTML and PDF, rendered from the invoice JSON.

The input is the invoice dictionary the API returns (``"object": "invoice" | "credit_note"``).
Both renderers work from one view (:class:`_View`) of already-formatted strings, so the HTML and
the PDF carry the same content:

- Amounts are decimal strings in the invoice's currency, shown by Babel with the currency's
  own number of decimals (JPY 0, EUR 2, KWD 3). Unit prices and tier amounts are precise
  (``"0.0000015"``) and shown in full, never rounded to the minor unit.
- Dates are shown in the invoice's locale; an instant such as ``"2026-11-01T02:00:00Z"`` is
  shown as the calendar day in the offset it was written with. A period's end is exclusive:
  the last day shown is the day of the last instant before it.
- Labels are English; numbers, amounts, dates and country names follow the locale.

The PDF is A4, drawn in the Bitstream Vera fonts bundled with ReportLab, embedded. Vera has
Latin-1, € and ¥ but only part of Latin Extended-A, so for a character it lacks the PDF draws,
in order of preference: its compatibility form (full-width ``￥`` → ``¥``); the letter without
its accent (``ź`` → ``z``: Polish, Czech, Hungarian and Romanian names lose some diacritics); or,
for kana, kanji, hangul and Cyrillic, a ReportLab CID font, named in the PDF but not embedded,
so the reader's viewer supplies those glyphs. Dates take the longest form Vera can draw
(``2026/10/31`` rather than ``2026年10月31日``), and an amount whose currency symbol Vera lacks
names the currency by its code (``INR1,234.50``, not ``₹1,234.50``). Arabic and Hebrew are
not shaped. The HTML has none of these limits.

Optional keys may be absent or ``null``; only ``"currency"`` is required.
"""

from __future__ import annotations

import io
import itertools
import unicodedata
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from functools import cache
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

import jinja2
import reportlab
from babel import Locale, UnknownLocaleError
from babel.dates import format_date
from babel.numbers import format_currency, format_decimal, format_percent
from reportlab.lib.colors import HexColor
from reportlab.lib.enums import TA_CENTER, TA_RIGHT
from reportlab.lib.fonts import addMapping
from reportlab.lib.pagesizes import A4
from reportlab.lib.styles import ParagraphStyle
from reportlab.lib.units import mm
from reportlab.pdfbase import pdfmetrics
from reportlab.pdfbase.cidfonts import UnicodeCIDFont
from reportlab.pdfbase.ttfonts import TTFont
from reportlab.platypus import KeepTogether, Paragraph, SimpleDocTemplate, Spacer, Table, TableStyle

from tallyray.errors import InvalidInput
from tallyray.pricing import money
from tallyray.pricing.money import decimal_text, round_amount

__all__ = ["format_day", "format_money", "format_quantity", "render_html", "render_pdf"]

#: Locale used when the document names none, or one Babel does not know.
DEFAULT_LOCALE = "en"

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

_STAMPS = {"paid": "PAID", "void": "VOID", "uncollectible": "UNCOLLECTIBLE"}


# --------------------------------------------------------------------------- formatting


@cache
def _babel_locale(code: str) -> Locale:
    try:
        return Locale.parse(code.replace("-", "_"))
    except (UnknownLocaleError, ValueError):
        return Locale.parse(DEFAULT_LOCALE)


def _locale(code: object) -> Locale:
    return _babel_locale(code) if isinstance(code, str) and code else _babel_locale(DEFAULT_LOCALE)


def _decimal(value: object) -> Decimal:
    try:
        result = decimal_text(value)
    except ValueError as error:
        raise InvalidInput(f"an amount in the document is not a decimal: {error}") from None
    return result.copy_abs() if result.is_zero() else result  # never show "-0,00 €"


def format_money(amount: str | Decimal, currency: str, locale: str, *, exact: bool = False) -> str:
    """``amount`` in ``currency`` (an ISO 4217 code) for ``locale``:
    ``format_money("119", "EUR", "de_DE")`` is ``"119,00\\xa0€"``.

    Shown with the currency's number of decimals (rounded half-up, as invoices are), or with
    ``exact=True`` in full, at least to the minor unit: a unit price of ``"0.000002"`` stays
    ``"0,000002\\xa0€"``.
    """
    return _format_money(amount, currency, locale, exact=exact, with_code=False)


def _format_money(
    amount: object, currency: str, locale: str, *, exact: bool, with_code: bool
) -> str:
    cur = money.currency(currency)
    value = _decimal(amount)
    if not exact:
        value = round_amount(value, cur)
    loc = _locale(locale)
    # The locale's own pattern with the ISO code for the symbol: "₹1,234.50" → "INR1,234.50".
    pattern = loc.currency_formats["standard"].pattern.replace("¤", "¤¤") if with_code else None
    return format_currency(
        value, cur.code, format=pattern, locale=loc, decimal_quantization=not exact
    )


def format_quantity(quantity: str | Decimal | int, locale: str) -> str:
    """A quantity in full, grouped for the locale: ``"12000000"`` → ``"12.000.000"`` (de)."""
    return format_decimal(_decimal(quantity), locale=_locale(locale), decimal_quantization=False)


def _moment(value: str | int | date | datetime) -> datetime:
    if isinstance(value, datetime):
        return value
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day)
    if isinstance(value, bool):
        raise InvalidInput(f"not a date: {value!r}")
    if isinstance(value, int):  # microseconds since the epoch, UTC: the storage format
        return _EPOCH + timedelta(microseconds=value)
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value.strip())
        except ValueError:
            pass
    raise InvalidInput(f"not an ISO 8601 date or time: {value!r}")


def format_day(iso_or_us: str | int | date | datetime, locale: str, *, format: str = "long") -> str:
    """The calendar day of an ISO 8601 date/time or epoch microseconds, for ``locale``.

    ``format`` is Babel's: ``"long"`` (``"31. Oktober 2026"``) or ``"medium"``
    (``"31.10.2026"``), ``"short"``, ``"full"`` or a pattern.
    """
    return format_date(_moment(iso_or_us).date(), format=format, locale=_locale(locale))


def _last_day(end: str | int | date | datetime) -> date:
    """The last day of a period whose ``end`` is exclusive."""
    return (_moment(end) - timedelta(microseconds=1)).date()


# --------------------------------------------------------------------------- the view


@dataclass(frozen=True, slots=True)
class _Party:
    heading: str
    name: str
    address: tuple[str, ...]
    email: str
    vat_id: str


@dataclass(frozen=True, slots=True)
class _Row:
    description: str
    details: tuple[str, ...]
    quantity: str
    unit_price: str
    amount: str
    kind: str
    is_tier: bool


@dataclass(frozen=True, slots=True)
class _Total:
    label: str
    amount: str
    kind: str  # subtotal | tax | total | credit | due


@dataclass(frozen=True, slots=True)
class _View:
    lang: str
    direction: str
    locale: str
    title: str
    number: str
    is_draft: bool
    stamp: str
    test_mode: bool
    facts: tuple[tuple[str, str], ...]
    seller: _Party | None
    buyer: _Party | None
    rows: tuple[_Row, ...]
    totals: tuple[_Total, ...]
    exchange_rate: str
    credit_note_for: str
    reason: str
    notes: tuple[str, ...]

    @property
    def document_name(self) -> str:
        return f"{self.title} {self.number}"


def _text(value: object) -> str:
    return value.strip() if isinstance(value, str) else ""


def _mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _sequence(value: object) -> Sequence[Any]:
    return value if isinstance(value, list | tuple) else ()


def _join(sep: str, *parts: str) -> str:
    return sep.join(p for p in parts if p)


def _address(party: Mapping[str, Any], loc: Locale) -> tuple[str, ...]:
    address = _mapping(party.get("address"))
    country = _text(address.get("country")) or _text(party.get("country"))
    country_name = loc.territories.get(country.upper(), country) if country else ""
    postal, city, region = (_text(address.get(k)) for k in ("postal_code", "city", "region"))
    if country in {"US", "CA", "AU"}:
        locality = [_join(", ", city, _join(" ", region, postal))]
    elif country == "GB":
        locality = [city, region, postal]
    else:
        locality = [_join(" ", postal, city), region]
    lines = [_text(address.get("line1")), _text(address.get("line2")), *locality, country_name]
    return tuple(line for line in lines if line)


def _party(heading: str, value: object, loc: Locale) -> _Party | None:
    party = _mapping(value)
    if not party:
        return None
    return _Party(
        heading=heading,
        name=_text(party.get("name")),
        address=_address(party, loc),
        email=_text(party.get("email")),
        vat_id=_text(party.get("vat_id")),
    )


def _any_text(text: str) -> bool:
    return True


class _Formatter:
    """Formats one document's amounts, quantities and dates.

    ``drawable`` says whether the output medium can show a string. Where it cannot, dates fall
    back from the long form to a shorter one (``2026/10/31`` for ``2026年10月31日``) and
    amounts name their currency by its ISO code (``INR1,234.50`` for ``₹1,234.50``).
    """

    def __init__(
        self, currency_code: str, locale: str, drawable: Callable[[str], bool] = _any_text
    ) -> None:
        self.currency = currency_code
        self.locale = locale
        self.drawable = drawable

    def money(self, amount: object, *, exact: bool = False) -> str:
        if amount is None or amount == "":
            return ""
        text = format_money(_decimal(amount), self.currency, self.locale, exact=exact)
        if self.drawable(text):
            return text
        return _format_money(amount, self.currency, self.locale, exact=exact, with_code=True)

    def quantity(self, value: object) -> str:
        if value is None or value == "":
            return ""
        return format_quantity(_decimal(value), self.locale)

    def date(self, day: date) -> str:
        forms = [format_day(day, self.locale, format=f) for f in ("long", "medium", "short")]
        return next((form for form in forms if self.drawable(form)), forms[0])

    def day(self, value: object) -> str:
        if value is None or value == "":
            return ""
        if isinstance(value, str | int | date):
            return self.date(_moment(value).date())
        raise InvalidInput(f"not an ISO 8601 date or time: {value!r}")

    def percent(self, rate: object) -> str:
        """A tax rate given in percent (``"19"``, ``"7.7"``) as the locale writes it."""
        return format_percent(
            _decimal(rate).scaleb(-2), locale=_locale(self.locale), decimal_quantization=False
        )


def _period(period: Mapping[str, Any], fmt: _Formatter) -> str:
    start, end = period.get("start"), period.get("end")
    if start is None or start == "":
        return ""
    if not isinstance(start, str | int | date):
        raise InvalidInput(f"not an ISO 8601 date or time: {start!r}")
    first = _moment(start).date()
    if not isinstance(end, str | int | date) or end == "":
        return fmt.date(first)
    last = _last_day(end)
    return fmt.date(first) if last <= first else f"{fmt.date(first)} – {fmt.date(last)}"


def _tier_rows(tiers: Iterable[Any], fmt: _Formatter) -> Iterable[_Row]:
    for raw in tiers:
        tier = _mapping(raw)
        lower, upper = fmt.quantity(tier.get("from")), fmt.quantity(tier.get("up_to"))
        bounds = f"{lower or '0'} – {upper}" if upper else f"{lower or '0'} and above"
        label = _join(": ", _join(" ", "Tier", str(tier.get("tier") or "")), bounds)
        unit_price = fmt.money(tier.get("unit_amount"), exact=True)
        flat = tier.get("flat_amount")
        if flat not in (None, "") and not _decimal(flat).is_zero():
            unit_price = _join(
                " + ", unit_price or fmt.money("0"), f"{fmt.money(flat, exact=True)} flat"
            )
        yield _Row(
            description=label,
            details=(),
            quantity=fmt.quantity(tier.get("quantity")),
            unit_price=unit_price,
            amount=fmt.money(tier.get("amount"), exact=True),
            kind="tier",
            is_tier=True,
        )


def _rows(lines: Iterable[Any], fmt: _Formatter) -> Iterable[_Row]:
    for raw in lines:
        line = _mapping(raw)
        details: list[str] = []
        proration = _mapping(line.get("proration"))
        if proration.get("days") is not None and proration.get("of_days") is not None:
            days, of_days = fmt.quantity(proration["days"]), fmt.quantity(proration["of_days"])
            details.append(f"Prorated: {days} of {of_days} days")
        yield _Row(
            description=_text(line.get("description")) or _text(line.get("kind")),
            details=tuple(details),
            quantity=fmt.quantity(line.get("quantity")),
            unit_price=fmt.money(line.get("unit_amount"), exact=True),
            amount=fmt.money(line.get("amount")),
            kind=_text(line.get("kind")),
            is_tier=False,
        )
        yield from _tier_rows(_sequence(line.get("tiers")), fmt)


def _totals(doc: Mapping[str, Any], fmt: _Formatter, due_label: str) -> Iterable[_Total]:
    if doc.get("subtotal") is not None:
        yield _Total("Subtotal", fmt.money(doc["subtotal"]), "subtotal")
    taxes = [_mapping(t) for t in _sequence(doc.get("taxes"))]
    for tax in taxes:
        rate = fmt.percent(tax["rate"]) if tax.get("rate") not in (None, "") else ""
        jurisdiction = _text(tax.get("jurisdiction"))
        label = _join(" ", _text(tax.get("name")) or "Tax", rate)
        label = _join(" ", label, f"({jurisdiction})" if jurisdiction else "")
        if tax.get("taxable_amount") not in (None, ""):
            label = f"{label} on {fmt.money(tax['taxable_amount'])}"
        yield _Total(label, fmt.money(tax.get("amount")), "tax")
    if not taxes and doc.get("tax") is not None:
        yield _Total("Tax", fmt.money(doc["tax"]), "tax")
    if doc.get("total") is not None:
        yield _Total("Total", fmt.money(doc["total"]), "total")
    credits = [_mapping(c) for c in _sequence(doc.get("credits"))]
    for credit in credits:
        label = _text(credit.get("description")) or "Credits applied"
        yield _Total(label, fmt.money(credit.get("amount")), "credit")
    applied = doc.get("credits_applied")
    if not credits and applied not in (None, "") and not _decimal(applied).is_zero():
        yield _Total("Credits applied", fmt.money(-_decimal(applied)), "credit")
    if doc.get("amount_due") is not None:
        yield _Total(due_label, fmt.money(doc["amount_due"]), "due")


def _exchange_rate(value: object, fmt: _Formatter) -> str:
    rate = _mapping(value)
    if not rate or rate.get("rate") in (None, ""):
        return ""
    source = _join(", ", _text(rate.get("source")), fmt.day(rate.get("as_of")))
    statement = f"Converted from {_text(rate.get('from'))} at {fmt.quantity(rate['rate'])}"
    return f"{statement} ({source})" if source else statement


def _view(doc: Mapping[str, Any], drawable: Callable[[str], bool] = _any_text) -> _View:
    code = doc.get("currency")
    if not isinstance(code, str) or not code:
        raise InvalidInput("an invoice document needs its currency")
    loc = _locale(doc.get("locale"))
    fmt = _Formatter(code, str(loc), drawable)
    is_credit_note = doc.get("object") == "credit_note"
    title = "Credit note" if is_credit_note else "Invoice"
    number = _text(doc.get("number"))
    status = _text(doc.get("status"))
    is_draft = not number or status == "draft"

    facts = [
        (f"{title} number", number or "DRAFT"),
        ("Reference", _text(doc.get("id"))),
        ("Issue date", fmt.day(doc.get("issued_at"))),
        ("Due date", fmt.day(doc.get("due_at"))),
        ("Billing period", _period(_mapping(doc.get("period")), fmt)),
    ]
    plan = _mapping(doc.get("plan"))
    plan_name = _text(plan.get("name")) or _text(plan.get("key"))
    if plan_name:
        version = plan.get("version")
        facts.append(("Plan", f"{plan_name} (version {version})" if version else plan_name))
    facts.append(("Currency", code))

    original = _mapping(doc.get("credit_note_for"))
    original_ref = _text(original.get("number")) or _text(original.get("id"))
    return _View(
        lang=str(loc).replace("_", "-"),
        direction="rtl" if loc.character_order == "right-to-left" else "ltr",
        locale=str(loc),
        title=title,
        number=number or "DRAFT",
        is_draft=is_draft,
        stamp=_STAMPS.get(status, ""),
        test_mode=doc.get("env") == "test",
        facts=tuple((label, value) for label, value in facts if value),
        seller=_party("From", doc.get("seller"), loc),
        buyer=_party("Bill to", doc.get("customer"), loc),
        rows=tuple(_rows(_sequence(doc.get("lines")), fmt)),
        totals=tuple(_totals(doc, fmt, "Amount credited" if is_credit_note else "Amount due")),
        exchange_rate=_exchange_rate(doc.get("exchange_rate"), fmt),
        credit_note_for=f"Credit note for invoice {original_ref}" if original_ref else "",
        reason=_text(doc.get("reason")),
        notes=tuple(n.strip() for n in _sequence(doc.get("notes")) if isinstance(n, str)),
    )


# --------------------------------------------------------------------------- HTML


@cache
def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.PackageLoader("tallyray.invoicing", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def render_html(doc: Mapping[str, Any]) -> str:
    """The invoice or credit note as one self-contained HTML page (inline CSS, no script)."""
    return _environment().get_template("invoice.html").render(v=_view(doc))


# --------------------------------------------------------------------------- PDF

_FONT = "TallyrayVera"
_FONT_BOLD = "TallyrayVera-Bold"

_INK = HexColor("#1a1a1a")
_MUTED = HexColor("#4d4d4d")
_RULE = HexColor("#8c8c8c")
_ALERT = HexColor("#b00020")
_BANNER = HexColor("#ffd54f")
_SHADE = HexColor("#f0f0f0")

#: Characters Babel writes that Vera lacks, and a Vera character that looks the same.
_PDF_SUBSTITUTES = str.maketrans(
    {
        "\u202f": "\xa0",  # narrow no-break space (French thousands) → no-break space
        "\u2007": "\xa0",  # figure space
        "\u2009": " ",  # thin space
        "\u200a": " ",  # hair space
        "\u200e": None,  # left-to-right mark
        "\u200f": None,  # right-to-left mark
        "\u061c": None,  # Arabic letter mark
    }
)


@cache
def _vera() -> frozenset[int]:
    """Registers the Vera family bundled with ReportLab, once; the code points it covers."""
    folder = Path(reportlab.__file__).parent / "fonts"
    faces = [
        (_FONT, "Vera.ttf", 0, 0),
        (_FONT_BOLD, "VeraBd.ttf", 1, 0),
        (f"{_FONT}-Italic", "VeraIt.ttf", 0, 1),
        (f"{_FONT}-BoldItalic", "VeraBI.ttf", 1, 1),
    ]
    for name, file, bold, italic in faces:
        pdfmetrics.registerFont(TTFont(name, str(folder / file)))
        addMapping(_FONT, bold, italic, name)
    glyphs = pdfmetrics.getFont(_FONT).face.charToGlyph
    return frozenset(code for code, glyph in glyphs.items() if glyph)  # 0 is "missing"


@cache
def _cid_font(name: str) -> str:
    pdfmetrics.registerFont(UnicodeCIDFont(name))
    return name


_HANGUL = (("\uac00", "\ud7a3"), ("\u1100", "\u11ff"), ("\u3130", "\u318f"))


def _is_hangul(char: str) -> bool:
    return any(low <= char <= high for low, high in _HANGUL)


def _fallback_font(run: str, locale: str) -> str:
    """The ReportLab CID font for characters Vera does not have."""
    if locale.startswith("ko") or any(_is_hangul(c) for c in run):
        return _cid_font("HYGothic-Medium")
    if locale.startswith("zh"):
        traditional = "Hant" in locale or locale.endswith(("_TW", "_HK", "_MO"))
        return _cid_font("MSung-Light" if traditional else "STSong-Light")
    return _cid_font("HeiseiKakuGo-W5")  # Japanese; also has Greek and Cyrillic


@cache
def _stand_in(char: str) -> str:
    """What the PDF draws for ``char``: itself if Vera has it; else its compatibility form
    (full-width ``￥`` → ``¥``); else the letter without its accent (Vera lacks
    ``ą ę ń ś ź ż ř ő ș``: ``ź`` is drawn ``z``); else ``char``, for a CID font."""
    covered = _vera()
    if ord(char) in covered:
        return char
    compatible = unicodedata.normalize("NFKC", char)
    if compatible and all(ord(c) in covered for c in compatible):
        return compatible
    bare = "".join(c for c in unicodedata.normalize("NFD", char) if not unicodedata.combining(c))
    return bare if bare and all(ord(c) in covered for c in bare) else char


def _pdf_chars(text: str) -> str:
    return "".join(_stand_in(c) for c in text.translate(_PDF_SUBSTITUTES))


def _vera_draws(text: str) -> bool:
    covered = _vera()
    return all(ord(c) in covered for c in _pdf_chars(text))


def _markup(text: str, locale: str) -> str:
    """``text`` as ReportLab paragraph markup: escaped, in Vera wherever Vera can draw it."""
    covered = _vera()
    parts: list[str] = []
    runs = itertools.groupby(_pdf_chars(text), key=lambda c: ord(c) in covered)
    for in_vera, chars in runs:
        run = escape("".join(chars))
        parts.append(run if in_vera else f'<font name="{_fallback_font(run, locale)}">{run}</font>')
    return "".join(parts)


@cache
def _styles() -> Mapping[str, ParagraphStyle]:
    _vera()
    body = ParagraphStyle("body", fontName=_FONT, fontSize=9, leading=12, textColor=_INK)
    bold = ParagraphStyle("bold", parent=body, fontName=_FONT_BOLD)
    small = ParagraphStyle("small", parent=body, fontSize=8, leading=10, textColor=_MUTED)
    big = ParagraphStyle("big", parent=bold, fontSize=11, leading=14)
    alert = ParagraphStyle("alert", parent=bold, fontSize=14, leading=17, textColor=_ALERT)
    return {
        "body": body,
        "bold": bold,
        "small": small,
        "heading": ParagraphStyle("heading", parent=small, fontName=_FONT_BOLD),
        "right": ParagraphStyle("right", parent=body, alignment=TA_RIGHT),
        "right_bold": ParagraphStyle("right_bold", parent=bold, alignment=TA_RIGHT),
        "tier": ParagraphStyle("tier", parent=small, leftIndent=12),
        "tier_right": ParagraphStyle("tier_right", parent=small, alignment=TA_RIGHT),
        "title": ParagraphStyle("title", parent=bold, fontSize=20, leading=24),
        "number": ParagraphStyle("number", parent=bold, fontSize=12, leading=15),
        "draft": alert,
        "stamp": ParagraphStyle("stamp", parent=alert, alignment=TA_CENTER),
        "banner": ParagraphStyle("banner", parent=bold, fontSize=10, leading=13),
        "due": big,
        "due_right": ParagraphStyle("due_right", parent=big, alignment=TA_RIGHT),
        # Paragraphs outside tables, indented like the text in table cells.
        "free": ParagraphStyle("free", parent=body, leftIndent=3, rightIndent=3),
        "free_bold": ParagraphStyle("free_bold", parent=bold, leftIndent=3, rightIndent=3),
    }


def _table(
    rows: Sequence[Sequence[Any]], widths: Sequence[float], style: Sequence[Any] = (), **kw: Any
) -> Table:
    base = [
        ("VALIGN", (0, 0), (-1, -1), "TOP"),
        ("LEFTPADDING", (0, 0), (-1, -1), 3),
        ("RIGHTPADDING", (0, 0), (-1, -1), 3),
        ("TOPPADDING", (0, 0), (-1, -1), 2),
        ("BOTTOMPADDING", (0, 0), (-1, -1), 2),
    ]
    return Table(rows, colWidths=list(widths), style=TableStyle([*base, *style]), **kw)


class _PdfLayout:
    """The platypus story for one :class:`_View`."""

    def __init__(self, view: _View, width: float) -> None:
        self.view = view
        self.width = width
        self.styles = _styles()

    def p(self, text: str, style: str = "body") -> Paragraph:
        return Paragraph(_markup(text, self.view.locale), self.styles[style])

    def story(self) -> list[Any]:
        return [
            *self.banner(),
            self.header(),
            *self.facts(),
            self.parties(),
            *self.lines(),
            *self.totals(),
            *self.statements(),
        ]

    def banner(self) -> list[Any]:
        if not self.view.test_mode:
            return []
        text = "TEST MODE: made in the test environment, not a request for payment."
        style = [("BACKGROUND", (0, 0), (-1, -1), _BANNER), ("BOX", (0, 0), (-1, -1), 1, _INK)]
        return [_table([[self.p(text, "banner")]], [self.width], style), Spacer(1, 8)]

    def header(self) -> Table:
        v = self.view
        left = [self.p(v.title, "title"), self.p(v.number, "draft" if v.is_draft else "number")]
        right = [self.p(v.stamp, "stamp")] if v.stamp else []
        style = [("BOX", (1, 0), (1, 0), 2, _ALERT), ("VALIGN", (1, 0), (1, 0), "MIDDLE")]
        widths = [self.width * 0.7, self.width * 0.3]
        return _table([[left, right]], widths, style if v.stamp else ())

    def facts(self) -> list[Any]:
        v = self.view
        rows = [[self.p(label, "small"), self.p(value)] for label, value in v.facts]
        flow: list[Any] = [Spacer(1, 6), _table(rows, [self.width * 0.25, self.width * 0.75])]
        if v.credit_note_for:
            flow.append(self.p(v.credit_note_for, "free_bold"))
        if v.reason:
            flow.append(self.p(f"Reason: {v.reason}", "free"))
        return [*flow, Spacer(1, 8)]

    def party(self, party: _Party | None) -> list[Paragraph]:
        if party is None:
            return []
        cells = [self.p(party.heading.upper(), "heading"), self.p(party.name, "bold")]
        cells += [self.p(line) for line in party.address]
        if party.email:
            cells.append(self.p(party.email))
        if party.vat_id:
            cells.append(self.p(f"VAT ID: {party.vat_id}"))
        return cells

    def parties(self) -> Table:
        row = [self.party(self.view.seller), self.party(self.view.buyer)]
        style = [("BOTTOMPADDING", (0, 0), (-1, -1), 10)]
        return _table([row], [self.width / 2, self.width / 2], style)

    def lines(self) -> list[Any]:
        header = ["Description", "Quantity", "Unit price", "Amount"]
        rows: list[list[Any]] = [
            [self.p(header[0], "bold"), *(self.p(h, "right_bold") for h in header[1:])]
        ]
        for row in self.view.rows:
            if row.is_tier:
                description: Any = self.p(row.description, "tier")
                right = "tier_right"
            else:
                description = [self.p(row.description)]
                description += [self.p(detail, "small") for detail in row.details]
                right = "right"
            figures = (row.quantity, row.unit_price, row.amount)
            rows.append([description, *(self.p(f, right) for f in figures)])
        style = [
            ("LINEBELOW", (0, 0), (-1, 0), 1, _INK),
            ("LINEBELOW", (0, -1), (-1, -1), 0.5, _RULE),
        ]
        widths = [self.width * share for share in (0.44, 0.17, 0.21, 0.18)]
        return [_table(rows, widths, style, repeatRows=1), Spacer(1, 6)]

    def totals(self) -> list[Any]:
        rows, style = [], []
        for i, total in enumerate(self.view.totals):
            if total.kind == "due":
                label, amount = "due", "due_right"
                style += [
                    ("LINEABOVE", (0, i), (-1, i), 1.5, _INK),
                    ("BACKGROUND", (0, i), (-1, i), _SHADE),
                ]
            elif total.kind == "total":
                label, amount = "bold", "right_bold"
                style.append(("LINEABOVE", (0, i), (-1, i), 0.5, _RULE))
            else:
                label, amount = "body", "right"
            rows.append([self.p(total.label, label), self.p(total.amount, amount)])
        if not rows:
            return []
        widths = [self.width * 0.44, self.width * 0.21]
        return [KeepTogether([_table(rows, widths, style, hAlign="RIGHT")])]

    def statements(self) -> list[Any]:
        v = self.view
        flow: list[Any] = [Spacer(1, 10)]
        for text in (v.exchange_rate, *v.notes):
            if text:
                flow += [self.p(text, "free"), Spacer(1, 4)]
        return flow

    def decorate(self, canvas: Any, template: Any) -> None:
        """Every page: the DRAFT watermark, the document name and the page number."""
        v = self.view
        page_width, page_height = template.pagesize
        canvas.saveState()
        if v.is_draft:
            canvas.saveState()
            canvas.setFont(_FONT_BOLD, 96)
            canvas.setFillGray(0.9)
            canvas.translate(page_width / 2, page_height / 2)
            canvas.rotate(40)
            canvas.drawCentredString(0, 0, "DRAFT")
            canvas.restoreState()
        canvas.setFont(_FONT, 7.5)
        canvas.setFillColor(_MUTED)
        footer = _join(" · ", v.document_name, "TEST MODE" if v.test_mode else "")
        if _vera_draws(footer):
            canvas.drawString(template.leftMargin, 10 * mm, _pdf_chars(footer))
        page = f"Page {canvas.getPageNumber()}"
        canvas.drawRightString(page_width - template.rightMargin, 10 * mm, page)
        canvas.restoreState()


def render_pdf(doc: Mapping[str, Any]) -> bytes:
    """The invoice or credit note as an A4 PDF: the same bytes for the same document."""
    view = _view(doc, drawable=_vera_draws)
    buffer = io.BytesIO()
    template = SimpleDocTemplate(
        buffer,
        pagesize=A4,
        leftMargin=18 * mm,
        rightMargin=18 * mm,
        topMargin=18 * mm,
        bottomMargin=20 * mm,
        title=view.document_name,
        author=view.seller.name if view.seller else "",
        subject=view.title,
        creator="Tallyray",
        lang=view.lang,
        invariant=1,
    )
    layout = _PdfLayout(view, template.width)
    template.build(layout.story(), onFirstPage=layout.decorate, onLaterPages=layout.decorate)
    return buffer.getvalue()
