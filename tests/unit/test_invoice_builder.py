"""Building an invoice document from a closed period (tallyray/invoicing/builder.py).

The steps run in a fixed order: base fee (prorated) → usage → minimum true-up (prorated) →
discount → tax on the subtotal → credits against the total. Every line is rounded once to the
customer's currency; subtotal, tax and total are sums of rounded lines.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from decimal import ROUND_HALF_EVEN, Decimal, localcontext
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tallyray.errors import CurrencyError
from tallyray.invoicing.builder import (
    Discount,
    ExchangeRate,
    InvoiceInput,
    Segment,
    build_invoice,
)
from tallyray.invoicing.tax import (
    NoTax,
    Party,
    TaxDecision,
    build_engine,
    parse_tax_config,
)
from tallyray.pricing.config import PricingConfig, parse_config
from tallyray.pricing.events import Event
from tallyray.pricing.meters import Usage
from tallyray.pricing.money import DEFAULT_ROUNDING, PRICING_CONTEXT, currency
from tallyray.pricing.periods import Period, Proration

D = Decimal
US = 1_000_000


def us(year: int, month: int, day: int) -> int:
    return int(datetime(year, month, day, tzinfo=UTC).timestamp()) * US


NOV = Period(us(2026, 11, 1), us(2026, 12, 1))  # 30 days
ON = NOV.end - 1  # the supply date: the period's last moment, 30 Nov 2026

PRO_CHARGES: list[dict[str, Any]] = [
    {
        "meter": "input_tokens",
        "filter": {"model": "gpt-4o"},
        "model": "per_unit",
        "unit_amount": "0.0000025",
    },
    {
        "meter": "input_tokens",
        "filter": {"model": "gpt-4o-mini"},
        "model": "graduated",
        "description": "gpt-4o-mini input tokens",
        "tiers": [
            {"up_to": 1_000_000, "unit_amount": "0"},
            {"up_to": 10_000_000, "unit_amount": "0.000002"},
            {"up_to": None, "unit_amount": "0.0000015", "flat_amount": "5.00"},
        ],
    },
    {
        "meter": "requests",
        "model": "package",
        "package_size": 1000,
        "package_amount": "2.00",
        "description": "API requests (per 1,000)",
    },
]

CONFIG: dict[str, Any] = {
    "meters": [
        {
            "key": "input_tokens",
            "event_type": "llm",
            "aggregation": "sum",
            "value": "input_tokens",
            "group_by": ["model"],
        },
        {"key": "requests", "event_type": "llm", "aggregation": "count"},
        {
            "key": "units",
            "event_type": "usage",
            "aggregation": "sum",
            "value": "units",
            "group_by": ["sku"],
        },
    ],
    "plans": [
        {
            "key": "pro",
            "name": "Pro",
            "currency": "EUR",
            "interval": "month",
            "base_fee": "49.00",
            "minimum": "100.00",
            "charges": PRO_CHARGES,
        },
        {
            "key": "pro-usd",
            "name": "Pro (USD)",
            "currency": "USD",
            "interval": "month",
            "base_fee": "49.00",
            "minimum": "100.00",
            "charges": PRO_CHARGES,
        },
        {
            "key": "basic",
            "name": "Basic",
            "currency": "EUR",
            "interval": "month",
            "base_fee": "30.00",
        },
        {
            "key": "flat",
            "name": "Flat",
            "currency": "EUR",
            "interval": "month",
            "base_fee": "100.00",
        },
        {
            "key": "jpy",
            "name": "Tokyo",
            "currency": "JPY",
            "interval": "month",
            "base_fee": "500",
            "charges": [{"meter": "units", "model": "per_unit", "unit_amount": "0.1234"}],
        },
        {
            "key": "kwd",
            "name": "Kuwait",
            "currency": "KWD",
            "interval": "month",
            "base_fee": "10.500",
            "charges": [{"meter": "units", "model": "per_unit", "unit_amount": "0.0012345"}],
        },
        {
            "key": "halves",
            "name": "Halves",
            "currency": "EUR",
            "interval": "month",
            "charges": [
                {
                    "meter": "units",
                    "filter": {"sku": [sku]},
                    "model": "per_unit",
                    "unit_amount": "0.005",
                }
                for sku in ("a", "b", "c")
            ],
        },
    ],
}

_CONFIG = parse_config(CONFIG)
NO_TAX = NoTax().decide(Party(None), Party(None), ON)
DE_VAT = build_engine(
    parse_tax_config({"engine": "eu_vat", "seller_country": "DE", "seller_vat_id": "DE136695976"})
).decide(Party(None), Party("DE"), ON)  # a German buyer: domestic VAT, 19 %
REVERSE_CHARGE = TaxDecision(
    "intra_eu_reverse_charge", "VAT", "FR", D(0), "Reverse charge", {"rule": "reverse_charge"}
)
CA_SALES_TAX = TaxDecision("jurisdiction", "Sales tax", "US-CA", D("7.25"), None, {})
USD_EUR = ExchangeRate("USD", "EUR", D("0.9213"), "ecb", us(2026, 11, 30))
USD_JPY = ExchangeRate("USD", "JPY", D("155.27"), "manual", us(2026, 11, 30))


@pytest.fixture(scope="module")
def config() -> PricingConfig:
    return _CONFIG


def usage_of(
    config: PricingConfig,
    gpt4o: int = 0,
    mini: int = 0,
    requests: int = 2,
    units: Mapping[str, int] | None = None,
) -> Usage:
    """Usage folded from events: ``gpt4o`` / ``mini`` input tokens over ``requests`` LLM
    events, and ``units`` per sku."""
    assert requests >= 2
    evts = [
        Event("a", "acme", "llm", ON, {"model": "gpt-4o", "input_tokens": gpt4o}),
        Event("b", "acme", "llm", ON, {"model": "gpt-4o-mini", "input_tokens": mini}),
    ]
    evts += [
        Event(f"r{i}", "acme", "llm", ON, {"model": "o1", "input_tokens": 0})
        for i in range(requests - 2)
    ]
    evts += [
        Event(f"u-{sku}", "acme", "usage", ON, {"sku": sku, "units": n})
        for sku, n in (units or {}).items()
    ]
    return config.meters.fold(evts)


def invoice(
    config: PricingConfig,
    plan: str | Sequence[tuple[str, Proration]],
    usage: Usage | None = None,
    *,
    code: str = "EUR",
    tax: TaxDecision = NO_TAX,
    burned: Mapping[str, str] | None = None,
    discount: Discount | None = None,
    rate: ExchangeRate | None = None,
    rounding: str = DEFAULT_ROUNDING,
) -> dict[str, Any]:
    """The invoice of November for one plan (whole period), or for several prorated plans."""
    parts = [(plan, Proration(30, 30))] if isinstance(plan, str) else list(plan)
    segments = [
        Segment(config.plan(key), 1, part, discount if i == len(parts) - 1 else None)
        for i, (key, part) in enumerate(parts)
    ]
    return build_invoice(
        InvoiceInput(
            customer={"id": "acme", "name": "Acme Corp", "country": "DE"},
            seller={"name": "Tallyray GmbH", "country": "DE"},
            locale="de_DE",
            currency=currency(code),
            period=NOV,
            segments=segments,
            usage=usage,
            meters=config.meters.meters,
            burned={k: D(v) for k, v in (burned or {}).items()},
            tax=tax,
            exchange_rate=rate,
            rounding=rounding,
        )
    )


def amounts(doc: Mapping[str, Any]) -> list[tuple[str, str]]:
    return [(line["kind"], line["amount"]) for line in doc["lines"]]


def totals(doc: Mapping[str, Any]) -> tuple[str, str, str, str, str]:
    return (
        doc["subtotal"],
        doc["tax"],
        doc["total"],
        doc["credits_applied"],
        doc["amount_due"],
    )


# --- base fee, usage and the minimum ---------------------------------------------------------


@pytest.mark.parametrize(
    ("usage_args", "expected_lines", "subtotal"),
    [
        pytest.param(
            {"gpt4o": 2_000_000, "mini": 12_000_000, "requests": 1_500},
            [
                ("base_fee", "49.00"),
                ("usage", "5.00"),  # 2,000,000 × 0.0000025 = 5.00
                # 1,000,000 × 0 + 9,000,000 × 0.000002 + (2,000,000 × 0.0000015 + 5.00) = 26.00
                ("usage", "26.00"),
                ("usage", "4.00"),  # ⌈1,500 / 1,000⌉ = 2 packages × 2.00 = 4.00
                ("minimum", "16.00"),  # 49 + 5 + 26 + 4 = 84.00 < 100.00 → 16.00
            ],
            "100.00",
            id="below-the-minimum-true-up",
        ),
        pytest.param(
            {"gpt4o": 20_000_000, "mini": 12_000_000, "requests": 1_500},
            [
                ("base_fee", "49.00"),
                ("usage", "50.00"),  # 20,000,000 × 0.0000025 = 50.00
                ("usage", "26.00"),
                ("usage", "4.00"),
                # 49 + 50 + 26 + 4 = 129.00 ≥ 100.00: no true-up
            ],
            "129.00",
            id="above-the-minimum",
        ),
        pytest.param(
            {"gpt4o": 8_400_000, "mini": 12_000_000, "requests": 1_500},
            [
                ("base_fee", "49.00"),
                ("usage", "21.00"),  # 8,400,000 × 0.0000025 = 21.00
                ("usage", "26.00"),
                ("usage", "4.00"),
                # 49 + 21 + 26 + 4 = 100.00: exactly the minimum, no true-up line
            ],
            "100.00",
            id="exactly-the-minimum",
        ),
        pytest.param(
            {"gpt4o": 0, "mini": 1_000_000, "requests": 2},
            [
                ("base_fee", "49.00"),
                ("usage", "0.00"),
                ("usage", "0.00"),  # the first million is free
                ("usage", "2.00"),  # 2 requests: ⌈2 / 1,000⌉ = 1 package
                ("minimum", "49.00"),  # 100.00 − (49.00 + 2.00) = 49.00
            ],
            "100.00",
            id="free-tier-only",
        ),
    ],
)
def test_pro_plan_lines(
    config: PricingConfig,
    usage_args: dict[str, int],
    expected_lines: list[tuple[str, str]],
    subtotal: str,
) -> None:
    doc = invoice(config, "pro", usage_of(config, **usage_args))
    assert amounts(doc) == expected_lines
    # no discount, tax or credits: the subtotal is the total and is due
    assert (doc["subtotal"], doc["total"], doc["amount_due"]) == (subtotal, subtotal, subtotal)


def test_no_usage_bills_the_base_fee_and_the_minimum(config: PricingConfig) -> None:
    doc = invoice(config, "pro", usage=None)
    assert amounts(doc) == [
        ("base_fee", "49.00"),
        ("usage", "0.00"),
        ("usage", "0.00"),
        ("usage", "0.00"),
        ("minimum", "51.00"),  # 100.00 − 49.00
    ]
    assert [line.get("quantity") for line in doc["lines"]] == [None, "0", "0", "0", None]
    assert doc["subtotal"] == "100.00"


def test_lines_are_itemized(config: PricingConfig) -> None:
    doc = invoice(config, "pro", usage_of(config, gpt4o=2_000_000, mini=12_000_000, requests=1_500))
    base, gpt4o, mini, requests, minimum = doc["lines"]
    assert base == {
        "kind": "base_fee",
        "description": "Pro base fee",
        "plan": "pro",
        "amount": "49.00",
        "precise_amount": "49",
    }
    assert gpt4o == {
        "kind": "usage",
        "description": "input_tokens (model=gpt-4o)",
        "meter": "input_tokens",
        "quantity": "2000000",
        "unit_amount": "0.0000025",
        "amount": "5.00",
        "precise_amount": "5",
    }
    assert mini["description"] == "gpt-4o-mini input tokens"
    assert [
        (t["tier"], t["quantity"], t["unit_amount"], t["flat_amount"], t["amount"])
        for t in mini["tiers"]
    ] == [
        (1, "1000000", "0", "0", "0"),  # 1,000,000 × 0
        (2, "9000000", "0.000002", "0", "18"),  # 9,000,000 × 0.000002 = 18
        (3, "2000000", "0.0000015", "5", "8"),  # 2,000,000 × 0.0000015 + 5 = 8
    ]
    assert (requests["quantity"], requests["unit_amount"]) == ("1500", "2")
    assert requests["tiers"][0]["quantity"] == "2"  # two packages
    assert minimum == {
        "kind": "minimum",
        "description": "Minimum commitment true-up (minimum 100.00)",
        "amount": "16.00",
        "precise_amount": "16.00",
    }
    assert doc["plan"] == {"key": "pro", "version": 1, "name": "Pro", "currency": "EUR"}
    assert doc["period"] == {"start": "2026-11-01T00:00:00Z", "end": "2026-12-01T00:00:00Z"}
    assert (doc["object"], doc["currency"], doc["locale"]) == ("invoice", "EUR", "de_DE")
    assert doc["customer"]["id"] == "acme" and doc["seller"]["name"] == "Tallyray GmbH"
    assert doc["exchange_rate"] is None


# --- proration -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("parts", "expected_lines"),
    [
        pytest.param(
            [("basic", Proration(17, 30))],
            [("base_fee", "17.00")],  # 30.00 × 17 / 30 = 17.00
            id="basic-17-of-30",
        ),
        pytest.param(
            [("basic", Proration(30, 30))],
            [("base_fee", "30.00")],
            id="basic-whole",
        ),
        pytest.param(
            [("pro", Proration(17, 30))],
            [
                ("base_fee", "27.77"),  # 49.00 × 17 / 30 = 27.7666… → 27.77
                ("usage", "0.00"),
                ("usage", "0.00"),
                ("usage", "0.00"),
                # minimum 100.00 × 17 / 30 = 56.666… → 56.67; 56.67 − 27.77 = 28.90
                ("minimum", "28.90"),
            ],
            id="pro-17-of-30-minimum-prorated",
        ),
        pytest.param(
            # a plan change: 14 days of Basic, then 17 of Pro (a 31-day month)
            [("basic", Proration(14, 31)), ("pro", Proration(17, 31))],
            [
                ("base_fee", "13.55"),  # 30.00 × 14 / 31 = 13.5483… → 13.55
                ("base_fee", "26.87"),  # 49.00 × 17 / 31 = 26.8709… → 26.87
                ("usage", "0.00"),  # usage is rated under the last plan, Pro
                ("usage", "0.00"),
                ("usage", "0.00"),
                # Pro's minimum 100.00 × 17 / 31 = 54.8387… → 54.84 (Basic has none);
                # 54.84 − (13.55 + 26.87) = 14.42
                ("minimum", "14.42"),
            ],
            id="plan-change-basic-then-pro",
        ),
        pytest.param(
            [("basic", Proration(0, 30)), ("flat", Proration(30, 30))],
            [("base_fee", "100.00")],  # a segment with no days bills nothing
            id="zero-day-segment",
        ),
    ],
)
def test_proration(
    config: PricingConfig,
    parts: list[tuple[str, Proration]],
    expected_lines: list[tuple[str, str]],
) -> None:
    doc = invoice(config, parts)
    assert amounts(doc) == expected_lines
    prorated = [line.get("proration") for line in doc["lines"] if line["kind"] == "base_fee"]
    assert prorated == [None if part.whole else part.to_json() for _, part in parts if part.days]


def test_a_prorated_base_fee_keeps_its_precise_amount(config: PricingConfig) -> None:
    (line,) = invoice(config, [("basic", Proration(17, 30))])["lines"]
    assert line["proration"] == {"days": 17, "of_days": 30}
    assert line["precise_amount"] == "17"  # 30.00 × 17 / 30 = 17 exactly
    (line, *_) = invoice(config, [("pro", Proration(17, 30))])["lines"]
    # 49 × 17 / 30 = 833 / 30 = 27.7666… at the pricing context's 60 digits
    assert line["precise_amount"].startswith("27.76666666666")


# --- discount, tax and credits, in that order --------------------------------------------------


@pytest.mark.parametrize(
    ("discount", "tax", "expected_discount", "expected_totals"),
    [
        # 100.00 − 10 % = 90.00; VAT 19 % of 90.00 = 17.10; 90.00 + 17.10 = 107.10
        pytest.param(
            Discount("Launch", percent=D(10)),
            DE_VAT,
            "-10.00",
            ("90.00", "17.10", "107.10"),
            id="10-percent-then-vat",
        ),
        # 12.5 % of 100.00 = 12.50; 87.50 × 19 % = 16.625 → 16.63 (half up)
        pytest.param(
            Discount("Eighth", percent=D("12.5")),
            DE_VAT,
            "-12.50",
            ("87.50", "16.63", "104.13"),
            id="12.5-percent-tax-rounds-half-up",
        ),
        # 33.333 % of 100.00 = 33.333 → 33.33; 66.67 × 19 % = 12.6673 → 12.67
        pytest.param(
            Discount("Third", percent=D("33.333")),
            DE_VAT,
            "-33.33",
            ("66.67", "12.67", "79.34"),
            id="odd-percent-rounded",
        ),
        # a fixed 25.00: 75.00 × 19 % = 14.25
        pytest.param(
            Discount("Voucher", amount=D(25)),
            DE_VAT,
            "-25.00",
            ("75.00", "14.25", "89.25"),
            id="fixed-amount",
        ),
        # a fixed 150.00 is capped at the 100.00 charged: nothing left to tax
        pytest.param(
            Discount("Big voucher", amount=D(150)),
            DE_VAT,
            "-100.00",
            ("0.00", "0.00", "0.00"),
            id="fixed-amount-capped",
        ),
        pytest.param(
            Discount("Free", percent=D(100)),
            DE_VAT,
            "-100.00",
            ("0.00", "0.00", "0.00"),
            id="100-percent",
        ),
        # no discount: VAT on the whole 100.00
        pytest.param(None, DE_VAT, None, ("100.00", "19.00", "119.00"), id="no-discount"),
        # reverse charge: a 0 % tax line, and its note on the invoice
        pytest.param(None, REVERSE_CHARGE, None, ("100.00", "0.00", "100.00"), id="reverse-charge"),
        # sales tax 7.25 % of 90.00 = 6.525 → 6.53
        pytest.param(
            Discount("Launch", percent=D(10)),
            CA_SALES_TAX,
            "-10.00",
            ("90.00", "6.53", "96.53"),
            id="sales-tax-7.25",
        ),
    ],
)
def test_discount_then_tax(
    config: PricingConfig,
    discount: Discount | None,
    tax: TaxDecision,
    expected_discount: str | None,
    expected_totals: tuple[str, str, str],
) -> None:
    doc = invoice(config, "flat", tax=tax, discount=discount)
    expected_lines = [("base_fee", "100.00")]
    if expected_discount is not None:
        expected_lines.append(("discount", expected_discount))
    assert amounts(doc) == expected_lines
    subtotal, tax_amount, total = expected_totals
    assert (doc["subtotal"], doc["tax"], doc["total"]) == expected_totals
    (tax_line,) = doc["taxes"]
    assert tax_line == {
        "name": tax.name,
        "jurisdiction": tax.jurisdiction,
        "rate": format(tax.rate.normalize(), "f"),
        "kind": tax.kind,
        "taxable_amount": subtotal,  # tax on the subtotal, after the discount
        "amount": tax_amount,
    }
    assert doc["notes"] == ([tax.note] if tax.note else [])
    assert doc["tax_decision"] == tax.to_json()


def test_the_steps_run_in_order(config: PricingConfig) -> None:
    usage = usage_of(config, gpt4o=2_000_000, mini=12_000_000, requests=1_500)
    doc = invoice(
        config,
        "pro",
        usage,
        tax=DE_VAT,
        discount=Discount("Launch", percent=D(10)),
        burned={"grant-1": "20.00"},
    )
    assert amounts(doc) == [
        ("base_fee", "49.00"),
        ("usage", "5.00"),
        ("usage", "26.00"),
        ("usage", "4.00"),
        ("minimum", "16.00"),  # lifts 84.00 to the 100.00 minimum first …
        ("discount", "-10.00"),  # … then 10 % off the 100.00 (the true-up included)
    ]
    # 90.00 subtotal; VAT 19 % = 17.10; total 107.10; 20.00 prepaid credit → 87.10 due
    assert totals(doc) == ("90.00", "17.10", "107.10", "20.00", "87.10")
    assert doc["credits"] == [
        {"grant_id": "grant-1", "description": "Prepaid credits", "amount": "-20.00"}
    ]


def test_only_the_last_segments_discount_applies(config: PricingConfig) -> None:
    plan = config.plan("flat")
    segments = [
        Segment(plan, 1, Proration(15, 30), Discount("Old", percent=D(50))),
        Segment(plan, 2, Proration(15, 30), Discount("New", percent=D(10))),
    ]
    doc = build_invoice(
        InvoiceInput({}, {}, "en", currency("EUR"), NOV, segments, None, {}, {}, NO_TAX)
    )
    # 100 × 15/30 = 50.00 twice; 10 % of 100.00 = 10.00
    assert amounts(doc) == [("base_fee", "50.00"), ("base_fee", "50.00"), ("discount", "-10.00")]
    assert doc["lines"][-1]["description"] == "New"
    assert doc["plan"]["version"] == 2


@pytest.mark.parametrize(
    ("burned", "expected_credits", "credits_applied", "amount_due"),
    [
        # total 100.00 + 19 % = 119.00; 150.00 burned pays it all, the rest is not a refund
        pytest.param({"g1": "150"}, [("g1", "-119.00")], "119.00", "0.00", id="credits-over-total"),
        pytest.param(
            {"g1": "119"}, [("g1", "-119.00")], "119.00", "0.00", id="credits-equal-total"
        ),
        pytest.param({"g1": "20"}, [("g1", "-20.00")], "20.00", "99.00", id="credits-part"),
        # two grants, by grant id: the first pays 100.00, the second the remaining 19.00 of 50
        pytest.param(
            {"g2": "50", "g1": "100"},
            [("g1", "-100.00"), ("g2", "-19.00")],
            "119.00",
            "0.00",
            id="two-grants-capped",
        ),
        # a grant that comes after the total is paid gets no line
        pytest.param(
            {"a": "119", "b": "5"}, [("a", "-119.00")], "119.00", "0.00", id="nothing-left-for-b"
        ),
        # burned credit is rounded like a line: 10.005 → 10.01 (half up)
        pytest.param({"g1": "10.005"}, [("g1", "-10.01")], "10.01", "108.99", id="credit-rounded"),
    ],
)
def test_credits_pay_the_total_after_tax(
    config: PricingConfig,
    burned: dict[str, str],
    expected_credits: list[tuple[str, str]],
    credits_applied: str,
    amount_due: str,
) -> None:
    doc = invoice(config, "flat", tax=DE_VAT, burned=burned)
    # credits come after tax: the taxable amount is the full 100.00
    assert (doc["subtotal"], doc["tax"], doc["total"]) == ("100.00", "19.00", "119.00")
    assert [(c["grant_id"], c["amount"]) for c in doc["credits"]] == expected_credits
    assert (doc["credits_applied"], doc["amount_due"]) == (credits_applied, amount_due)


# --- rounding per currency ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("plan", "code", "units", "rounding", "expected_lines", "subtotal"),
    [
        # JPY has no minor unit: 1,000 × 0.1234 = 123.4 → 123
        pytest.param(
            "jpy",
            "JPY",
            {"x": 1_000},
            DEFAULT_ROUNDING,
            [("base_fee", "500"), ("usage", "123")],
            "623",
            id="jpy-123.4",
        ),
        # 12,500 × 0.1234 = 1,542.5 → 1,543 half up …
        pytest.param(
            "jpy",
            "JPY",
            {"x": 12_500},
            DEFAULT_ROUNDING,
            [("base_fee", "500"), ("usage", "1543")],
            "2043",
            id="jpy-half-up",
        ),
        # … and 1,542 half even
        pytest.param(
            "jpy",
            "JPY",
            {"x": 12_500},
            ROUND_HALF_EVEN,
            [("base_fee", "500"), ("usage", "1542")],
            "2042",
            id="jpy-half-even",
        ),
        # 4 × 0.1234 = 0.4936 → 0
        pytest.param(
            "jpy",
            "JPY",
            {"x": 4},
            DEFAULT_ROUNDING,
            [("base_fee", "500"), ("usage", "0")],
            "500",
            id="jpy-below-one-yen",
        ),
        # KWD has 3 decimals: 1,000 × 0.0012345 = 1.2345 → 1.235 half up, 1.234 half even
        pytest.param(
            "kwd",
            "KWD",
            {"x": 1_000},
            DEFAULT_ROUNDING,
            [("base_fee", "10.500"), ("usage", "1.235")],
            "11.735",
            id="kwd-half-up",
        ),
        pytest.param(
            "kwd",
            "KWD",
            {"x": 1_000},
            ROUND_HALF_EVEN,
            [("base_fee", "10.500"), ("usage", "1.234")],
            "11.734",
            id="kwd-half-even",
        ),
        # EUR: three lines of 0.005 each round to 0.01 each; the subtotal is the sum of the
        # rounded lines, 0.03, not the rounded sum 0.015 → 0.02
        pytest.param(
            "halves",
            "EUR",
            {"a": 1, "b": 1, "c": 1},
            DEFAULT_ROUNDING,
            [("usage", "0.01"), ("usage", "0.01"), ("usage", "0.01")],
            "0.03",
            id="eur-sum-of-rounded-lines",
        ),
    ],
)
def test_rounding_per_currency_at_line_level(
    config: PricingConfig,
    plan: str,
    code: str,
    units: dict[str, int],
    rounding: str,
    expected_lines: list[tuple[str, str]],
    subtotal: str,
) -> None:
    doc = invoice(config, plan, usage_of(config, units=units), code=code, rounding=rounding)
    assert amounts(doc) == expected_lines
    assert (doc["currency"], doc["subtotal"], doc["total"], doc["amount_due"]) == (
        code,
        subtotal,
        subtotal,
        subtotal,
    )


def test_precise_amounts_are_kept_beside_rounded_ones(config: PricingConfig) -> None:
    doc = invoice(config, "jpy", usage_of(config, units={"x": 12_500}), code="JPY")
    assert doc["lines"][1]["precise_amount"] == "1542.5"  # 12,500 × 0.1234
    doc = invoice(config, "kwd", usage_of(config, units={"x": 1_000}), code="KWD")
    assert doc["lines"][1]["precise_amount"] == "1.2345"


@pytest.mark.parametrize(
    ("code", "burned", "expected"),
    [
        # JPY: 500 + 10 % = 550 (the JPY plan's base fee only)
        pytest.param("JPY", {"g": "600"}, ("500", "50", "550", "550", "0"), id="jpy-credits"),
        # KWD: 10.500 + 10 % = 11.550; 1.2345 burned → 1.235 (half up)
        pytest.param(
            "KWD",
            {"g": "1.2345"},
            ("10.500", "1.050", "11.550", "1.235", "10.315"),
            id="kwd-credits",
        ),
    ],
)
def test_tax_and_credits_round_to_the_currency(
    config: PricingConfig, code: str, burned: dict[str, str], expected: tuple[str, ...]
) -> None:
    ten_percent = TaxDecision("jurisdiction", "VAT", "XX", D(10), None, {})
    plan = "jpy" if code == "JPY" else "kwd"
    doc = invoice(config, plan, None, code=code, tax=ten_percent, burned=burned)
    assert totals(doc) == expected


# --- currency conversion ---------------------------------------------------------------------


def test_a_usd_plan_billed_in_eur(config: PricingConfig) -> None:
    usage = usage_of(config, gpt4o=2_000_000, mini=12_000_000, requests=1_500)
    doc = invoice(config, "pro-usd", usage, rate=USD_EUR)
    assert amounts(doc) == [
        ("base_fee", "45.14"),  # 49 USD × 0.9213 = 45.1437 → 45.14 EUR
        ("usage", "4.61"),  # 5 USD × 0.9213 = 4.6065 → 4.61 (half up)
        ("usage", "23.95"),  # 26 USD × 0.9213 = 23.9538 → 23.95
        ("usage", "3.69"),  # 4 USD × 0.9213 = 3.6852 → 3.69
        # minimum 100 USD × 0.9213 = 92.13 EUR; 92.13 − (45.14 + 4.61 + 23.95 + 3.69 = 77.39)
        ("minimum", "14.74"),
    ]
    assert doc["subtotal"] == "92.13"
    assert (doc["currency"], doc["plan"]["currency"]) == ("EUR", "USD")
    assert doc["exchange_rate"] == {
        "from": "USD",
        "to": "EUR",
        "rate": "0.9213",
        "source": "ecb",
        "as_of": "2026-11-30T00:00:00Z",
    }
    base, gpt4o, mini, requests, minimum = doc["lines"]
    assert base["precise_amount"] == "45.1437"
    assert gpt4o["unit_amount"] == "0.00000230325"  # 0.0000025 × 0.9213
    assert gpt4o["precise_amount"] == "4.6065"
    assert requests["unit_amount"] == "1.8426"  # 2.00 × 0.9213
    assert [(t["unit_amount"], t["flat_amount"], t["amount"]) for t in mini["tiers"]] == [
        ("0", "0", "0"),
        ("0.0000018426", "0", "16.5834"),  # 0.000002 × 0.9213; 18 × 0.9213
        ("0.00000138195", "4.6065", "7.3704"),  # 0.0000015 × 0.9213; 5 × 0.9213; 8 × 0.9213
    ]
    # quantities are not converted
    assert [t["quantity"] for t in mini["tiers"]] == ["1000000", "9000000", "2000000"]
    assert minimum["description"] == "Minimum commitment true-up (minimum 92.13)"


@pytest.mark.parametrize(
    ("rate", "code", "discount", "expected_lines"),
    [
        # 49 USD × 155.27 = 7,608.23 → 7,608 JPY; the minimum 15,527 − 7,608 = 7,919
        pytest.param(
            USD_JPY,
            "JPY",
            None,
            [
                ("base_fee", "7608"),
                ("usage", "0"),
                ("usage", "0"),
                ("usage", "0"),
                ("minimum", "7919"),
            ],
            id="usd-to-jpy",
        ),
        # a fixed discount is in the plan's currency: 10 USD × 0.9213 = 9.213 → 9.21 EUR
        pytest.param(
            USD_EUR,
            "EUR",
            Discount("Voucher", amount=D(10)),
            [
                ("base_fee", "45.14"),
                ("usage", "0.00"),
                ("usage", "0.00"),
                ("usage", "0.00"),
                ("minimum", "46.99"),
                ("discount", "-9.21"),
            ],
            id="fixed-discount-converted",
        ),
    ],
)
def test_conversion_of_minimum_and_discount(
    config: PricingConfig,
    rate: ExchangeRate,
    code: str,
    discount: Discount | None,
    expected_lines: list[tuple[str, str]],
) -> None:
    # EUR: minimum 92.13 − 45.14 = 46.99
    doc = invoice(config, "pro-usd", None, code=code, rate=rate, discount=discount)
    assert amounts(doc) == expected_lines


# --- invariants ------------------------------------------------------------------------------

tax_decisions = st.sampled_from([NO_TAX, DE_VAT, REVERSE_CHARGE, CA_SALES_TAX])
discounts = st.one_of(
    st.none(),
    st.decimals(0, 100, places=3).map(lambda p: Discount("Percent", percent=p)),
    st.decimals(0, 500, places=2).map(lambda a: Discount("Amount", amount=a)),
)
credit_grants = st.dictionaries(
    st.sampled_from(["g1", "g2", "g3"]),
    st.decimals(0, 1_000, places=4).map(str),
    max_size=3,
)
cases = st.sampled_from(
    [("pro", "EUR", None), ("pro-usd", "EUR", USD_EUR), ("pro-usd", "JPY", USD_JPY)]
)


@given(
    gpt4o=st.integers(0, 100_000_000),
    mini=st.integers(0, 100_000_000),
    requests=st.integers(0, 100_000),
    days=st.integers(1, 30),
    tax=tax_decisions,
    discount=discounts,
    burned=credit_grants,
    case=cases,
)
def test_totals_are_sums_of_rounded_lines(
    gpt4o: int,
    mini: int,
    requests: int,
    days: int,
    tax: TaxDecision,
    discount: Discount | None,
    burned: dict[str, str],
    case: tuple[str, str, ExchangeRate | None],
) -> None:
    plan, code, rate = case
    usage = _CONFIG.meters.usage_from_json(
        {
            "input_tokens": [[["gpt-4o"], gpt4o], [["gpt-4o-mini"], mini]],
            "requests": [[[], requests]],
        }
    )
    doc = invoice(
        _CONFIG,
        [(plan, Proration(days, 30))],
        usage,
        code=code,
        tax=tax,
        burned=burned,
        discount=discount,
        rate=rate,
    )
    quantum = currency(code).quantum
    line_amounts = [D(line["amount"]) for line in doc["lines"]]
    assert all(a == a.quantize(quantum) for a in line_amounts)  # every line is rounded
    subtotal, tax_total, total = D(doc["subtotal"]), D(doc["tax"]), D(doc["total"])
    applied, due = D(doc["credits_applied"]), D(doc["amount_due"])
    assert subtotal == sum(line_amounts)
    assert tax_total == sum(D(t["amount"]) for t in doc["taxes"])
    assert total == subtotal + tax_total
    assert applied == -sum((D(c["amount"]) for c in doc["credits"]), D(0))
    assert due == total - applied
    assert due >= 0 and subtotal >= 0 and 0 <= applied <= total
    # the charges (before discount) never fall below the prorated minimum
    charged = sum(D(line["amount"]) for line in doc["lines"] if line["kind"] != "discount")
    with localcontext(PRICING_CONTEXT):
        minimum = (D(100) * days / 30 * (rate.rate if rate else 1)).quantize(quantum)
    assert charged >= minimum


# --- amounts, currencies and exchange rates -----------------------------------------------


@pytest.mark.parametrize(
    ("plan", "code", "zero"),
    [("flat", "EUR", "0.00"), ("kwd", "KWD", "0.000")],
    ids=["eur", "kwd"],
)
def test_every_money_field_has_the_currencys_minor_unit(
    config: PricingConfig, plan: str, code: str, zero: str
) -> None:
    doc = invoice(config, plan, None, code=code, tax=NO_TAX, burned={})
    assert (doc["tax"], doc["credits_applied"]) == (zero, zero)


def test_each_segment_is_converted_from_its_own_plans_currency(config: PricingConfig) -> None:
    parts = [("basic", Proration(14, 31)), ("pro-usd", Proration(17, 31))]
    try:
        doc = invoice(config, parts, None, code="EUR", rate=USD_EUR)
    except CurrencyError:
        return  # refusing to mix currencies would be a fix as well
    assert doc["lines"][0]["amount"] == "13.55"  # 30.00 EUR × 14 / 31, nothing to convert
    assert doc["lines"][1]["amount"] == "24.76"  # 49 USD × 17 / 31 × 0.9213 = 24.7554… → 24.76


@pytest.mark.parametrize(
    ("plan", "code", "rate"),
    [
        pytest.param("flat", "EUR", USD_EUR, id="rate-base-is-not-the-plan-currency"),
        pytest.param("pro-usd", "JPY", USD_EUR, id="rate-quote-is-not-the-invoice-currency"),
    ],
)
def test_a_mismatched_exchange_rate_is_refused(
    config: PricingConfig, plan: str, code: str, rate: ExchangeRate
) -> None:
    with pytest.raises(CurrencyError):
        invoice(config, plan, None, code=code, rate=rate)
