"""Usage limits in units over a window, and feature entitlements: the pure rules.

A plan may carry

- **unit limits**: at most ``limit`` units of a ``sum`` or ``count`` meter (optionally only
  the groups that pass ``groups``) per ``window``;
- **entitlements**: a feature name mapped to the events it covers (``match``, on the event's
  properties), allowed or not. Usage of a feature that is not allowed is refused by quota
  checks and reservations.

Windows are **UTC**, whatever the customer's time zone, so every shard and every replay
agrees where one ends:

======  =====================================================================
day     00:00 UTC to the next 00:00 UTC
week    Monday 00:00 UTC to the next Monday (ISO weeks)
month   the 1st 00:00 UTC to the 1st of the next month
period  the customer's billing period (calendar or anniversary, as invoiced)
======  =====================================================================

Nothing here holds state, reads a clock or does I/O: the account keeps the units used per
limit and window (:class:`WindowUnits`) and passes the time in.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, Literal, get_args

from tallyray.pricing.events import Event, format_timestamp
from tallyray.pricing.meters import Filter, MeterSpec, matches
from tallyray.pricing.periods import Period

__all__ = [
    "LIMIT_AGGREGATIONS",
    "WINDOWS",
    "Entitlement",
    "LimitUse",
    "UnitLimit",
    "Window",
    "WindowUnits",
    "denied_feature",
    "event_units",
    "feature_reason",
    "limit_reason",
    "over_limit",
    "units_by_window",
    "units_of",
    "window_of",
]

Window = Literal["day", "week", "month", "period"]
WINDOWS: tuple[Window, ...] = get_args(Window)
LIMIT_AGGREGATIONS = ("sum", "count")
"""A unit limit counts what events add; ``max``, ``latest`` and ``unique_count`` meters have
no per-event units to add up."""

ZERO = Decimal(0)
_DAY = 86_400 * 1_000_000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

WindowUnits = dict[str, dict[int, Decimal]]
"""Units used per limit (:attr:`UnitLimit.key`) and window (its start, microseconds)."""


def _filter_text(flt: Filter) -> str:
    return ", ".join(
        f"{name}={'|'.join(sorted(map(str, values)))}" for name, values in sorted(flt.items())
    )


@dataclass(frozen=True, slots=True)
class UnitLimit:
    """At most ``limit`` units of ``meter`` (the groups passing ``groups``) per ``window``."""

    meter: str
    limit: Decimal
    window: Window
    groups: Filter = field(default_factory=dict)

    @property
    def key(self) -> str:
        """What names the limit in the account's state and in a hold: two limits of a plan
        never share it (the configuration refuses duplicates)."""
        narrowed = _filter_text(self.groups)
        return f"{self.meter}/{self.window}" + (f"[{narrowed}]" if narrowed else "")

    def describe(self) -> str:
        """``output_tokens (model=gpt-4o)`` — the meter and the groups it counts."""
        narrowed = _filter_text(self.groups)
        return f"{self.meter} ({narrowed})" if narrowed else self.meter

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "meter": self.meter,
            "window": self.window,
            "limit": format(self.limit, "f"),
        }
        if self.groups:
            out["groups"] = {
                name: sorted(values, key=str) for name, values in sorted(self.groups.items())
            }
        return out


@dataclass(frozen=True, slots=True)
class Entitlement:
    """A feature: the events it covers (all of ``match`` must hold), allowed or not."""

    feature: str
    match: Filter
    allowed: bool

    def covers(self, event: Event) -> bool:
        return matches(event[4], self.match)


@dataclass(frozen=True, slots=True)
class LimitUse:
    """Where one unit limit stands in the window holding some moment: what a refusal names
    and what the balance shows."""

    limit: UnitLimit
    used: Decimal
    """Units used in the window, plus units held by active reservations."""
    window_start: int
    resets_at: int
    """The window's end (exclusive): usage after it counts in the next window."""
    adding: Decimal = ZERO
    """What the refused request would have added."""

    def to_json(self) -> dict[str, Any]:
        return {
            **self.limit.to_json(),
            "used": format(self.used.normalize(), "f") if self.used else "0",
            "window_start": format_timestamp(self.window_start),
            "resets_at": format_timestamp(self.resets_at),
        }


def window_of(ts: int, window: Window, period_of: Callable[[int], Period]) -> tuple[int, int]:
    """The window holding ``ts``: ``(start, end)``, microseconds, end exclusive. ``period_of``
    gives the customer's billing period (for ``"period"``)."""
    match window:
        case "day":
            start = ts - ts % _DAY
            return start, start + _DAY
        case "week":
            days = ts // _DAY
            monday = days - (days + 3) % 7  # 1970-01-01 was a Thursday
            return monday * _DAY, (monday + 7) * _DAY
        case "month":
            moment = _EPOCH + timedelta(microseconds=ts)
            first = datetime(moment.year, moment.month, 1, tzinfo=UTC)
            following = datetime(
                moment.year + moment.month // 12, moment.month % 12 + 1, 1, tzinfo=UTC
            )
            return _micros(first), _micros(following)
        case "period":
            period = period_of(ts)
            return period.start, period.end
    raise AssertionError(window)  # pragma: no cover - Literal exhausted above


def _micros(moment: datetime) -> int:
    delta = moment - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def _value(properties: Mapping[str, Any], path: tuple[str, ...]) -> Any:
    node: Any = properties
    for part in path:
        if not isinstance(node, dict):
            return None
        node = node.get(part)
    return node


def event_units(limit: UnitLimit, meter: MeterSpec, event: Event) -> Decimal:
    """What one (valid) event adds to a limit: nothing when the meter does not count it or
    its group does not pass the limit's ``groups``; 1 for a ``count`` meter; its value for a
    ``sum`` meter."""
    properties = event[4]
    if event[2] != meter.event_type:
        return ZERO
    if meter.filter and not matches(properties, meter.filter):
        return ZERO
    if limit.groups and not matches(properties, limit.groups):
        return ZERO
    if meter.aggregation == "count":
        return Decimal(1)
    assert meter.value is not None
    raw = _value(properties, meter.value)
    if isinstance(raw, bool) or not isinstance(raw, int | float | Decimal):
        return ZERO  # the meter's fold refuses such an event before it gets here
    return raw if isinstance(raw, Decimal) else Decimal(repr(raw) if type(raw) is float else raw)


def units_of(
    limits: Sequence[UnitLimit], meters: Mapping[str, MeterSpec], events: Iterable[Event]
) -> dict[str, Decimal]:
    """What ``events`` add to each limit (the limits they add nothing to are left out)."""
    found: dict[str, Decimal] = {}
    listed = list(events)
    for limit in limits:
        meter = meters.get(limit.meter)
        if meter is None:
            continue
        total = sum((event_units(limit, meter, e) for e in listed), ZERO)
        if total:
            found[limit.key] = total
    return found


def units_by_window(
    limits: Sequence[UnitLimit],
    meters: Mapping[str, MeterSpec],
    events: Iterable[Event],
    period_of: Callable[[int], Period],
) -> WindowUnits:
    """What ``events`` add to each limit, per window of their timestamps."""
    found: WindowUnits = {}
    listed = list(events)
    for limit in limits:
        meter = meters.get(limit.meter)
        if meter is None:
            continue
        per_window: dict[int, Decimal] = {}
        bounds = (0, 0)
        for event in listed:
            units = event_units(limit, meter, event)
            if not units:
                continue
            ts = event[3]
            if not bounds[0] <= ts < bounds[1]:
                bounds = window_of(ts, limit.window, period_of)
            per_window[bounds[0]] = per_window.get(bounds[0], ZERO) + units
        if per_window:
            found[limit.key] = per_window
    return found


def over_limit(limit: UnitLimit, used: Decimal, adding: Decimal) -> bool:
    """Would adding ``adding`` units take ``used`` (window usage and units held) past the
    limit? Usage the limit does not count (``adding`` 0) is never refused by it, even at the
    limit."""
    return adding > ZERO and used + adding > limit.limit


def denied_feature(entitlements: Sequence[Entitlement], events: Iterable[Event]) -> str | None:
    """The first feature that is not allowed and covers one of ``events``."""
    denied = [e for e in entitlements if not e.allowed]
    if not denied:
        return None
    for event in events:
        for entitlement in denied:
            if entitlement.covers(event):
                return entitlement.feature
    return None


def limit_reason(limit: UnitLimit, used: Decimal, adding: Decimal, resets_at: int) -> str:
    """Why a unit limit refuses: the limit, what is used, what the request adds, when the
    window resets."""
    return (
        f"unit limit of {_units(limit.limit)} {limit.describe()} per {limit.window} reached: "
        f"{_units(used)} used, this adds {_units(adding)} "
        f"(the window resets at {format_timestamp(resets_at)})"
    )


def feature_reason(feature: str) -> str:
    return f"the plan does not include feature {feature!r}"


def _units(value: Decimal) -> str:
    """Units as text with thousands separators (``1,000,000``, ``12.5``)."""
    normal = value.normalize()
    if normal == normal.to_integral_value():
        return f"{int(normal):,}"
    return f"{normal:,f}"
