"""How many shards own the data, and moving the data to another count (resharding).

The count lives in the ``shard_layout`` row, written at the first start: the server reads it
there, not from the CPU count, so a database moved to another box starts as it was.
``TALLYRAY_SHARDS`` only seeds the first start: a different count asked for later (a deployment
file not updated after ``tallyray reshard``) starts with the stored count and logs a warning
naming both; it never reshards by itself.

What a shard owns in the store, and how :func:`move_ownership` hands it to the new set:

=====================  ======================================================================
``account_checkpoints``  the account's state (balances, grants burned, holds' effect, alert
                         state, open periods, unpriced flags) and the log position it holds:
                         ``shard`` rewritten to the customer's new shard
``holds``, ``credit_grants``  rewritten to the customer's new shard (grants keep their log
                         position: every one is at or before the new shards' start, so the
                         new shard adds each, idempotently, with the checkpoint)
``shard_checkpoints``    one row per new shard, all at the log's newest ``seq``: a new shard
                         replays only what is written after the change
``period_closes``        one row per new shard and environment, at the latest cutoff any old
                         shard reached (a period that ended by it is closed, on recovery if
                         its old shard had not closed it yet)
``events``, ``event_chunks``, ``billing_periods``  left as they are: ``shard`` says which
                         shard wrote the row; nothing reads the log by it before the new
                         shards' start position
=====================  ======================================================================

The precondition is that every account's stored state holds every event of the log: the
old shards have stopped taking writes and checkpointed (online: they drained; offline: the
CLI recovered each old shard and checkpointed it). Event ids (``event_ids``) are keyed by
customer, not shard, so duplicates stay duplicates across the change.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine, bindparam, delete, func, insert, select, update

from tallyray.errors import Conflict
from tallyray.storage import tables as t

log = logging.getLogger(__name__)

__all__ = [
    "ShardLayout",
    "ShardMove",
    "move_ownership",
    "hold_owner",
    "layout_reader",
    "read_layout",
    "settle_shard_count",
]


@dataclass(frozen=True, slots=True)
class ShardLayout:
    count: int
    epoch: int
    """How many times the count was changed (0: never)."""


@dataclass(frozen=True, slots=True)
class ShardMove:
    """What :func:`move_ownership` did."""

    old: int
    new: int
    position: int
    """The log position the new shards start from."""
    accounts: int
    accounts_moved: int
    holds_moved: int
    grants_moved: int

    def to_json(self) -> dict[str, Any]:
        return {
            "from": self.old,
            "to": self.new,
            "position": self.position,
            "accounts": self.accounts,
            "accounts_moved": self.accounts_moved,
            "holds_moved": self.holds_moved,
            "grants_moved": self.grants_moved,
        }


def read_layout(engine: Engine) -> ShardLayout | None:
    """The stored layout (``None`` before the first start)."""
    with engine.connect() as conn:
        return _layout(conn)


def _layout(conn: Connection) -> ShardLayout | None:
    row = conn.execute(select(t.shard_layout).where(t.shard_layout.c.id == 1)).first()
    return None if row is None else ShardLayout(int(row.shard_count), int(row.epoch))


def layout_reader(engine: Engine) -> Callable[[], tuple[int, int]]:
    """A function that reads the stored (shard count, epoch), for the ingress's router."""

    def read() -> tuple[int, int]:
        layout = read_layout(engine)
        if layout is None:
            raise Conflict("the database has no shard layout yet")
        return layout.count, layout.epoch

    return read


def hold_owner(engine: Engine, env: str, hold_id: str) -> str | None:
    """The customer a reservation of ``env`` holds for (``None``: no such reservation). After
    a reshard a reservation's id no longer names its shard; its customer does."""
    h = t.holds
    with engine.connect() as conn:
        row = conn.execute(select(h.c.customer_id).where(h.c.id == hold_id, h.c.env == env)).first()
    return None if row is None else str(row.customer_id)


def settle_shard_count(engine: Engine, requested: int | None, now: int) -> int:
    """The shard count to start with: the stored one. On the first start it is stored: the
    count the checkpoints were taken with (a database from before the count was stored),
    else ``requested``, else the CPU count. A ``requested`` count other than the stored one
    (``TALLYRAY_SHARDS`` left at its old value after a reshard) is not applied: changing the
    count moves data, which ``tallyray reshard`` does; the stored count is used and a warning
    says so."""
    with engine.begin() as conn:
        layout = _layout(conn)
        if layout is None:
            taken = conn.execute(select(func.max(t.shard_checkpoints.c.shard_count))).scalar()
            count = int(taken) if taken is not None else requested or os.cpu_count() or 1
            conn.execute(
                insert(t.shard_layout).values(id=1, shard_count=count, epoch=0, changed_at=now)
            )
            layout = ShardLayout(count, 0)
    if requested is not None and requested != layout.count:
        log.warning(
            "TALLYRAY_SHARDS (or --shards) asks for %d shards, but the database's data is "
            "spread over %d: starting with %d. The variable only seeds the first start; change "
            "the count with `tallyray reshard --shards %d`, and set the variable to the "
            "database's count (or remove it) to silence this.",
            requested,
            layout.count,
            layout.count,
            requested,
        )
    return layout.count


def move_ownership(
    engine: Engine, new_count: int, owner: Callable[[str, str], int], now: int
) -> ShardMove:
    """Hand every account, hold and grant to its shard under ``new_count`` shards (``owner``:
    (env, customer) → that shard; :func:`tallyray.actors.routing.shard_of`), in one
    transaction (see the module's docstring for what moves and the precondition)."""
    if new_count < 1:
        raise Conflict("the shard count must be at least 1")
    ac, holds, grants = t.account_checkpoints, t.holds, t.credit_grants
    with engine.begin() as conn:
        layout = _layout(conn)
        if layout is None:
            raise Conflict("the database has no shard layout yet: start the server once first")
        newest = conn.execute(select(func.max(t.events.c.seq))).scalar() or 0
        held = conn.execute(select(func.max(t.shard_checkpoints.c.position))).scalar() or 0
        position = max(int(newest), int(held))
        accounts = conn.execute(select(ac.c.env, ac.c.customer_id, ac.c.shard)).all()
        moved_accounts = [
            {"e": r.env, "c": r.customer_id, "s": owner(r.env, r.customer_id)}
            for r in accounts
            if owner(r.env, r.customer_id) != r.shard
        ]
        if moved_accounts:
            conn.execute(
                update(ac)
                .where(ac.c.env == bindparam("e"), ac.c.customer_id == bindparam("c"))
                .values(shard=bindparam("s")),
                moved_accounts,
            )
        moved: dict[str, int] = {}
        for table in (holds, grants):
            rows = conn.execute(
                select(table.c.id, table.c.env, table.c.customer_id, table.c.shard)
            ).all()
            changes = [
                {"i": r.id, "s": owner(r.env, r.customer_id)}
                for r in rows
                if owner(r.env, r.customer_id) != r.shard
            ]
            if changes:
                conn.execute(
                    update(table).where(table.c.id == bindparam("i")).values(shard=bindparam("s")),
                    changes,
                )
            moved[table.name] = len(changes)
        pc = t.period_closes
        cutoffs = conn.execute(
            select(pc.c.env, func.max(pc.c.cutoff).label("cutoff")).group_by(pc.c.env)
        ).all()
        conn.execute(delete(pc))
        if cutoffs:
            conn.execute(
                insert(pc),
                [
                    {"shard": i, "env": r.env, "cutoff": r.cutoff, "closed_at": now}
                    for r in cutoffs
                    for i in range(new_count)
                ],
            )
        conn.execute(delete(t.shard_checkpoints))
        conn.execute(
            insert(t.shard_checkpoints),
            [
                {"shard": i, "shard_count": new_count, "position": position, "taken_at": now}
                for i in range(new_count)
            ],
        )
        conn.execute(
            update(t.shard_layout)
            .where(t.shard_layout.c.id == 1)
            .values(shard_count=new_count, epoch=layout.epoch + 1, changed_at=now)
        )
    return ShardMove(
        layout.count,
        new_count,
        position,
        len(accounts),
        len(moved_accounts),
        moved["holds"],
        moved["credit_grants"],
    )
