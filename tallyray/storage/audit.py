"""The audit log: who changed what, when, and in which request.

Every change made through the API or the portal appends one row, **in the transaction of the
change** (a store method that changes something takes an :class:`AuditEntry` and writes it
with :func:`write_audit` on its own connection), so there is never a change without its row
nor a row without its change. Rows are never updated or deleted; no API can.

Event ingest is not audited per event: the event log is its own record.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from sqlalchemy import Connection, Engine, and_, insert, or_, select

from tallyray.errors import NotFound
from tallyray.pricing.events import format_timestamp
from tallyray.storage import tables as t

__all__ = ["Actor", "ActorType", "AuditEntry", "AuditLog", "write_audit"]

ActorType = Literal["key", "admin", "portal", "provider", "server"]


@dataclass(frozen=True, slots=True)
class Actor:
    """Who made a change: an API key (its id and name), the customer through a portal link
    (``portal``, id ``portal:<customer>``), a payment provider's webhook, or the server."""

    type: ActorType
    id: str
    name: str | None = None


@dataclass(frozen=True, slots=True)
class AuditEntry:
    env: str
    actor: Actor
    action: str
    """What happened, ``<object>.<verb>``: ``customer.updated``, ``api_key.revoked``."""
    object_type: str
    object_id: str
    at: int
    request_id: str | None = None
    summary: Mapping[str, Any] = field(default_factory=dict)
    """What changed, as the request gave it (never a secret)."""


def write_audit(conn: Connection, entry: AuditEntry | None) -> None:
    """Append ``entry`` on ``conn``, inside the caller's transaction (nothing for ``None``:
    a change made by the server on its own, or in a test)."""
    if entry is None:
        return
    conn.execute(
        insert(t.audit_events).values(
            id=f"aud_{secrets.token_hex(12)}",
            env=entry.env,
            created_at=entry.at,
            actor_type=entry.actor.type,
            actor_id=entry.actor.id,
            actor_name=entry.actor.name,
            action=entry.action,
            object_type=entry.object_type,
            object_id=entry.object_id,
            request_id=entry.request_id,
            summary=dict(entry.summary),
        )
    )


class AuditLog:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def write(self, entry: AuditEntry) -> None:
        """Append an entry on its own (for a change that has no transaction of its own, such
        as issuing a portal link)."""
        with self.engine.begin() as conn:
            write_audit(conn, entry)

    def events(
        self,
        env: str,
        *,
        object_type: str | None = None,
        object_id: str | None = None,
        since: int | None = None,
        starting_after: str | None = None,
        limit: int = 100,
    ) -> list[dict[str, Any]]:
        """The environment's audit events, oldest first, optionally of one object, since a
        moment, or after the event ``starting_after`` (to page through them)."""
        a = t.audit_events
        query = select(a).where(a.c.env == env)
        if starting_after is not None:
            with self.engine.connect() as conn:
                after = conn.execute(
                    select(a.c.created_at).where(a.c.env == env, a.c.id == starting_after)
                ).scalar()
            if after is None:
                raise NotFound(f"no audit event {starting_after!r}")
            query = query.where(
                or_(
                    a.c.created_at > after,
                    and_(a.c.created_at == after, a.c.id > starting_after),
                )
            )
        if object_type is not None:
            query = query.where(a.c.object_type == object_type)
        if object_id is not None:
            query = query.where(a.c.object_id == object_id)
        if since is not None:
            query = query.where(a.c.created_at >= since)
        query = query.order_by(a.c.created_at, a.c.id).limit(limit + 1)
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
        return [_json(row) for row in rows]


def _json(row: Any) -> dict[str, Any]:
    return {
        "id": row.id,
        "env": row.env,
        "created_at": format_timestamp(row.created_at),
        "actor": {"type": row.actor_type, "id": row.actor_id, "name": row.actor_name},
        "action": row.action,
        "object": {"type": row.object_type, "id": row.object_id},
        "request_id": row.request_id,
        "summary": row.summary,
    }
