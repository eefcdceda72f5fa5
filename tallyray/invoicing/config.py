"""The ``"invoicing"`` block of ``tallyray.json``: who issues invoices and how.

```json
"invoicing": {
  "seller": {"name": "Acme AI GmbH", "email": "billing@acme.ai", "vat_id": "DE123456788",
             "country": "DE", "address": {"line1": "Hauptstr. 1", "postal_code": "10115",
                                          "city": "Berlin", "country": "DE"}},
  "number_prefix": "INV-", "credit_note_prefix": "CN-", "entity": "default",
  "locale": "en", "payment_terms_days": 14, "auto_finalize": true,
  "late_events": "reject", "dunning": {"retry_days": [3, 5, 7]}, "chunk_size": 500,
  "top_ups": {"minimum": "5.00", "maximum": "5000.00", "receipt_prefix": "RCT-"}
}
```

Every field is optional. Problems are reported with their JSON path, like the pricing config.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from babel import Locale, UnknownLocaleError

from tallyray.errors import ConfigError, Problem
from tallyray.invoicing.purchase_rules import TopUpRules, parse_top_up_rules
from tallyray.invoicing.tax.config import country_problem

__all__ = ["LATE_EVENT_POLICIES", "InvoicingConfig", "parse_invoicing_config"]

#: ``reject``: an event for a closed period is refused with the reason;
#: ``book_to_open_period``: it is counted in the first open period instead.
LATE_EVENT_POLICIES = ("reject", "book_to_open_period")

_FIELDS = frozenset(
    {
        "seller",
        "number_prefix",
        "credit_note_prefix",
        "entity",
        "locale",
        "payment_terms_days",
        "auto_finalize",
        "late_events",
        "dunning",
        "chunk_size",
        "top_ups",
    }
)
_SELLER_FIELDS = frozenset({"name", "email", "vat_id", "country", "address"})
_ADDRESS_FIELDS = frozenset({"line1", "line2", "postal_code", "city", "region", "country"})


@dataclass(frozen=True)
class InvoicingConfig:
    seller: Mapping[str, Any] = field(default_factory=dict)
    number_prefix: str = "INV-"
    credit_note_prefix: str = "CN-"
    entity: str = "default"
    """The issuing entity: each has its own gapless number sequences."""
    locale: str = "en"
    """For customers that have no locale of their own."""
    payment_terms_days: int = 14
    auto_finalize: bool = True
    late_events: str = "reject"
    retry_days: tuple[int, ...] = (3, 5, 7)
    """Days after each failed payment attempt to try again; then uncollectible."""
    chunk_size: int = 500
    """Customers per invoice-run task."""
    top_ups: TopUpRules = field(default_factory=TopUpRules)
    """Credit purchases: amount limits, receipt numbers (:mod:`.purchase_rules`)."""

    def to_json(self) -> dict[str, Any]:
        return {
            "seller": dict(self.seller),
            "number_prefix": self.number_prefix,
            "credit_note_prefix": self.credit_note_prefix,
            "entity": self.entity,
            "locale": self.locale,
            "payment_terms_days": self.payment_terms_days,
            "auto_finalize": self.auto_finalize,
            "late_events": self.late_events,
            "dunning": {"retry_days": list(self.retry_days)},
            "chunk_size": self.chunk_size,
            "top_ups": self.top_ups.to_json(),
        }


def parse_invoicing_config(raw: Any, where: str = "invoicing") -> InvoicingConfig:
    if raw is None:
        return InvoicingConfig()
    problems: list[Problem] = []

    def bad(path: str, message: str) -> None:
        problems.append(Problem(f"{where}.{path}" if path else where, message))

    if not isinstance(raw, dict):
        raise ConfigError.of([Problem(where, "must be a JSON object")])
    for key in sorted(set(raw) - _FIELDS):
        bad(key, f"unknown field (known: {', '.join(sorted(_FIELDS))})")
    values: dict[str, Any] = {}
    seller = raw.get("seller", {})
    if not isinstance(seller, dict):
        bad("seller", "must be a JSON object")
    else:
        for key in sorted(set(seller) - _SELLER_FIELDS):
            bad(f"seller.{key}", f"unknown field (known: {', '.join(sorted(_SELLER_FIELDS))})")
        for key in ("name", "email", "vat_id"):
            if key in seller and not isinstance(seller[key], str):
                bad(f"seller.{key}", "must be a string")
        country = seller.get("country")
        if country is not None and (problem := country_problem(country)) is not None:
            bad("seller.country", problem)
        address = seller.get("address")
        if address is not None:
            if not isinstance(address, dict):
                bad("seller.address", "must be a JSON object")
            else:
                for key in sorted(set(address) - _ADDRESS_FIELDS):
                    bad(f"seller.address.{key}", "unknown field")
                for key in sorted(set(address) & _ADDRESS_FIELDS):
                    value = address[key]
                    if not isinstance(value, str) or not value.strip():
                        bad(f"seller.address.{key}", "must be a non-empty string")
                    elif key == "country" and (problem := country_problem(value)) is not None:
                        bad("seller.address.country", problem)
        values["seller"] = seller
    for key in ("number_prefix", "credit_note_prefix", "entity"):
        if key in raw:
            value = raw[key]
            if not isinstance(value, str) or len(value) > 20 or (key == "entity" and not value):
                bad(key, "must be a string of at most 20 characters")
            else:
                values[key] = value
    if "locale" in raw:
        try:
            Locale.parse(raw["locale"])
            values["locale"] = raw["locale"]
        except (ValueError, TypeError, UnknownLocaleError):
            bad("locale", f"unknown locale {raw['locale']!r}; use e.g. 'en' or 'de_DE'")
    for key, low, high in (("payment_terms_days", 0, 365), ("chunk_size", 1, 100_000)):
        if key in raw:
            value = raw[key]
            if type(value) is not int or not low <= value <= high:
                bad(key, f"must be a whole number from {low} to {high}")
            else:
                values[key] = value
    if "auto_finalize" in raw:
        if not isinstance(raw["auto_finalize"], bool):
            bad("auto_finalize", "must be true or false")
        else:
            values["auto_finalize"] = raw["auto_finalize"]
    if "late_events" in raw:
        if raw["late_events"] not in LATE_EVENT_POLICIES:
            bad("late_events", f"must be one of {', '.join(LATE_EVENT_POLICIES)}")
        else:
            values["late_events"] = raw["late_events"]
    dunning = raw.get("dunning")
    if dunning is not None:
        if not isinstance(dunning, dict):
            bad("dunning", 'must be a JSON object such as {"retry_days": [3, 5, 7]}')
        else:
            for key in sorted(set(dunning) - {"retry_days"}):
                bad(f"dunning.{key}", "unknown field (known: retry_days)")
            days = dunning.get("retry_days", list(InvoicingConfig.retry_days))
            if not isinstance(days, list) or not all(type(d) is int and 0 < d <= 365 for d in days):
                bad("dunning.retry_days", "must be a list of whole numbers of days (1 to 365)")
            else:
                values["retry_days"] = tuple(days)
    values["top_ups"] = parse_top_up_rules(raw.get("top_ups"), f"{where}.top_ups", problems)
    if problems:
        raise ConfigError.of(problems)
    return InvoicingConfig(**values)
