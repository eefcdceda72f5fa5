"""Column-wise replay: stored events in, one :class:`~tallyray.pricing.meters.Usage` per bucket
(a customer's billing period) out.

The shards fold events one at a time as they arrive; a simulation replays a month of
everyone's events at once, so it reads them as columns (the design card's choice: Arrow).
Per event type, the properties (JSON text as stored) are decoded by Arrow's JSON reader into
typed columns; each meter then picks its rows with vectorised masks (type, filter) and
aggregates per (bucket, group) with Arrow's hash aggregation.

Exact, or not at all: the vectorised path runs only where Arrow's types are exact for the
meter — whole-number values in an ``int64`` column without gaps, sums that cannot overflow.
Everything else (a fractional value, a ``latest`` or ``weighted_sum`` meter, a meter with
sums a ``percentage`` charge keeps event by event, properties whose types clash between
events) is folded by :class:`~tallyray.pricing.meters.MeterSet` itself, the same
code the shards run, for the rows concerned. Both paths give the same ``Usage``; the unit
tests check one against the other.
"""

from __future__ import annotations

import gc
import io
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pj

from tallyray.pricing.events import Event
from tallyray.pricing.meters import GroupKey, MeterSet, MeterSpec, PerEventSum, Usage

__all__ = ["EventColumns", "replay"]

_INT_LIMIT = 2**62
"""A vectorised sum whose worst case could pass this falls back to the exact fold."""

_READ = pj.ReadOptions(use_threads=False, block_size=1 << 30)
"""One block for a whole decode: Arrow infers each column's type once, over every row."""


@dataclass(frozen=True)
class EventColumns:
    """Stored events as columns (any order)."""

    bucket: np.ndarray[Any, np.dtype[np.int64]]
    """Which usage each event counts in (``-1``: none)."""
    event_id: Sequence[str]
    type: Sequence[str]
    ts: np.ndarray[Any, np.dtype[np.int64]]
    properties: Sequence[str]
    """Each event's properties as the JSON text the event log stores."""

    def __len__(self) -> int:
        return len(self.ts)


def replay(
    meters: MeterSet,
    columns: EventColumns,
    buckets: int,
    ends: Sequence[int | None] | None = None,
) -> list[Usage]:
    """Fold the events into ``buckets`` usages (events of bucket ``-1`` count nowhere);
    ``ends``: the end of each bucket's period (what a ``weighted_sum`` meter's last reading
    is held to).

    The cyclic garbage collector is paused meanwhile: the replay makes many small dicts,
    sets and tuples that never form cycles, and with a month of events alive each of the
    collections they would trigger walks millions of objects (a third of the time,
    measured)."""
    paused = gc.isenabled()
    gc.disable()
    try:
        return _replay(meters, columns, ends or [None] * buckets)
    finally:
        if paused:
            gc.enable()


def _replay(meters: MeterSet, columns: EventColumns, ends: Sequence[int | None]) -> list[Usage]:
    usages = [meters.empty_usage(end) for end in ends]
    if not len(columns):
        return usages
    types = pa.array(columns.type, pa.string()).dictionary_encode()
    names = types.dictionary.to_pylist()
    metered = [
        (code, [m for m in meters.meters.values() if m.event_type == event_type])
        for code, event_type in enumerate(names)
    ]
    metered = [(code, specs) for code, specs in metered if specs]
    codes = types.indices.to_numpy(zero_copy_only=False)
    wanted = np.isin(codes, [code for code, _ in metered]) & (columns.bucket >= 0)
    rows = np.flatnonzero(wanted)
    if not len(rows):
        return usages
    properties: Sequence[str] = columns.properties
    if len(rows) < len(columns):
        properties = np.asarray(columns.properties, dtype=object)[rows].tolist()
    # One decode for every event type at once; per type when their properties clash.
    table = _decode(properties)
    codes, bucket = codes[rows], columns.bucket[rows]
    for code, specs in metered:
        of_type = codes == code
        if not of_type.any():
            continue
        typed, base = table, of_type
        if typed is None:
            typed = _decode([properties[i] for i in np.flatnonzero(of_type).tolist()])
            base = np.ones(int(of_type.sum()), dtype=bool)
        picked = bucket if table is not None else bucket[of_type]
        for meter in specs:
            derived = [d for d in meters.per_event.values() if d.meter == meter.key]
            if (
                typed is None
                or derived  # sums priced event by event: the fold's own arithmetic
                or not _fold_columns(meter, typed, picked, base, usages)
            ):
                _fold_exact(meter, derived, columns, rows[of_type], usages)
    return usages


def _decode(properties: Sequence[str]) -> pa.Table | None:
    """The properties as an Arrow table, or ``None`` when Arrow cannot type them (a property
    that is a number in one event and a string in another)."""
    try:
        return pj.read_json(io.BytesIO("\n".join(properties).encode()), read_options=_READ)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return None


def _column(table: pa.Table, path: Sequence[str]) -> pa.Array | None:
    """The column at a property path (nested objects are structs), or ``None`` if no event
    has it."""
    if path[0] not in table.column_names:
        return None
    column: Any = table.column(path[0]).combine_chunks()
    for part in path[1:]:
        if not pa.types.is_struct(column.type) or column.type.get_field_index(part) < 0:
            return None
        column = pc.struct_field(column, part)
    return column


def _filter_mask(meter: MeterSpec, table: pa.Table, n: int) -> np.ndarray[Any, Any] | None:
    """Which rows pass the meter's filter: Python's ``value in allowed`` over each distinct
    value, then an Arrow ``is_in`` (``None`` if a column cannot be compared so)."""
    mask = np.ones(n, dtype=bool)
    for name, allowed in meter.filter.items():
        column = _column(table, (name,))
        if column is None:
            return np.zeros(n, dtype=bool)
        if pa.types.is_nested(column.type):
            return None
        kept = [v for v in pc.unique(column).to_pylist() if v is not None and v in allowed]
        if not kept:
            return np.zeros(n, dtype=bool)
        hit = pc.is_in(column, value_set=pa.array(kept, column.type))
        mask &= hit.to_numpy(zero_copy_only=False)
    return mask


def _fold_columns(
    meter: MeterSpec,
    table: pa.Table,
    bucket: np.ndarray[Any, Any],
    base: np.ndarray[Any, Any],
    usages: list[Usage],
) -> bool:
    """Fold the meter's rows (those of ``base`` that pass its filter) vectorised; ``False``
    (nothing folded) where that would not be exact."""
    if meter.aggregation not in ("sum", "count", "max", "unique_count"):
        return False  # latest, weighted_sum: states of single readings
    n = table.num_rows
    mask = _filter_mask(meter, table, n) if meter.filter else np.ones(n, dtype=bool)
    if mask is None:
        return False
    mask &= base
    keys: dict[str, Any] = {"b": pa.array(bucket)}
    for i, name in enumerate(meter.group_by):
        column = _column(table, (name,))
        if column is None:
            column = pa.nulls(n)
        elif pa.types.is_nested(column.type) or pa.types.is_floating(column.type):
            return False  # floats: 1.0 and 1 would split what the fold keeps as one group
        keys[f"g{i}"] = column
    value: Any = None
    if meter.value is not None and meter.aggregation != "count":
        value = _column(table, meter.value)
        if value is None:
            return not mask.any()  # no event has the value: only fine if none counts
        selected_values = value.filter(pa.array(mask))
        if selected_values.null_count:
            return False
        integral = pa.types.is_integer(value.type)
        if meter.aggregation == "unique_count":
            if not (integral or pa.types.is_string(value.type)):
                return False
        elif not integral:
            return False
        elif meter.aggregation == "sum" and len(selected_values):
            extreme = pc.max(pc.abs(selected_values)).as_py()
            if extreme * len(selected_values) >= _INT_LIMIT:
                return False
        keys["v"] = value
    picked = pa.table(keys).filter(pa.array(mask))
    if not picked.num_rows:
        return True
    group_names = ["b", *(f"g{i}" for i in range(len(meter.group_by)))]
    aggregation = meter.aggregation
    if aggregation == "count":
        result = picked.group_by(group_names, use_threads=False).aggregate([([], "count_all")])
        states = result.column("count_all").to_pylist()
    elif aggregation in ("sum", "max"):
        result = picked.group_by(group_names, use_threads=False).aggregate([("v", aggregation)])
        states = result.column(f"v_{aggregation}").to_pylist()
    elif aggregation == "unique_count":
        result = picked.group_by(group_names, use_threads=False).aggregate([("v", "distinct")])
        states = [set(members) for members in result.column("v_distinct").to_pylist()]
    else:
        return False
    buckets = result.column("b").to_pylist()
    groups = [result.column(name).to_pylist() for name in group_names[1:]]
    for row, (b, state) in enumerate(zip(buckets, states, strict=True)):
        key: GroupKey = tuple(g[row] for g in groups)
        usages[b].groups[meter.key][key] = state
    return True


def _fold_exact(
    meter: MeterSpec,
    derived: Sequence[PerEventSum],
    columns: EventColumns,
    rows: np.ndarray[Any, Any],
    usages: list[Usage],
) -> None:
    """The shards' own fold, for the rows the vectorised path cannot take exactly (with the
    sums a ``percentage`` charge keeps event by event on this meter)."""
    only = MeterSet([meter], derived)
    per_bucket: Mapping[int, list[Event]] = defaultdict(list)
    for i in rows.tolist():
        per_bucket[int(columns.bucket[i])].append(
            Event(
                columns.event_id[i],
                "",
                columns.type[i],
                int(columns.ts[i]),
                orjson.loads(columns.properties[i]),
            )
        )
    for b, events in per_bucket.items():
        folded = only.fold(events)
        for key in (meter.key, *(d.key for d in derived)):
            usages[b].groups[key] = folded.groups[key]
