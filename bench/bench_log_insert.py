"""PostgreSQL's CPU per event for writing a commit's events to the log (issue 12, item 7).

    PYTHONPATH=$PWD .venv/bin/python bench/bench_log_insert.py [--commits 80] [--events 4000]

Writes ``--commits`` commits of ``--events`` events, one event per customer (as a commit
looks with many customers), to a fresh database with Tallyray's schema, and prints the CPU
time per event of the PostgreSQL backend and of this process (what the shard's database
thread spends sending the rows and reading the answer), alternating ways of sending the
rows and reading the answer:

* ``staging`` — what the shard does (:mod:`tallyray.storage.eventlog`): ``COPY`` into a
  temporary table, then one statement that drops duplicates, inserts the events and writes
  an ``event_chunks`` row per customer;
* ``unnest`` — the same statement reading the rows from ``unnest`` of array parameters,
  without the temporary table (an alternative that was measured and not kept);
* ``returning-all`` — the statement before 2026-12-08, which answered a row per stored event
  for the shard to match back (its answer now is the last seq and the events it skipped).

Everything runs against 127.0.0.1.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _seed  # noqa: E402
import psycopg  # noqa: E402

from tallyray.cluster import Settings, prepare_store  # noqa: E402
from tallyray.storage import eventlog  # noqa: E402

TS = 1_792_065_600_000_000  # 2026-10-15T12:00:00Z, in µs
PROPERTIES = '{"model":"gpt-4o","input_tokens":1000,"output_tokens":100}'
UNNEST = eventlog._PG_INSERT.replace(  # the rows as a CTE of that name, not the table
    "WITH firsts AS (",
    "WITH incoming_events AS (SELECT * FROM unnest(%s::int[], %s::text[], %s::int[], "
    "%s::text[], %s::text[], %s::text[], %s::bigint[], %s::text[], %s::bigint[]) "
    "AS u(ordinal, env, shard, customer_id, event_id, type, ts, properties, received_at)"
    "), firsts AS (",
)
assert UNNEST != eventlog._PG_INSERT
# The statement before 2026-12-08: it answered a row per stored event, which the shard
# matched back to the commit's events.
RETURNING_ALL = eventlog._PG_INSERT[: eventlog._PG_INSERT.rindex("SELECT NULL::integer")].replace(
    "RETURNING seq, env, shard, customer_id, ts",
    "RETURNING seq, env, shard, customer_id, event_id, ts",
) + ("SELECT seq, env, customer_id, event_id FROM fresh")
Row = tuple[int, str, int, str, str, str, int, str, int]


def rows(commit: int, events: int) -> list[Row]:
    return [
        (i, "test", 0, f"c{i:05d}", f"e{commit}-{i}", "llm.completion", TS + i, PROPERTIES, TS)
        for i in range(events)
    ]


def _staged(cursor: psycopg.Cursor[Any], batch: list[Row]) -> None:
    """``COPY`` the rows into the temporary table, as the shard does."""
    cursor.execute(eventlog._PG_STAGING)
    with cursor.copy(eventlog._PG_COPY) as copy:
        for row in batch:
            copy.write_row(row)


def staging(conn: psycopg.Connection[Any], batch: list[Row]) -> int:
    with conn.cursor() as cursor:
        _staged(cursor, batch)
        cursor.execute(eventlog._PG_INSERT)
        return stored(cursor, len(batch))


def unnest(conn: psycopg.Connection[Any], batch: list[Row]) -> int:
    with conn.cursor() as cursor:
        cursor.execute(UNNEST, [list(column) for column in zip(*batch, strict=True)])
        return stored(cursor, len(batch))


def returning_all(conn: psycopg.Connection[Any], batch: list[Row]) -> int:
    with conn.cursor() as cursor:
        _staged(cursor, batch)
        cursor.execute(RETURNING_ALL)
        inserted = {(env, customer, event_id): seq for seq, env, customer, event_id in cursor}
        return len(inserted)


def stored(cursor: psycopg.Cursor[Any], sent: int) -> int:
    """How many of ``sent`` events the statement stored, read from its answer as the shard
    reads it: the new last seq, and a row per event it skipped."""
    skipped = {ordinal for ordinal, _ in cursor if ordinal is not None}
    return sent - len(skipped)


def backend_seconds(conn: psycopg.Connection[Any]) -> float:
    row = conn.execute("SELECT pg_backend_pid()").fetchone()
    assert row is not None
    stat = Path(f"/proc/{row[0]}/stat").read_text()
    fields = stat[stat.rfind(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


WAYS: dict[str, Callable[[psycopg.Connection[Any], list[Row]], int]] = {
    "staging": staging,
    "unnest": unnest,
    "returning-all": returning_all,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--commits", type=int, default=80, help="per way and round")
    parser.add_argument("--events", type=int, default=4000, help="per commit")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--ways", default=",".join(WAYS), help=f"of {', '.join(WAYS)}")
    args = parser.parse_args(argv)
    commit = 0
    for round_ in range(args.rounds):
        for name in args.ways.split(","):
            write = WAYS[name]
            with _seed.fresh_store("postgres", "tallyray_bench_log") as url:
                prepare_store(Settings.load(database_url=url, config_path=_seed.CONFIG))
                with psycopg.connect(url, autocommit=True) as conn:
                    before, mine = backend_seconds(conn), 0.0
                    for _ in range(args.commits):
                        batch = rows(commit, args.events)
                        started = time.process_time()
                        with conn.transaction():
                            assert write(conn, batch) == args.events
                        mine += time.process_time() - started
                        commit += 1
                    spent = backend_seconds(conn) - before
            n = args.commits * args.events
            print(
                f"round {round_ + 1}, {name:>7}: PostgreSQL {spent / n * 1e6:.1f} µs, "
                f"this process (the shard's side) {mine / n * 1e6:.1f} µs CPU per event"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
