"""Who drives a stored job, and whether it still does: a driver and a heartbeat on the job's
row, and a conditional UPDATE to take the job over.

A job (a simulation) is driven by the API process that accepted it. That process may stop
(a Serve replica is replaced, ``tallyray serve`` is killed), and nothing else knows: the row
still says ``running``. So the driver writes its name and the time on the row when it takes
the job, and again as its work goes on (:data:`HEARTBEAT_SECONDS`). A job in a live state
whose heartbeat is older than :data:`DRIVER_TIMEOUT_SECONDS` has lost its driver: it is
shown as ``interrupted`` (:func:`shown_state`), and anyone may take it over with
:func:`claim`, one UPDATE whose WHERE clause is the condition — of two processes claiming
at once, the database lets exactly one change the row.

A driver that was only slow, not dead, learns it lost the job when its next :func:`beat`
changes no row; it stops. Work it finished meanwhile is harmless when the job's writes are
idempotent (a simulation's chunk is stored once).
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Collection, Mapping
from typing import Any

from sqlalchemy import Column, Connection, Table, and_, or_, update

__all__ = [
    "DRIVER_TIMEOUT_SECONDS",
    "HEARTBEAT_SECONDS",
    "beat",
    "claim",
    "process_driver",
    "shown_state",
    "stale",
]

DRIVER_TIMEOUT_SECONDS = 60
"""A job in a live state whose driver has not written its heartbeat for longer than this is
``interrupted``: its driver stopped, and the job may be resumed."""

HEARTBEAT_SECONDS = 10
"""How often a driver writes its heartbeat while its work goes on (and after each piece of
it): well inside :data:`DRIVER_TIMEOUT_SECONDS`, so a live driver is never taken for dead."""

_US = 1_000_000

_DRIVER = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def process_driver() -> str:
    """This process's name as a job's driver (host, pid and a random part: a restarted
    process with the same pid is another driver)."""
    return _DRIVER


def stale(heartbeat_at: int | None, now: int) -> bool:
    """Whether a driver that last beat at ``heartbeat_at`` is gone by ``now``."""
    return heartbeat_at is None or heartbeat_at < now - DRIVER_TIMEOUT_SECONDS * _US


def shown_state(state: str, live: Collection[str], heartbeat_at: int | None, now: int) -> str:
    """The state a job shows: ``interrupted`` when it is in a ``live`` state and its driver
    stopped beating; its stored state otherwise."""
    return "interrupted" if state in live and stale(heartbeat_at, now) else state


def claim(
    conn: Connection,
    table: Table,
    job_id: str,
    driver: str,
    now: int,
    *,
    state: Column[Any],
    live: Collection[str],
    resumable: Collection[str],
    values: Mapping[str, Any],
) -> bool:
    """Take the job for ``driver`` if it is ``resumable`` (failed) or ``live`` with a
    driver that stopped beating; in one conditional UPDATE, which also writes ``values``.
    Returns whether this call took it."""
    c = table.c
    taken = conn.execute(
        update(table)
        .where(
            c.id == job_id,
            or_(
                state.in_(list(resumable)),
                and_(
                    state.in_(list(live)),
                    or_(
                        c.heartbeat_at.is_(None),
                        c.heartbeat_at < now - DRIVER_TIMEOUT_SECONDS * _US,
                    ),
                ),
            ),
        )
        .values(driver=driver, heartbeat_at=now, **values)
    )
    return bool(taken.rowcount == 1)


def beat(
    conn: Connection,
    table: Table,
    job_id: str,
    driver: str,
    now: int,
    *,
    state: Column[Any],
    live: Collection[str],
    values: Mapping[str, Any] | None = None,
) -> bool:
    """Write the driver's heartbeat (and ``values``) if ``driver`` still drives the job and
    it is live; ``False`` when another driver took it over or it ended."""
    c = table.c
    done = conn.execute(
        update(table)
        .where(c.id == job_id, c.driver == driver, state.in_(list(live)))
        .values(heartbeat_at=now, **(values or {}))
    )
    return bool(done.rowcount == 1)
