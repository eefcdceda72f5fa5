"""The event log at scale, on both stores: monthly partitions (PostgreSQL) created ahead, events
of every month read back, duplicates recognised across months and after retention, retention
removing only what is past its horizon, and the Parquet export read back exactly.

Every instant is fixed here (the store functions take ``now``), so nothing depends on the day
the suite runs on."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb
import orjson
import pyarrow.dataset as ds
import pytest
from sqlalchemy import Engine, insert, select, text
from support import POSTGRES_URL, create_postgres_database, drop_postgres_database

from tallyray.invoicing.reconcile import recompute
from tallyray.pricing.events import parse_timestamp
from tallyray.pricing.meters import MeterSet, MeterSpec
from tallyray.storage import tables as t
from tallyray.storage.billing import BillingStore
from tallyray.storage.db import make_engine, migrate
from tallyray.storage.eventlog import EventRow, ShardStore
from tallyray.storage.export import export_events
from tallyray.storage.partitions import ensure_partitions, partitions
from tallyray.storage.retention import apply_retention
from tallyray.storage.usage import usage_series

STORES = ["sqlite", *(["postgres"] if POSTGRES_URL else [])]
NOW = parse_timestamp("2026-11-20T10:00:00Z")
GRACE = 3 * 86_400
TOKENS = MeterSpec(key="tokens", event_type="llm", aggregation="sum", value=("tokens",))


def at(text_: str) -> int:
    return parse_timestamp(text_ if "T" in text_ else f"{text_}T12:00:00Z")


@pytest.fixture(params=STORES)
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    """A fresh, empty database, migrated."""
    if request.param == "postgres":
        assert POSTGRES_URL is not None
        url = create_postgres_database(POSTGRES_URL)
    else:
        url = f"sqlite:///{tmp_path}/log.db"
    engine = make_engine(url)
    migrate(engine)
    yield engine
    engine.dispose()
    if request.param == "postgres":
        assert POSTGRES_URL is not None
        drop_postgres_database(POSTGRES_URL, url)


def event(customer: str, event_id: str, day: str, tokens: int, **extra: object) -> EventRow:
    props = orjson.dumps({"tokens": tokens, **extra}).decode()
    return ("test", customer, event_id, "llm", at(day), props)


# One event a month for acme, Jul..Dec 2026 (tokens 1, 2, 4, 8, 16, 32), one for globex in Nov.
MONTHS = ["2026-07-15", "2026-08-15", "2026-09-15", "2026-10-15", "2026-11-15", "2026-12-01"]
LOG = [event("acme", f"e{i}", day, 2**i) for i, day in enumerate(MONTHS)] + [
    event("globex", "g1", "2026-11-02", 100, model="m")
]


def fill(engine: Engine, rows: list[EventRow] = LOG, position: int = 0) -> int:
    """Commit rows one group commit each (two shards taking turns); the last position."""
    for i, row in enumerate(rows):
        position = ShardStore(engine, i % 2).commit([row], position, at=NOW).position
    return position


def checkpoint(engine: Engine, position: int) -> None:
    for shard in (0, 1):
        ShardStore(engine, shard).save_checkpoint(position, 2, {}, NOW)


def event_ids(engine: Engine) -> list[str]:
    with engine.connect() as conn:
        return sorted(r[0] for r in conn.execute(select(t.events.c.event_id)))


def acme_by_day(engine: Engine) -> list[dict[str, Any]]:
    """acme's tokens a day, July 2026 to the year's end, through the usage series."""
    start, end = at("2026-07-01T00:00:00Z"), at("2027-01-01T00:00:00Z")
    return usage_series(engine, "test", "acme", TOKENS, start, end, "day")


def test_partitions_are_created_for_this_month_and_the_next(engine: Engine) -> None:
    with engine.connect() as conn:
        before = [p.name for p in partitions(conn)]
    created = ensure_partitions(engine, parse_timestamp("2026-12-31T23:59:00Z"))
    again = ensure_partitions(engine, parse_timestamp("2026-12-31T23:59:00Z"))
    with engine.connect() as conn:
        after = [p.name for p in partitions(conn)]
    assert before == []
    assert again == []
    if engine.dialect.name == "postgresql":
        assert created == after == ["events_y2026m12", "events_y2027m01"]
    else:
        assert created == after == []  # SQLite: one table


def test_a_month_created_after_its_events_arrived_takes_them_from_the_default_partition(
    engine: Engine,
) -> None:
    ensure_partitions(engine, NOW)  # Nov and Dec
    fill(engine)  # Jul..Oct land in the default partition on PostgreSQL
    ensure_partitions(engine, at("2026-08-01"))  # Aug and Sep created late
    assert event_ids(engine) == ["e0", "e1", "e2", "e3", "e4", "e5", "g1"]
    if engine.dialect.name == "postgresql":
        with engine.connect() as conn:
            where = dict(
                conn.execute(text("SELECT event_id, tableoid::regclass::text FROM events")).all()
            )
        assert where == {
            "e0": "events_default",
            "e1": "events_y2026m08",
            "e2": "events_y2026m09",
            "e3": "events_default",
            "e4": "events_y2026m11",
            "e5": "events_y2026m12",
            "g1": "events_y2026m11",
        }


def test_an_event_in_each_month_is_read_back_by_usage_and_by_invoicing(engine: Engine) -> None:
    ensure_partitions(engine, at("2026-08-01"))
    ensure_partitions(engine, at("2026-10-01"))
    ensure_partitions(engine, NOW)
    fill(engine)
    series = acme_by_day(engine)
    by_day = {p["start"][:10]: p["quantity"] for p in series if p["quantity"] != "0"}
    assert by_day == {
        "2026-07-15": "1",
        "2026-08-15": "2",
        "2026-09-15": "4",
        "2026-10-15": "8",
        "2026-11-15": "16",
        "2026-12-01": "32",
    }
    billing, meters = BillingStore(engine), MeterSet([TOKENS])
    for i, month in enumerate(["07", "08", "09", "10", "11", "12"]):
        start = at(f"2026-{month}-01T00:00:00Z")
        end = (
            at("2027-01-01T00:00:00Z")
            if month == "12"
            else at(f"2026-{int(month) + 1:02d}-01T00:00:00Z")
        )
        events = billing.period_events("test", "acme", start, end)
        assert [e.id for e in events] == [f"e{i}"]
        assert recompute(meters, events).quantity(TOKENS) == Decimal(2**i)


def test_a_duplicate_is_recognised_whatever_month_it_claims_and_after_retention(
    engine: Engine,
) -> None:
    ensure_partitions(engine, NOW)
    position = fill(engine)
    store = ShardStore(engine, 0)
    # e2 was logged with a September timestamp; retried with a November one (another partition)
    retried = store.commit([event("acme", "e2", "2026-11-19", 999)], position, at=NOW)
    assert retried.skipped == {0}
    assert store.stored("test", [("acme", "e2"), ("acme", "new")]) == {("acme", "e2")}
    checkpoint(engine, position)
    done = apply_retention(engine, NOW, retention_days=1, grace_seconds=GRACE)
    assert "e2" not in event_ids(engine)  # September is gone...
    assert done.removed == 3
    again = store.commit([event("acme", "e2", "2026-11-19", 999)], position, at=NOW)
    assert again.skipped == {0}  # ...and its id is still known
    assert store.stored("test", [("acme", "e2")]) == {("acme", "e2")}


def add_subscription(engine: Engine, start: str, interval: str, anchor: str = "calendar") -> None:
    with engine.begin() as conn:
        conn.execute(
            insert(t.plans).values(
                env="test",
                key=f"p_{interval}",
                version=1,
                definition={"interval": interval},
                created_at=0,
            )
        )
        conn.execute(
            insert(t.subscriptions).values(
                id=f"sub_{interval}",
                env="test",
                customer_id="acme",
                plan_key=f"p_{interval}",
                plan_version=1,
                start=at(start),
                end=None,
                created_at=0,
                anchor=anchor,
            )
        )


def close_periods(engine: Engine, cutoff: str, uninvoiced: list[str], invoiced: list[str]) -> None:
    """Every shard closed periods up to ``cutoff``; records of closed monthly periods, some
    with an invoice."""
    with engine.begin() as conn:
        for shard in (0, 1):
            conn.execute(
                insert(t.period_closes).values(
                    shard=shard, env="test", cutoff=at(cutoff), closed_at=0
                )
            )
        for n, start in enumerate(uninvoiced + invoiced):
            conn.execute(
                insert(t.billing_periods).values(
                    env="test",
                    customer_id="acme",
                    start=at(start),
                    end=at(start) + 1,
                    shard=0,
                    usage={},
                    spend="0",
                    costs={},
                    burned={},
                    position=0,
                    closed_at=0,
                )
            )
            if start in invoiced:
                conn.execute(
                    insert(t.invoices).values(
                        id=f"inv{n}",
                        env="test",
                        customer_id="acme",
                        period_start=at(start),
                        period_end=at(start) + 1,
                        status="finalized",
                        currency="EUR",
                        total="0",
                        amount_due="0",
                        document={},
                        payment_attempts=0,
                        created_at=0,
                    )
                )


RETENTION_CASES = [
    # (what the store holds, retention days, horizon's rule, events kept)
    # A monthly customer, October closed and invoiced: the dedup window (Oct 16) binds; the
    # cut is its month's start, Oct 1: Jul, Aug, Sep go.
    ("monthly, Oct invoiced", 1, "dedup window", ["e3", "e4", "e5", "g1"]),
    # The same with 60 days: now − 60 d = Sep 21, cut Sep 1: Jul, Aug go.
    ("monthly, Oct invoiced", 60, "retention", ["e2", "e3", "e4", "e5", "g1"]),
    # August was closed but never invoiced: its start (Aug 1) binds: only July goes.
    ("monthly, Aug uninvoiced", 1, "uninvoiced period", ["e1", "e2", "e3", "e4", "e5", "g1"]),
    # A yearly subscription's open period started Jan 1, 2026: nothing of 2026 goes.
    ("yearly", 1, "open period", ["e0", "e1", "e2", "e3", "e4", "e5", "g1"]),
    # No shard has closed a period: the subscription's start (Aug 10) binds: July goes.
    (
        "monthly since Aug 10, nothing closed",
        1,
        "open period",
        ["e1", "e2", "e3", "e4", "e5", "g1"],
    ),
]


@pytest.mark.parametrize(("setup", "days", "rule", "kept"), RETENTION_CASES)
def test_retention_removes_only_what_is_past_the_horizon(
    engine: Engine, setup: str, days: int, rule: str, kept: list[str]
) -> None:
    ensure_partitions(engine, at("2026-08-01"))
    ensure_partitions(engine, at("2026-10-01"))
    ensure_partitions(engine, NOW)
    checkpoint(engine, fill(engine))
    match setup:
        case "monthly, Oct invoiced":
            add_subscription(engine, "2026-01-01", "month")
            close_periods(engine, "2026-11-01", [], ["2026-10-01"])
        case "monthly, Aug uninvoiced":
            add_subscription(engine, "2026-01-01", "month")
            close_periods(engine, "2026-11-01", ["2026-08-01"], ["2026-10-01"])
        case "yearly":
            add_subscription(engine, "2026-01-01", "year")
            close_periods(engine, "2026-11-01", [], [])
        case "monthly since Aug 10, nothing closed":
            add_subscription(engine, "2026-08-10", "month")
    done = apply_retention(engine, NOW, retention_days=days, grace_seconds=GRACE)
    assert done.refused is None
    assert done.horizon is not None and done.horizon.rule == rule
    assert event_ids(engine) == kept
    assert done.removed == 7 - len(kept)
    if engine.dialect.name == "postgresql":
        with engine.connect() as conn:
            names = [p.name for p in partitions(conn)]
        assert all(
            f"events_y2026m{m:02d}" not in names for m in range(7, 13) if f"e{m - 7}" not in kept
        )
    # What is kept still reads back through the chunks.
    series = acme_by_day(engine)
    total = sum(Decimal(p["quantity"]) for p in series)
    assert total == sum(2 ** int(e[1:]) for e in kept if e.startswith("e"))


def test_retention_waits_for_every_shard_to_checkpoint_what_it_would_remove(
    engine: Engine,
) -> None:
    ensure_partitions(engine, NOW)
    position = fill(engine)
    refused = apply_retention(engine, NOW, retention_days=1, grace_seconds=GRACE)
    assert refused.refused is not None and refused.removed == 0  # no checkpoint at all
    ShardStore(engine, 0).save_checkpoint(position, 2, {}, NOW)
    ShardStore(engine, 1).save_checkpoint(1, 2, {}, NOW)  # shard 1 is behind
    behind = apply_retention(engine, NOW, retention_days=1, grace_seconds=GRACE)
    assert behind.refused is not None and behind.removed == 0
    assert len(event_ids(engine)) == 7


def read_back(out: Path) -> list[tuple[object, ...]]:
    table = ds.dataset(out, format="parquet", partitioning="hive").to_table()
    rows = table.to_pylist()
    return sorted(
        (
            str(r["date"]),
            r["env"],
            r["customer_id"],
            r["event_id"],
            r["type"],
            int(r["timestamp"].timestamp() * 1_000_000),
            orjson.loads(r["properties"]),
        )
        for r in rows
    )


def test_the_export_reads_back_exactly_with_pyarrow(engine: Engine, tmp_path: Path) -> None:
    ensure_partitions(engine, NOW)
    rows = [
        event("acme", "x1", "2026-11-02T00:00:00Z", 1),
        event("acme", "x2", "2026-11-02T23:59:59.999999Z", 2, model="gpt-4o"),
        event("globex", "x3", "2026-11-03T08:30:00.000123Z", 3, nested={"a": [1, "b"]}),
        event("globex", "x4", "2026-11-04T00:00:00Z", 4),  # after --to: not exported
    ]
    fill(engine, rows)
    out = tmp_path / "export"
    done = export_events(engine, at("2026-11-02T00:00:00Z"), at("2026-11-04T00:00:00Z"), out)
    assert (done.rows, done.days) == (3, ("2026-11-02", "2026-11-03"))
    assert sorted(p.name for p in out.iterdir()) == ["date=2026-11-02", "date=2026-11-03"]
    assert read_back(out) == [
        ("2026-11-02", "test", "acme", "x1", "llm", at("2026-11-02T00:00:00Z"), {"tokens": 1}),
        (
            "2026-11-02",
            "test",
            "acme",
            "x2",
            "llm",
            at("2026-11-02T23:59:59.999999Z"),
            {"tokens": 2, "model": "gpt-4o"},
        ),
        (
            "2026-11-03",
            "test",
            "globex",
            "x3",
            "llm",
            at("2026-11-03T08:30:00.000123Z"),
            {"tokens": 3, "nested": {"a": [1, "b"]}},
        ),
    ]
    # Exporting a day again replaces it rather than adding a second copy.
    export_events(engine, at("2026-11-02T00:00:00Z"), at("2026-11-03T00:00:00Z"), out)
    assert len(read_back(out)) == 3


def test_duckdb_reads_the_export_as_it_is_written(engine: Engine, tmp_path: Path) -> None:
    """The export is for other tools: DuckDB reads the folder of days with nothing but its
    path (the day from the folder names, as a date; timestamps as UTC instants; properties
    as JSON)."""
    ensure_partitions(engine, NOW)
    fill(
        engine,
        [
            event("acme", "x1", "2026-11-02T10:00:00Z", 1),
            event("acme", "x2", "2026-11-02T23:59:59.999999Z", 2, model="gpt-4o"),
            event("globex", "x3", "2026-11-03T08:30:00.000123Z", 3),
        ],
    )
    out = tmp_path / "export"
    export_events(engine, at("2026-11-02T00:00:00Z"), at("2026-11-04T00:00:00Z"), out)
    rows = duckdb.sql(
        f"""SELECT date, customer_id, event_id, epoch_us("timestamp"),
                   CAST(json_extract(properties, '$.tokens') AS INTEGER)
            FROM read_parquet('{out}/*/*.parquet', hive_partitioning = true)
            ORDER BY event_id"""
    ).fetchall()
    assert rows == [
        (date(2026, 11, 2), "acme", "x1", at("2026-11-02T10:00:00Z"), 1),
        (date(2026, 11, 2), "acme", "x2", at("2026-11-02T23:59:59.999999Z"), 2),
        (date(2026, 11, 3), "globex", "x3", at("2026-11-03T08:30:00.000123Z"), 3),
    ]
    per_day = duckdb.sql(
        f"SELECT date, count(*) FROM read_parquet('{out}/**/*.parquet', hive_partitioning = true)"
        " GROUP BY date ORDER BY date"
    ).fetchall()
    assert per_day == [(date(2026, 11, 2), 2), (date(2026, 11, 3), 1)]


def test_retention_exports_before_it_removes(engine: Engine, tmp_path: Path) -> None:
    ensure_partitions(engine, at("2026-08-01"))
    ensure_partitions(engine, NOW)
    checkpoint(engine, fill(engine))
    out = tmp_path / "archive"
    done = apply_retention(engine, NOW, retention_days=1, grace_seconds=GRACE, export_dir=out)
    assert (done.removed, done.exported) == (3, 3)  # Jul, Aug, Sep
    assert [r[3] for r in read_back(out)] == ["e0", "e1", "e2"]
    assert event_ids(engine) == ["e3", "e4", "e5", "g1"]


def test_migration_0013_keeps_every_event_and_every_id(tmp_path: Path) -> None:
    """Events logged before 0013 (of several months, and from 1970) are all there after it, in
    their months' partitions on PostgreSQL; their ids still stop retries; seq carries on."""
    for store in STORES:
        if store == "postgres":
            assert POSTGRES_URL is not None
            url = create_postgres_database(POSTGRES_URL)
        else:
            url = f"sqlite:///{tmp_path}/old.db"
        engine = make_engine(url)
        try:
            migrate(engine, "0012")
            old = [
                {
                    "env": "test",
                    "shard": 0,
                    "customer_id": "acme",
                    "event_id": eid,
                    "type": "llm",
                    "ts": ts,
                    "properties": "{}",
                    "received_at": 0,
                }
                for eid, ts in [("a", at("2026-09-03")), ("b", at("2026-10-30")), ("c", 5)]
            ]
            with engine.begin() as conn:
                conn.execute(insert(t.events), old)
            migrate(engine)
            assert event_ids(engine) == ["a", "b", "c"]
            with engine.connect() as conn:
                names = [p.name for p in partitions(conn)]
                ledger = conn.execute(select(t.event_ids.c.event_id)).scalars().all()
            assert sorted(ledger) == ["a", "b", "c"]
            if store == "postgres":
                assert names == ["events_y1970m01", "events_y2026m09", "events_y2026m10"]
            store_ = ShardStore(engine, 0)
            retry = store_.commit([event("acme", "b", "2026-11-19", 1)], 3, at=NOW)
            fresh = store_.commit([event("acme", "d", "2026-10-31", 1)], 3, at=NOW)
            assert (retry.skipped, retry.position) == ({0}, 3)
            assert (fresh.skipped, fresh.position) == (set(), 4)
        finally:
            engine.dispose()
            if store == "postgres" and POSTGRES_URL is not None:
                drop_postgres_database(POSTGRES_URL, url)


def test_the_export_command_writes_days_and_refuses_a_bound_inside_a_day(
    engine: Engine, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tallyray.cli import EXIT_BAD_INPUT, EXIT_OK, main

    ensure_partitions(engine, NOW)
    fill(engine)
    url = engine.url.render_as_string(hide_password=False)
    out = tmp_path / "cli"
    base = ["events", "export", "--out", str(out), "--database-url", url]
    assert main([*base, "--from", "2026-11-01", "--to", "2026-12-01"]) == EXIT_OK
    assert orjson.loads(capsys.readouterr().out)["days"] == ["2026-11-02", "2026-11-15"]
    assert [r[3] for r in read_back(out)] == ["g1", "e4"]
    assert main([*base, "--from", "2026-11-01T12:00:00Z", "--to", "2026-12-01"]) == EXIT_BAD_INPUT
    assert "--from" in capsys.readouterr().err


def test_events_maintain_creates_the_months_ahead_and_applies_retention(
    engine: Engine, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from tallyray.cli import EXIT_OK, main

    ensure_partitions(engine, at("2026-08-01"))
    checkpoint(engine, fill(engine))
    monkeypatch.setenv("TALLYRAY_CLOCK_START", "2026-11-20T10:00:00Z")
    monkeypatch.setenv("TALLYRAY_EVENT_RETENTION_DAYS", "30")
    url = engine.url.render_as_string(hide_password=False)
    assert main(["events", "maintain", "--database-url", url]) == EXIT_OK
    done = orjson.loads(capsys.readouterr().out)
    postgres = engine.dialect.name == "postgresql"
    with engine.connect() as conn:  # created at its start (as the server's), Aug/Sep dropped
        names = [p.name for p in partitions(conn)]
    assert names == (["events_y2026m11", "events_y2026m12"] if postgres else [])
    # now − 30 d = Oct 21; the dedup window's Oct 16 binds; the cut is Oct 1
    assert done["retention"]["rule"] == "dedup window"
    assert done["retention"]["cut"] == at("2026-10-01T00:00:00Z")
    assert done["retention"]["removed"] == 3
    assert done["retention"]["dropped"] == (
        ["events_y2026m08", "events_y2026m09"] if postgres else []
    )
    assert event_ids(engine) == ["e3", "e4", "e5", "g1"]
