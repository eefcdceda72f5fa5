"""The charge models AI billing needs (issue 14 item 5), by hand-computed tables:

- ``percentage`` of a value the events carry, with an optional minimum and maximum **per
  event** (tallyray/pricing/models/percentage.py, the per-event sums in meters.py);
- ``dynamic``: the events carry their own price (tallyray/pricing/models/dynamic.py);
- the ``weighted_sum`` aggregation: a gauge's value × the time it held (meters.py).

Prices throughout (plan ``ai``, EUR, monthly):

- ``margin``: 20 % of the provider's cost, at least 0.01 and at most 2.00 per event;
- ``markup``: 10 % of the provider's cost of gpt-4o calls, no clamp;
- ``passthrough``: the price each event carries (dynamic);
- ``seats``: 0.50 a seat-day; ``gpus``: 2.00 a GPU-hour, graduated after 100 hours.
"""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tallyray.actors.account import CustomerAccount, Profile
from tallyray.cli import EXIT_OK, main
from tallyray.errors import ConfigError, EventError
from tallyray.pricing.config import parse_config
from tallyray.pricing.events import Event, parse_timestamp
from tallyray.pricing.meters import MeterSet, Usage
from tallyray.pricing.models import Dynamic, Percentage, price
from tallyray.pricing.models.percentage import event_amount, price_clamped
from tallyray.pricing.periods import period_of
from tallyray.pricing.plans import price_charge, rate

D = Decimal
T = parse_timestamp
HOUR = 3_600_000_000
DAY = 24 * HOUR
NOV = T("2026-11-01T00:00:00Z")
DEC = T("2026-12-01T00:00:00Z")  # November has 30 days


def _config(**plan_fields: Any) -> Any:
    plan: dict[str, Any] = {
        "key": "ai",
        "currency": "EUR",
        "interval": "month",
        "charges": [
            {
                "meter": "cost",
                "model": "percentage",
                "percent": "20",
                "minimum": "0.01",
                "maximum": "2.00",
                "description": "margin",
            },
            {
                "meter": "cost",
                "filter": {"model": "gpt-4o"},
                "model": "percentage",
                "percent": "10",
                "description": "markup",
            },
            {"meter": "price", "model": "dynamic", "description": "passthrough"},
            {"meter": "seats", "model": "per_unit", "unit_amount": "0.50"},
            {
                "meter": "gpus",
                "model": "graduated",
                "tiers": [
                    {"up_to": 100, "unit_amount": "2.00"},
                    {"up_to": None, "unit_amount": "1.50"},
                ],
            },
        ],
    }
    plan.update(plan_fields)
    return parse_config(
        {
            "meters": [
                {
                    "key": "cost",
                    "event_type": "llm",
                    "aggregation": "sum",
                    "value": "cost",
                    "group_by": ["model"],
                },
                {"key": "price", "event_type": "llm", "aggregation": "sum", "value": "price"},
                {
                    "key": "seats",
                    "event_type": "seats",
                    "aggregation": "weighted_sum",
                    "value": "seats",
                    "unit": "day",
                },
                {
                    "key": "gpus",
                    "event_type": "gpus",
                    "aggregation": "weighted_sum",
                    "value": "gpus",
                    "unit": "hour",
                    "group_by": ["kind"],
                },
            ],
            "plans": [plan],
        }
    )


CONFIG = _config()
PLAN = CONFIG.plan("ai")
METERS: MeterSet = CONFIG.meters
_ids = iter(range(10**9))


def _json(value: Any) -> Any:
    """``"0.02"`` → the JSON number 0.02, as an event carries it (read as the decimal written)."""
    return float(value) if isinstance(value, str) else value


def llm(cost: Any, price: Any = 0, model: str = "gpt-4o", ts: int = NOV + DAY) -> Event:
    properties = {"model": model, "cost": _json(cost), "price": _json(price)}
    return Event(f"l{next(_ids)}", "c", "llm", ts, properties)


def seats(n: Any, ts: int) -> Event:
    return Event(f"s{next(_ids)}", "c", "seats", ts, {"seats": n})


def gpus(n: Any, ts: int, kind: str = "h100") -> Event:
    return Event(f"g{next(_ids)}", "c", "gpus", ts, {"gpus": n, "kind": kind})


def lines(events: list[Event], end: int | None = DEC) -> dict[str, tuple[str, str, str]]:
    """Each usage line by description: (quantity, precise amount, rounded amount)."""
    usage = METERS.fold(events)
    usage.end = end
    return {
        line.description: (
            format((line.quantity or D(0)).normalize(), "f"),
            format(line.precise_amount.normalize(), "f"),
            format(line.amount, "f"),
        )
        for line in rate(PLAN, usage, METERS.meters).lines
    }


# --- percentage: one event ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "percent", "minimum", "maximum", "expected"),
    [
        ("1.00", "20", None, None, "0.2"),  # 1.00 × 20 % = 0.20
        ("0.02", "20", "0.01", "2.00", "0.01"),  # 0.004 lifted to the minimum
        ("0.50", "20", "0.01", "2.00", "0.1"),  # 0.10, inside the bounds
        ("30.00", "20", "0.01", "2.00", "2.00"),  # 6.00 capped at the maximum
        ("0", "20", "0.01", None, "0.01"),  # a free call still pays the minimum
        ("0.05", "20", "0.01", "0.01", "0.01"),  # minimum = maximum: a flat fee per event
        ("10", "120", None, None, "12"),  # cost plus 20 %: 10 × 120 % = 12
        ("0.000123", "2.5", None, None, "0.000003075"),  # full precision, no rounding
        ("7", "0", "0.25", None, "0.25"),  # 0 % with a minimum: a fee per event
    ],
)
def test_percentage_of_one_event(
    value: str, percent: str, minimum: str | None, maximum: str | None, expected: str
) -> None:
    spec = Percentage(D(percent), minimum and D(minimum), maximum and D(maximum))
    assert event_amount(D(value), spec) == D(expected)


@pytest.mark.parametrize(
    ("quantity", "percent", "expected"),
    [
        ("0", "20", "0"),  # an empty period costs nothing
        ("30.52", "20", "6.104"),  # 30.52 × 0.20
        ("1234.5678", "2.9", "35.8024662"),  # 1,234.5678 × 0.029
    ],
)
def test_percentage_without_a_clamp_is_a_share_of_the_sum(
    quantity: str, percent: str, expected: str
) -> None:
    priced = price(D(quantity), Percentage(D(percent)))
    assert priced.amount == D(expected)
    assert priced.unit_amount == D(percent) / 100


def test_a_clamped_percentage_is_the_sum_of_its_events() -> None:
    assert price_clamped(D("2.11"), Percentage(D(20), D("0.01"))).amount == D("2.11")
    assert price_clamped(D("2.11"), Percentage(D(20), D("0.01"))).unit_amount is None


# --- percentage and dynamic in a plan ------------------------------------------------------


@pytest.mark.parametrize(
    ("events", "margin", "markup"),
    [
        # no events: every line is zero
        ([], ("0", "0", "0.00"), ("0", "0", "0.00")),
        # 0.01 (0.004 lifted) + 0.10 + 2.00 (6.00 capped) = 2.11; not 20 % of 30.52 = 6.104.
        # markup: 10 % of the gpt-4o cost only, 0.02 + 0.50 = 0.52 → 0.052 → 0.05
        (
            [llm("0.02"), llm("0.50"), llm("30.00", model="claude")],
            ("30.52", "2.11", "2.11"),
            ("0.52", "0.052", "0.05"),
        ),
        # one line rounded once: 0.0625 + 0.0625 = 0.125 → 0.13 (half up), never
        # 0.06 + 0.06 = 0.12 from rounding each event
        (
            [llm("0.3125"), llm("0.3125")],
            ("0.625", "0.125", "0.13"),
            ("0.625", "0.0625", "0.06"),
        ),
        # the minimum applies per event: 5 events of 0.001 pay 5 × 0.01 = 0.05, where
        # 20 % of their sum would be 0.001
        (
            [llm(0.001) for _ in range(5)],
            ("0.005", "0.05", "0.05"),
            ("0.005", "0.0005", "0.00"),
        ),
        # the maximum per event: 3 × 2.00 = 6.00, where 20 % of 150 would be 30.00
        (
            [llm(50) for _ in range(3)],
            ("150", "6", "6.00"),
            ("150", "15", "15.00"),
        ),
    ],
)
def test_percentage_lines(
    events: list[Event], margin: tuple[str, str, str], markup: tuple[str, str, str]
) -> None:
    got = lines(events)
    assert got["margin"] == margin
    assert got["markup"] == markup


@pytest.mark.parametrize(
    ("prices", "expected"),
    [
        ([], ("0", "0", "0.00")),  # an empty period
        # 0.0125 + 0.30 + 1.2 = 1.5125 → 1.51: JSON numbers read as the decimals written
        ([0.0125, 0.30, 1.2], ("1.5125", "1.5125", "1.51")),
        ([3], ("3", "3", "3.00")),  # whole numbers too
        ([0.005, 0], ("0.005", "0.005", "0.01")),  # 0.005 → 0.01 (half up), once per line
    ],
)
def test_dynamic_lines(prices: list[Any], expected: tuple[str, str, str]) -> None:
    got = lines([llm(0, price=p) for p in prices])
    assert got["passthrough"] == expected


def test_dynamic_prices_a_quantity_as_itself() -> None:
    assert price(D("1.5125"), Dynamic()).amount == D("1.5125")
    assert price(D("1.5125"), Dynamic()).unit_amount is None


def test_a_jpy_plan_rounds_to_whole_yen() -> None:
    config = _config(currency="JPY")
    usage = config.meters.fold([llm(0, price=p) for p in (12.4, 0.2)] + [llm("2.5")])
    got = {li.description: li.amount for li in rate(config.plan("ai"), usage, METERS.meters).lines}
    assert got["passthrough"] == D(13)  # 12.4 + 0.2 = 12.6 → 13
    assert got["margin"] == D(1)  # 20 % of 2.5 = 0.5 → 1 (half up); within [0.01, 2.00]


@given(
    costs=st.lists(st.decimals("0", "100", places=4), max_size=12),
    cut=st.integers(0, 12),
)
def test_how_the_events_are_split_into_batches_never_changes_a_clamped_charge(
    costs: list[Decimal], cut: int
) -> None:
    events = [llm(float(c)) for c in costs]
    whole = METERS.fold(events)
    parts = METERS.fold(events[:cut])
    parts.merge(METERS.fold(events[cut:]))
    charge = PLAN.charges[0]
    assert price_charge(charge, parts, METERS.meters) == price_charge(charge, whole, METERS.meters)
    # and it is the sum of the events' amounts, each clamped
    spec = charge.model
    assert isinstance(spec, Percentage)
    expected = sum((event_amount(D(repr(float(c))), spec) for c in costs), D(0))
    assert price_charge(charge, whole, METERS.meters)[1].amount == expected


def test_the_per_event_sum_survives_a_checkpoint() -> None:
    usage = METERS.fold([llm("0.02"), llm("30")])
    restored = METERS.usage_from_json(usage.to_json(), DEC)
    charge = PLAN.charges[0]
    assert price_charge(charge, restored, METERS.meters)[1].amount == D("2.01")  # 0.01 + 2.00


def test_a_bad_value_leaves_no_per_event_sum_behind() -> None:
    usage = METERS.fold([llm("1")])
    with pytest.raises(EventError) as caught:
        METERS.fold([llm("1"), llm(0, price=None)], into=usage)
    assert caught.value.problems[0].where == "[1]"  # null is not a price
    assert price_charge(PLAN.charges[0], usage, METERS.meters)[1].amount == D("0.2")


# --- weighted_sum --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("readings", "end", "quantity"),
    [
        ([], DEC, "0"),  # no readings: nothing held
        # 10 seats from Nov 1, 15 from Nov 11, 12 from Nov 21 to the end (Dec 1):
        # 10 × 10 + 15 × 10 + 12 × 10 = 370 seat-days
        ([(10, NOV), (15, NOV + 10 * DAY), (12, NOV + 20 * DAY)], DEC, "370"),
        # the same readings arriving out of order hold the same
        ([(12, NOV + 20 * DAY), (10, NOV), (15, NOV + 10 * DAY)], DEC, "370"),
        # nothing is carried into a period: the first reading on Nov 5 starts it,
        # 4 seats × 26 days = 104
        ([(4, NOV + 4 * DAY)], DEC, "104"),
        # live, the last reading is held to the period's end: 3 seats set at noon on Nov 30
        # hold half a day, 3 × 0.5 = 1.5
        ([(3, DEC - 12 * HOUR)], DEC, "1.5"),
        # fractions of a unit: 1 seat for 1 hour = 1/24 day, divided once (60 digits)
        (
            [(1, NOV), (0, NOV + HOUR)],
            DEC,
            "0.0416666666666666666666666666666666666666666666666666666666667",
        ),
        # with no end known (a batch not placed in a period), the last reading holds no time
        ([(10, NOV), (20, NOV + DAY)], None, "10"),
    ],
)
def test_weighted_sum_in_days(
    readings: list[tuple[Any, int]], end: int | None, quantity: str
) -> None:
    usage = METERS.fold([seats(n, ts) for n, ts in readings])
    usage.end = end
    assert usage.quantity(METERS.meters["seats"]) == D(quantity)


def test_weighted_sum_per_group_and_graduated_prices() -> None:
    events = [
        gpus(4, NOV),
        gpus(0, NOV + 25 * HOUR),  # h100: 4 × 25 = 100 hours, then none
        gpus(2, NOV + 2 * DAY, kind="a100"),
        gpus(0, NOV + 2 * DAY + 6 * HOUR, kind="a100"),  # a100: 2 × 6 = 12 hours
    ]
    usage = METERS.fold(events)
    usage.end = DEC
    meter = METERS.meters["gpus"]
    assert usage.by_group(meter) == {("h100",): D(100), ("a100",): D(12)}
    got = lines(events)
    # 112 GPU-hours: 100 × 2.00 + 12 × 1.50 = 218.00
    assert got["gpus"] == ("112", "218", "218.00")


def test_weighted_sum_merges_and_survives_a_checkpoint() -> None:
    first = METERS.fold([seats(10, NOV)])
    first.end = DEC
    late = METERS.fold([seats(5, NOV + 15 * DAY), seats(10, NOV + 5 * DAY)])
    copy = first.plus(late)
    assert first.quantity(METERS.meters["seats"]) == D(300)  # untouched by plus: 10 × 30
    first.merge(late)
    assert first.groups == copy.groups
    # 10 × 15 + 5 × 15 = 225
    assert first.quantity(METERS.meters["seats"]) == D(225)
    restored = METERS.usage_from_json(first.to_json(), DEC)
    assert restored.quantity(METERS.meters["seats"]) == D(225)
    # a repeated reading (same event) is one reading
    first.merge(METERS.fold([Event("dup", "c", "seats", NOV, {"seats": 10})]))
    first.merge(METERS.fold([Event("dup", "c", "seats", NOV, {"seats": 10})]))
    assert len(first.groups["seats"][()]) == 4


# --- live: the account agrees with the invoice preview ----------------------------------------


def _account() -> CustomerAccount:
    return CustomerAccount(Profile("c", "EUR", PLAN), METERS)


def test_live_spend_is_the_sum_of_the_preview_lines_at_full_precision() -> None:
    acct = _account()
    batches = [
        [llm("0.02", price=0.0125), llm("30", model="claude"), seats(10, NOV)],
        [llm("0.5", price=0.3), seats(15, NOV + 10 * DAY)],
        [gpus(4, NOV), gpus(0, NOV + 25 * HOUR), llm(0.001, price=1.2)],
    ]
    for n, batch in enumerate(batches):
        acct.apply(batch, NOV + n)
    usage = acct.periods[NOV]
    assert usage.end == DEC
    preview = rate(PLAN, usage, METERS.meters)
    precise = {line.description: line.precise_amount for line in preview.lines}
    # margin: 0.01 + 2.00 + 0.10 + 0.01 = 2.12; markup: 10 % of (0.02 + 0.5 + 0.001) = 0.0521
    # passthrough: 0.0125 + 0.3 + 1.2 = 1.5125; seats: 10 × 10 + 15 × 20 = 400 days × 0.50
    # = 200; gpus: 100 hours × 2.00 = 200
    assert precise == {
        "margin": D("2.12"),
        "markup": D("0.0521"),
        "passthrough": D("1.5125"),
        "seats": D("200"),
        "gpus": D("200"),
    }
    assert acct.spend[NOV] == sum(precise.values(), D(0)) == D("403.6846")
    assert preview.subtotal == D("403.68")  # 2.12 + 0.05 + 1.51 + 200.00 + 200.00


def test_a_quota_check_prices_a_clamped_percentage_and_a_gauge_per_event() -> None:
    acct = _account()
    acct.apply([llm("30")], NOV)
    assert acct.price([llm("0.001")]) == D("0.0101")  # margin 0.01 (lifted) + markup 0.0001
    # a gauge reading on Nov 16 holds 15 days to the period's end: 6 × 15 × 0.50 = 45
    assert acct.price([seats(6, NOV + 15 * DAY)]) == D(45)


def test_a_new_period_does_not_carry_the_gauge_over() -> None:
    acct = _account()
    acct.apply([seats(10, DEC - DAY)], NOV)  # 10 seats on the last day of November
    acct.apply([seats(4, DEC + DAY)], NOV + 1)  # December: its first reading is on Dec 2
    assert acct.periods[NOV].quantity(METERS.meters["seats"]) == D(10)  # 10 × 1 day
    # December (31 days) starts at 0: 4 seats × 30 days = 120, not 10 × 1 + 4 × 30
    december = acct.periods[DEC]
    assert december.end == period_of(DEC, "month").end
    assert december.quantity(METERS.meters["seats"]) == D(120)


# --- configuration -------------------------------------------------------------------------


def _problems(**charge: Any) -> dict[str, str]:
    raw = {
        "meters": [
            {"key": "cost", "event_type": "llm", "aggregation": "sum", "value": "cost"},
            {"key": "calls", "event_type": "llm", "aggregation": "count"},
            {
                "key": "refunds",
                "event_type": "llm",
                "aggregation": "sum",
                "value": "cost",
                "allow_negative": True,
            },
        ],
        "plans": [{"key": "p", "currency": "EUR", "interval": "month", "charges": [charge]}],
    }
    try:
        parse_config(raw)
    except ConfigError as error:
        return {p.where: p.message for p in error.problems}
    return {}


AT = "plans[0].charges[0]"


@pytest.mark.parametrize(
    ("charge", "where", "fragment"),
    [
        ({"meter": "cost", "model": "percentage"}, f"{AT}.percent", "is required"),
        (
            {"meter": "cost", "model": "percentage", "percent": "20%"},
            f"{AT}.percent",
            'without "%": "20" for 20 %',
        ),
        (
            {"meter": "cost", "model": "percentage", "percent": "-5"},
            f"{AT}.percent",
            "must not be negative",
        ),
        (
            {"meter": "cost", "model": "percentage", "percent": 20.5},
            f"{AT}.percent",
            "",  # a JSON float is refused by the amount parser with its own message
        ),
        (
            {
                "meter": "cost",
                "model": "percentage",
                "percent": "20",
                "minimum": "2",
                "maximum": "1",
            },
            f"{AT}.maximum",
            "is below the least (2): raise maximum or lower minimum",
        ),
        (
            {"meter": "cost", "model": "percentage", "percent": "20", "minimum": "-0.01"},
            f"{AT}.minimum",
            "must not be negative",
        ),
        (
            {"meter": "cost", "model": "percentage", "percent": "20", "unit_amount": "1"},
            f"{AT}.unit_amount",
            "unknown field (known: description, filter, maximum, meter, minimum, model, percent)",
        ),
        (
            {"meter": "calls", "model": "percentage", "percent": "20"},
            f"{AT}.meter",
            "a percentage charge needs a sum meter over the value it takes a percentage of "
            "(the provider's cost, say); meter 'calls' is a count meter",
        ),
        (
            {"meter": "refunds", "model": "percentage", "percent": "20", "maximum": "1"},
            f"{AT}.meter",
            "meter 'refunds' takes negative values, and a per-event minimum or maximum",
        ),
        (
            {"meter": "calls", "model": "dynamic"},
            f"{AT}.meter",
            "a dynamic charge needs a sum meter over the price each event carries; "
            "meter 'calls' is a count meter",
        ),
        (
            {"meter": "cost", "model": "dynamic", "unit_amount": "1"},
            f"{AT}.unit_amount",
            "unknown field (known: description, filter, meter, model)",
        ),
    ],
)
def test_bad_charges(charge: dict[str, Any], where: str, fragment: str) -> None:
    problems = _problems(**charge)
    assert where in problems, problems
    assert fragment in problems[where]


def test_good_charges_parse() -> None:
    assert _problems(meter="cost", model="percentage", percent="2.9", minimum="0.30") == {}
    assert _problems(meter="refunds", model="percentage", percent="20") == {}  # no clamp
    assert _problems(meter="cost", model="dynamic") == {}


@pytest.mark.parametrize(
    ("meter", "fragment"),
    [
        (
            {"aggregation": "weighted_sum", "value": "seats"},
            "a weighted_sum meter needs the unit of time its value is held in: one of second, "
            "minute, hour, day, not None",
        ),
        (
            {"aggregation": "weighted_sum", "value": "seats", "unit": "week"},
            "one of second, minute, hour, day, not 'week'",
        ),
        (
            {"aggregation": "sum", "value": "seats", "unit": "hour"},
            "only a weighted_sum meter takes a unit of time",
        ),
    ],
)
def test_bad_weighted_sum_meters(meter: dict[str, Any], fragment: str) -> None:
    raw = {"meters": [{"key": "seats", "event_type": "seats", **meter}]}
    with pytest.raises(ConfigError) as caught:
        parse_config(raw)
    problems = {p.where: p.message for p in caught.value.problems}
    assert fragment in problems["meters[0].unit"]


def test_usage_type_is_unchanged_for_plain_meters() -> None:
    # a meter set without per-event charges keeps only its meters' states
    plain = MeterSet([METERS.meters["price"]])
    assert plain.empty_usage() == Usage({"price": {}}, {"price": "sum"})


# --- tallyray price ------------------------------------------------------------------------


def test_tallyray_price_gives_the_invoice_amounts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The October of tests/integration/test_ai_charge_models_api.py, offline: the same lines."""
    config = tmp_path / "tallyray.json"
    config.write_text(json.dumps(CONFIG.raw), encoding="utf-8")

    def event(kind: str, ts: str, **properties: Any) -> str:
        return json.dumps({"type": kind, "timestamp": ts, "properties": properties})

    calls = [("gpt-4o", 0.02, 0.0125), ("claude", 30, 0.3), ("gpt-4o", 0.5, 1.2)]
    events = [
        *(event("llm", "2026-10-10T12:00:00Z", model=m, cost=c, price=p) for m, c, p in calls),
        event("llm", "2026-10-13T12:00:00Z", model="gpt-4o", cost=0.001, price=0),
        event("seats", "2026-10-21T00:00:00Z", seats=16),
        event("seats", "2026-10-01T00:00:00Z", seats=10),
    ]
    path = tmp_path / "events.jsonl"
    path.write_text("\n".join(events) + "\n", encoding="utf-8")
    code = main(["price", "--config", str(config), "--plan", "ai", "--events", str(path)])
    out, _ = capsys.readouterr()
    assert code == EXIT_OK
    preview = json.loads(out)
    assert {line["description"]: line["amount"] for line in preview["lines"]} == {
        "margin": "2.12",
        "markup": "0.05",
        "passthrough": "1.51",
        "seats": "188.00",  # 10 × 20 days + 16 × 11 days (October: 31) = 376 × 0.50
        "gpus": "0.00",
    }
    assert preview["subtotal"] == "191.68"
