"""Saved payment methods and the card-saving sessions that make them.

A method is written only from a provider's signed webhook (:meth:`PaymentMethodStore.save`),
keyed by (env, provider, reference): a webhook delivered twice saves one card. The newest
saved card becomes the customer's default, and the default's reference is copied into the
customer's ``billing.payment_method`` in the same transaction, which is what off-session
charges (invoices, auto-recharge) read. Removing a card forgets it here; the caller asks the
provider to detach it. Removing the last one leaves the customer without a payment method, so
its auto-recharge is turned off in the same transaction
(:func:`tallyray.storage.recharges.when_method_changes`, the rule a customer update that clears
``payment_method`` follows too).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from sqlalchemy import Connection, Engine, and_, insert, select, update

from tallyray.errors import NotFound
from tallyray.storage import tables as t
from tallyray.storage.audit import AuditEntry, write_audit
from tallyray.storage.recharges import NO_METHOD_REASON, when_method_changes

__all__ = ["NewMethod", "PaymentMethodStore", "method_json"]

_M, _S = t.payment_methods, t.payment_setups


@dataclass(frozen=True, slots=True)
class NewMethod:
    id: str
    env: str
    customer_id: str
    provider: str
    reference: str
    brand: str | None
    last4: str | None
    exp_month: int | None
    exp_year: int | None
    provider_customer_id: str | None
    created_at: int


def method_json(row: Mapping[str, Any]) -> dict[str, Any]:
    """A saved method as the API and the portal show it."""
    return {
        "id": row["id"],
        "object": "payment_method",
        "customer_id": row["customer_id"],
        "provider": row["provider"],
        "reference": row["reference"],
        "brand": row["brand"],
        "last4": row["last4"],
        "exp_month": row["exp_month"],
        "exp_year": row["exp_year"],
        "default": bool(row["is_default"]),
    }


class PaymentMethodStore:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    # -- setups --------------------------------------------------------------------------

    def add_setup(
        self,
        setup_id: str,
        env: str,
        customer_id: str,
        provider: str,
        reference: str,
        url: str | None,
        replaces: str | None,
        now: int,
    ) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                insert(_S).values(
                    id=setup_id,
                    env=env,
                    customer_id=customer_id,
                    provider=provider,
                    provider_reference=reference,
                    url=url,
                    replaces=replaces,
                    created_at=now,
                )
            )

    def setup(self, setup_id: str) -> dict[str, Any] | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(_S).where(_S.c.id == setup_id)).first()
        return None if row is None else dict(row._mapping)

    # -- methods -------------------------------------------------------------------------

    def save(
        self,
        method: NewMethod,
        setup_id: str | None,
        replaces: str | None,
        audit: AuditEntry | None = None,
    ) -> tuple[dict[str, Any], bool]:
        """Save (or bring back) a card and make it the customer's default; remove the card it
        replaces. ``(method, created)``: ``created`` is false for a card saved before (a
        second delivery of the same webhook)."""
        with self.engine.begin() as conn:
            found = conn.execute(
                select(_M).where(
                    _M.c.env == method.env,
                    _M.c.provider == method.provider,
                    _M.c.reference == method.reference,
                )
            ).first()
            created = found is None or found.removed_at is not None
            if found is None:
                conn.execute(
                    insert(_M).values(
                        id=method.id,
                        env=method.env,
                        customer_id=method.customer_id,
                        provider=method.provider,
                        reference=method.reference,
                        brand=method.brand,
                        last4=method.last4,
                        exp_month=method.exp_month,
                        exp_year=method.exp_year,
                        is_default=False,
                        created_at=method.created_at,
                    )
                )
                method_id = method.id
            else:
                method_id = found.id
                if not created:
                    return self._get(conn, method.env, method_id), False
                conn.execute(update(_M).where(_M.c.id == method_id).values(removed_at=None))
            if replaces and replaces != method_id:
                conn.execute(
                    update(_M)
                    .where(
                        _M.c.env == method.env,
                        _M.c.customer_id == method.customer_id,
                        _M.c.id == replaces,
                        _M.c.removed_at.is_(None),
                    )
                    .values(removed_at=method.created_at, is_default=False)
                )
            self._make_default(conn, method.env, method.customer_id, method_id, method)
            if setup_id is not None:
                conn.execute(
                    update(_S)
                    .where(_S.c.id == setup_id)
                    .values(method_id=method_id, completed_at=method.created_at)
                )
            write_audit(conn, audit and replace(audit, object_id=method_id))
            return self._get(conn, method.env, method_id), True

    def methods(self, env: str, customer_id: str) -> list[dict[str, Any]]:
        """The customer's saved cards, the default first, then the newest."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(_M)
                .where(_M.c.env == env, _M.c.customer_id == customer_id, _M.c.removed_at.is_(None))
                .order_by(_M.c.is_default.desc(), _M.c.created_at.desc(), _M.c.id)
            ).all()
        return [dict(r._mapping) for r in rows]

    def method(self, env: str, customer_id: str, method_id: str) -> dict[str, Any]:
        with self.engine.connect() as conn:
            row = conn.execute(
                select(_M).where(
                    _M.c.env == env,
                    _M.c.customer_id == customer_id,
                    _M.c.id == method_id,
                    _M.c.removed_at.is_(None),
                )
            ).first()
        if row is None:
            raise NotFound(f"customer {customer_id!r} has no saved payment method {method_id!r}")
        return dict(row._mapping)

    def remove(
        self, env: str, customer_id: str, method_id: str, now: int, audit: AuditEntry | None = None
    ) -> tuple[dict[str, Any], bool]:
        """Forget a card; when it was the default, the newest remaining one takes its place.
        When none is left, the customer has no payment method: its auto-recharge is turned
        off in this transaction (audited, ``recharge.disabled``), or its charges would only
        decline. ``(method, auto_recharge_turned_off)``."""
        turned_off = False
        with self.engine.begin() as conn:
            row = conn.execute(
                select(_M).where(
                    _M.c.env == env,
                    _M.c.customer_id == customer_id,
                    _M.c.id == method_id,
                    _M.c.removed_at.is_(None),
                )
            ).first()
            if row is None:
                raise NotFound(
                    f"customer {customer_id!r} has no saved payment method {method_id!r}"
                )
            conn.execute(
                update(_M).where(_M.c.id == method_id).values(removed_at=now, is_default=False)
            )
            if row.is_default:
                nxt = conn.execute(
                    select(_M)
                    .where(
                        _M.c.env == env, _M.c.customer_id == customer_id, _M.c.removed_at.is_(None)
                    )
                    .order_by(_M.c.created_at.desc(), _M.c.id)
                    .limit(1)
                ).first()
                if nxt is None:
                    before, after = _merge_billing(conn, env, customer_id, {"payment_method": None})
                    turned_off = when_method_changes(
                        conn, env, customer_id, before, after, now, audit, NO_METHOD_REASON
                    )
                else:
                    self._make_default(conn, env, customer_id, nxt.id, None)
            write_audit(conn, audit)
        return dict(row._mapping), turned_off

    @staticmethod
    def _get(conn: Connection, env: str, method_id: str) -> dict[str, Any]:
        row = conn.execute(select(_M).where(_M.c.env == env, _M.c.id == method_id)).one()
        return dict(row._mapping)

    @staticmethod
    def _make_default(
        conn: Connection, env: str, customer_id: str, method_id: str, method: NewMethod | None
    ) -> None:
        mine = and_(_M.c.env == env, _M.c.customer_id == customer_id)
        conn.execute(update(_M).where(mine, _M.c.id != method_id).values(is_default=False))
        conn.execute(update(_M).where(mine, _M.c.id == method_id).values(is_default=True))
        row = conn.execute(select(_M).where(_M.c.id == method_id)).one()
        values: dict[str, Any] = {"payment_method": row.reference, "payment_provider": row.provider}
        if method is not None and method.provider_customer_id:
            values["provider_customer_id"] = method.provider_customer_id
        _merge_billing(conn, env, customer_id, values)


def _merge_billing(
    conn: Connection, env: str, customer_id: str, values: Mapping[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Merge into a customer's ``billing`` in the caller's transaction (a ``None`` value
    removes the key); ``(before, after)``."""
    c = t.customers
    key = and_(c.c.env == env, c.c.id == customer_id)
    before = dict(conn.execute(select(c.c.billing).where(key).with_for_update()).scalar() or {})
    current = dict(before)
    for name, value in values.items():
        if value is None:
            current.pop(name, None)
        else:
            current[name] = value
    conn.execute(update(c).where(key).values(billing=current))
    return before, current
