"""Credit purchases' rules: how much a top-up may be, and what its receipt says. Pure.

The ``"top_ups"`` block of the ``"invoicing"`` config::

    "top_ups": {"minimum": "5.00", "maximum": "5000.00",
                "currencies": {"JPY": {"minimum": "500", "maximum": "500000"}},
                "receipt_prefix": "RCT-", "priority": 1}

``minimum`` and ``maximum`` apply to every currency not listed under ``currencies`` (in that
currency's units). ``priority`` is the burn-down priority of the credit grant a purchase
books (lower burns first, as for ``POST /v1/customers/{id}/credits``).

Why a receipt and not a VAT invoice: see docs/payments.md ("The top-up's document"). In
short, prepaid credit in Tallyray is money on account that any later charge can use (any
plan, any meter, at the rates and tax in force when it is used), and the invoice builder
already treats burned credit as a payment of the tax-inclusive total
(:mod:`tallyray.invoicing.builder`). Tax is therefore charged once, on the invoice of the
usage the credit pays; the receipt acknowledges the payment, shows the tax the engine
decides for the customer today, and says where it will be charged.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from tallyray.errors import InvalidInput, Problem
from tallyray.invoicing.tax import TaxDecision
from tallyray.pricing.money import currency, parse_amount

__all__ = [
    "DEFAULT_MAXIMUM",
    "DEFAULT_MINIMUM",
    "TopUpRules",
    "build_receipt",
    "parse_top_up_rules",
]

DEFAULT_MINIMUM = Decimal("5")
DEFAULT_MAXIMUM = Decimal("10000")
DEFAULT_RECEIPT_PREFIX = "RCT-"
_FIELDS = frozenset({"minimum", "maximum", "currencies", "receipt_prefix", "priority"})


@dataclass(frozen=True, slots=True)
class TopUpRules:
    minimum: Decimal = DEFAULT_MINIMUM
    maximum: Decimal = DEFAULT_MAXIMUM
    #: Currency code → (minimum, maximum), for currencies whose units differ (JPY, KWD).
    currencies: Mapping[str, tuple[Decimal, Decimal]] = field(default_factory=dict)
    receipt_prefix: str = DEFAULT_RECEIPT_PREFIX
    priority: int = 1

    def limits(self, currency_code: str) -> tuple[Decimal, Decimal]:
        return self.currencies.get(currency_code, (self.minimum, self.maximum))

    def check(self, amount: Decimal, currency_code: str) -> None:
        """422 naming the limits when ``amount`` is outside them."""
        low, high = self.limits(currency_code)
        if not low <= amount <= high:
            raise InvalidInput(
                f"a top-up must be from {low:f} to {high:f} {currency_code}; "
                f"{amount:f} {currency_code} is {'less' if amount < low else 'more'}",
                [Problem("amount", f"from {low:f} to {high:f} {currency_code}")],
            )

    def to_json(self) -> dict[str, Any]:
        return {
            "minimum": format(self.minimum, "f"),
            "maximum": format(self.maximum, "f"),
            "currencies": {
                code: {"minimum": format(low, "f"), "maximum": format(high, "f")}
                for code, (low, high) in sorted(self.currencies.items())
            },
            "receipt_prefix": self.receipt_prefix,
            "priority": self.priority,
        }


def parse_top_up_rules(raw: Any, where: str, problems: list[Problem]) -> TopUpRules:
    """The ``top_ups`` block; problems are appended with their JSON path."""
    if raw is None:
        return TopUpRules()
    if not isinstance(raw, dict):
        problems.append(Problem(where, "must be a JSON object"))
        return TopUpRules()
    for key in sorted(set(raw) - _FIELDS):
        problems.append(
            Problem(f"{where}.{key}", f"unknown field (known: {', '.join(sorted(_FIELDS))})")
        )
    values: dict[str, Any] = {}
    pair = _pair(raw, where, problems, None)
    if pair is not None:
        values["minimum"], values["maximum"] = pair
    currencies: dict[str, tuple[Decimal, Decimal]] = {}
    listed = raw.get("currencies", {})
    if not isinstance(listed, dict):
        problems.append(Problem(f"{where}.currencies", "must be a JSON object of currency codes"))
    else:
        for code, limits in listed.items():
            path = f"{where}.currencies.{code}"
            try:
                currency(code)
            except InvalidInput as error:
                problems.append(Problem(path, error.message))
                continue
            if not isinstance(limits, dict) or set(limits) - {"minimum", "maximum"}:
                problems.append(Problem(path, 'must be {"minimum": "…", "maximum": "…"}'))
                continue
            found = _pair(limits, path, problems, code)
            if found is not None:
                currencies[code] = found
    values["currencies"] = currencies
    prefix = raw.get("receipt_prefix", DEFAULT_RECEIPT_PREFIX)
    if not isinstance(prefix, str) or len(prefix) > 20:
        problems.append(
            Problem(f"{where}.receipt_prefix", "must be a string of at most 20 characters")
        )
    else:
        values["receipt_prefix"] = prefix
    priority = raw.get("priority", 1)
    if type(priority) is not int or priority < 0:
        problems.append(Problem(f"{where}.priority", "must be a whole number ≥ 0"))
    else:
        values["priority"] = priority
    return TopUpRules(**values)


def _pair(
    raw: Mapping[str, Any], where: str, problems: list[Problem], code: str | None
) -> tuple[Decimal, Decimal] | None:
    found: dict[str, Decimal] = {}
    defaults = {"minimum": DEFAULT_MINIMUM, "maximum": DEFAULT_MAXIMUM}
    for name in ("minimum", "maximum"):
        if name not in raw:
            found[name] = defaults[name]
            continue
        try:
            if code:
                places = currency(code).minor_units
                found[name] = parse_amount(
                    raw[name], places=places, field=f"{where}.{name}", sign="positive"
                )
            else:
                found[name] = parse_amount(raw[name], field=f"{where}.{name}", sign="positive")
        except InvalidInput as error:
            problems.append(Problem(f"{where}.{name}", error.message))
    if len(found) < 2:
        return None
    if found["minimum"] > found["maximum"]:
        problems.append(Problem(where, "minimum is more than maximum"))
        return None
    return found["minimum"], found["maximum"]


def build_receipt(
    purchase: Mapping[str, Any],
    seller: Mapping[str, Any],
    buyer: Mapping[str, Any],
    tax: TaxDecision,
    issued_at: str,
    paid_at: str,
) -> dict[str, Any]:
    """The receipt of a paid credit purchase (its number is added when it is issued).

    One line, the credit bought, at the amount paid. ``tax`` is the engine's decision for this
    customer today: shown, not charged (``tax`` 0), with the note that says where it is.
    """
    amount = purchase["amount"]
    cur = purchase["currency"]
    rate = format(tax.rate, "f")
    where = (
        f"{tax.name} ({rate}%) is charged on the invoices this credit pays, at the rate in "
        "force then"
        if tax.rate
        else f"{tax.name}: {tax.note or 'none due on this supply'}; the invoices this credit "
        "pays say what applies then"
    )
    label = "Prepaid credit" if purchase["kind"] == "top_up" else "Prepaid credit (auto-recharge)"
    return {
        "type": "receipt",
        "purchase_id": purchase["id"],
        "customer_id": purchase["customer_id"],
        "kind": purchase["kind"],
        "currency": cur,
        "issued_at": issued_at,
        "paid_at": paid_at,
        "seller": dict(seller),
        "buyer": dict(buyer),
        "lines": [{"description": label, "quantity": "1", "amount": amount}],
        "subtotal": amount,
        "tax": "0",
        "total": amount,
        "amount_paid": amount,
        "payment": {
            "provider": purchase["provider"],
            "reference": purchase.get("payment_reference") or purchase.get("provider_reference"),
        },
        "tax_decision": tax.to_json(),
        "notes": [
            "Payment received for prepaid credit: not a VAT invoice.",
            where + ".",
        ],
    }
