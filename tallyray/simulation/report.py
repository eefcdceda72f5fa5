"""A simulation's result as CSV (one row per customer) and as an HTML report with a chart of
the distribution of changes (an inline SVG histogram per currency; no script, no network).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping, Sequence
from decimal import Decimal
from html import escape
from typing import Any

from tallyray.portal.charts import nice_ceiling
from tallyray.simulation.compare import percent_change

__all__ = ["histogram", "render_csv", "render_html"]

BINS = 20
"""Bars in a histogram of changes."""


def _line_keys(results: Sequence[Mapping[str, Any]]) -> list[tuple[str, str]]:
    keys: dict[tuple[str, str], None] = {}
    for r in results:
        for line in r["lines"]:
            if line["kind"] in ("usage", "discount"):
                keys[(line["kind"], line["description"])] = None
    return list(keys)


def render_csv(results: Sequence[Mapping[str, Any]]) -> str:
    """One row per customer: totals, base fee, minimum, then each charge line (actual and
    simulated) that any customer has; amounts in the customer's currency."""
    lines = _line_keys(results)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    header = [
        "customer_id",
        "currency",
        "periods",
        "actual_total",
        "simulated_total",
        "difference",
        "percent_change",
        "actual_base_fee",
        "simulated_base_fee",
        "actual_minimum",
        "simulated_minimum",
    ]
    for _, description in lines:
        header += [f"actual: {description}", f"simulated: {description}"]
    writer.writerow(header)
    for r in results:
        total = r["total"]
        change = percent_change(Decimal(total["actual"]), Decimal(total["simulated"]))
        by_key = {(line["kind"], line["description"]): line for line in r["lines"]}
        row = [
            r["customer_id"],
            r["currency"],
            len(r["periods"]),
            total["actual"],
            total["simulated"],
            total["difference"],
            "" if change is None else format(change, "f"),
            r["base_fee"]["actual"],
            r["base_fee"]["simulated"],
            r["minimum"]["actual"],
            r["minimum"]["simulated"],
        ]
        for key in lines:
            line = by_key.get(key)
            row += ["", ""] if line is None else [line["actual"], line["simulated"]]
        writer.writerow(row)
    return out.getvalue()


def histogram(changes: Sequence[Decimal], bins: int = BINS) -> list[tuple[Decimal, Decimal, int]]:
    """(low, high, customers) per bin over the range of the changes; the last bin includes
    its upper end. One bin when every change is the same."""
    if not changes:
        return []
    low, high = min(changes), max(changes)
    if low == high:
        return [(low, high, len(changes))]
    width = (high - low) / bins
    counts = [0] * bins
    for change in changes:
        counts[min(int((change - low) / width), bins - 1)] += 1
    return [(low + width * i, low + width * (i + 1), counts[i]) for i in range(bins)]


def _svg(bars: Sequence[tuple[Decimal, Decimal, int]], code: str) -> str:
    width, height, pad = 640, 220, 30
    top = nice_ceiling(Decimal(max((n for _, _, n in bars), default=1)))
    bar_w = (width - 2 * pad) / max(len(bars), 1)
    parts = [
        f'<svg class="histogram" viewBox="0 0 {width} {height + 40}" role="img" '
        f'aria-label="Distribution of changes ({escape(code)})" '
        'xmlns="http://www.w3.org/2000/svg">',
        f'<line x1="{pad}" y1="{height}" x2="{width - pad}" y2="{height}" stroke="#888"/>',
        f'<text x="{pad - 4}" y="{pad}" text-anchor="end" font-size="10">{top}</text>',
        f'<text x="{pad - 4}" y="{height}" text-anchor="end" font-size="10">0</text>',
    ]
    for i, (lo, hi, n) in enumerate(bars):
        h = float(Decimal(n) / top) * (height - pad)
        x = pad + i * bar_w
        colour = "#c0392b" if lo >= 0 and hi > 0 else "#2e86c1" if hi <= 0 else "#7f8c8d"
        tip = f"{_short(lo)} to {_short(hi)} {code}: {n} customers"
        parts.append(
            f'<rect x="{x + 1:.2f}" y="{height - h:.2f}" width="{max(bar_w - 2, 1):.2f}" '
            f'height="{h:.2f}" fill="{colour}"><title>{escape(tip)}</title></rect>'
        )
    if bars:
        parts.append(
            f'<text x="{pad}" y="{height + 16}" font-size="10">{_short(bars[0][0])}</text>'
        )
        parts.append(
            f'<text x="{width - pad}" y="{height + 16}" text-anchor="end" font-size="10">'
            f"{_short(bars[-1][1])}</text>"
        )
        parts.append(
            f'<text x="{width / 2}" y="{height + 34}" text-anchor="middle" font-size="11">'
            f"change per customer ({escape(code)})</text>"
        )
    parts.append("</svg>")
    return "".join(parts)


def _short(value: Decimal) -> str:
    return format(value.quantize(Decimal("0.01")), "f")


def _table(head: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = "".join(f"<th>{escape(h)}</th>" for h in head)
    body = "".join(
        "<tr>" + "".join(f"<td>{escape(str(c))}</td>" for c in row) + "</tr>" for row in rows
    )
    return f"<table><thead><tr>{cells}</tr></thead><tbody>{body}</tbody></table>"


def render_html(simulation: Mapping[str, Any], results: Sequence[Mapping[str, Any]]) -> str:
    """The report: what was simulated, per currency the summary, the histogram of changes
    and the biggest movers, then every customer."""
    summary = (simulation.get("summary") or {}).get("currencies", {})
    sections = []
    for code, s in summary.items():
        changes = [Decimal(r["total"]["difference"]) for r in results if r["currency"] == code]
        revenue = s["revenue"]
        movers = [
            (m["customer_id"], m["actual"], m["simulated"], m["difference"], m["percent"] or "")
            for m in [*s["biggest_increases"], *s["biggest_decreases"]]
        ]
        sections.append(
            f"<section><h2>{escape(code)}</h2>"
            + _table(
                [
                    "customers",
                    "revenue before",
                    "revenue after",
                    "change",
                    "pay more",
                    "pay less",
                    "pay the same",
                ],
                [
                    [
                        s["customers"],
                        revenue["actual"],
                        revenue["simulated"],
                        revenue["difference"],
                        s["pay_more"],
                        s["pay_less"],
                        s["pay_same"],
                    ]
                ],
            )
            + "<h3>Distribution of changes</h3>"
            + _svg(histogram(changes), code)
            + _table(list(s["percentiles"]), [list(s["percentiles"].values())])
            + "<h3>Biggest movers</h3>"
            + _table(["customer", "actual", "simulated", "change", "%"], movers)
            + "</section>"
        )
    rows = [
        (
            r["customer_id"],
            r["currency"],
            r["total"]["actual"],
            r["total"]["simulated"],
            r["total"]["difference"],
        )
        for r in results
    ]
    title = f"Simulation {simulation['id']}: plan {simulation.get('plan')}"
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{escape(title)}</title><style>"
        "body{font-family:system-ui,sans-serif;margin:2em;color:#222}"
        "table{border-collapse:collapse;margin:.5em 0 1.5em}"
        "td,th{border:1px solid #ddd;padding:.25em .6em;text-align:right}"
        "th{background:#f4f4f4}svg.histogram{max-width:640px;display:block}"
        "</style></head><body>"
        f"<h1>{escape(title)}</h1>"
        f"<p>From {escape(str(simulation['from']))} to {escape(str(simulation['to']))}; "
        f"state {escape(str(simulation['state']))}; "
        f"{simulation['progress']['done']} of {simulation['progress']['customers']} customers; "
        f"{len(simulation['errors'])} not simulated.</p>"
        + "".join(sections)
        + "<h2>Every customer</h2>"
        + _table(["customer", "currency", "actual", "simulated", "change"], rows)
        + "</body></html>"
    )
