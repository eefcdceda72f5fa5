"""Auto-recharge, the shell: settings over the API and the portal, and the sweep that charges
each crossing of a customer's threshold once.

How a crossing becomes at most one charge (the argument is in docs/payments.md):

1. The customer's shard sees the available balance fall below the threshold in a commit and
   writes the crossing ``recharge:<env>:<customer>:<n>`` as a row of ``auto_recharges``, in
   the transaction of a commit or checkpoint; a replay writes the same id again, a no-op
   (:mod:`tallyray.storage.recharges`). It re-arms only once the balance is back at or above
   the threshold, so one crossing is one row whatever the producers, restarts or replicas.
2. Every replica sweeps (:meth:`AutoRecharges.sweep`); a row is *claimed* with one
   conditional ``UPDATE`` before anything is charged, so one replica charges it.
3. The charge is a credit purchase of kind ``recharge`` whose id is derived from (crossing,
   attempt) (:func:`~tallyray.pricing.recharge_rules.purchase_id_of`), written before the
   provider is called, and the provider's idempotency key is derived from the purchase: a
   process that dies after calling the provider and is replaced by another re-sends the same
   key, and the provider answers with the first payment.
4. The credit is booked by the purchases core on the provider's signed success webhook,
   exactly once (:mod:`tallyray.invoicing.purchases`); its ``on_paid`` hook marks the crossing
   ``succeeded`` and tells the customer (``recharge.succeeded``).

A decline is retried on :data:`~tallyray.pricing.recharge_rules.RETRY_DELAYS` (1 h, 6 h, 24 h
on the project's clock), each a new purchase; each decline fires ``recharge.failed``, and after
the last attempt auto-recharge is turned off (``recharge.disabled``, code ``declined``).
Removing a customer's last saved payment method turns it off too, in the removal's transaction
(``recharge.disabled``, code ``no_payment_method``:
:func:`tallyray.storage.recharges.turn_off_without_method`), and it cannot be turned on again
without one.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from starlette.concurrency import run_in_threadpool

from tallyray.errors import TallyrayError
from tallyray.pricing.events import format_timestamp
from tallyray.pricing.recharge_rules import (
    DISABLED_DECLINED,
    RECHARGE_DISABLED,
    after_decline,
    charge_decision,
    parse_settings,
    purchase_id_of,
    settings_from_row,
)
from tallyray.storage.audit import Actor, AuditEntry
from tallyray.storage.recharges import RechargeStore

if TYPE_CHECKING:
    from tallyray.invoicing.service import Billing

__all__ = ["LEASE_SECONDS", "RETRY_UNAVAILABLE_SECONDS", "AutoRecharges", "settings_json"]

log = logging.getLogger("tallyray.recharge")

_US = 1_000_000
LEASE_SECONDS = 120
"""How long a claimed crossing is this process's: a process that stops mid-charge hands it
to the next sweep after this (which re-sends the same idempotency key)."""
RETRY_UNAVAILABLE_SECONDS = 60
"""When the provider cannot be reached: try the same attempt again after this."""
RECHARGE_ACTOR = Actor("server", "auto-recharge")
"""Who turned auto-recharge off after the last declined attempt, in the audit log."""


def settings_json(customer_id: str, row: Mapping[str, Any] | None) -> dict[str, Any]:
    if row is None:
        return {
            "customer_id": customer_id,
            "enabled": False,
            "threshold": None,
            "amount": None,
            "monthly_cap": None,
            "currency": None,
            "disabled_reason": None,
        }
    return {
        "customer_id": customer_id,
        "enabled": bool(row["enabled"]),
        "threshold": row["threshold"],
        "amount": row["amount"],
        "monthly_cap": row["monthly_cap"],
        "currency": row["currency"],
        "disabled_reason": row["disabled_reason"],
    }


@dataclass
class AutoRecharges:
    billing: Billing
    store: RechargeStore

    def __post_init__(self) -> None:
        self.billing.purchases.on_paid.append(self.on_paid)

    # -- settings ------------------------------------------------------------------------

    async def get(self, env: str, customer_id: str) -> dict[str, Any]:
        await run_in_threadpool(self.billing.catalog.customer, env, customer_id)  # 404
        return settings_json(
            customer_id, await run_in_threadpool(self.store.settings, env, customer_id)
        )

    async def put(
        self, env: str, customer_id: str, doc: Any, audit: AuditEntry | None = None
    ) -> dict[str, Any]:
        record = await run_in_threadpool(self.billing.catalog.customer, env, customer_id)
        settings = parse_settings(doc, record.currency)
        # Enabling needs a payment method: the store checks it in its transaction (409).
        row = await run_in_threadpool(
            self.store.put_settings, env, customer_id, settings, self.billing.clock(), audit
        )
        await self.refresh(env, customer_id)
        return settings_json(customer_id, row)

    async def delete(
        self, env: str, customer_id: str, audit: AuditEntry | None = None
    ) -> dict[str, Any]:
        await run_in_threadpool(self.billing.catalog.customer, env, customer_id)  # 404
        await run_in_threadpool(self.store.delete_settings, env, customer_id, audit)
        await self.refresh(env, customer_id)
        return settings_json(customer_id, None)

    async def recent(self, env: str, customer_id: str, limit: int = 5) -> list[dict[str, Any]]:
        """The customer's latest crossings, newest first: what the portal tells it."""
        return await run_in_threadpool(self.store.crossings, env, customer_id, limit)

    async def refresh(self, env: str, customer_id: str) -> None:
        """Have the customer's shard read its settings again (its trigger)."""
        router = self.billing.router
        await router.call(router.index(env, customer_id), "refresh", env, [customer_id])

    # -- the sweep -----------------------------------------------------------------------

    async def run_forever(self, interval: float) -> None:
        while True:
            try:
                await self.sweep()
            except Exception:  # noqa: BLE001 — the loop must outlive one bad sweep
                log.exception("auto-recharge sweep")
            await asyncio.sleep(interval)

    async def sweep(self, limit: int = 100) -> int:
        """Charge every crossing that is due (and settle the pending ones whose purchase
        moved); returns how many rows were looked at."""
        rows = await run_in_threadpool(self.store.due, self.billing.clock(), limit)
        for row in rows:
            try:
                if row["status"] == "pending":
                    await self._settle_pending(row)
                else:
                    await self._charge(row)
            except TallyrayError as error:
                log.warning("auto-recharge %s: %s", row["id"], error)
        return len(rows)

    async def _charge(self, row: Mapping[str, Any]) -> None:
        now = self.billing.clock()
        claimed = await run_in_threadpool(self.store.claim, row, now, LEASE_SECONDS * _US)
        if not claimed:
            return  # another replica has it
        env, customer = row["env"], row["customer_id"]
        stored = await run_in_threadpool(self.store.settings, env, customer)
        settings = None if stored is None else settings_from_row(stored)
        if row["purchase_id"] is None:  # a fresh attempt: decide, then record the amount
            charged = await run_in_threadpool(
                self.store.charged_in_month, env, customer, row["month"], row["id"]
            )
            decision = charge_decision(settings, charged)
            if decision.action == "disabled":
                await run_in_threadpool(
                    self.store.move,
                    row["id"],
                    now,
                    status="skipped",
                    failure={"message": decision.reason},
                )
                return
            if decision.action == "capped":
                capped = {**_describe(row, settings), "reason": decision.reason}
                announced = _message(
                    env, f"recharge.capped:{row['id']}", "recharge.capped", capped, now
                )
                values = {"status": "capped", "failure": {"message": decision.reason}}
                await run_in_threadpool(self.store.record, row["id"], now, values, [announced])
                return
            assert settings is not None
            purchase_id = purchase_id_of(row["id"], int(row["attempt"]))
            await run_in_threadpool(
                self.store.move,
                row["id"],
                now,
                amount=format(decision.amount, "f"),
                currency=settings.currency,
                purchase_id=purchase_id,
            )
            amount = decision.amount
        else:  # a claim that ran out, or the provider was unreachable: the same attempt
            purchase_id = str(row["purchase_id"])
            amount = Decimal(row["amount"])
        try:
            purchase, result = await self.billing.purchases.start_recharge(
                env, customer, amount, purchase_id=purchase_id, attempt=1
            )
        except TallyrayError as error:
            # Nothing known to be charged: the same attempt (same purchase, same key) later.
            await run_in_threadpool(
                self.store.move,
                row["id"],
                now,
                status="retry",
                next_attempt_at=now + RETRY_UNAVAILABLE_SECONDS * _US,
                failure={"message": error.message},
            )
            return
        status = purchase["status"]
        failed = (result is not None and result.status == "failed") or status in (
            "failed",
            "canceled",
        )
        if status == "paid":
            await self._succeeded(env, row["id"], now)
        elif failed:
            message = (
                (result.failure_message if result is not None else None)
                or (purchase.get("failure") or {}).get("message")
                or "the payment was declined"
            )
            await self._declined(row, settings, message, now)
        else:
            await run_in_threadpool(
                self.store.set_status_from, row["id"], ("charging",), now, status="pending"
            )

    async def _settle_pending(self, row: Mapping[str, Any]) -> None:
        """A charged crossing waits for the provider's webhook; look whether it came (the
        ``on_paid`` hook usually says so first) or the payment failed since."""
        purchase = await run_in_threadpool(
            self.billing.purchases.store.get, row["env"], row["purchase_id"]
        )
        now = self.billing.clock()
        if purchase["status"] == "paid":
            await self._succeeded(row["env"], row["id"], now)
        elif purchase["status"] in ("failed", "canceled"):
            moved = await run_in_threadpool(
                self.store.set_status_from, row["id"], ("pending",), now, status="charging"
            )
            if moved:
                stored = await run_in_threadpool(
                    self.store.settings, row["env"], row["customer_id"]
                )
                settings = None if stored is None else settings_from_row(stored)
                message = (purchase.get("failure") or {}).get("message") or "the payment failed"
                await self._declined(row, settings, str(message), now)

    async def _declined(
        self, row: Mapping[str, Any], settings: Any, message: str, now: int
    ) -> None:
        """Record a decline and its ``recharge.failed`` in one transaction; after the last
        attempt also turn auto-recharge off (audited as done by the server) and fire
        ``recharge.disabled``."""
        attempt = int(row["attempt"])
        retry_at = after_decline(attempt, now)
        env, customer = row["env"], row["customer_id"]
        describe = {**_describe(row, settings), "attempt": attempt, "failure_message": message}
        failed = {
            **describe,
            "final": retry_at is None,
            "next_attempt_at": None if retry_at is None else format_timestamp(retry_at),
        }
        messages = [
            _message(env, f"recharge.failed:{row['id']}:{attempt}", "recharge.failed", failed, now)
        ]
        failure = {"message": message, "attempt": attempt}
        if retry_at is not None:
            values: dict[str, Any] = {
                "status": "retry",
                "attempt": attempt + 1,
                "purchase_id": None,
                "next_attempt_at": retry_at,
                "failure": failure,
            }
            await run_in_threadpool(self.store.record, row["id"], now, values, messages)
            return
        reason = f"turned off after {attempt} declined attempts: {message}"
        disabled = {**describe, "reason": reason, "code": DISABLED_DECLINED}
        messages.append(
            _message(env, f"{RECHARGE_DISABLED}:{row['id']}", RECHARGE_DISABLED, disabled, now)
        )
        turn_off = AuditEntry(
            env=env,
            actor=RECHARGE_ACTOR,
            action="auto_recharge.disabled",
            object_type="customer",
            object_id=customer,
            at=now,
            summary={"customer_id": customer, "reason": reason, "code": DISABLED_DECLINED},
        )
        values = {"status": "failed", "next_attempt_at": None, "failure": failure}
        await run_in_threadpool(self.store.record, row["id"], now, values, messages, turn_off)
        await self.refresh(env, customer)

    async def _succeeded(self, env: str, crossing_id: str, now: int) -> None:
        """The crossing succeeded: tell the customer (``recharge.succeeded``), once, in the
        transaction that records it."""
        row = await run_in_threadpool(self.store.crossing, crossing_id)
        told = {**_describe(row, None), "purchase_id": row["purchase_id"]}
        message = _message(
            env, f"recharge.succeeded:{crossing_id}", "recharge.succeeded", told, now
        )
        values = {"status": "succeeded", "next_attempt_at": None, "failure": None}
        await run_in_threadpool(
            self.store.record,
            crossing_id,
            now,
            values,
            [message],
            None,
            ("requested", "charging", "pending", "retry"),
        )

    async def on_paid(self, env: str, purchase: Mapping[str, Any]) -> None:
        """The purchases core booked a purchase: a recharge's crossing succeeded."""
        if purchase.get("kind") != "recharge":
            return
        row = await run_in_threadpool(self.store.by_purchase, env, purchase["id"])
        if row is not None:
            await self._succeeded(env, row["id"], self.billing.clock())


def _message(
    env: str, message_id: str, kind: str, payload: Mapping[str, Any], now: int
) -> dict[str, Any]:
    """An outbox message for webhook endpoints (stored once per id)."""
    return {"id": message_id, "env": env, "type": kind, "payload": dict(payload), "created_at": now}


def _describe(row: Mapping[str, Any], settings: Any) -> dict[str, Any]:
    return {
        "customer_id": row["customer_id"],
        "crossing": row["id"],
        "amount": row.get("amount") or (format(settings.amount, "f") if settings else None),
        "currency": row.get("currency") or (settings.currency if settings else None),
    }
