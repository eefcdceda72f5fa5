"""A simulation's result as a plain-text table for the terminal (``tallyray simulate``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Any

from tallyray.simulation.compare import percent_change

__all__ = ["render_table"]


def _grid(head: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(c)) for c in column) for column in zip(head, *rows, strict=True)]
    line = "  ".join("-" * w for w in widths)

    def fmt(row: Sequence[str]) -> str:
        return "  ".join(
            str(c).ljust(w) if i == 0 else str(c).rjust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        )

    return "\n".join([fmt(head), line, *(fmt(r) for r in rows)])


def render_table(
    simulation: Mapping[str, Any], results: Sequence[Mapping[str, Any]], top: int = 20
) -> str:
    """The summary per currency, then the ``top`` customers with the largest changes."""
    out = [f"simulation {simulation['id']}: {simulation['state']}, plan {simulation['plan']}, "
           f"{simulation['from']} to {simulation['to']}"]  # fmt: skip
    summary = (simulation.get("summary") or {}).get("currencies", {})
    rows = []
    for code, s in summary.items():
        revenue = s["revenue"]
        p = s["percentiles"]
        rows.append([code, str(s["customers"]), revenue["actual"], revenue["simulated"],
                     revenue["difference"], str(s["pay_more"]), str(s["pay_less"]),
                     str(s["pay_same"]), p["p5"], p["p50"], p["p95"]])  # fmt: skip
    if rows:
        out += ["", _grid(["currency", "customers", "revenue before", "revenue after", "change",
                           "more", "less", "same", "p5", "median", "p95"], rows)]  # fmt: skip
    ranked = sorted(
        results, key=lambda r: (-abs(Decimal(r["total"]["difference"])), r["customer_id"])
    )[:top]
    lines = []
    for r in ranked:
        t = r["total"]
        change = percent_change(Decimal(t["actual"]), Decimal(t["simulated"]))
        lines.append([r["customer_id"], r["currency"], t["actual"], t["simulated"],
                      t["difference"], "" if change is None else f"{change}%"])  # fmt: skip
    if lines:
        out += ["", _grid(["customer", "currency", "actual", "simulated", "change", "%"], lines)]
    if simulation.get("errors"):
        out += ["", f"{len(simulation['errors'])} customers not simulated:"]
        out += [f"  {e['customer_id']}: {e['message']}" for e in simulation["errors"][:top]]
    return "\n".join(out)
