"""Daily usage as an accessible bar chart: inline SVG (no script, no external asset) with a
``<title>`` and ``<desc>``, a text legend, and the same numbers in a data table.

Pure: the series in (the shape :func:`tallyray.storage.usage.usage_series` returns), markup
out. Quantities stay :class:`~decimal.Decimal` in the data and the table; only the bars'
geometry is drawn with floats. Formatting of days and numbers is passed in, so the caller
localizes them (Babel) and this module stays free of locales.

Layouts: ``stacked`` (one bar a day, a segment per group such as a model) or ``grouped`` (a
bar per group, side by side). Colours come from a fixed palette whose every colour has at
least 3:1 contrast against the white background (WCAG 1.4.11); no information is carried by
colour alone: each segment has a tooltip, the legend names the groups and the table holds
every figure.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from markupsafe import Markup, escape

__all__ = [
    "PALETTE",
    "ChartData",
    "DayUsage",
    "bar_chart",
    "chart_data",
    "group_label",
    "nice_ceiling",
]

#: Bar colours, each ≥ 3:1 against white; the last one is for "Other".
PALETTE = (
    "#1f5fa8",  # blue
    "#b3470b",  # burnt orange
    "#1b7a4c",  # green
    "#8e3b8a",  # purple
    "#6b5800",  # olive
    "#a3123a",  # crimson
    "#2f6f80",  # teal
    "#555555",  # grey: Other
)
MAX_SERIES = len(PALETTE) - 1
OTHER = "Other"

WIDTH, HEIGHT = 720, 260
LEFT, RIGHT, TOP, BOTTOM = 72, 12, 12, 36
MAX_TICKS = 8

ZERO = Decimal(0)


@dataclass(frozen=True, slots=True)
class DayUsage:
    day: date
    quantities: tuple[Decimal, ...]
    """One per series of the chart, in the chart's series order."""

    @property
    def total(self) -> Decimal:
        return sum(self.quantities, ZERO)


@dataclass(frozen=True, slots=True)
class ChartData:
    series: tuple[str, ...]
    """Group labels, largest first (``Other`` last); one unnamed series when not grouped."""
    days: tuple[DayUsage, ...]

    @property
    def grouped(self) -> bool:
        return self.series != ("",)

    @property
    def total(self) -> Decimal:
        return sum((d.total for d in self.days), ZERO)


def group_label(group: Mapping[str, Any]) -> str:
    """``{"model": "gpt-4o"}`` → ``gpt-4o``; several keys → ``gpu: h100, region: eu``."""

    def shown(value: Any) -> str:
        return "(none)" if value is None or value == "" else str(value)

    if len(group) == 1:
        return shown(next(iter(group.values())))
    return ", ".join(f"{key}: {shown(value)}" for key, value in group.items())


def _day(point: Mapping[str, Any]) -> date:
    start = point["start"]
    if isinstance(start, date):
        return start if not isinstance(start, datetime) else start.date()
    return datetime.fromisoformat(str(start).replace("Z", "+00:00")).date()


def chart_data(points: Sequence[Mapping[str, Any]], max_series: int = MAX_SERIES) -> ChartData:
    """Points of a daily series (``{"start", "quantity", "groups"?}``) as chart data. Groups
    beyond the ``max_series`` largest are summed into ``Other``."""
    grouped = any("groups" in p for p in points)
    if not grouped:
        return ChartData(
            ("",), tuple(DayUsage(_day(p), (Decimal(str(p["quantity"])),)) for p in points)
        )
    per_day: list[dict[str, Decimal]] = []
    totals: dict[str, Decimal] = {}
    for point in points:
        quantities: dict[str, Decimal] = {}
        for entry in point.get("groups", []):
            label = group_label(entry["group"])
            quantity = Decimal(str(entry["quantity"]))
            quantities[label] = quantities.get(label, ZERO) + quantity
            totals[label] = totals.get(label, ZERO) + quantity
        per_day.append(quantities)
    if not totals:  # grouped, but nothing was used: one plain series of zeros
        return chart_data([{"start": p["start"], "quantity": p["quantity"]} for p in points])
    ranked = sorted(totals, key=lambda label: (-totals[label], label))
    kept = ranked if len(ranked) <= max_series else ranked[: max_series - 1]
    rest = [label for label in ranked if label not in kept]
    series = tuple(kept) + ((OTHER,) if rest else ())
    days = []
    for point, quantities in zip(points, per_day, strict=True):
        row = [quantities.get(label, ZERO) for label in kept]
        if rest:
            row.append(sum((quantities.get(label, ZERO) for label in rest), ZERO))
        days.append(DayUsage(_day(point), tuple(row)))
    return ChartData(series, tuple(days))


def nice_ceiling(value: Decimal) -> Decimal:
    """The smallest of 1, 2, 2.5, 5 × 10ⁿ that is ≥ ``value`` (1 for nothing): the top of
    the axis."""
    if value <= 0:
        return Decimal(1)
    base = Decimal(1).scaleb(value.adjusted())
    for step in ("1", "2", "2.5", "5", "10"):
        top = Decimal(step) * base
        if top >= value:
            return top.normalize()
    raise AssertionError("unreachable")


def _n(value: float) -> str:
    """An SVG coordinate: two decimals at most, no trailing zeros."""
    text = f"{value:.2f}".rstrip("0").rstrip(".")
    return "0" if text in ("", "-0") else text


def _plain(value: Decimal) -> str:
    return format(value.normalize(), "f") if value else "0"


def bar_chart(
    data: ChartData,
    *,
    chart_id: str,
    title: str,
    description: str = "",
    layout: str = "stacked",
    day_label: Callable[[date], str] = date.isoformat,
    tick_label: Callable[[date], str] = lambda d: str(d.day),
    number: Callable[[Decimal], str] = _plain,
) -> Markup:
    """The chart as a ``<figure>``: the SVG, a legend when grouped, and a data table.

    ``chart_id`` must be unique on the page (it prefixes the ids ARIA refers to).
    """
    if layout not in ("stacked", "grouped"):
        raise ValueError(f"layout is 'stacked' or 'grouped', not {layout!r}")
    ident = escape(chart_id)
    days = data.days
    count = max(len(days), 1)
    if layout == "stacked" or not data.grouped:
        peak = max((d.total for d in days), default=ZERO)
    else:
        peak = max((q for d in days for q in d.quantities), default=ZERO)
    top = nice_ceiling(peak)
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    slot = plot_w / count
    bar_w = slot * 0.7

    def y_of(value: Decimal) -> float:
        return TOP + plot_h - float(value / top) * plot_h

    def height(value: Decimal) -> float:
        return float(value / top) * plot_h

    parts: list[str] = []
    # grid and the quantity axis: 0, half, top
    parts.append('<g class="grid" aria-hidden="true">')
    for value in (ZERO, top / 2, top):
        y = _n(y_of(value))
        parts.append(
            f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y}" y2="{y}" stroke="#8c8c8c" '
            'stroke-width="1"/>'
        )
        parts.append(
            f'<text x="{LEFT - 6}" y="{y}" text-anchor="end" dominant-baseline="middle">'
            f"{escape(number(value))}</text>"
        )
    parts.append("</g>")
    # bars: one group per day
    parts.append('<g class="bars">')
    for index, day in enumerate(days):
        x0 = LEFT + index * slot + (slot - bar_w) / 2
        label = day_label(day.day)
        parts.append(f'<g class="day" data-day="{day.day.isoformat()}">')
        if layout == "stacked" or not data.grouped:
            base = ZERO
            for series_index, quantity in enumerate(day.quantities):
                if data.grouped and not quantity:
                    continue
                parts.append(
                    _rect(
                        x0,
                        y_of(base + quantity),
                        bar_w,
                        height(quantity),
                        _colour(series_index, data),
                        _tip(label, data.series[series_index], quantity, number),
                    )
                )
                base += quantity
            if data.grouped and not day.total:
                parts.append(_rect(x0, y_of(ZERO), bar_w, 0, PALETTE[0], f"{label}: 0"))
        else:
            width = bar_w / len(data.series)
            for series_index, quantity in enumerate(day.quantities):
                parts.append(
                    _rect(
                        x0 + series_index * width,
                        y_of(quantity),
                        width,
                        height(quantity),
                        _colour(series_index, data),
                        _tip(label, data.series[series_index], quantity, number),
                    )
                )
        parts.append("</g>")
    parts.append("</g>")
    # the day axis: at most MAX_TICKS labels
    step = max(1, math.ceil(len(days) / MAX_TICKS))
    parts.append('<g class="axis" aria-hidden="true">')
    for index in range(0, len(days), step):
        x = _n(LEFT + index * slot + slot / 2)
        parts.append(
            f'<text x="{x}" y="{HEIGHT - BOTTOM + 18}" text-anchor="middle">'
            f"{escape(tick_label(days[index].day))}</text>"
        )
    parts.append("</g>")

    summary = _summary(data, description, day_label, number)
    svg = (
        f'<svg class="chart-svg" id="{ident}-svg" role="img" '
        f'aria-labelledby="{ident}-title {ident}-desc" viewBox="0 0 {WIDTH} {HEIGHT}" '
        'xmlns="http://www.w3.org/2000/svg" focusable="false">'
        f'<title id="{ident}-title">{escape(title)}</title>'
        f'<desc id="{ident}-desc">{escape(summary)}</desc>' + "".join(parts) + "</svg>"
    )
    return Markup(
        f'<figure class="chart" aria-labelledby="{ident}-caption">'
        f'<figcaption id="{ident}-caption">{escape(title)}</figcaption>'
        f"{svg}{_legend(data)}{_table(data, ident, title, day_label, number)}</figure>"
    )


def _colour(series_index: int, data: ChartData) -> str:
    if data.series[series_index] == OTHER and series_index == len(data.series) - 1:
        return PALETTE[-1]
    return PALETTE[series_index % (len(PALETTE) - 1)]


def _tip(day: str, series: str, quantity: Decimal, number: Callable[[Decimal], str]) -> str:
    return f"{day} · {series}: {number(quantity)}" if series else f"{day}: {number(quantity)}"


def _rect(x: float, y: float, w: float, h: float, fill: str, tip: str) -> str:
    return (
        f'<rect class="bar" x="{_n(x)}" y="{_n(y)}" width="{_n(w)}" height="{_n(h)}" '
        f'fill="{fill}" stroke="#ffffff" stroke-width="0.5"><title>{escape(tip)}</title></rect>'
    )


def _summary(
    data: ChartData,
    description: str,
    day_label: Callable[[date], str],
    number: Callable[[Decimal], str],
) -> str:
    if not data.days:
        return f"{description} No data.".strip()
    first, last = data.days[0].day, data.days[-1].day
    busiest = max(data.days, key=lambda d: (d.total, -d.day.toordinal()))
    text = (
        f"{description} {len(data.days)} days from {day_label(first)} to {day_label(last)}; "
        f"total {number(data.total)}"
    )
    if busiest.total:
        text += f"; highest {number(busiest.total)} on {day_label(busiest.day)}"
    if data.grouped:
        text += "; by " + ", ".join(data.series)
    return text.strip() + "."


def _legend(data: ChartData) -> str:
    if not data.grouped:
        return ""
    items = "".join(
        '<li><svg class="swatch" viewBox="0 0 10 10" aria-hidden="true" focusable="false">'
        f'<rect width="10" height="10" fill="{_colour(i, data)}"/></svg>{escape(label)}</li>'
        for i, label in enumerate(data.series)
    )
    return f'<ul class="legend">{items}</ul>'


def _table(
    data: ChartData,
    ident: str,
    title: str,
    day_label: Callable[[date], str],
    number: Callable[[Decimal], str],
) -> str:
    head = '<th scope="col">Day</th>'
    if data.grouped:
        head += "".join(f'<th scope="col">{escape(s)}</th>' for s in data.series)
    head += '<th scope="col">Total</th>'
    rows = []
    for day in data.days:
        cells = f'<th scope="row"><time datetime="{day.day.isoformat()}">'
        cells += f"{escape(day_label(day.day))}</time></th>"
        if data.grouped:
            cells += "".join(f'<td class="num">{escape(number(q))}</td>' for q in day.quantities)
        cells += f'<td class="num">{escape(number(day.total))}</td>'
        rows.append(f"<tr>{cells}</tr>")
    return (
        f'<details class="chart-data"><summary>{escape(title)}: data table</summary>'
        f'<table id="{ident}-table"><caption>{escape(title)}</caption>'
        f"<thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table></details>"
    )
