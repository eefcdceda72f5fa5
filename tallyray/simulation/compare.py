"""Comparing invoices: per customer (actual against simulated, line by line) and over all
customers (revenue before and after, who pays more or less, percentiles, biggest movers).

Pure: invoice documents in (as :func:`tallyray.invoicing.builder.build_invoice` makes them, or
as stored), plain JSON-ready dicts out. Every amount is already rounded to the customer's
currency by the builder; here they are only added and subtracted, so every figure is exact
to the minor unit. The compared "total" is the invoice's subtotal: charges after the minimum
true-up and the discount, before tax and prepaid credits (tax follows the subtotal at the
customer's rate; credits pay an invoice rather than price it).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from decimal import Decimal
from typing import Any, Literal

__all__ = ["PERCENTILES", "ActualSource", "compare_customer", "summarize"]

ZERO = Decimal(0)

PERCENTILES = (5, 25, 50, 75, 95)
"""The percentiles of the change a summary reports (nearest rank: each is a real
customer's change, never an interpolation)."""

MOVERS = 10
"""How many customers the summary lists as the biggest movers each way."""

ActualSource = Literal["invoice", "computed"]
"""Where a period's actual charges come from: the customer's stored invoice for it, or the
invoice builder run the normal way (no invoice exists yet)."""


def _lines(doc: Mapping[str, Any]) -> dict[tuple[str, str], Decimal]:
    out: dict[tuple[str, str], Decimal] = {}
    for line in doc["lines"]:
        key = (str(line["kind"]), str(line["description"]))
        out[key] = out.get(key, ZERO) + Decimal(line["amount"])
    return out


def _kind_total(lines: Mapping[tuple[str, str], Decimal], kind: str) -> Decimal:
    return sum((amount for (k, _), amount in lines.items() if k == kind), ZERO)


def _text(value: Decimal) -> str:
    return format(value, "f")


def _pair(actual: Decimal, simulated: Decimal) -> dict[str, str]:
    return {
        "actual": _text(actual),
        "simulated": _text(simulated),
        "difference": _text(simulated - actual),
    }


def compare_customer(
    customer_id: str,
    periods: Sequence[tuple[Mapping[str, Any], ActualSource, Mapping[str, Any]]],
) -> dict[str, Any]:
    """One customer's comparison over its periods: each is (actual invoice, where it came
    from, simulated invoice), both in the customer's currency."""
    actual: dict[tuple[str, str], Decimal] = {}
    simulated: dict[tuple[str, str], Decimal] = {}
    total_actual = total_simulated = ZERO
    shown = []
    currencies: set[str] = set()
    for before, source, after in periods:
        currencies.update((before["currency"], after["currency"]))
        for key, amount in _lines(before).items():
            actual[key] = actual.get(key, ZERO) + amount
        for key, amount in _lines(after).items():
            simulated[key] = simulated.get(key, ZERO) + amount
        total_actual += Decimal(before["subtotal"])
        total_simulated += Decimal(after["subtotal"])
        shown.append(
            {
                "start": after["period"]["start"],
                "end": after["period"]["end"],
                "actual_source": source,
                "invoice_id": before.get("id") if source == "invoice" else None,
                **_pair(Decimal(before["subtotal"]), Decimal(after["subtotal"])),
            }
        )
    if len(currencies) != 1:
        raise ValueError(f"invoices of {customer_id} are in several currencies")
    keys = list(actual) + [k for k in simulated if k not in actual]
    return {
        "customer_id": customer_id,
        "currency": currencies.pop(),
        "periods": shown,
        "lines": [
            {
                "kind": kind,
                "description": description,
                **_pair(
                    actual.get((kind, description), ZERO), simulated.get((kind, description), ZERO)
                ),
            }
            for kind, description in keys
        ],
        "base_fee": _pair(_kind_total(actual, "base_fee"), _kind_total(simulated, "base_fee")),
        "minimum": _pair(_kind_total(actual, "minimum"), _kind_total(simulated, "minimum")),
        "total": _pair(total_actual, total_simulated),
    }


def percent_change(actual: Decimal, simulated: Decimal) -> Decimal | None:
    """The change in percent of what the customer paid, to two places (``None`` from 0)."""
    if not actual:
        return None
    return ((simulated - actual) * 100 / actual).quantize(Decimal("0.01"))


def _nearest_rank(ordered: Sequence[Decimal], p: int) -> Decimal:
    rank = max(1, -(-p * len(ordered) // 100))  # ceil(p/100 × n), at least the first
    return ordered[rank - 1]


def summarize(results: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """The summary over customers' comparisons (their ``total`` pairs), per currency."""
    by_currency: dict[str, list[tuple[str, Decimal, Decimal]]] = {}
    for r in results:
        total = r["total"]
        by_currency.setdefault(r["currency"], []).append(
            (r["customer_id"], Decimal(total["actual"]), Decimal(total["simulated"]))
        )
    out: dict[str, Any] = {}
    for code, rows in sorted(by_currency.items()):
        changes = sorted(after - before for _, before, after in rows)
        before_sum = sum((before for _, before, _ in rows), ZERO)
        after_sum = sum((after for _, _, after in rows), ZERO)

        def mover(row: tuple[str, Decimal, Decimal]) -> dict[str, Any]:
            customer, before, after = row
            change = percent_change(before, after)
            return {
                "customer_id": customer,
                **_pair(before, after),
                "percent": None if change is None else _text(change),
            }

        ups = sorted((r for r in rows if r[2] > r[1]), key=lambda r: (r[1] - r[2], r[0]))[:MOVERS]
        downs = sorted((r for r in rows if r[2] < r[1]), key=lambda r: (r[2] - r[1], r[0]))[:MOVERS]
        out[code] = {
            "customers": len(rows),
            "revenue": _pair(before_sum, after_sum),
            "pay_more": sum(1 for _, before, after in rows if after > before),
            "pay_less": sum(1 for _, before, after in rows if after < before),
            "pay_same": sum(1 for _, before, after in rows if after == before),
            "percentiles": {f"p{p}": _text(_nearest_rank(changes, p)) for p in PERCENTILES},
            "biggest_increases": [mover(r) for r in ups],
            "biggest_decreases": [mover(r) for r in downs],
        }
    return {"currencies": out}
