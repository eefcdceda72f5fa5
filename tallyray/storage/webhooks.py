"""Webhook endpoints, and the deliveries that carry outbox messages to them.

A delivery is one message for one endpoint (unique per pair, so fanning a message out twice
stores it once). Its life::

    pending ──claim──► sending ──2xx──────────► succeeded
       ▲                  │ ──error, attempts left──► pending (next_attempt_at = later)
       └──lease expires───┤ ──error, none left──────► failed
                          └ ──410 Gone─────────────► failed, endpoint disabled
    pending | sending ──endpoint disabled──► stopped

Claiming is what keeps two deliverers from sending the same attempt: one UPDATE moves a due
delivery to ``sending`` and sets ``next_attempt_at`` to the end of a lease, and only rows
still due match it, so of two deliverers racing for a row exactly one gets it (Postgres
re-checks the condition on the row it waited for; SQLite runs one writer at a time). The
lease end is also the claim's token: the outcome is recorded only while the row is still
``sending`` with that token. A deliverer that dies mid-send leaves the row to be claimed again
when its lease runs out (at-least-once delivery; receivers dedupe on ``webhook-id``).
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from sqlalchemy import Connection, Engine, delete, func, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite

from tallyray.errors import Conflict, NotFound
from tallyray.pricing.events import format_timestamp
from tallyray.storage import tables as t
from tallyray.storage.alerts import write_messages
from tallyray.storage.audit import AuditEntry, write_audit
from tallyray.storage.catalog import new_id
from tallyray.storage.pages import Page, PageRequest, read_page

__all__ = [
    "DELIVERY_STATUSES",
    "Claimed",
    "Endpoint",
    "OutboxMessage",
    "WebhookStore",
]

ENABLED, DISABLED = "enabled", "disabled"
PENDING, SENDING, SUCCEEDED, FAILED, STOPPED = (
    "pending",
    "sending",
    "succeeded",
    "failed",
    "stopped",
)
DELIVERY_STATUSES = (PENDING, SENDING, SUCCEEDED, FAILED, STOPPED)
_OPEN = (PENDING, SENDING)
_TEXT_LIMIT = 500  # last_error and disabled_reason columns


@dataclass(frozen=True, slots=True)
class Endpoint:
    id: str
    env: str
    url: str
    secret: str
    event_types: tuple[str, ...]
    description: str | None
    status: str
    disabled_reason: str | None
    created_at: int

    def to_json(self) -> dict[str, Any]:
        """The endpoint as the API shows it: never with its secret."""
        return {
            "id": self.id,
            "url": self.url,
            "event_types": list(self.event_types),
            "description": self.description,
            "status": self.status,
            "disabled_reason": self.disabled_reason,
            "created_at": format_timestamp(self.created_at),
        }


@dataclass(frozen=True, slots=True)
class OutboxMessage:
    seq: int
    id: str
    env: str
    type: str
    payload: dict[str, Any]
    created_at: int


@dataclass(frozen=True, slots=True)
class Claimed:
    """A delivery a deliverer holds until ``lease_until``, with what it needs to send it."""

    id: str
    env: str
    endpoint_id: str
    url: str
    secret: str
    message_id: str
    event_type: str
    payload: dict[str, Any] | None
    """``None`` when the outbox message is gone (it cannot be sent)."""
    message_created_at: int
    attempts: int
    """Attempts made before this one."""
    lease_until: int


class WebhookStore:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    # -- endpoints -----------------------------------------------------------------------

    def create_endpoint(
        self,
        env: str,
        url: str,
        event_types: Sequence[str],
        description: str | None,
        secret: str,
        now: int,
        audit: AuditEntry | None = None,
    ) -> Endpoint:
        endpoint = Endpoint(
            id=new_id("we"),
            env=env,
            url=url,
            secret=secret,
            event_types=tuple(event_types),
            description=description,
            status=ENABLED,
            disabled_reason=None,
            created_at=now,
        )
        with self.engine.begin() as conn:
            conn.execute(
                insert(t.webhook_endpoints).values(
                    id=endpoint.id,
                    env=env,
                    url=url,
                    secret=endpoint.secret,
                    event_types=list(endpoint.event_types),
                    description=description,
                    status=ENABLED,
                    created_at=now,
                )
            )
            write_audit(conn, audit and replace(audit, object_id=endpoint.id))
        return endpoint

    def endpoints(self, env: str) -> list[Endpoint]:
        e = t.webhook_endpoints
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(e).where(e.c.env == env).order_by(e.c.created_at, e.c.id)
            ).all()
        return [_endpoint(row) for row in rows]

    def endpoint(self, env: str, endpoint_id: str) -> Endpoint:
        with self.engine.connect() as conn:
            return self._endpoint(conn, env, endpoint_id)

    def disable(
        self,
        env: str,
        endpoint_id: str,
        reason: str,
        now: int,
        audit: AuditEntry | None = None,
    ) -> Endpoint:
        """Stop sending to the endpoint: its open deliveries are stopped, and messages that
        arrive while it is disabled are not fanned out to it."""
        with self.engine.begin() as conn:
            self._endpoint(conn, env, endpoint_id)
            _disable(conn, endpoint_id, reason, now)
            write_audit(conn, audit)
            return self._endpoint(conn, env, endpoint_id)

    def enable(self, env: str, endpoint_id: str, audit: AuditEntry | None = None) -> Endpoint:
        """Send to the endpoint again, from the next message on (stopped deliveries stay
        stopped)."""
        e = t.webhook_endpoints
        with self.engine.begin() as conn:
            self._endpoint(conn, env, endpoint_id)
            conn.execute(
                update(e).where(e.c.id == endpoint_id).values(status=ENABLED, disabled_reason=None)
            )
            write_audit(conn, audit)
            return self._endpoint(conn, env, endpoint_id)

    def delete_endpoint(self, env: str, endpoint_id: str, audit: AuditEntry | None = None) -> None:
        """Remove the endpoint and its delivery log."""
        e, d = t.webhook_endpoints, t.webhook_deliveries
        with self.engine.begin() as conn:
            self._endpoint(conn, env, endpoint_id)
            conn.execute(delete(d).where(d.c.endpoint_id == endpoint_id))
            conn.execute(delete(e).where(e.c.id == endpoint_id))
            write_audit(conn, audit)

    def _endpoint(self, conn: Connection, env: str, endpoint_id: str) -> Endpoint:
        e = t.webhook_endpoints
        row = conn.execute(select(e).where(e.c.env == env, e.c.id == endpoint_id)).first()
        if row is None:
            raise NotFound(f"no webhook endpoint {endpoint_id!r}")
        return _endpoint(row)

    # -- the outbox, fanned out ----------------------------------------------------------

    def cursor(self, name: str) -> int:
        """The outbox ``seq`` up to which ``name`` has fanned out (0 before the first)."""
        c = t.outbox_cursors
        with self.engine.connect() as conn:
            seq = conn.execute(select(c.c.seq).where(c.c.name == name)).scalar()
        return int(seq or 0)

    def move_cursor(self, name: str, seq: int) -> None:
        """Move the cursor forward to ``seq`` (never back)."""
        c = t.outbox_cursors
        with self.engine.begin() as conn:
            stmt = _insert(conn, c).values(name=name, seq=seq)
            conn.execute(
                stmt.on_conflict_do_update(
                    index_elements=[c.c.name],
                    set_={"seq": stmt.excluded.seq},
                    where=c.c.seq < stmt.excluded.seq,
                )
            )

    def outbox_end(self) -> int:
        """The newest outbox ``seq`` (0 when empty): move a cursor here to skip history."""
        o = t.outbox
        with self.engine.connect() as conn:
            return int(conn.execute(select(func.max(o.c.seq))).scalar() or 0)

    def messages_after(self, seq: int, limit: int) -> list[OutboxMessage]:
        o = t.outbox
        with self.engine.connect() as conn:
            rows = conn.execute(select(o).where(o.c.seq > seq).order_by(o.c.seq).limit(limit)).all()
        return [
            OutboxMessage(row.seq, row.id, row.env, row.type, row.payload, row.created_at)
            for row in rows
        ]

    def fan_out(self, messages: Sequence[OutboxMessage], now: int) -> int:
        """One delivery, due ``now``, per message and enabled endpoint of the message's
        environment subscribed to its type. Returns how many were new."""
        wanted = list(messages)
        if not wanted:
            return 0
        e, d = t.webhook_endpoints, t.webhook_deliveries
        with self.engine.begin() as conn:
            endpoints = [
                _endpoint(row)
                for row in conn.execute(
                    select(e).where(e.c.status == ENABLED, e.c.env.in_({m.env for m in wanted}))
                ).all()
            ]
            rows = [
                _delivery_row(m.env, ep.id, m.id, m.type, now)
                for m in wanted
                for ep in endpoints
                if ep.env == m.env and m.type in ep.event_types
            ]
            created = 0
            for start in range(0, len(rows), 500):
                stmt = _insert(conn, d).on_conflict_do_nothing().returning(d.c.id)
                created += len(conn.execute(stmt, rows[start : start + 500]).all())
        return created

    def send_to_one(
        self, env: str, endpoint_id: str, event_type: str, payload: dict[str, Any], now: int
    ) -> tuple[str, str]:
        """A message in the outbox with one delivery, to this endpoint only (a test event:
        no endpoint subscribes to its type, so fanning it out adds nothing). Returns
        (message id, delivery id)."""
        message_id = f"msg_{secrets.token_hex(12)}"
        with self.engine.begin() as conn:
            endpoint = self._endpoint(conn, env, endpoint_id)
            if endpoint.status != ENABLED:
                raise Conflict(f"webhook endpoint {endpoint_id} is disabled; enable it first")
            message = {
                "id": message_id,
                "env": env,
                "type": event_type,
                "payload": payload,
                "created_at": now,
            }
            write_messages(conn, [message])
            row = _delivery_row(env, endpoint_id, message_id, event_type, now)
            conn.execute(insert(t.webhook_deliveries).values(row))
        return message_id, row["id"]

    # -- delivering ----------------------------------------------------------------------

    def due(self, now: int, per_endpoint: int, limit: int) -> list[tuple[str, str]]:
        """Deliveries due at ``now`` to enabled endpoints, as (delivery id, endpoint id),
        oldest first and at most ``per_endpoint`` of each endpoint (so an endpoint with a
        long backlog cannot crowd out the others)."""
        d, e = t.webhook_deliveries, t.webhook_endpoints
        ranked = (
            select(
                d.c.id,
                d.c.endpoint_id,
                d.c.next_attempt_at,
                func.row_number()
                .over(partition_by=d.c.endpoint_id, order_by=(d.c.next_attempt_at, d.c.id))
                .label("rank"),
            )
            .join(e, e.c.id == d.c.endpoint_id)
            .where(e.c.status == ENABLED, d.c.status.in_(_OPEN), d.c.next_attempt_at <= now)
            .subquery()
        )
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(ranked.c.id, ranked.c.endpoint_id)
                .where(ranked.c.rank <= per_endpoint)
                .order_by(ranked.c.next_attempt_at, ranked.c.id)
                .limit(limit)
            ).all()
        return [(row.id, row.endpoint_id) for row in rows]

    def claim(self, delivery_ids: Iterable[str], now: int, lease_until: int) -> list[Claimed]:
        """Take the deliveries among ``delivery_ids`` that are still due: no one else can
        claim them before ``lease_until``. Returns those this caller got."""
        ids = list(delivery_ids)
        if not ids:
            return []
        d, e, o = t.webhook_deliveries, t.webhook_endpoints, t.outbox
        with self.engine.begin() as conn:
            got = (
                conn.execute(
                    update(d)
                    .where(d.c.id.in_(ids), d.c.status.in_(_OPEN), d.c.next_attempt_at <= now)
                    .values(status=SENDING, next_attempt_at=lease_until, updated_at=now)
                    .returning(d.c.id)
                )
                .scalars()
                .all()
            )
            if not got:
                return []
            rows = conn.execute(
                select(
                    d.c.id,
                    d.c.env,
                    d.c.endpoint_id,
                    e.c.url,
                    e.c.secret,
                    d.c.message_id,
                    d.c.event_type,
                    o.c.payload,
                    o.c.created_at,
                    d.c.attempts,
                )
                .join(e, e.c.id == d.c.endpoint_id)
                .outerjoin(o, o.c.id == d.c.message_id)
                .where(d.c.id.in_(got))
            ).all()
        return [
            Claimed(
                id=row.id,
                env=row.env,
                endpoint_id=row.endpoint_id,
                url=row.url,
                secret=row.secret,
                message_id=row.message_id,
                event_type=row.event_type,
                payload=row.payload,
                message_created_at=row.created_at if row.created_at is not None else now,
                attempts=row.attempts,
                lease_until=lease_until,
            )
            for row in rows
        ]

    def record(
        self,
        claimed: Claimed,
        now: int,
        status: str,
        status_code: int | None,
        error: str | None,
        next_attempt_at: int | None = None,
    ) -> bool:
        """Record the outcome of one claimed attempt: ``succeeded``, ``pending`` (to try
        again at ``next_attempt_at``) or ``failed``. ``False`` when the claim was lost (the
        lease ran out and another deliverer took it, or the endpoint was disabled)."""
        with self.engine.begin() as conn:
            return _record(conn, claimed, now, status, status_code, error, next_attempt_at)

    def gone(self, claimed: Claimed, now: int, status_code: int, reason: str) -> bool:
        """The endpoint answered 410 Gone: this delivery failed, the endpoint is disabled
        with ``reason`` and its open deliveries are stopped, in one transaction."""
        with self.engine.begin() as conn:
            recorded = _record(conn, claimed, now, FAILED, status_code, reason)
            if recorded:
                _disable(conn, claimed.endpoint_id, reason, now)
            return recorded

    # -- the delivery log ----------------------------------------------------------------

    def deliveries(
        self, env: str, endpoint_id: str, status: str | None, page: PageRequest
    ) -> Page[dict[str, Any]]:
        """The endpoint's deliveries, newest first."""
        d = t.webhook_deliveries
        with self.engine.connect() as conn:
            self._endpoint(conn, env, endpoint_id)
            query = select(d).where(d.c.env == env, d.c.endpoint_id == endpoint_id)
            if status is not None:
                query = query.where(d.c.status == status)
            order = [(d.c.created_at, True), (d.c.id, True)]
            found = read_page(conn, query, order, d.c.id, page, "delivery")
        rows = found.items
        return Page(
            [
                {
                    "id": row.id,
                    "message_id": row.message_id,
                    "event_type": row.event_type,
                    "status": row.status,
                    "attempts": row.attempts,
                    "last_status_code": row.last_status_code,
                    "last_error": row.last_error,
                    "next_attempt_at": None
                    if row.next_attempt_at is None or row.status not in _OPEN
                    else format_timestamp(row.next_attempt_at),
                    "created_at": format_timestamp(row.created_at),
                    "updated_at": format_timestamp(row.updated_at),
                }
                for row in rows
            ],
            found.has_more,
        )


def _endpoint(row: Any) -> Endpoint:
    return Endpoint(
        id=row.id,
        env=row.env,
        url=row.url,
        secret=row.secret,
        event_types=tuple(row.event_types),
        description=row.description,
        status=row.status,
        disabled_reason=row.disabled_reason,
        created_at=row.created_at,
    )


def _delivery_row(
    env: str, endpoint_id: str, message_id: str, event_type: str, now: int
) -> dict[str, Any]:
    return {
        "id": new_id("whd"),
        "env": env,
        "endpoint_id": endpoint_id,
        "message_id": message_id,
        "event_type": event_type,
        "status": PENDING,
        "attempts": 0,
        "next_attempt_at": now,
        "last_status_code": None,
        "last_error": None,
        "created_at": now,
        "updated_at": now,
    }


def _record(
    conn: Connection,
    claimed: Claimed,
    now: int,
    status: str,
    status_code: int | None,
    error: str | None,
    next_attempt_at: int | None = None,
) -> bool:
    if status not in (SUCCEEDED, PENDING, FAILED):
        raise ValueError(f"an attempt ends succeeded, pending or failed, not {status!r}")
    if (status == PENDING) != (next_attempt_at is not None):
        raise ValueError("a pending delivery, and only a pending one, has a next attempt")
    d = t.webhook_deliveries
    result = conn.execute(
        update(d)
        .where(
            d.c.id == claimed.id,
            d.c.status == SENDING,
            d.c.next_attempt_at == claimed.lease_until,
        )
        .values(
            status=status,
            attempts=d.c.attempts + 1,
            next_attempt_at=next_attempt_at,
            last_status_code=status_code,
            last_error=None if error is None else error[:_TEXT_LIMIT],
            updated_at=now,
        )
    )
    return result.rowcount == 1


def _disable(conn: Connection, endpoint_id: str, reason: str, now: int) -> None:
    e, d = t.webhook_endpoints, t.webhook_deliveries
    reason = reason[:_TEXT_LIMIT]
    conn.execute(
        update(e).where(e.c.id == endpoint_id).values(status=DISABLED, disabled_reason=reason)
    )
    conn.execute(
        update(d)
        .where(d.c.endpoint_id == endpoint_id, d.c.status.in_(_OPEN))
        .values(
            status=STOPPED,
            next_attempt_at=None,
            last_error=f"endpoint disabled: {reason}"[:_TEXT_LIMIT],
            updated_at=now,
        )
    )


def _insert(conn: Connection, table: Any) -> Any:
    """The dialect's INSERT, which knows ON CONFLICT."""
    if conn.dialect.name == "postgresql":
        return postgresql.insert(table)
    if conn.dialect.name == "sqlite":
        return sqlite.insert(table)
    raise NotImplementedError(f"Tallyray supports PostgreSQL and SQLite, not {conn.dialect.name}")
