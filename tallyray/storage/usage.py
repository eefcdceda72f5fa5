"""Usage over time, read back from the event log (``GET /v1/usage``)."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import replace
from typing import Any

import orjson
from sqlalchemy import Engine

from tallyray.pricing.events import Event, format_timestamp
from tallyray.pricing.meters import MeterSet, MeterSpec
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
    optionally per group of any event properties."""
    width = WINDOWS[window]
    with engine.connect() as conn:
        rows = customer_events(conn, env, customer_id, start, end, meter.event_type)
    spec = replace(meter, group_by=group_by)
    meters = MeterSet([spec])
    buckets: dict[int, list[Event]] = defaultdict(list)
    for row in rows:
        bucket = row.ts - row.ts % width
        buckets[bucket].append(
            Event(row.event_id, customer_id, meter.event_type, row.ts, orjson.loads(row.properties))
        )
    series = []
    first = start - start % width
    for bucket in range(first, end, width):
        usage = meters.fold(buckets.get(bucket, []))
        point: dict[str, Any] = {
            "start": format_timestamp(bucket),
            "end": format_timestamp(bucket + width),
            "quantity": format(usage.quantity(spec), "f"),
        }
        if group_by:
            point["groups"] = [
                {"group": dict(zip(group_by, g, strict=True)), "quantity": format(q, "f")}
                for g, q in sorted(usage.by_group(spec).items(), key=lambda kv: repr(kv[0]))
            ]
        series.append(point)
    return series
