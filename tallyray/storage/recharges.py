"""Auto-recharge: each customer's settings, and one row per crossing of its threshold.

The crossing row is written by the customer's shard, in the transaction of the commit (or
checkpoint) that carries the crossing (:func:`write_crossings`, called from
:func:`tallyray.storage.alerts.write_messages`), with ``INSERT … ON CONFLICT DO NOTHING`` on its
deterministic id: a shard replaying its log after a crash writes the same crossing again and
nothing changes. Every move of a row after that is a conditional ``UPDATE`` (a *claim*), so of
several replicas sweeping at once exactly one charges an attempt.

Settings are enabled only while the customer has a payment method to charge: enabling checks
it under the customer row's lock (:meth:`RechargeStore.put_settings`), and whatever takes the
customer's ``billing.payment_method`` away — removing the last saved card, or a customer update
that clears it — turns auto-recharge off in its own transaction (:func:`when_method_changes`,
the one home of that rule).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from decimal import Decimal
from typing import Any

from sqlalchemy import Connection, Engine, and_, delete, func, insert, or_, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from tallyray.errors import Conflict
from tallyray.pricing.recharge_rules import (
    DISABLED_NO_PAYMENT_METHOD,
    RECHARGE_DISABLED,
    RechargeSettings,
    month_of,
    settings_from_row,
)
from tallyray.storage import tables as t
from tallyray.storage.audit import AuditEntry, write_audit

__all__ = [
    "COUNTED",
    "DUE",
    "METHOD_CLEARED_REASON",
    "NO_METHOD_REASON",
    "RechargeStore",
    "turn_off_in",
    "when_method_changes",
    "write_crossings",
]

_R, _A = t.auto_recharge_settings, t.auto_recharges

DUE = ("requested", "retry")
"""Statuses a sweep charges once ``next_attempt_at`` has come."""
COUNTED = ("charging", "pending", "succeeded")
"""Statuses whose amount counts against the month's cap (charged, or maybe charged)."""


def write_crossings(conn: Connection, messages: Sequence[Mapping[str, Any]]) -> None:
    """Store ``recharge.requested`` crossings (outbox-shaped messages) in the caller's
    transaction; a crossing stored already is left as it was."""
    if not messages:
        return
    rows = [
        {
            "id": m["id"],
            "env": m["env"],
            "customer_id": m["payload"]["customer_id"],
            "crossing": int(m["payload"]["crossing"]),
            "status": "requested",
            "attempt": 1,
            "month": month_of(int(m["created_at"])),
            "next_attempt_at": int(m["created_at"]),
            "created_at": int(m["created_at"]),
            "updated_at": int(m["created_at"]),
        }
        for m in messages
    ]
    dialect = conn.dialect.name
    if dialect == "postgresql":
        conn.execute(pg_insert(_A).on_conflict_do_nothing(), rows)
    elif dialect == "sqlite":
        conn.execute(sqlite_insert(_A).on_conflict_do_nothing(), rows)
    else:  # pragma: no cover — the two supported stores are above
        for row in rows:
            if conn.execute(select(_A.c.id).where(_A.c.id == row["id"])).first() is None:
                conn.execute(insert(_A).values(**row))


NO_METHOD_REASON = "turned off: the last saved payment method was removed"
"""``disabled_reason`` when removing the customer's last saved card turned auto-recharge off."""
METHOD_CLEARED_REASON = "turned off: the customer's payment method was cleared"
"""``disabled_reason`` when a customer update cleared ``payment_method`` (and so turned
auto-recharge off)."""


def turn_off_in(
    conn: Connection, env: str, customer_id: str, reason: str, now: int
) -> dict[str, Any] | None:
    """Turn the customer's auto-recharge off in the caller's transaction; the settings as
    they were (enabled), or ``None`` when it was not on (nothing is written then)."""
    key = and_(_R.c.env == env, _R.c.customer_id == customer_id)
    row = conn.execute(select(_R).where(key, _R.c.enabled.is_(True)).with_for_update()).first()
    if row is None:
        return None
    conn.execute(
        update(_R).where(key).values(enabled=False, disabled_reason=reason[:500], updated_at=now)
    )
    return dict(row._mapping)


def when_method_changes(
    conn: Connection,
    env: str,
    customer_id: str,
    before: Mapping[str, Any] | None,
    after: Mapping[str, Any] | None,
    now: int,
    audit: AuditEntry | None,
    reason: str,
) -> bool:
    """The rule, wherever a customer's ``billing`` is written: auto-recharge is on only while
    the customer has a payment method (``billing.payment_method``) to charge, or its charges
    could only decline until the retry policy gave up. A write that takes the method away
    (``before`` had one, ``after`` has none) turns auto-recharge off in the caller's
    transaction, audited as done by whoever wrote (``audit``, the write's entry) and announced
    as ``recharge.disabled`` (``code`` ``no_payment_method``). ``True`` when it did; ``False``
    when the method stays or auto-recharge was not on (nothing is written then)."""
    if not (before or {}).get("payment_method") or (after or {}).get("payment_method"):
        return False
    from tallyray.storage.alerts import write_messages

    was = turn_off_in(conn, env, customer_id, reason, now)
    if was is None:
        return False
    payload = {
        "customer_id": customer_id,
        "crossing": None,
        "amount": was["amount"],
        "currency": was["currency"],
        "reason": reason,
        "code": DISABLED_NO_PAYMENT_METHOD,
    }
    if audit is not None:
        write_audit(
            conn,
            replace(
                audit,
                action="auto_recharge.disabled",
                object_type="customer",
                object_id=customer_id,
                summary={
                    "customer_id": customer_id,
                    "reason": reason,
                    "code": DISABLED_NO_PAYMENT_METHOD,
                },
            ),
        )
    write_messages(
        conn,
        [
            {
                "id": f"{RECHARGE_DISABLED}:{customer_id}:{DISABLED_NO_PAYMENT_METHOD}:{now}",
                "env": env,
                "type": RECHARGE_DISABLED,
                "payload": payload,
                "created_at": now,
            }
        ],
    )
    return True


class RechargeStore:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    # -- settings ------------------------------------------------------------------------

    def settings(self, env: str, customer_id: str) -> dict[str, Any] | None:
        with self.engine.connect() as conn:
            row = conn.execute(
                select(_R).where(_R.c.env == env, _R.c.customer_id == customer_id)
            ).first()
        return None if row is None else dict(row._mapping)

    def settings_of(self, env: str, customer_ids: Iterable[str]) -> dict[str, RechargeSettings]:
        """The customers' settings, for the shard's triggers."""
        wanted = list(set(customer_ids))
        if not wanted:
            return {}
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(_R).where(_R.c.env == env, _R.c.customer_id.in_(wanted))
            ).all()
        return {row.customer_id: settings_from_row(dict(row._mapping)) for row in rows}

    def put_settings(
        self,
        env: str,
        customer_id: str,
        settings: RechargeSettings,
        now: int,
        audit: AuditEntry | None = None,
    ) -> dict[str, Any]:
        """Store the settings; enabling them needs the customer's payment method
        (``billing.payment_method``), checked under the customer row's lock so that a
        removal of the last saved card cannot slip in between (:class:`Conflict`)."""
        values = {**settings.to_json(), "disabled_reason": None, "updated_at": now}
        with self.engine.begin() as conn:
            if settings.enabled:
                _needs_payment_method(conn, env, customer_id)
            done = conn.execute(
                update(_R).where(_R.c.env == env, _R.c.customer_id == customer_id).values(**values)
            )
            if done.rowcount == 0:
                conn.execute(insert(_R).values(env=env, customer_id=customer_id, **values))
            write_audit(conn, audit)
            row = conn.execute(
                select(_R).where(_R.c.env == env, _R.c.customer_id == customer_id)
            ).one()
        return dict(row._mapping)

    def delete_settings(self, env: str, customer_id: str, audit: AuditEntry | None = None) -> bool:
        with self.engine.begin() as conn:
            gone = conn.execute(delete(_R).where(_R.c.env == env, _R.c.customer_id == customer_id))
            write_audit(conn, audit)
        return gone.rowcount > 0

    def turn_off(self, env: str, customer_id: str, reason: str, now: int) -> None:
        with self.engine.begin() as conn:
            turn_off_in(conn, env, customer_id, reason, now)

    # -- crossings -----------------------------------------------------------------------

    def due(self, now: int, limit: int = 100) -> list[dict[str, Any]]:
        """Crossings to charge now: requested or retrying and due, or charging under a claim
        that ran out (its process stopped mid-way), or pending (to look at their purchase)."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(_A)
                .where(
                    or_(
                        and_(_A.c.status.in_(DUE), _A.c.next_attempt_at <= now),
                        and_(_A.c.status == "charging", _A.c.claimed_until <= now),
                        _A.c.status == "pending",
                    )
                )
                .order_by(_A.c.next_attempt_at, _A.c.id)
                .limit(limit)
            ).all()
        return [dict(r._mapping) for r in rows]

    def claim(self, row: Mapping[str, Any], now: int, lease: int) -> bool:
        """Take the crossing for this process (one conditional UPDATE: one winner)."""
        with self.engine.begin() as conn:
            moved = conn.execute(
                update(_A)
                .where(
                    _A.c.id == row["id"],
                    _A.c.status == row["status"],
                    _A.c.attempt == row["attempt"],
                    _A.c.updated_at == row["updated_at"],
                )
                .values(status="charging", claimed_until=now + lease, updated_at=now)
            )
        return moved.rowcount == 1

    def charged_in_month(self, env: str, customer_id: str, month: str, besides: str) -> Decimal:
        """What the customer's other crossings of ``month`` charged or may have charged."""
        with self.engine.connect() as conn:
            amounts = conn.execute(
                select(_A.c.amount).where(
                    _A.c.env == env,
                    _A.c.customer_id == customer_id,
                    _A.c.month == month,
                    _A.c.status.in_(COUNTED),
                    _A.c.id != besides,
                    _A.c.amount.is_not(None),
                )
            ).scalars()
            return sum((Decimal(a) for a in amounts), Decimal(0))

    def move(self, crossing_id: str, now: int, **values: Any) -> None:
        with self.engine.begin() as conn:
            conn.execute(update(_A).where(_A.c.id == crossing_id).values(updated_at=now, **values))

    def set_status_from(
        self, crossing_id: str, statuses: Sequence[str], now: int, **values: Any
    ) -> bool:
        """Move the crossing only from one of ``statuses`` (the webhook's booking and a
        sweep may both learn that a recharge succeeded)."""
        with self.engine.begin() as conn:
            moved = conn.execute(
                update(_A)
                .where(_A.c.id == crossing_id, _A.c.status.in_(statuses))
                .values(updated_at=now, **values)
            )
        return moved.rowcount == 1

    def by_purchase(self, env: str, purchase_id: str) -> dict[str, Any] | None:
        with self.engine.connect() as conn:
            row = conn.execute(
                select(_A).where(_A.c.env == env, _A.c.purchase_id == purchase_id)
            ).first()
        return None if row is None else dict(row._mapping)

    def crossing(self, crossing_id: str) -> dict[str, Any]:
        with self.engine.connect() as conn:
            row = conn.execute(select(_A).where(_A.c.id == crossing_id)).one()
        return dict(row._mapping)

    def announce(
        self, env: str, message_id: str, kind: str, payload: dict[str, Any], now: int
    ) -> None:
        """An outbox message for webhook endpoints (stored once per id)."""
        from tallyray.storage.alerts import write_messages

        with self.engine.begin() as conn:
            write_messages(
                conn,
                [
                    {
                        "id": message_id,
                        "env": env,
                        "type": kind,
                        "payload": payload,
                        "created_at": now,
                    }
                ],
            )

    def crossings(self, env: str, customer_id: str, limit: int = 50) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(_A)
                .where(_A.c.env == env, _A.c.customer_id == customer_id)
                .order_by(_A.c.crossing.desc())
                .limit(limit)
            ).all()
        return [dict(r._mapping) for r in rows]

    def count(self, env: str) -> int:
        with self.engine.connect() as conn:
            return int(
                conn.execute(
                    select(func.count()).select_from(_A).where(_A.c.env == env)
                ).scalar_one()
            )


def _needs_payment_method(conn: Connection, env: str, customer_id: str) -> None:
    c = t.customers
    billing = conn.execute(
        select(c.c.billing).where(c.c.env == env, c.c.id == customer_id).with_for_update()
    ).scalar()
    if not (billing or {}).get("payment_method"):
        raise Conflict(
            f"customer {customer_id!r} has no saved payment method to recharge from: add a "
            "card first (POST /v1/customers/{id}/payment-methods/setup or the portal's "
            "Payment page), then turn auto-recharge on"
        )
