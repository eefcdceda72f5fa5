"""Simulation jobs and their results; and the column-wise read of the event log a
simulation replays.

A job row carries the state, the progress (``done`` of ``customers``), and who drives it
with its heartbeat (:mod:`tallyray.storage.leases`); its customers are stored in chunks,
each marked done in the transaction that writes its results. Each customer's comparison is
one row of ``simulation_results``, written by the chunk that computed it (a chunk run twice
writes once).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from sqlalchemy import Connection, Engine, delete, insert, select, update

from tallyray.errors import NotFound
from tallyray.pricing.events import format_timestamp
from tallyray.storage import tables as t
from tallyray.storage.billing import _invoice_json
from tallyray.storage.catalog import new_id
from tallyray.storage.leases import beat, claim, shown_state

__all__ = ["LIVE", "RESUMABLE", "LoggedColumns", "SimulationStore"]

LoggedColumns = tuple[list[str], list[str], list[str], np.ndarray[Any, Any], list[str]]
"""(customer_id, event_id, type, ts, properties as JSON text), one entry per event."""

# The customers' events through their chunks, as in :func:`storage.eventlog.customer_events`
# (see there why PostgreSQL gets a LATERAL subquery), for many customers at once. Run on the
# driver's own cursor: a month of events is read as plain tuples, not as SQLAlchemy rows
# (which took half the read's time).
_PG_EVENTS = """
SELECT e.seq, e.customer_id, e.event_id, e.type, e.ts, e.properties
FROM event_chunks c CROSS JOIN LATERAL (
    SELECT * FROM events x
    WHERE x.seq >= c.first_seq AND x.seq <= c.last_seq
    ORDER BY x.seq LIMIT c.last_seq - c.first_seq + 1
) e
WHERE c.env = %(env)s AND c.customer_id = ANY(%(customers)s)
  AND c.ts_max >= %(start)s AND c.ts_min < %(end)s
  AND e.env = %(env)s AND e.customer_id = c.customer_id
  AND e.ts >= %(start)s AND e.ts < %(end)s
"""
_SQLITE_EVENTS = """
SELECT e.seq, e.customer_id, e.event_id, e.type, e.ts, e.properties
FROM event_chunks c JOIN events e ON e.seq BETWEEN c.first_seq AND c.last_seq
WHERE c.env = :env AND c.customer_id IN ({customers}) AND c.ts_max >= :start
  AND c.ts_min < :end AND e.env = :env AND e.customer_id = c.customer_id
  AND e.ts >= :start AND e.ts < :end
"""


LIVE = ("pending", "running")
"""The states a driver holds a job in; with a stale heartbeat they show as ``interrupted``."""
RESUMABLE = ("failed",)
"""The states a job may be resumed from whatever its heartbeat (besides ``interrupted``)."""


def _errors(conn: Connection, sim_id: str) -> list[Any]:
    """The job's errors, its row locked until the transaction ends: chunks that finish at
    once append theirs one after the other (PostgreSQL; SQLite writes one at a time)."""
    s = t.simulations
    row = conn.execute(select(s.c.errors).where(s.c.id == sim_id).with_for_update()).one()
    return list(row.errors)


def _beat(conn: Connection, sim_id: str, driver: str, now: int, values: Mapping[str, Any]) -> bool:
    s = t.simulations
    return beat(conn, s, sim_id, driver, now, state=s.c.state, live=LIVE, values=values)


class SimulationStore:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    # -- jobs ----------------------------------------------------------------------------

    def create(
        self,
        env: str,
        request: Mapping[str, Any],
        chunks: Sequence[Sequence[str]],
        now: int,
        driver: str,
    ) -> str:
        """Store a job, ``pending`` and driven by ``driver``, with its customers in
        ``chunks``."""
        sim_id = new_id("sim")
        with self.engine.begin() as conn:
            conn.execute(
                insert(t.simulations).values(
                    id=sim_id,
                    env=env,
                    state="pending",
                    request=dict(request),
                    customers=sum(len(c) for c in chunks),
                    done=0,
                    errors=[],
                    created_at=now,
                    driver=driver,
                    heartbeat_at=now,
                )
            )
            if chunks:
                conn.execute(
                    insert(t.simulation_chunks),
                    [
                        {"simulation_id": sim_id, "seq": seq, "customers": list(c), "done": False}
                        for seq, c in enumerate(chunks)
                    ],
                )
        return sim_id

    def beat(self, sim_id: str, driver: str, now: int, **values: Any) -> bool:
        """The driver's heartbeat (and ``values``, e.g. ``state="running"``); ``False`` when
        ``driver`` no longer drives the job (another took it over, or it ended)."""
        with self.engine.begin() as conn:
            return _beat(conn, sim_id, driver, now, values)

    def claim(self, env: str, sim_id: str, driver: str, now: int) -> bool:
        """Take over a failed or interrupted job for ``driver`` (one conditional UPDATE: of
        two claims at once, one wins). The notes of the driver that failed are dropped from
        its errors (the customers' errors stay)."""
        s = t.simulations
        with self.engine.begin() as conn:
            found = conn.execute(select(s.c.env).where(s.c.id == sim_id, s.c.env == env)).first()
            if found is None:
                raise NotFound(f"no simulation {sim_id!r}")
            taken = claim(
                conn,
                s,
                sim_id,
                driver,
                now,
                state=s.c.state,
                live=LIVE,
                resumable=RESUMABLE,
                values={"state": "running", "finished_at": None},
            )
            if taken:
                errors = _errors(conn, sim_id)
                kept = [e for e in errors if e.get("customer_id") is not None]
                if len(kept) != len(errors):
                    conn.execute(update(s).where(s.c.id == sim_id).values(errors=kept))
        return taken

    def finish(self, sim_id: str, driver: str, summary: Mapping[str, Any], now: int) -> bool:
        """``succeeded`` with its summary, if ``driver`` still drives the job."""
        return self.beat(
            sim_id, driver, now, state="succeeded", summary=dict(summary), finished_at=now
        )

    def fail(self, sim_id: str, driver: str, message: str, now: int) -> bool:
        """``failed``, saying why, if ``driver`` still drives the job."""
        with self.engine.begin() as conn:
            errors = [*_errors(conn, sim_id), {"customer_id": None, "message": message}]
            values = {"state": "failed", "finished_at": now, "errors": errors[-1000:]}
            return _beat(conn, sim_id, driver, now, values)

    def chunks(self, sim_id: str) -> tuple[int, list[tuple[int, list[str]]]]:
        """How many chunks the job has, and the ones not done yet (``seq``, customers)."""
        c = t.simulation_chunks
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(c.c.seq, c.c.customers, c.c.done)
                .where(c.c.simulation_id == sim_id)
                .order_by(c.c.seq)
            ).all()
        return len(rows), [(row.seq, list(row.customers)) for row in rows if not row.done]

    def add_results(
        self,
        sim_id: str,
        seq: int,
        results: Sequence[Mapping[str, Any]],
        done: int,
        errors: Sequence[Mapping[str, Any]],
    ) -> bool:
        """One chunk's results and its progress, in one transaction, once: a chunk already
        stored (a Ray retry after the commit, a driver that lost the job to another) writes
        nothing and answers ``False``."""
        s, r, c = t.simulations, t.simulation_results, t.simulation_chunks
        ids = [row["customer_id"] for row in results]
        with self.engine.begin() as conn:
            first = conn.execute(
                update(c)
                .where(c.c.simulation_id == sim_id, c.c.seq == seq, c.c.done.is_(False))
                .values(done=True)
            )
            if first.rowcount != 1:
                return False
            if ids:
                conn.execute(delete(r).where(r.c.simulation_id == sim_id, r.c.customer_id.in_(ids)))
                conn.execute(
                    insert(r),
                    [
                        {
                            "simulation_id": sim_id,
                            "customer_id": row["customer_id"],
                            "currency": row["currency"],
                            "actual": row["total"]["actual"],
                            "simulated": row["total"]["simulated"],
                            "difference": row["total"]["difference"],
                            "detail": dict(row),
                        }
                        for row in results
                    ],
                )
            found = _errors(conn, sim_id)
            conn.execute(
                update(s)
                .where(s.c.id == sim_id)
                .values(done=s.c.done + done, errors=[*found, *errors][:1000])
            )
        return True

    def get(self, env: str, sim_id: str, now: int) -> dict[str, Any]:
        """The job as the API shows it at ``now``: a live job whose driver stopped beating is
        ``interrupted``."""
        s = t.simulations
        with self.engine.connect() as conn:
            row = conn.execute(select(s).where(s.c.env == env, s.c.id == sim_id)).first()
        if row is None:
            raise NotFound(f"no simulation {sim_id!r}")
        request = dict(row.request)
        return {
            "id": row.id,
            "object": "simulation",
            "state": shown_state(row.state, LIVE, row.heartbeat_at, now),
            "plan": request.get("plan_ref") or request.get("plan", {}).get("key"),
            "from": request["from"],
            "to": request["to"],
            "progress": {"customers": row.customers, "done": row.done},
            "errors": list(row.errors),
            "summary": row.summary,
            "created_at": format_timestamp(row.created_at),
            "finished_at": None if row.finished_at is None else format_timestamp(row.finished_at),
            "heartbeat_at": None
            if row.heartbeat_at is None
            else format_timestamp(row.heartbeat_at),
        }

    def request(self, sim_id: str) -> dict[str, Any]:
        with self.engine.connect() as conn:
            row = conn.execute(
                select(t.simulations.c.request).where(t.simulations.c.id == sim_id)
            ).one()
        return dict(row.request)

    def results(self, sim_id: str) -> list[dict[str, Any]]:
        """Every customer's comparison, by customer id."""
        r = t.simulation_results
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(r.c.detail).where(r.c.simulation_id == sim_id).order_by(r.c.customer_id)
            ).all()
        return [dict(row.detail) for row in rows]

    # -- what a chunk reads --------------------------------------------------------------

    def invoices(
        self, env: str, customer_ids: Iterable[str], start: int, end: int
    ) -> dict[tuple[str, int], dict[str, Any]]:
        """The customers' invoices (not voided) of periods starting in ``[start, end)``, by
        (customer, period start)."""
        i = t.invoices
        wanted = list(set(customer_ids))
        if not wanted:
            return {}
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(i).where(
                    i.c.env == env,
                    i.c.customer_id.in_(wanted),
                    i.c.period_start >= start,
                    i.c.period_start < end,
                    i.c.status != "void",
                )
            ).all()
        return {(row.customer_id, row.period_start): _invoice_json(row) for row in rows}

    def events(self, env: str, customer_ids: Sequence[str], start: int, end: int) -> LoggedColumns:
        """The customers' logged events with ``start <= ts < end``, as columns."""
        if not customer_ids:
            return [], [], [], np.zeros(0, dtype=np.int64), []
        params: dict[str, Any] = {"env": env, "start": start, "end": end}
        with self.engine.connect() as conn:
            raw: Any = conn.connection.driver_connection
            if conn.dialect.name == "postgresql":
                sql = _PG_EVENTS
                params["customers"] = list(customer_ids)
            else:
                names = [f"c{i}" for i in range(len(customer_ids))]
                sql = _SQLITE_EVENTS.format(customers=", ".join(f":{n}" for n in names))
                params.update(zip(names, customer_ids, strict=True))
            cursor = raw.cursor()
            try:
                cursor.execute(sql, params)
                rows = cursor.fetchall()
            finally:
                cursor.close()
        if not rows:
            return [], [], [], np.zeros(0, dtype=np.int64), []
        seq, customer, event_id, kind, ts, properties = (list(c) for c in zip(*rows, strict=True))
        order = np.argsort(np.asarray(seq, dtype=np.int64), kind="stable")
        seqs = np.asarray(seq, dtype=np.int64)[order]
        # Chunks written before commits were stamped alike may overlap (migration 0005).
        keep = order[np.concatenate(([True], seqs[1:] != seqs[:-1]))]
        picked = keep.tolist()
        return (
            [customer[i] for i in picked],
            [event_id[i] for i in picked],
            [kind[i] for i in picked],
            np.asarray(ts, dtype=np.int64)[keep],
            [properties[i] for i in picked],
        )
