"""Alert rules per customer, and the outbox that carries what happened to webhook endpoints."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from typing import Any

from sqlalchemy import Connection, Engine, delete, func, insert, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from tallyray.errors import Conflict, NotFound
from tallyray.pricing.alert_rules import AlertRule, is_kind
from tallyray.pricing.events import format_timestamp
from tallyray.storage import tables as t
from tallyray.storage.audit import AuditEntry, write_audit

__all__ = ["AlertStore", "write_messages"]


class AlertStore:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def add_rule(
        self,
        env: str,
        customer_id: str,
        rule: AlertRule,
        now: int,
        limit: int | None = None,
        audit: AuditEntry | None = None,
    ) -> None:
        """Store a customer's rule; :class:`Conflict` when it has ``limit`` rules already
        (counted in the same transaction, with the customer's row locked on PostgreSQL, so
        concurrent adds cannot pass the limit together)."""
        a, c = t.alert_rules, t.customers
        with self.engine.begin() as conn:
            if limit is not None:
                conn.execute(
                    select(c.c.id).where(c.c.env == env, c.c.id == customer_id).with_for_update()
                )
                held = conn.execute(
                    select(func.count())
                    .select_from(a)
                    .where(a.c.env == env, a.c.customer_id == customer_id)
                ).scalar_one()
                if held >= limit:
                    raise Conflict(
                        f"customer {customer_id!r} has {held:,} alert rules, the most one "
                        f"customer may have ({limit:,}); delete one before adding another"
                    )
            write_audit(conn, audit and replace(audit, object_id=rule.id))
            conn.execute(
                insert(t.alert_rules).values(
                    id=rule.id,
                    env=env,
                    customer_id=customer_id,
                    kind=rule.kind,
                    threshold=format(rule.threshold, "f"),
                    meter=rule.meter,
                    name=rule.name,
                    created_at=now,
                )
            )

    def delete_rule(
        self, env: str, customer_id: str, rule_id: str, audit: AuditEntry | None = None
    ) -> None:
        a = t.alert_rules
        with self.engine.begin() as conn:
            gone = conn.execute(
                delete(a).where(a.c.env == env, a.c.customer_id == customer_id, a.c.id == rule_id)
            )
            if gone.rowcount == 0:
                raise NotFound(f"customer {customer_id!r} has no alert rule {rule_id!r}")
            write_audit(conn, audit)

    def rules(self, env: str, customer_ids: Iterable[str]) -> dict[str, list[AlertRule]]:
        """The customers' own rules (a plan's default rules come with the plan)."""
        a = t.alert_rules
        wanted = list(set(customer_ids))
        if not wanted:
            return {}
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(a)
                .where(a.c.env == env, a.c.customer_id.in_(wanted))
                .order_by(a.c.created_at, a.c.id)
            ).all()
        out: dict[str, list[AlertRule]] = {}
        for row in rows:
            out.setdefault(row.customer_id, []).append(_rule(row))
        return out

    def messages(self, env: str, type_prefix: str = "", limit: int = 100) -> list[dict[str, Any]]:
        """The newest outbox messages of an environment (for the API and tests)."""
        o = t.outbox
        query = select(o).where(o.c.env == env)
        if type_prefix:
            query = query.where(o.c.type.startswith(type_prefix))
        with self.engine.connect() as conn:
            rows = conn.execute(query.order_by(o.c.seq.desc()).limit(limit)).all()
        return [
            {
                "id": row.id,
                "type": row.type,
                "data": row.payload,
                "created_at": format_timestamp(row.created_at),
            }
            for row in rows
        ]


def _rule(row: Any) -> AlertRule:
    from decimal import Decimal

    kind = row.kind
    if not is_kind(kind):  # only rules the one parser accepted are ever stored
        raise ValueError(f"alert rule {row.id!r} has an unknown kind {kind!r}")
    return AlertRule(row.id, kind, Decimal(row.threshold), row.meter, row.name, "customer")


def write_messages(conn: Connection, messages: Sequence[Mapping[str, Any]]) -> None:
    """Store outbox messages (``id``, ``env``, ``type``, ``payload``, ``created_at``) in the
    caller's transaction; a message whose id is stored already is left as it was. An
    auto-recharge crossing (``recharge.requested``) is not for webhook endpoints: it becomes
    its row in ``auto_recharges`` (:func:`tallyray.storage.recharges.write_crossings`)."""
    if not messages:
        return
    from tallyray.pricing.recharge_rules import RECHARGE_REQUESTED
    from tallyray.storage.recharges import write_crossings

    write_crossings(conn, [m for m in messages if m["type"] == RECHARGE_REQUESTED])
    rows = [dict(m) for m in messages if m["type"] != RECHARGE_REQUESTED]
    if not rows:
        return
    dialect = conn.dialect.name
    if dialect == "postgresql":
        conn.execute(pg_insert(t.outbox).on_conflict_do_nothing(index_elements=["id"]), rows)
    elif dialect == "sqlite":
        conn.execute(sqlite_insert(t.outbox).on_conflict_do_nothing(index_elements=["id"]), rows)
    else:  # pragma: no cover — the two supported stores are above
        existing = set(
            conn.execute(select(t.outbox.c.id).where(t.outbox.c.id.in_([r["id"] for r in rows])))
            .scalars()
            .all()
        )
        fresh = [r for r in rows if r["id"] not in existing]
        if fresh:
            conn.execute(insert(t.outbox), fresh)
