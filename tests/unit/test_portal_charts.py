"""The portal's pure pieces: daily usage charts (SVG + table) and the spend forecast."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from datetime import date, timedelta
from decimal import Decimal
from typing import Any

import pytest

from tallyray.portal.charts import (
    OTHER,
    PALETTE,
    ChartData,
    bar_chart,
    chart_data,
    group_label,
    nice_ceiling,
)
from tallyray.portal.forecast import elapsed_fraction, forecast_spend, period_forecast

SVG = "{http://www.w3.org/2000/svg}"
DAY = 86_400_000_000


def iso(index: int) -> str:
    """Midnight UTC of the ``index``-th day from 1 November 2026."""
    return f"{date(2026, 11, 1) + timedelta(days=index)}T00:00:00Z"


def day_points(quantities: list[str]) -> list[dict[str, Any]]:
    return [{"start": iso(i), "end": iso(i + 1), "quantity": q} for i, q in enumerate(quantities)]


def grouped_points(days: list[dict[str, str]]) -> list[dict[str, Any]]:
    points = []
    for i, groups in enumerate(days):
        points.append(
            {
                "start": iso(i),
                "end": iso(i + 1),
                "quantity": str(sum(Decimal(q) for q in groups.values())),
                "groups": [{"group": {"model": m}, "quantity": q} for m, q in groups.items()],
            }
        )
    return points


def svg_of(figure: str) -> ET.Element:
    match = re.search(r"<svg class=\"chart-svg\".*?</svg>", figure, re.S)
    assert match is not None
    return ET.fromstring(match.group(0))


def days_in(svg: ET.Element) -> list[ET.Element]:
    return [g for g in svg.iter(f"{SVG}g") if g.get("class") == "day"]


# -- charts ------------------------------------------------------------------------------


@pytest.mark.parametrize("count", [1, 7, 30, 31])
def test_one_bar_per_day_and_a_table_row_per_day(count: int) -> None:
    points = day_points([str(i * 10) for i in range(count)])
    figure = bar_chart(chart_data(points), chart_id="c", title="requests per day")
    svg = svg_of(figure)
    days = days_in(svg)
    assert len(days) == count
    assert all(len(d.findall(f"{SVG}rect")) == 1 for d in days)  # one bar each, zeros too
    assert [d.get("data-day") for d in days] == [iso(i)[:10] for i in range(count)]
    table = figure[figure.index("<table") :]
    assert table.count('<th scope="row">') == count
    assert "<details" in figure and "data table" in figure


def test_the_svg_is_labelled_for_assistive_technology() -> None:
    points = day_points(["5", "0", "12"])
    figure = bar_chart(
        chart_data(points), chart_id="req", title="requests per day", description="Daily."
    )
    svg = svg_of(figure)
    assert svg.get("role") == "img"
    assert svg.get("aria-labelledby") == "req-title req-desc"
    assert svg.find(f"{SVG}title").text == "requests per day"  # type: ignore[union-attr]
    desc = svg.find(f"{SVG}desc").text  # type: ignore[union-attr]
    # 5 + 0 + 12 = 17; the highest day is the 3rd
    assert desc == (
        "Daily. 3 days from 2026-11-01 to 2026-11-03; total 17; highest 12 on 2026-11-03."
    )
    assert 'id="req-title"' in figure and 'id="req-desc"' in figure
    assert "<script" not in figure and "style=" not in figure  # no script, CSP-friendly


def test_bar_heights_are_proportional_to_a_nice_axis_top() -> None:
    # peak 80 → axis top 100; plot height 260 − 12 − 36 = 212 → 80 % is 169.6 px
    svg = svg_of(bar_chart(chart_data(day_points(["80", "40", "0"])), chart_id="c", title="t"))
    heights = [float(r.get("height", "")) for r in svg.iter(f"{SVG}rect")]
    assert heights == [169.6, 84.8, 0.0]
    labels = [t.text for g in svg.iter(f"{SVG}g") if g.get("class") == "grid" for t in g]
    assert [x for x in labels if x] == ["0", "50", "100"]


def test_stacked_groups_one_segment_per_model_and_a_legend() -> None:
    points = grouped_points(
        [
            {"gpt-4o": "300", "gpt-4o-mini": "100"},
            {"gpt-4o-mini": "50"},
            {},
        ]
    )
    data = chart_data(points)
    assert data.series == ("gpt-4o", "gpt-4o-mini")  # largest first: 300 > 150
    assert [d.quantities for d in data.days] == [
        (Decimal(300), Decimal(100)),
        (Decimal(0), Decimal(50)),
        (Decimal(0), Decimal(0)),
    ]
    figure = bar_chart(data, chart_id="tok", title="input_tokens per day by model")
    days = days_in(svg_of(figure))
    assert [len(d.findall(f"{SVG}rect")) for d in days] == [2, 1, 1]  # empty day: a 0 bar
    assert '<ul class="legend">' in figure and ">gpt-4o-mini</li>" in figure
    # the table: a column per model, and a total
    assert '<th scope="col">gpt-4o</th><th scope="col">gpt-4o-mini</th>' in figure
    assert '<th scope="col">Total</th>' in figure
    tips = [t.text for d in days for r in d for t in r]
    assert tips[0] == "2026-11-01 · gpt-4o: 300"


def test_grouped_layout_puts_bars_side_by_side() -> None:
    points = grouped_points([{"a": "1", "b": "2"}, {"a": "3", "b": "0"}])
    svg = svg_of(bar_chart(chart_data(points), chart_id="g", title="t", layout="grouped"))
    days = days_in(svg)
    assert [len(d.findall(f"{SVG}rect")) for d in days] == [2, 2]
    first = days[0].findall(f"{SVG}rect")
    assert float(first[0].get("x", "")) < float(first[1].get("x", ""))


def test_many_groups_fold_into_other() -> None:
    groups = {f"m{i}": str(100 - i) for i in range(10)}
    data = chart_data(grouped_points([groups]))
    # 7 colours for named groups: the 6 largest by name, then Other = 94 + 93 + 92 + 91
    assert data.series == ("m0", "m1", "m2", "m3", "m4", "m5", OTHER)
    assert data.days[0].quantities[-1] == Decimal(94 + 93 + 92 + 91)
    assert data.total == sum(Decimal(q) for q in groups.values())


def test_a_grouped_meter_with_no_usage_is_one_plain_series() -> None:
    data = chart_data(grouped_points([{}, {}]))
    assert data == ChartData(("",), tuple(d for d in chart_data(day_points(["0", "0"])).days))


def test_text_is_escaped() -> None:
    points = grouped_points([{"<script>x</script>": "1"}])
    figure = bar_chart(chart_data(points), chart_id='a"b', title="<b>t</b>")
    assert "<script>" not in figure and "<b>" not in figure
    assert "&lt;script&gt;" in figure and 'id="a&#34;b-svg"' in figure


def test_formatters_are_passed_in() -> None:
    figure = bar_chart(
        chart_data(day_points(["1234.5"])),
        chart_id="c",
        title="t",
        day_label=lambda d: d.strftime("%d.%m.%Y"),
        number=lambda q: f"{q:,}".replace(",", "."),
    )
    assert "01.11.2026" in figure and "1.234.5" in figure


@pytest.mark.parametrize(
    ("group", "label"),
    [
        ({"model": "gpt-4o"}, "gpt-4o"),
        ({"model": None}, "(none)"),
        ({"gpu": "h100", "region": "eu"}, "gpu: h100, region: eu"),
    ],
)
def test_group_labels(group: dict[str, Any], label: str) -> None:
    assert group_label(group) == label


@pytest.mark.parametrize(
    ("peak", "top"),
    [
        ("0", "1"),
        ("0.3", "0.5"),
        ("1", "1"),
        ("1.01", "2"),
        ("2.2", "2.5"),
        ("80", "100"),
        ("4100", "5000"),
        ("12000000", "20000000"),
    ],
)
def test_nice_axis_tops(peak: str, top: str) -> None:
    assert nice_ceiling(Decimal(peak)) == Decimal(top)


def _luminance(colour: str) -> float:
    channels = []
    for i in (1, 3, 5):
        c = int(colour[i : i + 2], 16) / 255
        channels.append(c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4)
    r, g, b = channels
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


@pytest.mark.parametrize("colour", PALETTE)
def test_every_bar_colour_has_3_to_1_contrast_on_white(colour: str) -> None:
    assert (1.05) / (_luminance(colour) + 0.05) >= 3.0  # WCAG 1.4.11 non-text contrast


def test_an_unknown_layout_is_refused() -> None:
    with pytest.raises(ValueError, match="layout"):
        bar_chart(chart_data(day_points(["1"])), chart_id="c", title="t", layout="pie")


def test_dates_in_data() -> None:
    assert chart_data(day_points(["1"])).days[0].day == date(2026, 11, 1)


# -- forecast ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("start", "end", "now", "elapsed"),
    [
        (0, 30 * DAY, 0, "0"),
        (0, 30 * DAY, -DAY, "0"),  # before the period: nothing has passed
        (0, 30 * DAY, 10 * DAY, "0.3333333333333333333333333333"),  # 10 / 30
        (0, 30 * DAY, 15 * DAY, "0.5"),
        (0, 30 * DAY, 30 * DAY, "1"),
        (0, 30 * DAY, 31 * DAY, "1"),  # after it: all of it
    ],
)
def test_elapsed_fraction(start: int, end: int, now: int, elapsed: str) -> None:
    assert elapsed_fraction(start, end, now) == Decimal(elapsed)


@pytest.mark.parametrize(
    ("spent", "elapsed", "projected"),
    [
        ("12.00", "0.5", "24"),  # 12.00 / 0.5 = 24.00
        ("10.00", "0.25", "40"),  # 10 / 0.25
        ("2.035", "0.1", "20.35"),  # full precision: rounding is the caller's
        ("7.50", "1", "7.50"),  # the period is over: the forecast is what was spent
        ("0", "0.7", "0"),
        ("5.00", "0", None),  # at the very start nothing can be extrapolated
    ],
)
def test_forecast_arithmetic(spent: str, elapsed: str, projected: str | None) -> None:
    result = forecast_spend(Decimal(spent), Decimal(elapsed))
    assert result == (None if projected is None else Decimal(projected))
    assert result is None or isinstance(result, Decimal)


def test_a_forecast_over_a_period() -> None:
    # 9 of 30 days gone, 4.50 spent → 4.50 / 0.3 = 15.00
    f = period_forecast(Decimal("4.50"), 0, 30 * DAY, 9 * DAY)
    assert (f.spent, f.elapsed, f.projected) == (Decimal("4.50"), Decimal("0.3"), Decimal(15))


@pytest.mark.parametrize("elapsed", ["-0.1", "1.5"])
def test_an_elapsed_fraction_outside_0_to_1_is_a_bug(elapsed: str) -> None:
    with pytest.raises(ValueError):
        forecast_spend(Decimal(1), Decimal(elapsed))


def test_a_period_must_have_length() -> None:
    with pytest.raises(ValueError):
        elapsed_fraction(5, 5, 5)
