"""Credit purchases: prepaid credit a customer buys through its payment provider.

Two kinds, one booking rule:

- a **top-up** (:meth:`CreditPurchases.start_top_up`): the customer pays on the provider's
  hosted page (a Stripe Checkout Session, an Adyen Checkout session) and is sent back;
- a **recharge** (:meth:`CreditPurchases.start_recharge`): the saved payment method is
  charged off session (auto-recharge builds on this).

**The credit is booked only on the provider's signed success webhook**, never on the redirect
back and never on the provider's synchronous answer. Booking is one credit grant with an id
derived from the purchase, written by the customer's shard in the transaction that moves the
purchase from ``pending`` (or ``failed``) to ``paid`` (:func:`tallyray.storage.purchases.
mark_paid`): a webhook delivered three times, or twice at once, books once. A failure webhook
moves it to ``failed`` and books nothing; an expired hosted page to ``canceled``.

Every paid purchase gets a receipt (:func:`tallyray.invoicing.purchase_rules.build_receipt`),
issued once, after the booking: a delivery that finds the purchase paid but without its
receipt (the process stopped in between) issues it.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode, urlsplit

from starlette.concurrency import run_in_threadpool

from tallyray.errors import Conflict, InvalidInput, Problem
from tallyray.invoicing.payments.base import (
    CheckoutRequest,
    HostedCheckout,
    PaymentRequest,
    PaymentResult,
    ProviderEvent,
)
from tallyray.invoicing.payments.matching import amount_mismatch
from tallyray.invoicing.purchase_rules import build_receipt
from tallyray.invoicing.runs import buyer_block, buyer_party, seller_party
from tallyray.invoicing.tax import TaxEngine, build_engine, parse_tax_config
from tallyray.pricing.events import format_timestamp
from tallyray.pricing.money import currency, parse_amount
from tallyray.storage.audit import Actor, AuditEntry
from tallyray.storage.catalog import CustomerRecord, new_id
from tallyray.storage.purchases import NewPurchase, PurchaseStore

if TYPE_CHECKING:
    from tallyray.invoicing.service import Billing

__all__ = ["CreditPurchases", "Paid", "check_return_url", "grant_id_of", "purchase_json"]

log = logging.getLogger("tallyray.purchases")

Paid = Callable[[str, Mapping[str, Any]], Awaitable[None]]
"""Told ``(env, purchase)`` once, after the delivery that booked a purchase's grant."""


def grant_id_of(purchase_id: str) -> str:
    """The one credit grant a purchase can book: the same id on every delivery, so the
    shard's account and the store both see a second booking as the first one."""
    digest = hashlib.sha256(f"purchase\x00{purchase_id}".encode()).hexdigest()
    return f"grant_{digest[:24]}"


@dataclass
class CreditPurchases:
    """Starting purchases, and what the providers' webhooks mean for them."""

    billing: Billing
    store: PurchaseStore
    on_paid: list[Paid] = field(default_factory=list)
    """Called after a delivery booked a purchase (the recharge notifies the customer)."""
    _tax: TaxEngine | None = field(default=None, init=False)

    @property
    def tax(self) -> TaxEngine:
        if self._tax is None:
            self._tax = build_engine(parse_tax_config(self.billing.tax_raw))
        return self._tax

    # -- starting ------------------------------------------------------------------------

    async def start_top_up(
        self,
        env: str,
        customer_id: str,
        amount: object,
        currency_code: object | None,
        return_url: str,
        audit: AuditEntry | None = None,
    ) -> dict[str, Any]:
        """A pending top-up and the provider's hosted page to pay it on. ``return_url`` is
        where the customer comes back (``?top_up=<id>&result=paid|canceled`` added)."""
        record = await run_in_threadpool(self.billing.catalog.customer, env, customer_id)
        value, code = self.checked_amount(record, amount, currency_code)
        name, provider = self._checkout_provider(env, record)
        purchase_id = new_id("pur")
        request = CheckoutRequest(
            purchase_id=purchase_id,
            amount=value,
            currency=code,
            customer_id=record.id,
            customer_email=record.email,
            customer_name=record.name,
            provider_customer_id=record.billing.get("provider_customer_id"),
            description=f"Prepaid credit {value:f} {code}",
            success_url=_with_query(return_url, top_up=purchase_id, result="paid"),
            cancel_url=_with_query(return_url, top_up=purchase_id, result="canceled"),
        )
        session = await run_in_threadpool(provider.start_checkout, request)
        now = self.billing.clock()
        if audit is not None:
            audit = AuditEntry(
                env=audit.env,
                actor=audit.actor,
                action="credit_purchase.created",
                object_type="credit_purchase",
                object_id=purchase_id,
                at=now,
                request_id=audit.request_id,
                summary={"customer_id": customer_id, "amount": f"{value:f}", "currency": code},
            )
        purchase = await run_in_threadpool(
            self.store.add,
            NewPurchase(
                id=purchase_id,
                env=env,
                customer_id=record.id,
                kind="top_up",
                amount=f"{value:f}",
                currency=code,
                provider=name,
                provider_reference=session.reference,
                checkout=session.to_json(),
                created_at=now,
            ),
            audit,
        )
        return purchase

    async def start_recharge(
        self,
        env: str,
        customer_id: str,
        amount: Decimal,
        *,
        purchase_id: str | None = None,
        attempt: int = 1,
    ) -> tuple[dict[str, Any], PaymentResult | None]:
        """Charge the customer's saved payment method off session for ``amount`` of credit.

        The purchase row (kind ``recharge``) is written *before* the provider is asked, so a
        caller that passes the same ``purchase_id`` again (a retry after a crash, another
        replica) finds it and charges nothing twice: an existing purchase the provider has
        answered for this ``attempt`` is returned as it is, with no result. ``attempt`` makes
        the provider's idempotency key (``<purchase id>:<attempt>``): the same attempt asked
        again after an outage is sent again and charged once; a later attempt (after a
        decline) charges again. A synchronous decline marks the purchase ``failed``; success or
        pending leaves it ``pending`` until the signed webhook books it (a ``failed`` one can
        still be paid). Raises :class:`~tallyray.errors.ProviderUnavailable` when the provider
        cannot be reached (the purchase stays pending; retry with the same ``purchase_id`` and
        ``attempt``).
        """
        record = await run_in_threadpool(self.billing.catalog.customer, env, customer_id)
        value, code = self.checked_amount(record, amount, None, limits=False)
        name = str(record.billing.get("payment_provider") or "manual")
        self.billing.provider(env, name)  # 409 before the row when env has no such provider
        purchase_id = purchase_id or new_id("pur")
        if not purchase_id.startswith("pur_"):
            raise InvalidInput(
                "a purchase id starts with 'pur_'", [Problem("purchase_id", purchase_id)]
            )
        now = self.billing.clock()
        if await run_in_threadpool(self.store.env_of, purchase_id) is not None:
            existing = await run_in_threadpool(self.store.get, env, purchase_id)
            if not _charge_again(existing, attempt):
                return existing, None
            return await self._charge(env, record, existing, attempt)
        try:
            await run_in_threadpool(
                self.store.add,
                NewPurchase(
                    id=purchase_id,
                    env=env,
                    customer_id=record.id,
                    kind="recharge",
                    amount=f"{value:f}",
                    currency=code,
                    provider=name,
                    provider_reference=None,
                    checkout=None,
                    created_at=now,
                ),
            )
        except Conflict:  # another process wrote it first
            return await run_in_threadpool(self.store.get, env, purchase_id), None
        purchase = await run_in_threadpool(self.store.get, env, purchase_id)
        return await self._charge(env, record, purchase, attempt)

    async def _charge(
        self, env: str, record: CustomerRecord, purchase: Mapping[str, Any], attempt: int
    ) -> tuple[dict[str, Any], PaymentResult | None]:
        """One off-session attempt for a recharge purchase; the provider's idempotency key
        (``<purchase id>:<attempt>``) makes asking twice for one attempt charge once."""
        purchase_id = purchase["id"]
        value, code = Decimal(purchase["amount"]), purchase["currency"]
        provider = self.billing.provider(env, purchase["provider"])
        request = PaymentRequest(
            invoice_id=purchase_id,
            invoice_number="",
            amount=value,
            currency=code,
            customer_id=record.id,
            customer_email=record.email,
            customer_name=record.name,
            provider_customer_id=record.billing.get("provider_customer_id"),
            payment_method=record.billing.get("payment_method"),
            attempt=attempt,
            description=f"Prepaid credit {value:f} {code} (auto-recharge)",
            purchase_id=purchase_id,
        )
        result = await run_in_threadpool(provider.collect, request)
        known = record.billing.get("provider_customer_id")
        if result.provider_customer_id and result.provider_customer_id != known:
            # As for invoices: the next charge must find the same provider customer.
            await run_in_threadpool(
                self.billing.catalog.set_billing,
                env,
                record.id,
                {"provider_customer_id": result.provider_customer_id},
            )
        if result.reference:
            await run_in_threadpool(
                self.store.set_reference,
                env,
                purchase_id,
                result.reference,
                {**result.to_json(), "attempt": attempt},
                self.billing.clock(),
            )
        if result.status == "failed":
            await run_in_threadpool(
                self.store.settle_unpaid,
                env,
                purchase_id,
                "failed",
                {
                    "code": result.failure_code,
                    "message": result.failure_message,
                    "attempt": attempt,
                },
                self.billing.clock(),
            )
        return await run_in_threadpool(self.store.get, env, purchase_id), result

    def checked_amount(
        self,
        record: CustomerRecord,
        amount: object,
        currency_code: object | None,
        *,
        limits: bool = True,
    ) -> tuple[Decimal, str]:
        """The amount and currency of a purchase for ``record``: 422 with what to fix."""
        cur = currency(record.currency if currency_code is None else currency_code)
        if cur.code != record.currency:
            raise InvalidInput(
                f"customer {record.id!r} is billed in {record.currency}: credit in {cur.code} "
                f"could not pay for its usage; buy {record.currency}",
                [Problem("currency", f"must be {record.currency}")],
            )
        value = parse_amount(amount, places=cur.minor_units, field="amount", sign="positive")
        if limits:
            self.billing.config.top_ups.check(value, cur.code)
        return value, cur.code

    def _checkout_provider(self, env: str, record: CustomerRecord) -> tuple[str, HostedCheckout]:
        name = str(record.billing.get("payment_provider") or "manual")
        provider = self.billing.provider(env, name)
        start = getattr(provider, "start_checkout", None)
        if not callable(start):
            raise Conflict(
                f"customer {record.id!r} pays by {name}, which has no payment page: top-ups "
                'need "payment_provider": "stripe" or "adyen" on the customer'
            )
        return name, provider  # type: ignore[return-value]  # has start_checkout

    # -- webhooks ------------------------------------------------------------------------

    async def on_event(self, env: str, name: str, event: ProviderEvent) -> None:
        """What one verified provider event means for its purchase. Safe to run for every
        delivery of the same event, in any order, at once."""
        assert event.purchase_id is not None
        purchase = await run_in_threadpool(self.store.get, env, event.purchase_id)
        if purchase["provider"] != name:
            log.warning(
                "%s event %s names purchase %s, paid through %s: ignored",
                name,
                event.event_id,
                purchase["id"],
                purchase["provider"],
            )
            return
        now = self.billing.clock()
        if event.kind == "payment.succeeded":
            mismatch = amount_mismatch(Decimal(purchase["amount"]), purchase["currency"], event)
            if mismatch is not None:
                log.warning(
                    "%s says purchase %s was paid %s %s, not %s %s: not booked",
                    name,
                    purchase["id"],
                    mismatch["received"]["amount"],
                    mismatch["received"]["currency"],
                    mismatch["expected"]["amount"],
                    mismatch["expected"]["currency"],
                )
                await run_in_threadpool(
                    self.store.note,
                    env,
                    purchase["id"],
                    {"mismatch": mismatch, "webhook": event.event_id},
                    now,
                )
                return
            await self.book(env, purchase, event.reference, name)
        elif event.kind in ("payment.failed", "payment.canceled"):
            await run_in_threadpool(
                self.store.settle_unpaid,
                env,
                purchase["id"],
                "failed" if event.kind == "payment.failed" else "canceled",
                {"message": event.failure_message, "webhook": event.event_id},
                now,
            )

    async def book(
        self, env: str, purchase: Mapping[str, Any], payment_reference: str | None, name: str
    ) -> dict[str, Any]:
        """Book the purchase's grant unless it is booked already, then make sure it has its
        receipt. Returns the purchase afterwards."""
        booked_now = False
        if purchase["status"] in ("pending", "failed"):
            now = self.billing.clock()
            grant_id = grant_id_of(purchase["id"])
            audit = AuditEntry(
                env=env,
                actor=Actor("provider", f"provider:{name}", name),
                action="credit_grant.created",
                object_type="credit_grant",
                object_id=grant_id,
                at=now,
                request_id=None,
                summary={
                    "customer_id": purchase["customer_id"],
                    "amount": purchase["amount"],
                    "currency": purchase["currency"],
                    "purchase_id": purchase["id"],
                    "kind": purchase["kind"],
                },
            )
            grant = {
                "id": grant_id,
                "env": env,
                "customer_id": purchase["customer_id"],
                "amount": purchase["amount"],
                "currency": purchase["currency"],
                "priority": self.billing.config.top_ups.priority,
                "expires_at": None,
                "created_at": now,
                "purchase": {"id": purchase["id"], "reference": payment_reference},
                "audit": audit,
            }
            router = self.billing.router
            answer = await router.call(
                router.index(env, purchase["customer_id"]),
                "add_grant",
                env,
                purchase["customer_id"],
                grant,
                idempotent=True,
            )
            booked_now = answer is None
        current = await run_in_threadpool(self.store.get, env, purchase["id"])
        if current["status"] == "paid":
            if current["document"] is None:
                current = {**current, "document": await self.issue_receipt(env, current)}
            if booked_now:
                for hook in self.on_paid:
                    try:
                        await hook(env, current)
                    except Exception:  # noqa: BLE001 — the booking stands; say so in the log
                        log.exception("after booking purchase %s", current["id"])
        return current

    async def issue_receipt(self, env: str, purchase: Mapping[str, Any]) -> dict[str, Any]:
        record = await run_in_threadpool(
            self.billing.catalog.customer, env, purchase["customer_id"]
        )
        config = self.billing.config
        now = self.billing.clock()
        decision = self.tax.decide(seller_party(config), buyer_party(record), now)
        document = build_receipt(
            purchase,
            config.seller,
            buyer_block(record),
            decision,
            issued_at=format_timestamp(now),
            paid_at=format_timestamp(int(purchase["paid_at"] or now)),
        )
        return await run_in_threadpool(
            self.store.add_receipt,
            env,
            purchase["id"],
            config.entity,
            config.top_ups.receipt_prefix,
            document,
            new_id("rct"),
            now,
        )


def _charge_again(purchase: Mapping[str, Any], attempt: int) -> bool:
    """Whether ``start_recharge`` should ask the provider for ``attempt`` of an existing
    recharge: never once paid or canceled; when the provider has not answered yet (an
    outage: the same attempt again, safe under its idempotency key); or for a later attempt
    than the last answered one (a retry after a decline)."""
    if purchase["kind"] != "recharge" or purchase["status"] in ("paid", "canceled"):
        return False
    answered = max(
        int((purchase.get("checkout") or {}).get("attempt", 0)),
        int((purchase.get("failure") or {}).get("attempt", 0)),
    )
    if purchase["provider_reference"] is None and purchase["status"] == "pending":
        return attempt >= max(answered, 1)
    return attempt > answered


def purchase_json(purchase: Mapping[str, Any]) -> dict[str, Any]:
    """A purchase as the API shows it."""
    checkout = purchase.get("checkout") or {}
    paid_at = purchase.get("paid_at")
    return {
        "id": purchase["id"],
        "object": purchase["kind"],
        "customer_id": purchase["customer_id"],
        "status": purchase["status"],
        "amount": purchase["amount"],
        "currency": purchase["currency"],
        "provider": purchase["provider"],
        "provider_reference": purchase["provider_reference"],
        "checkout_url": checkout.get("url"),
        "session_data": checkout.get("session_data"),
        "grant_id": purchase["grant_id"],
        "receipt": purchase["document"],
        "failure": purchase["failure"],
        "created_at": format_timestamp(int(purchase["created_at"])),
        "paid_at": None if paid_at is None else format_timestamp(int(paid_at)),
    }


def _with_query(url: str, **params: str) -> str:
    joiner = "&" if urlsplit(url).query else "?"
    return f"{url}{joiner}{urlencode(params)}"


def check_return_url(url: object) -> str:
    """A ``return_url`` from a request: an absolute http(s) URL."""
    if not isinstance(url, str) or len(url) > 2000:
        raise InvalidInput(
            "'return_url' must be an http:// or https:// URL", [Problem("return_url", "not a URL")]
        )
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise InvalidInput(
            "'return_url' must be an absolute http:// or https:// URL",
            [Problem("return_url", url[:80])],
        )
    return url
