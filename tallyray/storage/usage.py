"""Usage over time, read back from the event log (``GET /v1/usage``)."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import replace
from decimal import Decimal
from typing import Any

import orjson
from sqlalchemy import Engine

from tallyray.pricing.events import Event, format_timestamp
from tallyray.pricing.meters import GroupKey, MeterSet, MeterSpec, Usage
from tallyray.storage.eventlog import customer_events

__all__ = ["WINDOWS", "usage_series"]

WINDOWS = {"hour": 3_600_000_000, "day": 86_400_000_000}


def usage_series(
    engine: Engine,
    env: str,
    customer_id: str,
    meter: MeterSpec,
    start: int,
    end: int,
    window: str,
    group_by: tuple[str, ...] = (),
) -> list[dict[str, Any]]:
    """The meter's quantity per window (UTC-aligned hours or days) in ``[start, end)``,
    optionally per group of any event properties. A ``weighted_sum`` gauge is held from
    reading to reading across windows, from the first reading inside ``[start, end)`` on."""
    width = WINDOWS[window]
    with engine.connect() as conn:
        rows = customer_events(conn, env, customer_id, start, end, meter.event_type)
    weighted = meter.aggregation == "weighted_sum"
    # A gauge per group of the meter: asked for other groups, it is still one gauge per group
    # of its own, and their time-weighted sums add up.
    keys = tuple(dict.fromkeys(meter.group_by + group_by)) if weighted else group_by
    spec = replace(meter, group_by=keys)
    meters = MeterSet([spec])
    buckets: dict[int, list[Event]] = defaultdict(list)
    for row in rows:
        bucket = row.ts - row.ts % width
        buckets[bucket].append(
            Event(row.event_id, customer_id, meter.event_type, row.ts, orjson.loads(row.properties))
        )
    series = []
    first = start - start % width
    held: list[Event] = []
    for bucket in range(first, end, width):
        usage = meters.fold(held + buckets.get(bucket, []))
        if weighted:
            # A gauge holds from reading to reading: each window starts with what the one
            # before ended at (from the first reading in the series on), and its last reading
            # holds to the window's end.
            usage.end = bucket + width
            held = _still_held(usage.groups[spec.key], spec, customer_id, bucket + width)
        point: dict[str, Any] = {
            "start": format_timestamp(bucket),
            "end": format_timestamp(bucket + width),
            "quantity": format(usage.quantity(spec), "f"),
        }
        if group_by:
            point["groups"] = [
                {"group": dict(zip(group_by, g, strict=True)), "quantity": format(q, "f")}
                for g, q in sorted(
                    _regrouped(usage, spec, group_by).items(), key=lambda kv: repr(kv[0])
                )
            ]
        series.append(point)
    return series


def _regrouped(usage: Usage, spec: MeterSpec, group_by: tuple[str, ...]) -> dict[GroupKey, Decimal]:
    """Quantity per group of ``group_by``, a subset of ``spec.group_by`` (the same groups
    unless a gauge was folded by its own groups too)."""
    found = usage.by_group(spec)
    if spec.group_by == group_by:
        return found
    positions = [spec.group_by.index(name) for name in group_by]
    totals: dict[GroupKey, Decimal] = defaultdict(Decimal)
    for group, quantity in found.items():
        totals[tuple(group[i] for i in positions)] += quantity
    return totals


def _still_held(
    groups: dict[GroupKey, Any], spec: MeterSpec, customer_id: str, at: int
) -> list[Event]:
    """Each group's last reading, as a reading at ``at`` (the next window's start)."""
    assert spec.value is not None
    carried = []
    for group, readings in groups.items():
        value = readings[max(readings)]
        properties: dict[str, Any] = dict(zip(spec.group_by, group, strict=True))
        node = properties
        for part in spec.value[:-1]:
            node = node.setdefault(part, {})
        node[spec.value[-1]] = value
        # id "": sorts before any event's id, so a reading at the same moment replaces it
        carried.append(Event("", customer_id, spec.event_type, at, properties))
    return carried
