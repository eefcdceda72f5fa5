"""A shard's durable side: the event log, credit grants and holds it books, its checkpoints.

One :class:`ShardStore` per shard actor. :meth:`ShardStore.commit` is the group commit: every
request that reached the shard since the last commit is written in one transaction, and
nothing is acknowledged before that transaction has committed.

Duplicates are found by the database, not by memory: the ``event_ids`` ledger's primary key
``(env, customer_id, event_id)`` holds across restarts, shards, monthly partitions and
retention, and an event whose id it already holds is not inserted.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, Engine, Row, Table, insert, select, text, update
from sqlalchemy.dialects import postgresql, sqlite

from tallyray.storage import tables as t
from tallyray.storage.alerts import write_messages
from tallyray.storage.audit import write_audit
from tallyray.storage.purchases import mark_paid

__all__ = ["CommitResult", "EventRow", "ShardStore", "customer_events"]

EventRow = tuple[str, str, str, str, int, str]
"""(env, customer_id, event_id, type, ts, properties as JSON text)."""


_PG_STAGING = """
CREATE TEMPORARY TABLE IF NOT EXISTS incoming_events (
    ordinal integer, env text, shard integer, customer_id text, event_id text, type text,
    ts bigint, properties text, received_at bigint
) ON COMMIT DELETE ROWS
"""
_PG_COPY = (
    "COPY incoming_events (ordinal, env, shard, customer_id, event_id, type, ts, properties, "
    "received_at) FROM STDIN"
)
_PG_INSERT = """
WITH firsts AS (
    SELECT DISTINCT ON (env, customer_id, event_id) *
    FROM incoming_events ORDER BY env, customer_id, event_id, ordinal
), new_ids AS (
    INSERT INTO event_ids (env, customer_id, event_id, received_at)
    SELECT env, customer_id, event_id, received_at FROM firsts
    ON CONFLICT (env, customer_id, event_id) DO NOTHING
    RETURNING env, customer_id, event_id
), kept AS (
    SELECT f.* FROM firsts f JOIN new_ids n USING (env, customer_id, event_id)
), fresh AS (
    INSERT INTO events (env, shard, customer_id, event_id, type, ts, properties, received_at)
    SELECT env, shard, customer_id, event_id, type, ts, properties, received_at
    FROM kept ORDER BY env, customer_id, ordinal
    RETURNING seq, env, shard, customer_id, ts
), chunks AS (
    INSERT INTO event_chunks (env, customer_id, shard, first_seq, last_seq, ts_min, ts_max, events)
    SELECT env, customer_id, min(shard), min(seq), max(seq), min(ts), max(ts), count(*)
    FROM fresh GROUP BY env, customer_id
)
SELECT NULL::integer, max(seq) FROM fresh
UNION ALL
SELECT ordinal, NULL FROM incoming_events WHERE ordinal NOT IN (SELECT ordinal FROM kept)
"""
# The answer is one row with the log's new last seq (the ordinal NULL), and one row per
# event that was not stored (its ordinal): usually none, so a commit of thousands of events
# does not send them all back to be matched (docs/benchmarks.md, "A commit's answer").


@dataclass
class CommitResult:
    skipped: frozenset[int] = frozenset()
    """The events not stored, by their place in the commit's list: already in the log, or
    repeating an event before them in this commit (only the first of an id counts)."""
    position: int = 0
    """The shard's log position after this commit."""
    skipped_grants: set[str] = field(default_factory=set)
    """Grants left out: they pay a purchase that was paid (or canceled) already."""


# One customer's events through its chunks. PostgreSQL's planner, left to itself, reads the
# customer's entire history through the idempotency index (its prefix is the customer) or
# scans the log; the LATERAL subquery with ORDER BY seq and LIMIT makes each chunk a range
# scan of the primary key, and the customer filter is applied to what those ranges hold. The
# chunk's time span lets PostgreSQL skip the monthly partitions it cannot meet.
_PG_CUSTOMER_EVENTS = """
SELECT e.seq, e.env, e.customer_id, e.event_id, e.type, e.ts, e.properties
FROM event_chunks c CROSS JOIN LATERAL (
    SELECT * FROM events x
    WHERE x.seq >= c.first_seq AND x.seq <= c.last_seq
      AND x.ts >= c.ts_min AND x.ts <= c.ts_max
    ORDER BY x.seq LIMIT c.last_seq - c.first_seq + 1
) e
WHERE c.env = :env AND c.customer_id = :customer AND c.ts_max >= :start AND c.ts_min < :end
  AND e.ts >= :start AND e.ts < :end
ORDER BY e.seq
"""
# SQLite walks the chunks and looks each range up by rowid.
_SQLITE_CUSTOMER_EVENTS = """
SELECT e.seq, e.env, e.customer_id, e.event_id, e.type, e.ts, e.properties
FROM event_chunks c JOIN events e ON e.seq BETWEEN c.first_seq AND c.last_seq
WHERE c.env = :env AND c.customer_id = :customer AND c.ts_max >= :start AND c.ts_min < :end
  AND e.ts >= :start AND e.ts < :end
ORDER BY e.seq
"""


def customer_events(
    conn: Connection,
    env: str,
    customer_id: str,
    start: int,
    end: int,
    event_type: str | None = None,
) -> list[Row[Any]]:
    """One customer's logged events with ``start <= ts < end`` (of one type, if given), in
    log order, with at least ``seq, event_id, type, ts, properties``.

    Found through ``event_chunks``: the customer's chunks whose time span meets the range,
    then the log rows in each chunk's seq range, of which only the customer's are kept.
    """
    sql = _PG_CUSTOMER_EVENTS if conn.dialect.name == "postgresql" else _SQLITE_CUSTOMER_EVENTS
    found = conn.execute(
        text(sql), {"env": env, "customer": customer_id, "start": start, "end": end}
    )
    rows: list[Row[Any]] = []
    for row in found:
        if row.env != env or row.customer_id != customer_id:
            continue  # another customer's row inside the range
        if event_type is not None and row.type != event_type:
            continue
        # Chunks written before commits were stamped alike may overlap (see migration 0005).
        if not rows or rows[-1].seq != row.seq:
            rows.append(row)
    return rows


def _dialect_insert(conn: Connection, table: Table) -> postgresql.Insert | sqlite.Insert:
    if conn.dialect.name == "postgresql":
        return postgresql.insert(table)
    if conn.dialect.name == "sqlite":
        return sqlite.insert(table)
    raise NotImplementedError(f"Tallyray supports PostgreSQL and SQLite, not {conn.dialect.name}")


class ShardStore:
    def __init__(self, engine: Engine, shard: int) -> None:
        self.engine = engine
        self.shard = shard

    # -- the group commit ----------------------------------------------------------------

    def commit(
        self,
        events: Sequence[EventRow],
        position: int,
        at: int = 0,
        grants: Sequence[Mapping[str, Any]] = (),
        new_holds: Sequence[Mapping[str, Any]] = (),
        finished_holds: Sequence[tuple[str, str]] = (),
        messages: Sequence[Mapping[str, Any]] = (),
    ) -> CommitResult:
        """Write one group commit. Events first, all received ``at`` the commit's time (so
        replay applies a commit's events together, as it was applied live); grants are booked
        after them, at the position the events leave the log in (replay adds them at the same
        point). Outbox ``messages`` (alerts the previous commits crossed) go in the same
        transaction."""
        result = CommitResult(position=position)
        with self.engine.begin() as conn:
            write_messages(conn, messages)
            if events:
                last, result.skipped = self._insert_events(conn, events, at)
                if last is not None:
                    result.position = max(position, last)
            if grants:
                booked = [g for g in grants if self._purchase_paid(conn, g, at, result)]
                if booked:
                    conn.execute(
                        insert(t.credit_grants),
                        [
                            {**_columns(g), "shard": self.shard, "position": result.position}
                            for g in booked
                        ],
                    )
                for g in booked:  # the audit entry of a grant made through the API
                    write_audit(conn, g.get("audit"))
            if new_holds:
                conn.execute(insert(t.holds), [{**h, "shard": self.shard} for h in new_holds])
            for hold_id, status in finished_holds:
                conn.execute(
                    update(t.holds)
                    .where(t.holds.c.id == hold_id, t.holds.c.status == "active")
                    .values(status=status, finished_at=at)
                )
        return result

    @staticmethod
    def _purchase_paid(
        conn: Connection, grant: Mapping[str, Any], at: int, result: CommitResult
    ) -> bool:
        """Whether ``grant`` is booked: always, unless it pays a credit purchase that is no
        longer payable (paid already, canceled), which is then left out of this commit
        (:attr:`CommitResult.skipped_grants`). The purchase moves to ``paid`` in this
        transaction, so a purchase books exactly one grant, whoever delivers it how often."""
        purchase = grant.get("purchase")
        if purchase is None:
            return True
        if mark_paid(
            conn, grant["env"], purchase["id"], grant["id"], purchase.get("reference"), at
        ):
            return True
        result.skipped_grants.add(grant["id"])
        return False

    def _insert_events(
        self, conn: Connection, events: Sequence[EventRow], at: int
    ) -> tuple[int | None, frozenset[int]]:
        """Insert events, skipping those already stored (and repeats of an id within
        ``events``); returns the last seq stored (``None``: none was) and the places in
        ``events`` of those skipped.

        The row-by-row ``INSERT … ON CONFLICT DO NOTHING RETURNING`` measured ~7k rows/s on
        PostgreSQL here, so each backend gets its own bulk path.
        """
        if conn.dialect.name == "postgresql":
            return self._insert_events_postgres(conn, events, at)
        return self._insert_events_sqlite(conn, events, at)

    def _insert_events_postgres(
        self, conn: Connection, events: Sequence[EventRow], at: int
    ) -> tuple[int | None, frozenset[int]]:
        # COPY into a temporary table, then one statement that inserts them grouped by
        # customer (so each customer's seqs are close together), lets the unique index drop
        # duplicates (also duplicates within the batch), writes a chunk per customer of what
        # it kept, and returns what it kept.
        raw = conn.connection.driver_connection
        assert raw is not None
        with raw.cursor() as cursor:
            cursor.execute(_PG_STAGING)
            with cursor.copy(_PG_COPY) as copy:
                shard = self.shard
                for ordinal, (env, customer, event_id, typ, ts, props) in enumerate(events):
                    copy.write_row((ordinal, env, shard, customer, event_id, typ, ts, props, at))
            cursor.execute(_PG_INSERT)
            last, skipped = None, []
            for ordinal, seq in cursor:
                if ordinal is None:
                    last = seq
                else:
                    skipped.append(ordinal)
            return last, frozenset(skipped)

    def _insert_events_sqlite(
        self, conn: Connection, events: Sequence[EventRow], at: int
    ) -> tuple[int | None, frozenset[int]]:
        # One writer holds SQLite's lock for the whole transaction and a customer's events
        # are only ever written by its own shard, so "which ids exist" cannot change between
        # the look-up and the insert; rowids of one executemany are consecutive.
        raw = conn.connection.driver_connection
        assert raw is not None
        firsts: dict[tuple[str, str, str], int] = {}
        for ordinal, e in enumerate(events):
            firsts.setdefault((e[0], e[1], e[2]), ordinal)
        fresh = {key: events[ordinal] for key, ordinal in firsts.items()}
        keys = list(fresh)
        for start in range(0, len(keys), 300):
            chunk = keys[start : start + 300]
            where = " OR ".join(["(env = ? AND customer_id = ? AND event_id = ?)"] * len(chunk))
            params = [part for key in chunk for part in key]
            for found in raw.execute(
                f"SELECT env, customer_id, event_id FROM event_ids WHERE {where}", params
            ):
                fresh.pop(tuple(found), None)
        kept = {firsts[key] for key in fresh}
        skipped = frozenset(i for i in range(len(events)) if i not in kept)
        if not fresh:
            return None, skipped
        # Grouped by customer, in arrival order within each: each customer's seqs adjoin.
        order: dict[tuple[str, str], list[tuple[str, str, str]]] = {}
        for key in fresh:
            order.setdefault((key[0], key[1]), []).append(key)
        keys = [key for group in order.values() for key in group]
        cursor = raw.executemany(
            "INSERT INTO events (env, shard, customer_id, event_id, type, ts, properties, "
            "received_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [(e[0], self.shard, *e[1:], at) for e in (fresh[key] for key in keys)],
        )
        last = raw.execute("SELECT last_insert_rowid()").fetchone()[0]
        first = last - len(keys) + 1
        cursor.close()
        raw.executemany(
            "INSERT INTO event_ids (env, customer_id, event_id, received_at) VALUES (?, ?, ?, ?)",
            [(*key, at) for key in keys],
        )
        seqs = {key: first + n for n, key in enumerate(keys)}
        chunks = []
        for (env, customer), group in order.items():
            stamps = [fresh[key][4] for key in group]
            chunks.append(
                (
                    env,
                    customer,
                    self.shard,
                    seqs[group[0]],
                    seqs[group[-1]],
                    min(stamps),
                    max(stamps),
                    len(group),
                )
            )
        raw.executemany(
            "INSERT INTO event_chunks (env, customer_id, shard, first_seq, last_seq, ts_min, "
            "ts_max, events) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            chunks,
        )
        return last, skipped

    # -- recovery ------------------------------------------------------------------------

    def load_checkpoint(
        self,
    ) -> tuple[int, int | None, dict[tuple[str, str], Any], dict[tuple[str, str], int]]:
        """(position, shard count it was taken with, account states by (env, customer), the
        log position each state includes).

        The shard's position is where replay starts; an account's own position may be later
        (its state was saved while the shard's position was held back for an account set
        aside), and replay skips what a state already includes. With no shard row (a new
        shard, or an operator who deleted it to rebuild an account from the log) replay
        starts at the beginning of the log, and the account rows still say what they hold.
        """
        ac = t.account_checkpoints
        with self.engine.connect() as conn:
            head = conn.execute(
                select(t.shard_checkpoints).where(t.shard_checkpoints.c.shard == self.shard)
            ).first()
            rows = conn.execute(
                select(ac.c.env, ac.c.customer_id, ac.c.state, ac.c.position).where(
                    ac.c.shard == self.shard
                )
            ).all()
        states = {(row.env, row.customer_id): row.state for row in rows}
        positions = {(row.env, row.customer_id): int(row.position) for row in rows}
        if head is None:
            return 0, None, states, positions
        return int(head.position), int(head.shard_count), states, positions

    def replay(self, after: int, chunk: int = 5000) -> Iterator[list[Any]]:
        """Events of this shard after ``after``, in log order, in chunks."""
        last = after
        cols = t.events.c
        while True:
            with self.engine.connect() as conn:
                rows = conn.execute(
                    select(
                        cols.seq,
                        cols.env,
                        cols.customer_id,
                        cols.event_id,
                        cols.type,
                        cols.ts,
                        cols.properties,
                        cols.received_at,
                    )
                    .where(cols.shard == self.shard, cols.seq > last)
                    .order_by(cols.seq)
                    .limit(chunk)
                ).all()
            if not rows:
                return
            yield list(rows)
            last = rows[-1].seq

    def grants_after(self, position: int) -> list[dict[str, Any]]:
        """Grants booked after ``position``, in the order they were booked."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(t.credit_grants)
                .where(t.credit_grants.c.shard == self.shard, t.credit_grants.c.position > position)
                .order_by(t.credit_grants.c.position, t.credit_grants.c.created_at)
            ).all()
        return [dict(row._mapping) for row in rows]

    def grants_at_or_before(self, position: int) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(t.credit_grants).where(
                    t.credit_grants.c.shard == self.shard, t.credit_grants.c.position <= position
                )
            ).all()
        return [dict(row._mapping) for row in rows]

    def hold(self, hold_id: str) -> dict[str, Any] | None:
        """A hold, finished or not (a retried settle or release asks); its ``shard`` says
        whether it is this shard's."""
        with self.engine.connect() as conn:
            row = conn.execute(select(t.holds).where(t.holds.c.id == hold_id)).first()
        return None if row is None else dict(row._mapping)

    def stored(self, env: str, keys: Sequence[tuple[str, str]]) -> set[tuple[str, str]]:
        """Which of these (customer, event id) are in the log: retried events are answered
        as duplicates, whatever their age."""
        return stored_events(self.engine, env, keys)

    def stored_in_commit(
        self, env: str, customer_id: str, event_ids: Sequence[str], at: int
    ) -> int:
        """How many of these events the commit made at ``at`` stored (every event a commit
        stores carries its time as ``received_at``, and so does its id in ``event_ids``,
        which is found through its primary key on every store)."""
        e = t.event_ids
        if not event_ids:
            return 0
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(e.c.event_id).where(
                    e.c.env == env,
                    e.c.customer_id == customer_id,
                    e.c.event_id.in_(list(set(event_ids))),
                    e.c.received_at == at,
                )
            ).all()
        return len(rows)

    def active_holds(self) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(t.holds).where(t.holds.c.shard == self.shard, t.holds.c.status == "active")
            ).all()
        return [dict(row._mapping) for row in rows]

    # -- checkpoints ---------------------------------------------------------------------

    def save_checkpoint(
        self,
        position: int,
        shard_count: int,
        states: Mapping[tuple[str, str], Any],
        now: int,
        messages: Sequence[Mapping[str, Any]] = (),
        shard_position: int | None = None,
    ) -> None:
        """Store the dirty accounts' states and the log position they include, atomically,
        with the outbox messages those states have fired (so a state that says an alert fired
        is never stored without the alert). The shard's own position (where its replay will
        start) is ``shard_position`` when given: it stays behind an account set aside."""
        with self.engine.begin() as conn:
            write_messages(conn, messages)
            if states:
                stmt = _dialect_insert(conn, t.account_checkpoints)
                stmt = stmt.on_conflict_do_update(
                    index_elements=["env", "customer_id"],
                    set_={
                        "state": stmt.excluded.state,
                        "position": stmt.excluded.position,
                        "taken_at": stmt.excluded.taken_at,
                        "shard": stmt.excluded.shard,
                    },
                )
                conn.execute(
                    stmt,
                    [
                        {
                            "env": env,
                            "customer_id": customer,
                            "shard": self.shard,
                            "state": state,
                            "position": position,
                            "taken_at": now,
                        }
                        for (env, customer), state in states.items()
                    ],
                )
            head = _dialect_insert(conn, t.shard_checkpoints)
            head = head.on_conflict_do_update(
                index_elements=["shard"],
                set_={
                    "position": head.excluded.position,
                    "taken_at": head.excluded.taken_at,
                    "shard_count": head.excluded.shard_count,
                },
            )
            conn.execute(
                head,
                {
                    "shard": self.shard,
                    "shard_count": shard_count,
                    "position": position if shard_position is None else shard_position,
                    "taken_at": now,
                },
            )


def _columns(grant: Mapping[str, Any]) -> dict[str, Any]:
    """A grant's row: the grant without what travels beside it (its audit entry)."""
    return {k: v for k, v in grant.items() if k not in ("audit", "purchase")}


def stored_events(
    engine: Engine, env: str, keys: Sequence[tuple[str, str]]
) -> set[tuple[str, str]]:
    """Which of these (customer, event id) the event log has ever stored (the ``event_ids``
    ledger: also those retention has since removed)."""
    e = t.event_ids
    found: set[tuple[str, str]] = set()
    by_customer: dict[str, list[str]] = {}
    for customer, event_id in keys:
        by_customer.setdefault(customer, []).append(event_id)
    with engine.connect() as conn:
        for customer, ids in by_customer.items():
            for start in range(0, len(ids), 500):
                rows = conn.execute(
                    select(e.c.event_id).where(
                        e.c.env == env,
                        e.c.customer_id == customer,
                        e.c.event_id.in_(ids[start : start + 500]),
                    )
                ).all()
                found.update((customer, row.event_id) for row in rows)
    return found
