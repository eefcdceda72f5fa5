"""Meters: how events become quantities.

A meter picks events of one ``event_type`` (optionally narrowed by a ``filter`` on their
properties), reads a ``value`` from each, and aggregates per group (``group_by`` property
values). The aggregation state is :class:`Usage`: it can be folded with a batch of events,
merged with another ``Usage``, serialized to JSON and restored, and folding batches in any
split gives the same state as one pass (the shard actors rely on this to checkpoint and
replay).

=============  ===========================================  ===========================
aggregation    state per group                              merge
=============  ===========================================  ===========================
sum            running sum (int, or Decimal once a          a + b
               fractional value arrives)
count          number of events                             a + b
max            largest value                                max(a, b)
unique_count   the set of distinct values (exact, not HLL)  a ∪ b
latest         (timestamp, event id, value) of the newest   newest by (timestamp, id)
weighted_sum   every reading: (timestamp, event id) → value  a ∪ b
=============  ===========================================  ===========================

``weighted_sum`` meters a gauge over time (seats, GPUs): each event is a reading, the value
the gauge holds from its timestamp until the next reading, and the quantity is
``Σ value × time held`` in the meter's ``unit`` (second, minute, hour, day). The last reading
of a period is held to the period's end (:attr:`Usage.end`), live as on the invoice, so the
live quantity is what the period will cost if the gauge does not move again. A period starts
at 0: the gauge is not carried over from the period before (its invoice is built from its own
events only); send a reading at the start of each period. Readings are kept one by one (an
out-of-order reading can fall between any two), so send one when the value changes rather
than every second.

Beside the meters' own states, a :class:`PerEventSum` keeps the sum of a function of each
event's value, per group: what a charge priced event by event needs (a ``percentage`` with a
per-event minimum or maximum).

The fold is the hot path (hundreds of thousands of events a second per core), so it is
written as one tight loop per aggregation over plain tuples, and validates as it goes: the
first bad value aborts the fast loop and a slow pass then names every bad event.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal, localcontext
from typing import Any

from tallyray.errors import EventError, Problem
from tallyray.pricing.events import MAX_ID_LENGTH, Event
from tallyray.pricing.money import MAX_MAGNITUDE, PRICING_CONTEXT, shown

__all__ = [
    "AGGREGATIONS",
    "WEIGHT_UNITS",
    "GroupKey",
    "MeterSet",
    "MeterSpec",
    "PerEventSum",
    "Usage",
    "matches",
]

AGGREGATIONS = ("sum", "count", "max", "unique_count", "latest", "weighted_sum")

WEIGHT_UNITS: Mapping[str, int] = {
    "second": 1_000_000,
    "minute": 60_000_000,
    "hour": 3_600_000_000,
    "day": 86_400_000_000,
}
"""A ``weighted_sum`` meter's unit of time, in microseconds (timestamps are microseconds)."""

GroupKey = tuple[Any, ...]
"""The values of a meter's ``group_by`` properties for one event (``()`` when ungrouped)."""

Filter = Mapping[str, frozenset[Any]]
"""Property name → the values it may take for the event to count."""

_MISSING = object()


@dataclass(frozen=True, slots=True)
class MeterSpec:
    key: str
    event_type: str
    aggregation: str
    value: tuple[str, ...] | None = None
    """Property path to the value (``("usage", "tokens")`` for ``"usage.tokens"``)."""
    filter: Filter = field(default_factory=dict)
    group_by: tuple[str, ...] = ()
    allow_negative: bool = False
    """Negative values count (a correction, a gauge below zero); refused otherwise."""
    unit: str | None = None
    """A ``weighted_sum`` meter's unit of time (a key of :data:`WEIGHT_UNITS`)."""


@dataclass(frozen=True, slots=True)
class PerEventSum:
    """Per group of ``meter``, the sum of ``amount(value)`` over its events, kept under
    ``key`` in :attr:`Usage.groups` as a ``sum`` (``key`` starts with ``%``, which no meter
    key may). ``meter`` must be a ``sum`` meter: its fold has checked every value first."""

    key: str
    meter: str
    amount: Callable[[Decimal], Decimal]

    def spec(self, meter: MeterSpec) -> MeterSpec:
        """A spec to read this sum with :meth:`Usage.quantity` (filters on the meter's
        groups work on it as on the meter)."""
        return MeterSpec(self.key, meter.event_type, "sum", meter.value, {}, meter.group_by)


class _BadValue(Exception):
    pass


def _get_path(properties: Mapping[str, Any], path: tuple[str, ...]) -> Any:
    node: Any = properties
    for part in path:
        if not isinstance(node, dict):
            return _MISSING
        node = node.get(part, _MISSING)
        if node is _MISSING:
            return _MISSING
    return node


def matches(properties: Mapping[str, Any], flt: Filter) -> bool:
    """Does an event (or a group) with these properties pass the filter?"""
    for name, allowed in flt.items():
        value = properties.get(name, _MISSING)
        if value is _MISSING or type(value) is dict or type(value) is list:
            return False
        if value not in allowed:
            return False
    return True


_LIMIT = int(MAX_MAGNITUDE)
"""Meter values are smaller than this in magnitude, like every number from outside."""

_LONGEST_TEXT = MAX_ID_LENGTH
"""The longest string a group value or a ``unique_count`` member may be."""


def _number(value: Any, allow_negative: bool = False) -> int | Decimal:
    """A meter value as an exact number within the bounds, or :class:`_BadValue` saying what
    is wrong. JSON floats become the decimal they were written as.

    The fold loops call it only for values that are not already a whole number from 0 to the
    limit, the common case they check inline."""
    kind = type(value)
    number: int | Decimal
    if kind is int:
        number = value
    elif kind is float:
        if not math.isfinite(value):
            raise _BadValue(f"{value!r} is not a finite number")
        # 2.0 and 2 are one value: keep states (and JSON) canonical
        number = int(value) if value.is_integer() else Decimal(repr(value))
    elif kind is Decimal:
        if not value.is_finite():
            raise _BadValue(f"{value!r} is not a finite number")
        number = value
    else:
        raise _BadValue(f"must be a number, got {shown(value)}")
    if not -_LIMIT < number < _LIMIT:
        raise _BadValue("is too large: a meter value's magnitude must be below 10^15")
    if number < 0 and not allow_negative:
        raise _BadValue(
            f"is negative ({number}); this meter counts only values ≥ 0 "
            '(a meter may set "allow_negative": true)'
        )
    return number


def _check_groups(acc: Mapping[GroupKey, Any]) -> None:
    """Group values must be short: a group key is kept per period, shown and stored. Checked
    once per group of a batch, not per event."""
    for key in acc:
        for part in key:
            if type(part) is str and len(part) > _LONGEST_TEXT:
                raise _BadValue("a group value is too long")


# ---------------------------------------------------------------------------------------------
# The fold loops. Each takes the events of one meter's type (already filtered) and an
# accumulator dict (group key → state), and raises on the first bad event.


def _group_fn(group_by: tuple[str, ...]) -> Callable[[Mapping[str, Any]], GroupKey]:
    if not group_by:
        return lambda p: ()
    if len(group_by) == 1:
        (name,) = group_by
        return lambda p: (p.get(name),)
    return lambda p: tuple(map(p.get, group_by))


def _value_fn(path: tuple[str, ...]) -> Callable[[Mapping[str, Any]], Any]:
    if len(path) == 1:
        (name,) = path
        return lambda p: p.get(name, _MISSING)
    return lambda p: _get_path(p, path)


def _fold_sum(spec: MeterSpec, events: Sequence[Event], acc: dict[GroupKey, Any]) -> None:
    assert spec.value is not None
    if len(spec.value) == 1 and len(spec.group_by) <= 1:
        # The common case (``"value": "input_tokens", "group_by": ["model"]``), inlined.
        (name,) = spec.value
        gname = spec.group_by[0] if spec.group_by else None
        get = acc.get
        negative = spec.allow_negative
        for e in events:
            p = e[4]
            v = p[name]
            if type(v) is not int or not 0 <= v < _LIMIT:
                v = _number(v, negative)
            g = (p.get(gname),) if gname is not None else ()
            acc[g] = get(g, 0) + v
        if gname is not None:
            _check_groups(acc)
        return
    value_of, group_of = _value_fn(spec.value), _group_fn(spec.group_by)
    negative = spec.allow_negative
    for e in events:
        p = e[4]
        v = value_of(p)
        if type(v) is not int or not 0 <= v < _LIMIT:
            v = _number(v, negative)
        g = group_of(p)
        acc[g] = acc.get(g, 0) + v
    _check_groups(acc)


def _fold_count(spec: MeterSpec, events: Sequence[Event], acc: dict[GroupKey, Any]) -> None:
    if not spec.group_by:
        acc[()] = acc.get((), 0) + len(events)
        return
    group_of = _group_fn(spec.group_by)
    for e in events:
        g = group_of(e[4])
        acc[g] = acc.get(g, 0) + 1
    _check_groups(acc)


def _fold_max(spec: MeterSpec, events: Sequence[Event], acc: dict[GroupKey, Any]) -> None:
    assert spec.value is not None
    value_of, group_of = _value_fn(spec.value), _group_fn(spec.group_by)
    for e in events:
        p = e[4]
        v = _number(value_of(p), spec.allow_negative)
        g = group_of(p)
        current = acc.get(g)
        if current is None or v > current:
            acc[g] = v
    _check_groups(acc)


def _fold_unique(spec: MeterSpec, events: Sequence[Event], acc: dict[GroupKey, Any]) -> None:
    assert spec.value is not None
    value_of, group_of = _value_fn(spec.value), _group_fn(spec.group_by)
    for e in events:
        p = e[4]
        v = value_of(p)
        if v is _MISSING or v is None or type(v) in (dict, list, float, bool):
            raise _BadValue(f"must be a string or integer, got {shown(v)}")
        if type(v) is str and len(v) > _LONGEST_TEXT:
            raise _BadValue(f"is longer than {_LONGEST_TEXT} characters")
        g = group_of(p)
        seen = acc.get(g)
        if seen is None:
            acc[g] = seen = set()
        seen.add(v)
    _check_groups(acc)


def _fold_latest(spec: MeterSpec, events: Sequence[Event], acc: dict[GroupKey, Any]) -> None:
    assert spec.value is not None
    value_of, group_of = _value_fn(spec.value), _group_fn(spec.group_by)
    for e in events:
        p = e[4]
        v = _number(value_of(p), spec.allow_negative)
        g = group_of(p)
        current = acc.get(g)
        if current is None or (e[3], e[0]) > (current[0], current[1]):
            acc[g] = (e[3], e[0], v)
    _check_groups(acc)


def _fold_weighted(spec: MeterSpec, events: Sequence[Event], acc: dict[GroupKey, Any]) -> None:
    assert spec.value is not None
    value_of, group_of = _value_fn(spec.value), _group_fn(spec.group_by)
    for e in events:
        p = e[4]
        v = _number(value_of(p), spec.allow_negative)
        g = group_of(p)
        readings = acc.get(g)
        if readings is None:
            acc[g] = readings = {}
        readings[(e[3], e[0])] = v
    _check_groups(acc)


def _fold_per_event(
    spec: MeterSpec, derived: PerEventSum, events: Sequence[Event], acc: dict[GroupKey, Any]
) -> None:
    """Fold ``derived`` over events its meter has folded (so their values are valid)."""
    assert spec.value is not None
    value_of, group_of = _value_fn(spec.value), _group_fn(spec.group_by)
    amount = derived.amount
    with localcontext(PRICING_CONTEXT):
        for e in events:
            p = e[4]
            v = _number(value_of(p), spec.allow_negative)
            g = group_of(p)
            acc[g] = acc.get(g, 0) + amount(Decimal(v))


_Fold = Callable[[MeterSpec, Sequence[Event], dict[GroupKey, Any]], None]
_FoldStep = tuple[MeterSpec, _Fold, tuple[PerEventSum, ...]]
"""A meter, its aggregation's fold loop, and the per-event sums derived from it."""

_FOLDS: Mapping[str, _Fold] = {
    "sum": _fold_sum,
    "count": _fold_count,
    "max": _fold_max,
    "unique_count": _fold_unique,
    "latest": _fold_latest,
    "weighted_sum": _fold_weighted,
}


def _held(readings: Mapping[tuple[int, str], int | Decimal], end: int | None, unit: int) -> Decimal:
    """``Σ value × time held`` in units: each reading holds until the next one, the last one
    until ``end`` (or, with no end known, for no time). Summed in microseconds, exactly, and
    divided once."""
    if not readings:
        return Decimal(0)
    ordered = sorted(readings.items())
    moments = [ts for (ts, _), _ in ordered]
    moments.append(moments[-1] if end is None else max(end, moments[-1]))
    with localcontext(PRICING_CONTEXT):
        total = sum(
            (Decimal(v) * (moments[i + 1] - moments[i]) for i, (_, v) in enumerate(ordered)),
            Decimal(0),
        )
        return total / unit


def _merge_state(aggregation: str, a: Any, b: Any) -> Any:
    if aggregation in ("sum", "count"):
        return a + b
    if aggregation == "max":
        return a if a >= b else b
    if aggregation == "unique_count":
        return a | b
    if aggregation == "weighted_sum":
        return {**a, **b}
    if aggregation == "latest":
        return a if (a[0], a[1]) >= (b[0], b[1]) else b
    raise AssertionError(aggregation)


def _state_to_json(aggregation: str, state: Any) -> Any:
    if aggregation == "unique_count":
        return sorted(state, key=lambda v: (type(v).__name__, v))
    if aggregation == "latest":
        ts, event_id, value = state
        return [ts, event_id, _num_to_json(value)]
    if aggregation == "weighted_sum":
        return [[ts, event_id, _num_to_json(v)] for (ts, event_id), v in sorted(state.items())]
    return _num_to_json(state)


def _state_from_json(aggregation: str, raw: Any) -> Any:
    if aggregation == "unique_count":
        return set(raw)
    if aggregation == "latest":
        ts, event_id, value = raw
        return (ts, event_id, _num_from_json(value))
    if aggregation == "weighted_sum":
        return {(ts, event_id): _num_from_json(v) for ts, event_id, v in raw}
    return _num_from_json(raw)


def _num_to_json(value: int | Decimal) -> int | str:
    return value if type(value) is int else format(value, "f")


def _num_from_json(raw: int | str) -> int | Decimal:
    return raw if isinstance(raw, int) else Decimal(raw)


_GROUP_QUANTITY: Mapping[str, Callable[[Any], Decimal]] = {
    "sum": Decimal,
    "count": Decimal,
    "max": Decimal,
    "unique_count": lambda members: Decimal(len(members)),
    "latest": lambda newest: Decimal(newest[2]),
}
"""One group's quantity from its aggregation state (``weighted_sum``: see :func:`_held`)."""


def _hashable_group(key: GroupKey) -> bool:
    return all(type(v) not in (dict, list) for v in key)


class MeterSet:
    """A fixed set of meters, compiled for folding."""

    def __init__(self, meters: Iterable[MeterSpec], per_event: Iterable[PerEventSum] = ()) -> None:
        self.meters: dict[str, MeterSpec] = {m.key: m for m in meters}
        self._by_type: dict[str, list[MeterSpec]] = defaultdict(list)
        for meter in self.meters.values():
            self._by_type[meter.event_type].append(meter)
        self.per_event: dict[str, PerEventSum] = {
            d.key: d for d in per_event if d.meter in self.meters
        }
        self._per_meter: dict[str, list[PerEventSum]] = defaultdict(list)
        for derived in self.per_event.values():
            self._per_meter[derived.meter].append(derived)
        self.aggregations: Mapping[str, str] = {
            **{k: m.aggregation for k, m in self.meters.items()},
            **{k: "sum" for k in self.per_event},
        }
        self._steps: dict[str, tuple[_FoldStep, ...]] = {
            event_type: tuple(
                (meter, _FOLDS[meter.aggregation], tuple(self._per_meter.get(meter.key, ())))
                for meter in specs
            )
            for event_type, specs in self._by_type.items()
        }
        """Per event type, what folding one of its batches takes, looked up once (a commit
        folds a batch of one or two events per account)."""

    def __contains__(self, key: object) -> bool:
        return key in self.meters

    def empty_usage(self, end: int | None = None) -> Usage:
        """No usage yet; ``end``: the end of the period it is the usage of (see
        :attr:`Usage.end`)."""
        return Usage({key: {} for key in self.aggregations}, self.aggregations, end)

    def usage_from_json(self, raw: Mapping[str, Any], end: int | None = None) -> Usage:
        """Restore a :meth:`Usage.to_json` snapshot (state of meters now gone is dropped)."""
        usage = self.empty_usage(end)
        for key, rows in raw.items():
            aggregation = self.aggregations.get(key)
            if aggregation is not None:
                usage.groups[key] = {tuple(g): _state_from_json(aggregation, s) for g, s in rows}
        return usage

    def event_types(self) -> frozenset[str]:
        return frozenset(self._by_type)

    def types_feeding(self, keys: Iterable[str]) -> frozenset[str]:
        """The event types whose events may land in any of the meters ``keys`` (directly,
        or through a per-event sum of one of their meters)."""
        wanted = set(keys)
        if not wanted:
            return frozenset()
        return frozenset(
            event_type
            for event_type, steps in self._steps.items()
            if any(
                meter.key in wanted or any(d.key in wanted for d in derived)
                for meter, _, derived in steps
            )
        )

    def footprint(self, event: Event) -> list[tuple[MeterSpec, GroupKey, Any]]:
        """What folding one (valid) event keeps: for each meter that counts it, the group it
        lands in and, for a ``unique_count`` meter, the value it adds (``None`` for the
        other aggregations). For checks on how much state a batch would add; the fold does
        not use it."""
        properties = event[4]
        found: list[tuple[MeterSpec, GroupKey, Any]] = []
        for meter in self._by_type.get(event[2], ()):
            if meter.filter and not matches(properties, meter.filter):
                continue
            group = tuple(properties.get(name) for name in meter.group_by)
            value = None
            if meter.aggregation == "unique_count" and meter.value is not None:
                value = _get_path(properties, meter.value)
            found.append((meter, group, value))
        return found

    def fold(
        self,
        events: Sequence[Event],
        into: Usage | None = None,
        label: Callable[[int], str] = "[{}]".format,
    ) -> Usage:
        """Fold a batch of events and return the resulting usage.

        The batch is folded into a fresh :class:`Usage` first, and merged into ``into`` (when
        given) only once every event has proved valid, so a bad batch never leaves a partial
        write. Raises :class:`EventError` naming every bad event by ``label(index)``.
        """
        delta = self.empty_usage()
        groups = delta.groups
        batches: Iterable[tuple[str, Sequence[Event]]]
        first = events[0][2] if events else ""
        if all(e[2] == first for e in events):  # the usual batch: one event type
            batches = ((first, events),)
        else:
            by_type: dict[str, list[Event]] = defaultdict(list)
            for e in events:
                by_type[e[2]].append(e)
            batches = by_type.items()
        try:
            for event_type, batch in batches:
                for meter, fold, derived in self._steps.get(event_type, ()):
                    selected = batch
                    if meter.filter:
                        flt = meter.filter
                        selected = [e for e in batch if matches(e[4], flt)]
                    fold(meter, selected, groups[meter.key])
                    for each in derived:
                        _fold_per_event(meter, each, selected, groups[each.key])
        except (_BadValue, KeyError, TypeError) as failure:
            problems = self.diagnose(events, label)
            if not problems:  # the fast loop failed on something the checks do not know
                raise AssertionError(f"meter fold failed undiagnosed: {failure!r}") from failure
            raise EventError.of(problems) from None
        if into is None:
            return delta
        into.merge(delta)
        return into

    def diagnose(
        self, events: Sequence[Event], label: Callable[[int], str] = "[{}]".format
    ) -> list[Problem]:
        """Every problem the meters have with ``events``, one per bad event."""
        problems: list[Problem] = []
        for index, event in enumerate(events):
            for meter in self._by_type.get(event[2], ()):
                message = self._check(meter, event)
                if message is not None:
                    problems.append(Problem(label(index), message))
                    break
        return problems

    @staticmethod
    def _check(meter: MeterSpec, event: Event) -> str | None:
        properties = event[4]
        if meter.filter and not matches(properties, meter.filter):
            return None
        group = tuple(properties.get(name) for name in meter.group_by)
        if not _hashable_group(group):
            return (
                f"meter {meter.key!r} groups by {list(meter.group_by)}: "
                "those properties must be strings, numbers or booleans"
            )
        try:
            _check_groups({group: None})
        except _BadValue:
            return (
                f"meter {meter.key!r} groups by {list(meter.group_by)}: a value of those "
                f"properties is longer than {_LONGEST_TEXT} characters"
            )
        if meter.value is None:
            return None
        path = ".".join(meter.value)
        value = _get_path(properties, meter.value)
        if value is _MISSING:
            return f"meter {meter.key!r} needs property {path!r}, which is missing"
        try:
            if meter.aggregation == "unique_count":
                _fold_unique(meter, [event], {})
            else:
                _number(value, meter.allow_negative)
        except _BadValue as bad:
            return f"meter {meter.key!r}: property {path!r} {bad}"
        return None


@dataclass(slots=True)
class Usage:
    """Aggregated meter state: meter key → group key → aggregation state.

    Mutable on purpose (it is folded into thousands of times a second); copy with
    :meth:`copy` before handing it to code that must not see later changes. Made by
    :meth:`MeterSet.empty_usage`, which also tells it each meter's aggregation.
    """

    groups: dict[str, dict[GroupKey, Any]]
    aggregations: Mapping[str, str]
    end: int | None = None
    """The end of the period this is the usage of: a ``weighted_sum`` meter's last reading
    holds until then. ``None`` (a batch not yet placed in a period): it holds for no time."""

    def merge(self, other: Usage) -> None:
        """Merge ``other`` into this usage (commutative and associative)."""
        groups = self.groups
        for key, theirs in other.groups.items():
            if not theirs:
                continue
            ours = groups.get(key)
            if ours is None:
                ours = groups[key] = {}
            aggregation = self.aggregations[key]
            if aggregation == "sum" or aggregation == "count":
                # The common case, inlined (once per account and meter of every commit).
                get = ours.get
                for group, state in theirs.items():
                    mine = get(group, _MISSING)
                    ours[group] = state if mine is _MISSING else mine + state
                continue
            for group, state in theirs.items():
                mine = ours.get(group, _MISSING)
                if mine is _MISSING:
                    ours[group] = _own(aggregation, state)
                elif aggregation == "unique_count":
                    mine |= state  # in place: sets can be large; plus() copies before this
                elif aggregation == "weighted_sum":
                    mine.update(state)  # in place, likewise
                else:
                    ours[group] = _merge_state(aggregation, mine, state)

    def plus(self, delta: Usage) -> Usage:
        """A new usage equal to this one merged with ``delta``, leaving this one untouched.

        Only the meters and groups ``delta`` touches are copied, so pricing a would-be event
        against a large usage costs little.
        """
        groups = dict(self.groups)
        for key, theirs in delta.groups.items():
            if not theirs:
                continue
            ours = dict(groups.get(key, {}))
            aggregation = self.aggregations[key]
            if aggregation in _IN_PLACE:
                for group in theirs:
                    if group in ours:
                        ours[group] = _own(aggregation, ours[group])
            groups[key] = ours
        result = Usage(groups, self.aggregations, self.end)
        result.merge(delta)
        return result

    def copy(self) -> Usage:
        return Usage(
            {
                key: {g: _own(self.aggregations.get(key, ""), s) for g, s in groups.items()}
                for key, groups in self.groups.items()
            },
            self.aggregations,
            self.end,
        )

    def is_empty(self) -> bool:
        return not any(self.groups.values())

    def touched(self) -> frozenset[str]:
        """The meters this usage has any state for."""
        return frozenset(key for key, groups in self.groups.items() if groups)

    def to_json(self) -> dict[str, list[list[Any]]]:
        """A JSON-ready snapshot, in a stable order (equal usage gives equal JSON)."""
        return {
            key: [
                [list(g), _state_to_json(self.aggregations[key], s)]
                for g, s in sorted(groups.items(), key=lambda item: repr(item[0]))
            ]
            for key, groups in sorted(self.groups.items())
        }

    def quantity(self, meter: MeterSpec, flt: Filter | None = None) -> Decimal:
        """The meter's quantity over the groups that pass ``flt`` (all groups if none).

        ``flt`` may only name ``group_by`` properties of the meter (checked when a plan is
        validated), so a group key decides the filter on its own.
        """
        groups = self.groups.get(meter.key, {})
        if flt:
            positions = [(meter.group_by.index(name), allowed) for name, allowed in flt.items()]
            groups = {g: s for g, s in groups.items() if all(g[i] in ok for i, ok in positions)}
        if not groups:
            return Decimal(0)
        states = groups.values()
        aggregation = meter.aggregation
        if aggregation in ("sum", "count"):
            return Decimal(sum(states))
        if aggregation == "max":
            return Decimal(max(states))
        if aggregation == "unique_count":
            if len(groups) == 1:  # no copy of what may be a large set
                return Decimal(len(next(iter(states))))
            return Decimal(len(set().union(*states)))
        if aggregation == "weighted_sum":  # a gauge per group: their time-weighted sums add
            unit = WEIGHT_UNITS[meter.unit or "second"]
            with localcontext(PRICING_CONTEXT):
                return sum((_held(s, self.end, unit) for s in states), Decimal(0))
        newest = max(states, key=lambda s: (s[0], s[1]))
        return Decimal(newest[2])

    def by_group(self, meter: MeterSpec) -> dict[GroupKey, Decimal]:
        """Quantity per group, for usage breakdowns (per model, per region, ...): one pass
        over the groups (each group's state is its quantity)."""
        groups = self.groups.get(meter.key, {})
        if meter.aggregation == "weighted_sum":
            unit = WEIGHT_UNITS[meter.unit or "second"]
            return {g: _held(state, self.end, unit) for g, state in groups.items()}
        quantity = _GROUP_QUANTITY[meter.aggregation]
        return {g: quantity(state) for g, state in groups.items()}


_IN_PLACE = frozenset({"unique_count", "weighted_sum"})
"""Aggregations whose states :meth:`Usage.merge` changes in place (a set, a dict)."""


def _own(aggregation: str, state: Any) -> Any:
    """A state the caller may change in place without touching ``state``."""
    if aggregation == "unique_count":
        return set(state)
    if aggregation == "weighted_sum":
        return dict(state)
    return state
