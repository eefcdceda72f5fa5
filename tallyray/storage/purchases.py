"""Credit purchases: prepaid credit bought through a payment provider, and their receipts.

A purchase's status moves at most once out of ``pending`` into ``paid`` (a grant booked),
``failed`` or ``canceled`` (nothing booked); a ``failed`` one may still become ``paid`` when the
provider later says the customer paid (another card on the same hosted page). Every move is a
conditional ``UPDATE … WHERE status IN (…)``, so two deliveries of one webhook, or two
processes, never both move it. ``paid`` is written only by :func:`mark_paid`, called by the
customer's shard in the transaction that inserts the credit grant
(:meth:`tallyray.storage.eventlog.ShardStore.commit`): no grant without ``paid``, and no second
grant after it.

Receipts are numbered in their own gapless sequence per environment and issuing entity (kind
``receipt`` of ``document_numbers``), taken in the transaction that writes the receipt.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, cast

from sqlalchemy import Connection, Engine, and_, insert, select, update
from sqlalchemy.exc import IntegrityError

from tallyray.errors import Conflict, NotFound
from tallyray.storage import tables as t
from tallyray.storage.audit import AuditEntry, write_audit
from tallyray.storage.pages import Page, PageRequest, read_page

__all__ = [
    "PURCHASE_KINDS",
    "PURCHASE_STATUSES",
    "PurchaseKind",
    "PurchaseStatus",
    "PurchaseStore",
    "mark_paid",
]

PurchaseKind = Literal["top_up", "recharge"]
PurchaseStatus = Literal["pending", "paid", "failed", "canceled"]
PURCHASE_KINDS: tuple[PurchaseKind, ...] = ("top_up", "recharge")
PURCHASE_STATUSES: tuple[PurchaseStatus, ...] = ("pending", "paid", "failed", "canceled")

#: The statuses a purchase may be paid from: a failed attempt can be followed by a payment
#: on the same provider object (the customer tries another card).
PAYABLE: tuple[PurchaseStatus, ...] = ("pending", "failed")

_P = t.credit_purchases


@dataclass(frozen=True, slots=True)
class NewPurchase:
    """What a purchase is made of when it starts."""

    id: str
    env: str
    customer_id: str
    kind: PurchaseKind
    amount: str
    currency: str
    provider: str
    provider_reference: str | None
    checkout: Mapping[str, Any] | None
    created_at: int


def mark_paid(
    conn: Connection,
    env: str,
    purchase_id: str,
    grant_id: str,
    payment_reference: str | None,
    at: int,
) -> bool:
    """Move a purchase to ``paid`` with its grant, in the caller's transaction (the one that
    inserts the grant). ``False`` when it was already paid or canceled: then nothing may be
    booked."""
    moved = conn.execute(
        update(_P)
        .where(_P.c.id == purchase_id, _P.c.env == env, _P.c.status.in_(PAYABLE))
        .values(
            status="paid",
            grant_id=grant_id,
            payment_reference=payment_reference,
            paid_at=at,
            updated_at=at,
            failure=None,
        )
    )
    return moved.rowcount == 1


class PurchaseStore:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def add(self, purchase: NewPurchase, audit: AuditEntry | None = None) -> dict[str, Any]:
        row = {
            "id": purchase.id,
            "env": purchase.env,
            "customer_id": purchase.customer_id,
            "kind": purchase.kind,
            "status": "pending",
            "amount": purchase.amount,
            "currency": purchase.currency,
            "provider": purchase.provider,
            "provider_reference": purchase.provider_reference,
            "checkout": dict(purchase.checkout) if purchase.checkout is not None else None,
            "created_at": purchase.created_at,
            "updated_at": purchase.created_at,
        }
        try:
            with self.engine.begin() as conn:
                conn.execute(insert(_P).values(**row))
                write_audit(conn, audit)
        except IntegrityError:
            raise Conflict(
                f"provider reference {purchase.provider_reference!r} already pays another purchase"
            ) from None
        return self.get(purchase.env, purchase.id)

    def get(self, env: str, purchase_id: str) -> dict[str, Any]:
        with self.engine.connect() as conn:
            row = conn.execute(select(_P).where(_P.c.env == env, _P.c.id == purchase_id)).first()
        if row is None:
            raise NotFound(f"no top-up or recharge {purchase_id!r} in the {env} environment")
        return _json(row)

    def env_of(self, purchase_id: str) -> str | None:
        """The environment a purchase belongs to (webhooks name a purchase, not an env)."""
        with self.engine.connect() as conn:
            found = conn.execute(select(_P.c.env).where(_P.c.id == purchase_id)).scalar()
        return None if found is None else str(found)

    def of_customer(
        self, env: str, customer_id: str, page: PageRequest, kind: PurchaseKind | None = None
    ) -> Page[dict[str, Any]]:
        """A page of a customer's purchases, newest first."""
        query = select(_P).where(_P.c.env == env, _P.c.customer_id == customer_id)
        if kind is not None:
            query = query.where(_P.c.kind == kind)
        order = [(_P.c.created_at, True), (_P.c.id, True)]
        with self.engine.connect() as conn:
            found = read_page(conn, query, order, _P.c.id, page, "purchase")
        return Page([_json(row) for row in found.items], found.has_more)

    def set_reference(
        self, env: str, purchase_id: str, reference: str, checkout: Mapping[str, Any], at: int
    ) -> None:
        """Record the provider object made for a pending purchase."""
        with self.engine.begin() as conn:
            conn.execute(
                update(_P)
                .where(_P.c.env == env, _P.c.id == purchase_id)
                .values(provider_reference=reference, checkout=dict(checkout), updated_at=at)
            )

    def settle_unpaid(
        self,
        env: str,
        purchase_id: str,
        status: Literal["failed", "canceled"],
        failure: Mapping[str, Any],
        at: int,
    ) -> bool:
        """``pending`` → ``failed`` / ``canceled`` (``failed`` → ``canceled`` too); ``False``
        when the purchase was already paid or canceled. Nothing is booked either way."""
        allowed = ("pending",) if status == "failed" else ("pending", "failed")
        with self.engine.begin() as conn:
            moved = conn.execute(
                update(_P)
                .where(_P.c.env == env, _P.c.id == purchase_id, _P.c.status.in_(allowed))
                .values(status=status, failure=dict(failure), updated_at=at)
            )
        return moved.rowcount == 1

    def note(self, env: str, purchase_id: str, failure: Mapping[str, Any], at: int) -> None:
        """Keep what went wrong with a purchase that stays as it is (an amount that does not
        match what is due)."""
        with self.engine.begin() as conn:
            conn.execute(
                update(_P)
                .where(_P.c.env == env, _P.c.id == purchase_id)
                .values(failure=dict(failure), updated_at=at)
            )

    def add_receipt(
        self,
        env: str,
        purchase_id: str,
        entity: str,
        prefix: str,
        document: Mapping[str, Any],
        document_id: str,
        at: int,
    ) -> dict[str, Any]:
        """Issue the receipt of a paid purchase once: its number is taken in the transaction
        that stores it, and a purchase that has one keeps it (returned as it is)."""
        try:
            return self._add_receipt(env, purchase_id, entity, prefix, document, document_id, at)
        except IntegrityError:  # two first receipts of an environment made its counter at once
            return self._add_receipt(env, purchase_id, entity, prefix, document, document_id, at)

    def _add_receipt(
        self,
        env: str,
        purchase_id: str,
        entity: str,
        prefix: str,
        document: Mapping[str, Any],
        document_id: str,
        at: int,
    ) -> dict[str, Any]:
        with self.engine.begin() as conn:
            row = conn.execute(
                select(_P.c.document, _P.c.status).where(_P.c.env == env, _P.c.id == purchase_id)
            ).first()
            if row is None:
                raise NotFound(f"no purchase {purchase_id!r} in the {env} environment")
            if row.document is not None:
                return cast(dict[str, Any], row.document)
            if row.status != "paid":
                raise Conflict(f"purchase {purchase_id} is {row.status}: no receipt yet")
            number = _next_receipt_number(conn, env, entity, prefix)
            issued = {**document, "id": document_id, "number": number}
            moved = conn.execute(
                update(_P)
                .where(_P.c.env == env, _P.c.id == purchase_id, _P.c.document.is_(None))
                .values(document_id=document_id, document=issued, updated_at=at)
            )
            if moved.rowcount != 1:  # pragma: no cover - the row lock makes this unreachable
                raise Conflict(f"purchase {purchase_id} got its receipt meanwhile; read it again")
        return issued


def _next_receipt_number(conn: Connection, env: str, entity: str, prefix: str) -> str:
    """The next receipt number, taken in the caller's transaction (``document_numbers``, kind
    ``receipt``): the update locks the counter row, so numbers are gapless and never shared.
    The first receipt of an environment creates the row."""
    dn = t.document_numbers
    key = and_(dn.c.env == env, dn.c.entity == entity, dn.c.kind == "receipt")
    row = conn.execute(
        update(dn).where(key).values(next=dn.c.next + 1).returning(dn.c.next)
    ).first()
    if row is None:
        conn.execute(insert(dn).values(env=env, entity=entity, kind="receipt", next=2))
        taken = 1
    else:
        taken = int(row.next) - 1
    return f"{prefix}{taken:06d}"


def _json(row: Any) -> dict[str, Any]:
    return {
        "id": row.id,
        "env": row.env,
        "customer_id": row.customer_id,
        "kind": row.kind,
        "status": row.status,
        "amount": row.amount,
        "currency": row.currency,
        "provider": row.provider,
        "provider_reference": row.provider_reference,
        "payment_reference": row.payment_reference,
        "checkout": row.checkout,
        "failure": row.failure,
        "grant_id": row.grant_id,
        "document_id": row.document_id,
        "document": row.document,
        "created_at": row.created_at,
        "updated_at": row.updated_at,
        "paid_at": row.paid_at,
    }
