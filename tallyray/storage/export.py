"""The event log exported as Parquet, partitioned by day, for DuckDB, Spark or pyarrow.

Layout: ``DIR/date=YYYY-MM-DD/part-0.parquet`` (hive-style directories, one per UTC day of
the events' ``timestamp``), so that ``read_parquet('DIR/**/*.parquet', hive_partitioning =
true)`` in DuckDB, ``spark.read.parquet(DIR)`` or ``pyarrow.dataset.dataset(DIR,
partitioning="hive")`` read it as it is. Columns:

===============  ========================  =================================================
column           type                      what
===============  ========================  =================================================
``env``          string                    ``live`` or ``test``
``customer_id``  string
``event_id``     string                    the event's ``id``
``type``         string
``timestamp``    timestamp[us, UTC]        the event's timestamp
``properties``   string                    the event's properties, as JSON text (any shape)
``received_at``  timestamp[us, UTC]        when the log stored it
``seq``          int64                     its position in the log
``shard``        int32
===============  ========================  =================================================

Exporting a day replaces what an earlier export wrote for that day, so exports are made of
whole days (the command refuses a bound that is not midnight UTC). Files are synced to disk
before :func:`export_events` returns: retention removes events only after that.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds
from sqlalchemy import Engine, select

from tallyray.storage import tables as t

__all__ = ["EXPORT_SCHEMA", "ExportResult", "export_events"]

EXPORT_SCHEMA = pa.schema(
    [
        ("env", pa.string()),
        ("customer_id", pa.string()),
        ("event_id", pa.string()),
        ("type", pa.string()),
        ("timestamp", pa.timestamp("us", tz="UTC")),
        ("properties", pa.string()),
        ("received_at", pa.timestamp("us", tz="UTC")),
        ("seq", pa.int64()),
        ("shard", pa.int32()),
        ("date", pa.string()),
    ]
)
_BATCH = 10_000


@dataclass(frozen=True, slots=True)
class ExportResult:
    rows: int
    days: tuple[str, ...]


def _day(ts: int) -> str:
    return datetime.fromtimestamp(ts // 1_000_000, UTC).strftime("%Y-%m-%d")


def export_events(engine: Engine, start: int | None, end: int, out: Path) -> ExportResult:
    """Write every logged event with ``start <= ts < end`` (no lower bound when ``start`` is
    ``None``) under ``out``, partitioned by day; returns how many and which days."""
    e = t.events.c
    query = select(
        e.env, e.customer_id, e.event_id, e.type, e.ts, e.properties, e.received_at, e.seq, e.shard
    ).where(e.ts < end)
    if start is not None:
        query = query.where(e.ts >= start)
    query = query.order_by(e.seq)
    counted = {"rows": 0}
    days: set[str] = set()

    def batches() -> Iterator[pa.RecordBatch]:
        with engine.connect() as conn:
            found = conn.execution_options(stream_results=True, yield_per=_BATCH).execute(query)
            for part in found.partitions():
                columns = list(zip(*part, strict=True))
                stamps = columns[4]
                dates = [_day(ts) for ts in stamps]
                days.update(dates)
                counted["rows"] += len(part)
                yield pa.RecordBatch.from_arrays(
                    [
                        pa.array(columns[0], pa.string()),
                        pa.array(columns[1], pa.string()),
                        pa.array(columns[2], pa.string()),
                        pa.array(columns[3], pa.string()),
                        pa.array(stamps, pa.int64()).cast(pa.timestamp("us", tz="UTC")),
                        pa.array(columns[5], pa.string()),
                        pa.array(columns[6], pa.int64()).cast(pa.timestamp("us", tz="UTC")),
                        pa.array(columns[7], pa.int64()),
                        pa.array(columns[8], pa.int32()),
                        pa.array(dates, pa.string()),
                    ],
                    schema=EXPORT_SCHEMA,
                )

    out.mkdir(parents=True, exist_ok=True)
    ds.write_dataset(
        pa.RecordBatchReader.from_batches(EXPORT_SCHEMA, batches()),
        out,
        format="parquet",
        partitioning=ds.partitioning(pa.schema([("date", pa.string())]), flavor="hive"),
        basename_template="part-{i}.parquet",
        existing_data_behavior="delete_matching",
    )
    for day in days:  # durable before anyone removes the events
        folder = out / f"date={day}"
        for path in folder.iterdir():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
        descriptor = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
    return ExportResult(counted["rows"], tuple(sorted(days)))
