"""Meters: folding events into usage (tallyray/pricing/meters.py)."""

from __future__ import annotations

import json
import random
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tallyray.errors import EventError
from tallyray.pricing.config import parse_config
from tallyray.pricing.events import Event
from tallyray.pricing.meters import MeterSet, MeterSpec, Usage

D = Decimal


def ev(props: dict[str, Any], ts: int = 0, id: str = "e", type: str = "llm") -> Event:
    return Event(id, "acme", type, ts, props)


def events(*props: dict[str, Any], type: str = "llm") -> list[Event]:
    """One event per properties dict, ids e0, e1, ... and timestamps 0, 1, ..."""
    return [ev(p, ts=i, id=f"e{i}", type=type) for i, p in enumerate(props)]


def quantity(
    meter: MeterSpec, evts: list[Event], flt: dict[str, frozenset[Any]] | None = None
) -> Decimal:
    """Fold ``evts`` through a one-meter set and return the meter's quantity."""
    return MeterSet([meter]).fold(evts).quantity(meter, flt)


# --- building a meter set --------------------------------------------------------------------


def test_meter_set_from_specs_and_from_config_agree() -> None:
    by_hand = MeterSpec("tokens", "llm", "sum", ("usage", "tokens"), {}, ("model",))
    config = parse_config(
        {
            "meters": [
                {
                    "key": "tokens",
                    "event_type": "llm",
                    "aggregation": "sum",
                    "value": "usage.tokens",
                    "group_by": ["model"],
                }
            ]
        }
    )
    assert config.meters.meters == {"tokens": by_hand}
    assert "tokens" in config.meters and "other" not in config.meters
    assert config.meters.event_types() == frozenset({"llm"})

    batch = events({"model": "a", "usage": {"tokens": 5}}, {"model": "a", "usage": {"tokens": 7}})
    from_config = config.meters.fold(batch)
    assert from_config.to_json() == MeterSet([by_hand]).fold(batch).to_json()
    assert from_config.to_json() == {"tokens": [[["a"], 12]]}  # 5 + 7


def test_empty_usage_has_every_meter_and_nothing_in_it() -> None:
    meters = MeterSet([MeterSpec("n", "llm", "count"), MeterSpec("s", "llm", "sum", ("v",))])
    usage = meters.empty_usage()
    assert usage.groups == {"n": {}, "s": {}}
    assert usage.is_empty()
    assert usage.quantity(meters.meters["s"]) == 0


# --- aggregations ----------------------------------------------------------------------------

SUM = MeterSpec("tokens", "llm", "sum", ("tokens",))
COUNT = MeterSpec("requests", "llm", "count")
MAX = MeterSpec("peak", "llm", "max", ("tokens",))
UNIQUE = MeterSpec("users", "llm", "unique_count", ("user",))
LATEST = MeterSpec("last", "llm", "latest", ("tokens",))
SUM_NEGATIVE = MeterSpec("credit", "llm", "sum", ("tokens",), allow_negative=True)
MAX_NEGATIVE = MeterSpec("low", "llm", "max", ("tokens",), allow_negative=True)


@pytest.mark.parametrize(
    ("meter", "values", "expected"),
    [
        (SUM, [3, 4, 5], "12"),  # 3 + 4 + 5 = 12
        (SUM, [1.5, 2], "3.5"),  # a JSON 1.5 is the decimal 1.5
        (SUM, [0.1, 0.2], "0.3"),  # exactly 0.3, not the float 0.30000000000000004
        (SUM_NEGATIVE, [-2, 5], "3"),  # corrections, where the meter allows negatives
        (SUM, [], "0"),
        (COUNT, [3, 4, 5], "3"),  # three events
        (MAX, [3, 7.5, 5], "7.5"),
        (MAX_NEGATIVE, [-3, -1], "-1"),
        (UNIQUE, ["u1", "u2", "u1", 7], "3"),  # {u1, u2, 7}
        (UNIQUE, [7, "7"], "2"),  # the number 7 and the string "7" are different
    ],
)
def test_aggregation(meter: MeterSpec, values: list[Any], expected: str) -> None:
    key = "user" if meter.aggregation == "unique_count" else "tokens"
    result = quantity(meter, events(*({key: v} for v in values)))
    assert isinstance(result, Decimal)
    assert result == D(expected)


def test_sum_of_ints_stays_an_int_and_floats_become_exact_decimals() -> None:
    meters = MeterSet([SUM])
    assert meters.fold(events({"tokens": 3}, {"tokens": 4})).groups["tokens"] == {(): 7}
    state = meters.fold(events({"tokens": 1.5})).groups["tokens"][()]
    assert type(state) is Decimal and state.as_tuple() == D("1.5").as_tuple()
    # int + decimal: 2 + 1.25 = 3.25, stored as the string "3.25" in a snapshot
    usage = meters.fold(events({"tokens": 2}, {"tokens": 1.25}))
    assert usage.to_json() == {"tokens": [[[], "3.25"]]}


@pytest.mark.parametrize(
    ("batch", "expected"),
    [
        # (ts, id, value): the newest by timestamp, then by id, wins
        ([(10, "b", 1), (20, "a", 2), (20, "c", 3), (5, "z", 4)], "3"),  # (20, "c")
        ([(20, "c", 3), (5, "z", 4), (20, "a", 2), (10, "b", 1)], "3"),  # order does not matter
        ([(1, "a", 1.5)], "1.5"),
        ([(7, "x", 9), (7, "y", 2)], "2"),  # same timestamp: "y" > "x"
    ],
)
def test_latest_is_newest_by_timestamp_then_id(
    batch: list[tuple[int, str, Any]], expected: str
) -> None:
    evts = [ev({"tokens": v}, ts=ts, id=i) for ts, i, v in batch]
    assert quantity(LATEST, evts) == D(expected)


def test_latest_across_groups_takes_the_newest_group() -> None:
    meter = MeterSpec("last", "llm", "latest", ("v",), {}, ("region",))
    evts = [
        ev({"region": "eu", "v": 1}, ts=30, id="a"),
        ev({"region": "us", "v": 2}, ts=20, id="b"),
        ev({"region": "us", "v": 3}, ts=10, id="c"),
    ]
    usage = MeterSet([meter]).fold(evts)
    assert usage.by_group(meter) == {("eu",): D(1), ("us",): D(2)}
    assert usage.quantity(meter) == D(1)  # ts 30 is the newest overall
    assert usage.quantity(meter, {"region": frozenset({"us"})}) == D(2)


# --- group_by and filters --------------------------------------------------------------------

BY_MODEL = MeterSpec("tokens", "llm", "sum", ("tokens",), {}, ("model",))
LLM_BATCH = events(
    {"model": "gpt-4o", "tokens": 100},
    {"model": "gpt-4o", "tokens": 50},
    {"model": "gpt-4o-mini", "tokens": 30},
    {"tokens": 7},  # no model: grouped under None (null)
)


def test_group_by_keeps_a_quantity_per_group() -> None:
    usage = MeterSet([BY_MODEL]).fold(LLM_BATCH)
    assert usage.by_group(BY_MODEL) == {
        ("gpt-4o",): D(150),  # 100 + 50
        ("gpt-4o-mini",): D(30),
        (None,): D(7),
    }
    assert usage.quantity(BY_MODEL) == D(187)  # 150 + 30 + 7


def test_group_by_two_properties() -> None:
    meter = MeterSpec("n", "llm", "count", None, {}, ("model", "region"))
    usage = MeterSet([meter]).fold(
        events(
            {"model": "a", "region": "eu"},
            {"model": "a", "region": "eu"},
            {"model": "a", "region": "us"},
            {"model": "b"},
        )
    )
    assert usage.groups["n"] == {("a", "eu"): 2, ("a", "us"): 1, ("b", None): 1}
    assert usage.quantity(meter, {"model": frozenset({"a"})}) == D(3)  # 2 + 1
    assert usage.quantity(meter, {"region": frozenset({"eu"})}) == D(2)


@pytest.mark.parametrize(
    ("flt", "expected"),
    [
        ({"model": frozenset({"gpt-4o"})}, "150"),  # 100 + 50
        ({"model": frozenset({"gpt-4o-mini"})}, "30"),
        ({"model": frozenset({"gpt-4o", "gpt-4o-mini"})}, "180"),  # 150 + 30
        ({"model": frozenset({"o1"})}, "0"),  # no such group
        ({"model": frozenset({None})}, "7"),  # the events without a model
        (None, "187"),  # every group
    ],
)
def test_usage_quantity_with_a_charge_filter(
    flt: dict[str, frozenset[Any]] | None, expected: str
) -> None:
    assert quantity(BY_MODEL, LLM_BATCH, flt) == D(expected)


def test_unique_count_over_groups_counts_a_value_once() -> None:
    meter = MeterSpec("users", "llm", "unique_count", ("user",), {}, ("model",))
    usage = MeterSet([meter]).fold(
        events(
            {"model": "a", "user": "u1"},
            {"model": "b", "user": "u1"},
            {"model": "b", "user": "u2"},
        )
    )
    assert usage.by_group(meter) == {("a",): D(1), ("b",): D(2)}
    assert usage.quantity(meter) == D(2)  # {u1} ∪ {u1, u2} = {u1, u2}


def test_max_over_filtered_groups() -> None:
    meter = MeterSpec("peak", "llm", "max", ("v",), {}, ("gpu",))
    batch = events({"gpu": "h100", "v": 8}, {"gpu": "a10", "v": 20}, {"gpu": "h100", "v": 3})
    assert quantity(meter, batch) == D(20)
    assert quantity(meter, batch, {"gpu": frozenset({"h100"})}) == D(8)


@pytest.mark.parametrize(
    ("flt", "expected"),
    [
        ({"region": frozenset({"eu"})}, "3"),  # 1 + 2
        ({"region": frozenset({"eu", "uk"})}, "7"),  # 1 + 2 + 4
        ({"region": frozenset({"eu"}), "tier": frozenset({"pro"})}, "2"),  # both must match
        ({"region": frozenset({"apac"})}, "0"),
    ],
)
def test_meter_filter(flt: dict[str, frozenset[Any]], expected: str) -> None:
    meter = MeterSpec("tokens", "llm", "sum", ("tokens",), flt)
    batch = events(
        {"region": "eu", "tokens": 1},
        {"region": "eu", "tier": "pro", "tokens": 2},
        {"region": "uk", "tokens": 4},
        {"region": "us", "tokens": 8},
        {"tokens": 16},  # no region: never passes a region filter
        {"region": {"name": "eu"}, "tokens": 32},  # an object never matches a value
    )
    assert quantity(meter, batch) == D(expected)


def test_meter_filter_from_config_takes_a_scalar_or_a_list() -> None:
    config = parse_config(
        {
            "meters": [
                {"key": "eu", "event_type": "llm", "aggregation": "count", "filter": {"r": "eu"}},
                {
                    "key": "europe",
                    "event_type": "llm",
                    "aggregation": "count",
                    "filter": {"r": ["eu", "uk"]},
                },
            ]
        }
    )
    usage = config.meters.fold(events({"r": "eu"}, {"r": "uk"}, {"r": "us"}))
    assert usage.quantity(config.meters.meters["eu"]) == D(1)
    assert usage.quantity(config.meters.meters["europe"]) == D(2)


def test_nested_value_path() -> None:
    meter = MeterSpec("out", "llm", "sum", ("usage", "output_tokens"))
    batch = events({"usage": {"output_tokens": 10}}, {"usage": {"output_tokens": 5}})
    assert quantity(meter, batch) == D(15)


def test_events_of_a_type_no_meter_watches_are_ignored() -> None:
    meters = MeterSet([SUM, COUNT])
    # even properties that would be invalid for a "llm" meter do not matter
    usage = meters.fold(events({"tokens": "lots"}, {}, type="seat.active"))
    assert usage.is_empty()
    mixed = meters.fold([*events({"tokens": 2}), ev({"tokens": "x"}, type="other")])
    assert mixed.quantity(SUM) == D(2)
    assert mixed.quantity(COUNT) == D(1)


# --- validation ------------------------------------------------------------------------------


def test_a_bad_batch_names_every_bad_event_and_writes_nothing() -> None:
    meter = MeterSpec("tokens", "llm", "sum", ("tokens",), {}, ("model",))
    meters = MeterSet([meter])
    into = meters.fold(events({"model": "a", "tokens": 10}))
    before = into.to_json()
    batch = events(
        {"model": "a", "tokens": 1},  # [0] ok
        {"model": "a", "tokens": 2},  # [1] ok
        {"model": "b", "tokens": 3},  # [2] ok
        {"model": "a", "tokens": "12"},  # [3] a string
        {"model": "a", "tokens": 4},  # [4] ok
        {"model": "a"},  # [5] no value
        {"model": "a", "tokens": True},  # [6] a boolean is not a number
        {"model": {"name": "a"}, "tokens": 5},  # [7] an object cannot be a group
    )
    with pytest.raises(EventError) as caught:
        meters.fold(batch, into=into)
    problems = {p.where: p.message for p in caught.value.problems}
    assert list(problems) == ["[3]", "[5]", "[6]", "[7]"]
    assert "'tokens' must be a number, got '12'" in problems["[3]"]
    assert "needs property 'tokens', which is missing" in problems["[5]"]
    assert "got True" in problems["[6]"]
    assert "groups by ['model']" in problems["[7]"]
    assert caught.value.message == "4 events are invalid; nothing was stored"
    assert into.to_json() == before  # no partial write: the good events are not in it either


@pytest.mark.parametrize(
    ("meter", "props", "fragment"),
    [
        (MAX, {"tokens": float("nan")}, "not a finite number"),
        (MAX, {"tokens": float("inf")}, "not a finite number"),
        (LATEST, {"tokens": None}, "must be a number"),
        (UNIQUE, {"user": 1.5}, "must be a string or integer"),
        (UNIQUE, {"user": None}, "must be a string or integer"),
        (UNIQUE, {"user": ["u1"]}, "must be a string or integer"),
        (COUNT, {"x": 1}, None),  # a count meter reads no value: always fine
        (MeterSpec("t", "llm", "sum", ("usage", "t")), {"usage": 5}, "which is missing"),
        # every meter value is within |x| < 10^15, and not negative unless the meter says so
        (
            SUM,
            {"tokens": -1},
            'is negative (-1); this meter counts only values ≥ 0 (a meter may set "allow_negative"'
            ": true)",
        ),
        (SUM, {"tokens": -0.5}, "is negative (-0.5)"),
        (SUM, {"tokens": 10**15}, "magnitude must be below 10^15"),
        (SUM, {"tokens": 1e300}, "magnitude must be below 10^15"),
        (SUM, {"tokens": 2**63}, "magnitude must be below 10^15"),
        (SUM, {"tokens": "12"}, "must be a number, got '12'"),
        (SUM, {"tokens": "9" * 100_000}, "must be a number, got '99999"),
        (SUM_NEGATIVE, {"tokens": -(10**15)}, "magnitude must be below 10^15"),
        (SUM_NEGATIVE, {"tokens": -(10**15) + 1}, None),
        (SUM_NEGATIVE, {"tokens": -3.25}, None),
        (SUM, {"tokens": 10**15 - 1}, None),
        (MAX, {"tokens": -2}, "is negative"),
        (LATEST, {"tokens": -2}, "is negative"),
        (UNIQUE, {"user": "u" * 256}, "longer than 255 characters"),
        (BY_MODEL, {"tokens": 1, "model": "m" * 256}, "longer than 255 characters"),
        (BY_MODEL, {"tokens": 1, "model": "m" * 255}, None),
    ],
)
def test_bad_values_per_aggregation(
    meter: MeterSpec, props: dict[str, Any], fragment: str | None
) -> None:
    batch = [ev({"tokens": 1, "user": "u", "usage": {"t": 1}}, id="ok"), ev(props, id="bad")]
    meters = MeterSet([meter])
    if fragment is None:
        meters.fold(batch)
        return
    with pytest.raises(EventError) as caught:
        meters.fold(batch, label=lambda i: f"line {i + 1}")
    ((where, message),) = [(p.where, p.message) for p in caught.value.problems]
    assert where == "line 2"
    assert fragment in message


def test_a_bad_value_message_is_short_however_long_the_value() -> None:
    with pytest.raises(EventError) as caught:
        MeterSet([SUM]).fold([ev({"tokens": "9" * 10_000_000})])
    assert len(caught.value.problems[0].message) < 200


def test_by_group_is_each_groups_own_quantity_in_one_pass() -> None:
    # 4,000 groups: each group's quantity is read off its state, not by filtering all others
    meter = BY_MODEL
    batch = [ev({"tokens": i + 1, "model": f"m{i}"}, id=f"e{i}") for i in range(4000)]
    usage = MeterSet([meter]).fold(batch)
    groups = usage.by_group(meter)
    assert len(groups) == 4000
    assert groups[("m0",)] == 1 and groups[("m3999",)] == 4000
    # the same as asking for each group through a filter
    for g in [("m0",), ("m17",), ("m3999",)]:
        assert groups[g] == usage.quantity(meter, {"model": frozenset(g)})


@pytest.mark.parametrize("aggregation", ["sum", "count", "max", "unique_count", "latest"])
def test_by_group_agrees_with_quantity_per_group(aggregation: str) -> None:
    value = (
        None
        if aggregation == "count"
        else ("user",)
        if aggregation == "unique_count"
        else ("tokens",)
    )
    meter = MeterSpec("m", "llm", aggregation, value, group_by=("model",))
    batch = [
        ev({"tokens": t, "user": u, "model": m}, ts=i, id=f"e{i}")
        for i, (t, u, m) in enumerate(
            [(3, "a", "x"), (5, "b", "x"), (2, "a", "y"), (7, "c", "x"), (1, "d", "y")]
        )
    ]
    usage = MeterSet([meter]).fold(batch)
    for group, amount in usage.by_group(meter).items():
        assert amount == usage.quantity(meter, {"model": frozenset(group)})


def test_a_bad_event_that_a_meter_filters_out_is_not_a_problem() -> None:
    meter = MeterSpec("eu", "llm", "sum", ("tokens",), {"region": frozenset({"eu"})})
    usage = MeterSet([meter]).fold(
        events({"region": "us", "tokens": "n/a"}, {"region": "eu", "tokens": 3})
    )
    assert usage.quantity(meter) == D(3)


def test_copy_is_independent_of_later_merges() -> None:
    meters = MeterSet([UNIQUE, SUM])
    usage = meters.fold(events({"user": "u1", "tokens": 1}))
    snapshot = usage.copy()
    usage.merge(meters.fold(events({"user": "u2", "tokens": 2})))
    assert snapshot.to_json() == {"tokens": [[[], 1]], "users": [[[], ["u1"]]]}
    assert usage.to_json() == {"tokens": [[[], 3]], "users": [[[], ["u1", "u2"]]]}


def test_max_state_does_not_depend_on_merge_order_for_equal_values() -> None:
    meters = MeterSet([MAX])
    a = meters.fold(events({"tokens": 2}))
    b = meters.fold(events({"tokens": 2.0}))
    ab, ba = meters.empty_usage(), meters.empty_usage()
    ab.merge(a)
    ab.merge(b)
    ba.merge(b)
    ba.merge(a)
    assert ab.to_json() == ba.to_json()


# --- properties ------------------------------------------------------------------------------

PROPERTY_METERS = MeterSet(
    [
        # negative values allowed: the algebra must hold for them too
        MeterSpec("tokens", "llm", "sum", ("n",), {}, ("model",), allow_negative=True),
        MeterSpec("nested", "llm", "sum", ("usage", "n"), {}, ("model", "region"), True),
        MeterSpec("requests", "llm", "count"),
        MeterSpec("eu_requests", "llm", "count", None, {"region": frozenset({"eu"})}),
        MeterSpec("per_model", "llm", "count", None, {}, ("model",)),
        MeterSpec("peak", "llm", "max", ("x",), {}, ("region",), allow_negative=True),
        MeterSpec("users", "llm", "unique_count", ("user",), {}, ("model",)),
        MeterSpec("last", "llm", "latest", ("x",), {}, ("model",), allow_negative=True),
        MeterSpec("gpu", "gpu", "sum", ("seconds",), allow_negative=True),
    ]
)

# Numbers as JSON gives them: ints and floats, whole floats (2.0) included: they fold to the
# same canonical state as the equal int (see the test above).
numbers = st.one_of(
    st.integers(min_value=-3, max_value=3),  # small values: equal values meet often
    st.sampled_from([0.25, 1.5, -0.75]),
    st.integers(min_value=-(10**9), max_value=10**9),
    st.decimals(min_value=-(10**6), max_value=10**6, places=3).map(float),
)
users = st.one_of(st.sampled_from(["u1", "u2", "u3"]), st.integers(min_value=0, max_value=3))
event_bodies = st.tuples(
    st.sampled_from(["llm", "llm", "gpu", "other"]),
    st.fixed_dictionaries(
        {
            "n": numbers,
            "usage": st.fixed_dictionaries({"n": numbers}),
            "x": numbers,
            "user": users,
            "seconds": numbers,
        },
        optional={"model": st.sampled_from(["a", "b"]), "region": st.sampled_from(["eu", "us"])},
    ),
    st.integers(min_value=0, max_value=20),  # few timestamps: ties on ts, broken by id
)


def _numbered(bodies: list[tuple[str, dict[str, Any], int]]) -> list[Event]:
    return [Event(f"e{i:03d}", "acme", kind, ts, p) for i, (kind, p, ts) in enumerate(bodies)]


def random_events() -> st.SearchStrategy[list[Event]]:
    return st.lists(event_bodies, max_size=20).map(_numbered)


@st.composite
def events_and_split(draw: st.DrawFn) -> tuple[list[Event], list[list[Event]]]:
    evts = draw(random_events())
    cuts = sorted(draw(st.lists(st.integers(0, len(evts)), max_size=5)))
    bounds = [0, *cuts, len(evts)]
    return evts, [evts[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]


@given(data=events_and_split(), order=st.randoms(use_true_random=False))
def test_folding_in_any_split_equals_one_pass(
    data: tuple[list[Event], list[list[Event]]], order: random.Random
) -> None:
    evts, chunks = data
    one_pass = PROPERTY_METERS.fold(evts).to_json()

    in_order = PROPERTY_METERS.empty_usage()
    for chunk in chunks:
        PROPERTY_METERS.fold(chunk, into=in_order)
    assert in_order.to_json() == one_pass

    partials = [PROPERTY_METERS.fold(chunk) for chunk in chunks]
    order.shuffle(partials)
    merged = PROPERTY_METERS.empty_usage()
    for partial in partials:
        merged.merge(partial)
    assert merged.to_json() == one_pass


@given(evts=random_events())
def test_snapshot_round_trip(evts: list[Event]) -> None:
    usage = PROPERTY_METERS.fold(evts)
    snapshot = usage.to_json()
    restored = PROPERTY_METERS.usage_from_json(json.loads(json.dumps(snapshot)))
    assert restored.to_json() == snapshot
    for meter in PROPERTY_METERS.meters.values():
        assert restored.quantity(meter) == usage.quantity(meter)


@given(a=random_events(), b=random_events())
def test_merge_is_commutative(a: list[Event], b: list[Event]) -> None:
    b = [e._replace(id="x" + e.id) for e in b]  # distinct ids across the two batches
    ab, ba = PROPERTY_METERS.fold(a), PROPERTY_METERS.fold(b)
    ab.merge(PROPERTY_METERS.fold(b))
    ba.merge(PROPERTY_METERS.fold(a))
    assert ab.to_json() == ba.to_json()


def test_usage_from_json_drops_meters_that_are_gone() -> None:
    meters = MeterSet([SUM])
    restored = meters.usage_from_json({"tokens": [[[], 5]], "retired": [[[], 9]]})
    assert restored.groups == {"tokens": {(): 5}}
    assert isinstance(restored, Usage)
