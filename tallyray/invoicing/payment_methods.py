"""Saved payment methods: a customer adds, replaces or removes a card through its provider's
own page, and Tallyray keeps the provider's reference and what a person needs to recognise it.

1. :meth:`SavedMethods.start_setup` records a setup (``set_…``: whose card, which card it
   replaces) and asks the provider for its page (Stripe: a Checkout Session in ``setup``
   mode; Adyen: a hosted Checkout session storing the card with a zero-value check).
2. The customer enters the card there and is sent back. Coming back saves nothing.
3. The provider's signed webhook (``setup_intent.succeeded``; Adyen ``RECURRING_CONTRACT``)
   names the setup: :meth:`SavedMethods.on_event` saves the card for the setup's customer
   (from our record, never from the webhook's unsigned fields), makes it the default for
   off-session charges and removes the card it replaces. Delivered twice, it saves once.

Removing a card (:meth:`SavedMethods.remove`) forgets it here first, then asks the provider to
detach it; a provider that cannot be reached leaves the card unusable by Tallyray anyway.
Removing the last card turns the customer's auto-recharge off in the same transaction (its
charges could only decline), audited and announced as ``recharge.disabled``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from starlette.concurrency import run_in_threadpool

from tallyray.errors import Conflict, ProviderUnavailable, TallyrayError
from tallyray.invoicing.payments.base import (
    ProviderEvent,
    SavedMethod,
    SavesMethods,
    SetupRequest,
)
from tallyray.storage.audit import Actor, AuditEntry
from tallyray.storage.catalog import CustomerRecord, new_id
from tallyray.storage.payment_methods import NewMethod, PaymentMethodStore, method_json

if TYPE_CHECKING:
    from tallyray.invoicing.service import Billing

__all__ = ["SavedMethods"]

log = logging.getLogger("tallyray.payment_methods")


@dataclass
class SavedMethods:
    billing: Billing
    store: PaymentMethodStore

    def provider_of(self, env: str, record: CustomerRecord) -> tuple[str, SavesMethods]:
        name = str(record.billing.get("payment_provider") or "manual")
        provider = self.billing.provider(env, name)
        if not callable(getattr(provider, "start_setup", None)):
            raise Conflict(
                f"customer {record.id!r} pays by {name}, which cannot save a card: saved "
                'payment methods need "payment_provider": "stripe" or "adyen" on the customer'
            )
        return name, provider  # type: ignore[return-value]  # has start_setup

    async def start_setup(
        self,
        env: str,
        customer_id: str,
        success_url: str,
        cancel_url: str,
        replaces: str | None = None,
    ) -> dict[str, Any]:
        """A new setup and the provider's page to save the card on (``url``)."""
        record = await run_in_threadpool(self.billing.catalog.customer, env, customer_id)
        if replaces is not None:
            await run_in_threadpool(self.store.method, env, customer_id, replaces)  # 404
        name, provider = self.provider_of(env, record)
        setup_id = new_id("set")
        request = SetupRequest(
            setup_id=setup_id,
            customer_id=record.id,
            customer_email=record.email,
            customer_name=record.name,
            provider_customer_id=record.billing.get("provider_customer_id"),
            currency=record.currency,
            success_url=success_url,
            cancel_url=cancel_url,
        )
        session = await run_in_threadpool(provider.start_setup, request)
        if session.provider_customer_id and session.provider_customer_id != record.billing.get(
            "provider_customer_id"
        ):
            await run_in_threadpool(
                self.billing.catalog.set_billing,
                env,
                record.id,
                {"provider_customer_id": session.provider_customer_id},
            )
        await run_in_threadpool(
            self.store.add_setup,
            setup_id,
            env,
            record.id,
            name,
            session.reference,
            session.url,
            replaces,
            self.billing.clock(),
        )
        return {
            "id": setup_id,
            "object": "payment_method_setup",
            "customer_id": record.id,
            "provider": name,
            "url": session.url,
            "replaces": replaces,
        }

    async def list(self, env: str, customer_id: str) -> list[dict[str, Any]]:
        await run_in_threadpool(self.billing.catalog.customer, env, customer_id)  # 404
        rows = await run_in_threadpool(self.store.methods, env, customer_id)
        return [method_json(r) for r in rows]

    async def remove(
        self, env: str, customer_id: str, method_id: str, audit: AuditEntry | None = None
    ) -> dict[str, Any]:
        row, recharge_off = await run_in_threadpool(
            self.store.remove, env, customer_id, method_id, self.billing.clock(), audit
        )
        if recharge_off:  # the last card: auto-recharge was turned off with it
            try:
                await self.billing.recharges.refresh(env, customer_id)
            except TallyrayError as error:  # the sweep skips it anyway: it is off in the store
                log.warning("refreshing %s after its last card went: %s", customer_id, error)
        provider = self.billing.providers.get(env, row["provider"]) if row["provider"] else None
        forget = getattr(provider, "forget_method", None)
        if callable(forget):
            record = await run_in_threadpool(self.billing.catalog.customer, env, customer_id)
            try:
                await run_in_threadpool(
                    forget,
                    SavedMethod(
                        reference=row["reference"],
                        provider_customer_id=record.billing.get("provider_customer_id"),
                    ),
                )
            except ProviderUnavailable as error:
                log.warning("detaching %s at %s: %s", row["id"], row["provider"], error)
        return {**method_json(row), "deleted": True, "default": False}

    async def on_event(self, env: str, name: str, event: ProviderEvent) -> bool:
        """Save the card of one verified ``method.saved`` event; ``False`` when it is not
        ours (an unknown setup, one of the other environment or provider)."""
        assert event.method is not None and event.setup_id is not None
        setup = await run_in_threadpool(self.store.setup, event.setup_id)
        if setup is None or setup["env"] != env or setup["provider"] != name:
            log.warning("%s event %s names unknown setup %s", name, event.event_id, event.setup_id)
            return False
        provider = self.billing.provider(env, name)
        method = event.method
        describe = getattr(provider, "describe_method", None)
        if callable(describe) and method.last4 is None:
            method = await run_in_threadpool(describe, method)
        now = self.billing.clock()
        audit = AuditEntry(
            env=env,
            actor=Actor("provider", f"provider:{name}", name),
            action="payment_method.saved",
            object_type="payment_method",
            object_id="",
            at=now,
            request_id=None,
            summary={
                "customer_id": setup["customer_id"],
                "brand": method.brand,
                "last4": method.last4,
                "replaces": setup["replaces"],
            },
        )
        _, created = await run_in_threadpool(
            self.store.save,
            NewMethod(
                id=new_id("pm"),
                env=env,
                customer_id=setup["customer_id"],
                provider=name,
                reference=method.reference,
                brand=method.brand,
                last4=method.last4,
                exp_month=method.exp_month,
                exp_year=method.exp_year,
                provider_customer_id=method.provider_customer_id,
                created_at=now,
            ),
            setup["id"],
            setup["replaces"],
            audit,
        )
        return created
