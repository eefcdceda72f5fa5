"""Reading one customer's events back through event_chunks: exactly the rows a scan of the
whole log finds, on both stores, also for chunks written before migration 0005."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, insert, select, text
from support import POSTGRES_URL, create_postgres_database, drop_postgres_database

from tallyray.storage import tables as t
from tallyray.storage.db import make_engine, migrate
from tallyray.storage.eventlog import EventRow, ShardStore, customer_events

STORES = ["sqlite", *(["postgres"] if POSTGRES_URL else [])]
HOUR = 3_600_000_000
CUSTOMERS = ["acme", "globex", "initech"]
TYPES = ["llm.completion", "api.call"]


@pytest.fixture(params=STORES)
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    """A fresh, empty database (not migrated)."""
    if request.param == "postgres":
        assert POSTGRES_URL is not None
        url = create_postgres_database(POSTGRES_URL)
    else:
        url = f"sqlite:///{tmp_path}/log.db"
    engine = make_engine(url)
    yield engine
    engine.dispose()
    if request.param == "postgres":
        assert POSTGRES_URL is not None
        drop_postgres_database(POSTGRES_URL, url)


def _scan(engine: Engine, customer: str, start: int, end: int, typ: str | None) -> list[str]:
    """The answer by brute force: every row of the log, filtered here."""
    e = t.events.c
    with engine.connect() as conn:
        rows = conn.execute(select(e.customer_id, e.event_id, e.type, e.ts).order_by(e.seq))
        return [
            r.event_id
            for r in rows
            if r.customer_id == customer and start <= r.ts < end and typ in (None, r.type)
        ]


def _read(engine: Engine, customer: str, start: int, end: int, typ: str | None) -> list[str]:
    with engine.connect() as conn:
        return [r.event_id for r in customer_events(conn, "test", customer, start, end, typ)]


def _random_commits(rng: random.Random, commits: int) -> list[list[EventRow]]:
    """Commits of interleaved customers, with timestamps out of order (late events)."""
    out, n = [], 0
    for c in range(commits):
        batch = []
        for _ in range(rng.randint(1, 40)):
            n += 1
            ts = c * HOUR // 4 + rng.randint(-2 * HOUR, HOUR)
            customer = rng.choice(CUSTOMERS)
            batch.append(("test", customer, f"e{n}", rng.choice(TYPES), ts, "{}"))
        if rng.random() < 0.3 and batch:
            batch.append(batch[0])  # a duplicate within the commit: stored once
        out.append(batch)
    return out


WINDOWS = [  # (start, end) in hours
    (-10, 100),
    (0, 1),
    (2, 5),
    (3, 3),  # empty
    (7, 8),
    (-2, 0),
]


def test_a_customers_events_are_what_a_scan_of_the_log_finds(engine: Engine) -> None:
    migrate(engine)
    rng = random.Random(7)
    stores = [ShardStore(engine, shard) for shard in (0, 1)]
    position = 0
    for i, batch in enumerate(_random_commits(rng, 40)):
        store = stores[i % 2]  # two shards' commits share the sequence
        position = store.commit(batch, position, at=i).position
    with engine.connect() as conn:
        chunks = conn.execute(select(t.event_chunks)).all()
    assert chunks and all(c.first_seq <= c.last_seq and c.ts_min <= c.ts_max for c in chunks)
    for customer in CUSTOMERS:
        for start, end in WINDOWS:
            for typ in (None, *TYPES):
                found = _read(engine, customer, start * HOUR, end * HOUR, typ)
                assert found == _scan(engine, customer, start * HOUR, end * HOUR, typ)
    assert _read(engine, "nobody", -10 * HOUR, 100 * HOUR, None) == []


def test_events_logged_before_migration_0005_get_chunks(engine: Engine) -> None:
    migrate(engine, "0004")
    rng = random.Random(11)
    rows, seq = [], 0
    for request in range(30):  # older servers stamped received_at per request
        for _ in range(rng.randint(1, 10)):
            seq += 1
            rows.append(
                {
                    "env": "test",
                    "shard": request % 2,
                    "customer_id": rng.choice(CUSTOMERS),
                    "event_id": f"old{seq}",
                    "type": rng.choice(TYPES),
                    "ts": rng.randint(0, 10 * HOUR),
                    "properties": "{}",
                    "received_at": request // 3,  # some requests shared a commit time
                }
            )
    rng.shuffle(rows)  # seqs interleave across requests, as concurrent requests did
    with engine.begin() as conn:
        conn.execute(insert(t.events), rows)
    migrate(engine)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM event_chunks")).scalar_one() > 0
    for customer in CUSTOMERS:
        for start, end in WINDOWS:
            for typ in (None, *TYPES):
                found = _read(engine, customer, start * HOUR, end * HOUR, typ)
                assert found == _scan(engine, customer, start * HOUR, end * HOUR, typ)


def _row(customer: str, event_id: str) -> EventRow:
    return ("test", customer, event_id, "api.call", HOUR, "{}")


@pytest.mark.parametrize(
    ("commit", "skipped", "stored"),
    [
        ([("acme", "new1")], set(), 1),
        ([("acme", "old")], {0}, 0),  # in the log already
        ([("acme", "new1"), ("acme", "new1")], {1}, 1),  # repeated: the first counts
        ([("acme", "old"), ("acme", "new1"), ("globex", "old"), ("acme", "old")], {0, 3}, 2),
        ([("acme", "new1"), ("acme", "old"), ("acme", "new2"), ("acme", "new1")], {1, 3}, 2),
    ],
)
def test_a_commit_names_the_events_it_did_not_store(
    engine: Engine, commit: list[tuple[str, str]], skipped: set[int], stored: int
) -> None:
    """An event id is per customer: ``globex``'s ``old`` is new, ``acme``'s is not."""
    migrate(engine)
    store = ShardStore(engine, 0)
    first = store.commit([_row("acme", "old")], 0, at=1)
    assert (first.skipped, first.position) == (set(), 1)
    result = store.commit([_row(*event) for event in commit], first.position, at=2)
    assert result.skipped == skipped
    assert result.position == first.position + stored
    with engine.connect() as conn:
        logged = conn.execute(text("SELECT count(*) FROM events")).scalar_one()
    assert logged == 1 + stored
