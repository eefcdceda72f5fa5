"""The event log's monthly partitions on PostgreSQL: naming, creating ahead, listing, dropping.

``events`` is ``PARTITION BY RANGE (ts)`` (migration 0013): one partition per calendar month
in UTC, ``events_yYYYYmMM`` holding ``[first µs of the month, first µs of the next)``, and
``events_default`` for any timestamp no monthly partition covers (events far in the past or
the future that intake still accepts, tests on a 1970 clock). The server creates the current
and the next month's partitions at start and every hour (:func:`ensure_partitions`), so
ordinary events never land in the default partition.

A month is created by moving the default partition's rows of that month into a new table and
attaching it: PostgreSQL refuses to add a partition whose rows the default partition holds.
SQLite has no partitions: every function here is a no-op there.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import Connection, Engine, text

__all__ = [
    "Partition",
    "ensure_partitions",
    "month_partitions_sql",
    "month_start",
    "partition_name",
    "partitions",
]

_US = 1_000_000
DEFAULT_PARTITION = "events_default"


def month_start(ts: int) -> int:
    """The first microsecond (UTC) of the month that holds ``ts``."""
    moment = datetime.fromtimestamp(ts // _US, UTC).replace(
        day=1, hour=0, minute=0, second=0, microsecond=0
    )
    return int(moment.timestamp()) * _US


def next_month(start: int) -> int:
    moment = datetime.fromtimestamp(start // _US, UTC)
    year, month = (moment.year + 1, 1) if moment.month == 12 else (moment.year, moment.month + 1)
    return int(datetime(year, month, 1, tzinfo=UTC).timestamp()) * _US


def partition_name(start: int) -> str:
    moment = datetime.fromtimestamp(start // _US, UTC)
    return f"events_y{moment.year:04d}m{moment.month:02d}"


def _create_sql(start: int, end: int) -> list[str]:
    name = partition_name(start)
    return [
        f"CREATE TABLE {name} (LIKE events INCLUDING DEFAULTS)",
        f"WITH moved AS (DELETE FROM {DEFAULT_PARTITION} WHERE ts >= {start} AND ts < {end} "
        f"RETURNING *) INSERT INTO {name} SELECT * FROM moved",
        f"ALTER TABLE events ATTACH PARTITION {name} FOR VALUES FROM ({start}) TO ({end})",
    ]


def month_partitions_sql(months: Iterable[str]) -> list[str]:
    """The statements that create the partitions of these months (``YYYY-MM``), for a table
    with none of them yet (the migration makes one per month its existing rows fall in)."""
    statements = []
    for month in sorted(set(months)):
        start = int(datetime(int(month[:4]), int(month[5:7]), 1, tzinfo=UTC).timestamp()) * _US
        statements.extend(_create_sql(start, next_month(start)))
    return statements


@dataclass(frozen=True, slots=True)
class Partition:
    name: str
    start: int
    end: int


def partitions(conn: Connection) -> list[Partition]:
    """The monthly partitions that exist, oldest first (not the default one)."""
    if conn.dialect.name != "postgresql":
        return []
    rows = conn.execute(
        text(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname = 'events'"
        )
    ).all()
    found = []
    for (name,) in rows:
        if name == DEFAULT_PARTITION:
            continue
        start = int(datetime(int(name[8:12]), int(name[13:15]), 1, tzinfo=UTC).timestamp()) * _US
        found.append(Partition(name, start, next_month(start)))
    return sorted(found, key=lambda p: p.start)


def ensure_partitions(engine: Engine, now: int, months_ahead: int = 1) -> list[str]:
    """Create the partitions of ``now``'s month and the ``months_ahead`` after it that do not
    exist yet; returns the names created. Safe to run from several processes at once: each
    month is created in its own transaction under an advisory lock."""
    if engine.dialect.name != "postgresql":
        return []
    created = []
    start = month_start(now)
    for _ in range(months_ahead + 1):
        end = next_month(start)
        with engine.begin() as conn:
            conn.execute(text("SELECT pg_advisory_xact_lock(hashtext('tallyray.partitions'))"))
            if partition_name(start) not in {p.name for p in partitions(conn)}:
                for sql in _create_sql(start, end):
                    conn.execute(text(sql))
                created.append(partition_name(start))
        start = end
    return created


def drop_partition(conn: Connection, name: str) -> None:
    conn.execute(text(f"ALTER TABLE events DETACH PARTITION {name}"))
    conn.execute(text(f"DROP TABLE {name}"))
