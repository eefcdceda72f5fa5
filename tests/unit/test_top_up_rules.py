"""Top-up rules (tallyray/invoicing/purchase_rules.py): the amount limits, their config
block's problems, and the receipt of a paid purchase."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from tallyray.errors import ConfigError, InvalidInput
from tallyray.invoicing.config import parse_invoicing_config
from tallyray.invoicing.purchase_rules import TopUpRules, build_receipt
from tallyray.invoicing.tax import TaxDecision

RULES = TopUpRules(
    minimum=Decimal("5.00"),
    maximum=Decimal("500.00"),
    currencies={"JPY": (Decimal(500), Decimal(50_000))},
)


@pytest.mark.parametrize(
    ("amount", "code", "allowed"),
    [
        ("5.00", "EUR", True),  # the minimum itself
        ("500.00", "EUR", True),  # the maximum itself
        ("4.99", "EUR", False),
        ("500.01", "EUR", False),
        ("499", "JPY", False),  # JPY has its own limits: 500 to 50,000
        ("500", "JPY", True),
        ("50001", "JPY", False),
    ],
)
def test_limits(amount: str, code: str, allowed: bool) -> None:
    if allowed:
        RULES.check(Decimal(amount), code)
        return
    with pytest.raises(InvalidInput) as caught:
        RULES.check(Decimal(amount), code)
    low, high = RULES.limits(code)
    # the message names both limits and the currency
    assert f"from {low:f} to {high:f} {code}" in caught.value.message
    assert caught.value.http_status == 422


@pytest.mark.parametrize(
    ("block", "where"),
    [
        ({"minimum": "0"}, "invoicing.top_ups.minimum"),
        ({"minimum": "10", "maximum": "5"}, "invoicing.top_ups"),
        ({"maximum": 1.5}, "invoicing.top_ups.maximum"),
        ({"currencies": {"XXX1": {"minimum": "1"}}}, "invoicing.top_ups.currencies.XXX1"),
        ({"currencies": {"JPY": {"minimum": "1.5"}}}, "invoicing.top_ups.currencies.JPY.minimum"),
        ({"currencies": {"JPY": {"min": "1"}}}, "invoicing.top_ups.currencies.JPY"),
        ({"receipt_prefix": "R" * 21}, "invoicing.top_ups.receipt_prefix"),
        ({"priority": -1}, "invoicing.top_ups.priority"),
        ({"limit": "5"}, "invoicing.top_ups.limit"),
        ("5", "invoicing.top_ups"),
    ],
)
def test_config_problems_name_their_place(block: Any, where: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_invoicing_config({"top_ups": block})
    assert where in [p.where for p in caught.value.problems]


def _decision(rate: str) -> TaxDecision:
    return TaxDecision("oss", "VAT", "FR", Decimal(rate), None, {"rule": "oss_b2c"})


def test_the_receipt_acknowledges_the_payment_and_says_where_tax_is_charged() -> None:
    purchase = {
        "id": "pur_1",
        "customer_id": "acme",
        "kind": "top_up",
        "amount": "50.00",
        "currency": "EUR",
        "provider": "stripe",
        "provider_reference": "cs_test_1",
        "payment_reference": "pi_1",
    }
    receipt = build_receipt(
        purchase, {"name": "Seller"}, {"id": "acme"}, _decision("20"), "t1", "t0"
    )
    assert receipt["type"] == "receipt"
    assert (receipt["total"], receipt["amount_paid"], receipt["tax"]) == ("50.00", "50.00", "0")
    assert receipt["lines"] == [
        {"description": "Prepaid credit", "quantity": "1", "amount": "50.00"}
    ]
    assert receipt["tax_decision"]["rate"] == "20"
    assert receipt["payment"] == {"provider": "stripe", "reference": "pi_1"}
    assert "VAT (20%) is charged on the invoices this credit pays" in receipt["notes"][1]
