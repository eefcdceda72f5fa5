"""PostgreSQL's CPU per event for writing a commit's events to the log (issue 12, item 7).

    PYTHONPATH=$PWD .venv/bin/python bench/bench_log_insert.py [--commits 80] [--events 4000]

Writes ``--commits`` commits of ``--events`` events, one event per customer (as a commit
looks with many customers), to a fresh database with Tallyray's schema, and prints the CPU
time of the PostgreSQL backend per event, alternating two ways of sending the rows:

* ``staging`` — what the shard does (:mod:`tallyray.storage.eventlog`): ``COPY`` into a
  temporary table, then one statement that drops duplicates, inserts the events and writes
  an ``event_chunks`` row per customer;
* ``unnest`` — the same statement reading the rows from ``unnest`` of array parameters,
  without the temporary table (an alternative that was measured and not kept).

Everything runs against 127.0.0.1.
"""

from __future__ import annotations

import argparse
import os
import sys
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
UNNEST = eventlog._PG_INSERT.replace(
    "SELECT DISTINCT ON (env, customer_id, event_id) *\n"
    "    FROM incoming_events ORDER BY env, customer_id, event_id, ordinal",
    "SELECT DISTINCT ON (env, customer_id, event_id) * FROM unnest(%s::int[], %s::text[], "
    "%s::int[], %s::text[], %s::text[], %s::text[], %s::bigint[], %s::text[], %s::bigint[]) "
    "AS u(ordinal, env, shard, customer_id, event_id, type, ts, properties, received_at) "
    "ORDER BY env, customer_id, event_id, ordinal",
)
Row = tuple[int, str, int, str, str, str, int, str, int]


def rows(commit: int, events: int) -> list[Row]:
    return [
        (i, "test", 0, f"c{i:05d}", f"e{commit}-{i}", "llm.completion", TS + i, PROPERTIES, TS)
        for i in range(events)
    ]


def staging(conn: psycopg.Connection[Any], batch: list[Row]) -> int:
    with conn.cursor() as cursor:
        cursor.execute(eventlog._PG_STAGING)
        with cursor.copy(eventlog._PG_COPY) as copy:
            for row in batch:
                copy.write_row(row)
        cursor.execute(eventlog._PG_INSERT)
        return len(cursor.fetchall())


def unnest(conn: psycopg.Connection[Any], batch: list[Row]) -> int:
    with conn.cursor() as cursor:
        cursor.execute(UNNEST, [list(column) for column in zip(*batch, strict=True)])
        return len(cursor.fetchall())


def backend_seconds(conn: psycopg.Connection[Any]) -> float:
    row = conn.execute("SELECT pg_backend_pid()").fetchone()
    assert row is not None
    stat = Path(f"/proc/{row[0]}/stat").read_text()
    fields = stat[stat.rfind(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


WAYS: dict[str, Callable[[psycopg.Connection[Any], list[Row]], int]] = {
    "staging": staging,
    "unnest": unnest,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--commits", type=int, default=80, help="per way and round")
    parser.add_argument("--events", type=int, default=4000, help="per commit")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args(argv)
    commit = 0
    for round_ in range(args.rounds):
        for name, write in WAYS.items():
            with _seed.fresh_store("postgres", "tallyray_bench_log") as url:
                prepare_store(Settings.load(database_url=url, config_path=_seed.CONFIG))
                with psycopg.connect(url, autocommit=True) as conn:
                    before = backend_seconds(conn)
                    for _ in range(args.commits):
                        with conn.transaction():
                            assert write(conn, rows(commit, args.events)) == args.events
                        commit += 1
                    spent = backend_seconds(conn) - before
            per_event = spent / (args.commits * args.events) * 1e6
            print(f"round {round_ + 1}, {name:>7}: PostgreSQL {per_event:.1f} µs CPU per event")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
