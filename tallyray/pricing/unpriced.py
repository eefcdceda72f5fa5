"""Unpriced usage: usage a plan's charges do not price. Pure.

Usage is *unpriced* under a plan when it lands on a meter the plan charges, in a group that
none of that meter's charges covers: ``output_tokens`` of a new model, under a plan whose
``output_tokens`` charges each filter on the models they price. A meter the plan does not
charge at all is outside the plan (a plan may leave a meter free on purpose, or a meter may
be for another plan's customers), and so is an event no meter counts.

A plan says what happens to an event with unpriced usage (``"unpriced"``, default
``flag``):

===========  ================================================================================
``reject``   refused at ingress (422, naming the event and the meter), and by quota checks
             and reservations (``allowed: false``, ``refusal: "unpriced"``)
``allow``    accepted as free (before there was a choice, always)
``flag``     accepted as free, counted per customer, plan, meter, group and period, and
             announced once per plan, group and period (``usage.unpriced``)
===========  ================================================================================

Deciding "is this priced" must cost next to nothing on the hot path, so it is answered by a
:class:`PricedLookup` built once per plan (:func:`lookup_for`), which remembers its answer
per group: a batch asks once per group it touches, not once per event, and a plan whose
charged meters each have a charge without a filter never asks at all.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal, TypeGuard, get_args

from tallyray.pricing.events import Event
from tallyray.pricing.meters import GroupKey, MeterSet, MeterSpec, Usage, matches

if TYPE_CHECKING:  # plans.py takes its UnpricedMode from here
    from tallyray.pricing.plans import Plan

__all__ = [
    "DEFAULT_UNPRICED",
    "UNPRICED_MODES",
    "PricedLookup",
    "UnpricedMode",
    "describe_group",
    "is_mode",
    "lookup_for",
    "matches_group",
]

UnpricedMode = Literal["reject", "allow", "flag"]
UNPRICED_MODES: tuple[UnpricedMode, ...] = get_args(UnpricedMode)
DEFAULT_UNPRICED: UnpricedMode = "flag"

_MAX_LOOKUPS = 256
"""Plans whose lookups are kept (a catalog reload makes new plan objects)."""
_MAX_KNOWN = 100_000
"""Groups one lookup remembers before it starts over."""


def is_mode(value: object) -> TypeGuard[UnpricedMode]:
    return value in UNPRICED_MODES


def describe_group(meter: MeterSpec, group: GroupKey) -> str:
    """``model=gpt-5`` (``, ``-joined for several properties; empty when ungrouped)."""
    return ", ".join(f"{name}={value}" for name, value in zip(meter.group_by, group, strict=True))


class PricedLookup:
    """Which groups of which meters a plan's charges price.

    ``open_meters``: the charged meters on which every charge filters, so that some group
    may be priced by none of them. Every other meter is either priced whole (a charge
    without a filter) or outside the plan. A charge may only filter on its meter's
    ``group_by`` properties, so a group key alone decides whether a charge covers it."""

    __slots__ = ("_filters", "_known", "meters", "open_meters", "plan")

    def __init__(self, plan: Plan, meters: Mapping[str, MeterSpec]) -> None:
        self.plan = plan
        self.meters = meters
        filters: dict[str, list[list[tuple[int, frozenset[Any]]]]] = {}
        whole: set[str] = set()
        for charge in plan.charges:
            spec = meters.get(charge.meter)
            if spec is None:
                continue
            if not charge.filter:
                whole.add(charge.meter)
                continue
            filters.setdefault(charge.meter, []).append(
                [(spec.group_by.index(name), allowed) for name, allowed in charge.filter.items()]
            )
        self._filters = {m: f for m, f in filters.items() if m not in whole}
        self.open_meters = frozenset(self._filters)
        self._known: dict[tuple[str, GroupKey], bool] = {}

    def priced(self, meter: str, group: GroupKey) -> bool:
        """Does a charge of the plan price this group of this meter (or is the meter outside
        the plan)? Remembered per group."""
        filters = self._filters.get(meter)
        if filters is None:
            return True
        key = (meter, group)
        found = self._known.get(key)
        if found is None:
            if len(self._known) >= _MAX_KNOWN:
                self._known.clear()
            found = self._known[key] = any(
                all(group[i] in allowed for i, allowed in flt) for flt in filters
            )
        return found

    def unpriced_groups(self, usage: Usage) -> dict[str, list[GroupKey]]:
        """The groups of ``usage`` (a batch's delta) no charge prices, per meter: one look
        per group the batch touched."""
        out: dict[str, list[GroupKey]] = {}
        if not self.open_meters:
            return out
        known, priced = self._known, self.priced
        for meter in self.open_meters:
            groups = usage.groups.get(meter)
            if not groups:
                continue
            found: list[GroupKey] = []
            for g in groups:  # the remembered answer first: no call per group
                seen = known.get((meter, g))
                if not (priced(meter, g) if seen is None else seen):
                    found.append(g)
            if found:
                out[meter] = found
        return out

    def event_unpriced(self, meter_set: MeterSet, event: Event) -> list[tuple[MeterSpec, GroupKey]]:
        """The (meter, group) of one event that no charge prices (empty: priced)."""
        if not self.open_meters:
            return []
        return [
            (meter, group)
            for meter, group, _ in meter_set.footprint(event)
            if not self.priced(meter.key, group)
        ]

    def count_events(
        self, events: Iterable[Event], unpriced: Mapping[str, Sequence[GroupKey]]
    ) -> tuple[dict[tuple[str, GroupKey], int], int]:
        """How many of ``events`` landed in each unpriced group (``unpriced``, from
        :meth:`unpriced_groups`), and how many events that is. Only asked for a batch that
        has unpriced usage, and only the meters with unpriced groups are looked at."""
        wanted = {meter: frozenset(groups) for meter, groups in unpriced.items()}
        specs = [self.meters[meter] for meter in wanted]
        counts: dict[tuple[str, GroupKey], int] = {}
        flagged = 0
        for event in events:
            hit = False
            props = event[4]
            for spec in specs:
                if spec.event_type != event[2] or (spec.filter and not matches(props, spec.filter)):
                    continue
                group = tuple(props.get(name) for name in spec.group_by)
                if group in wanted[spec.key]:
                    key = (spec.key, group)
                    counts[key] = counts.get(key, 0) + 1
                    hit = True
            flagged += hit
        return counts, flagged


_LOOKUPS: dict[tuple[int, int], tuple[Plan, Mapping[str, MeterSpec], PricedLookup]] = {}


def lookup_for(plan: Plan, meters: Mapping[str, MeterSpec]) -> PricedLookup:
    """The plan's lookup, built once per plan (and meters) object and shared by every
    account on it: its memory of groups is shared too."""
    key = (id(plan), id(meters))
    found = _LOOKUPS.get(key)
    if found is not None and found[0] is plan and found[1] is meters:
        return found[2]
    if len(_LOOKUPS) >= _MAX_LOOKUPS:
        _LOOKUPS.clear()
    lookup = PricedLookup(plan, meters)
    _LOOKUPS[key] = (plan, meters, lookup)
    return lookup


def matches_group(meter: MeterSpec, group: GroupKey) -> dict[str, frozenset[Any]]:
    """A filter that selects exactly this group of the meter (for its quantity)."""
    return {name: frozenset([value]) for name, value in zip(meter.group_by, group, strict=True)}
