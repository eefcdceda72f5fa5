"""Invoicing as the API uses it: runs, invoice states, documents, payments, dunning.

The thin shell around the pure builder and the store: it owns the clock, drives invoice runs
(Ray tasks, a few at a time) from the process that started them, and talks to the payment
providers. Everything it decides is kept in the store, so a run or a payment schedule
survives the process: a crashed run is resumed (``POST /v1/invoice-runs/{id}/resume``) and
finishes what is missing without billing anything twice.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from decimal import Decimal
from typing import Any

from starlette.concurrency import run_in_threadpool

from tallyray.clock import system_clock
from tallyray.errors import (
    Conflict,
    InvalidInput,
    ProviderUnavailable,
    TallyrayError,
    WebhookRefused,
)
from tallyray.invoicing.config import InvoicingConfig, parse_invoicing_config
from tallyray.invoicing.dunning import next_attempt
from tallyray.invoicing.payment_methods import SavedMethods
from tallyray.invoicing.payments import (
    PaymentProvider,
    PaymentProviders,
    PaymentRequest,
    ProviderEvent,
)
from tallyray.invoicing.payments.matching import amount_mismatch
from tallyray.invoicing.purchases import CreditPurchases
from tallyray.invoicing.recharge import AutoRecharges
from tallyray.invoicing.runs import RunSpec, invoice_chunk_task
from tallyray.pricing.events import format_timestamp
from tallyray.pricing.money import currency, parse_amount, round_amount
from tallyray.storage.audit import AuditEntry
from tallyray.storage.billing import BillingStore
from tallyray.storage.catalog import Catalog, CustomerRecord
from tallyray.storage.leases import HEARTBEAT_SECONDS, process_driver
from tallyray.storage.payment_methods import PaymentMethodStore
from tallyray.storage.purchases import PurchaseStore
from tallyray.storage.recharges import RechargeStore

__all__ = ["Billing"]

log = logging.getLogger("tallyray.invoicing")

_US = 1_000_000


class _Lost(Exception):
    """The run was taken over by another driver (or ended) while this one drove it."""


@dataclass
class Billing:
    catalog: Catalog
    store: BillingStore
    database_url: str
    router: Any
    """The shard router (closes periods on every shard before a run)."""
    invoicing_raw: Mapping[str, Any] | None = None
    tax_raw: Mapping[str, Any] | None = None
    rounding: str | None = None
    grace_seconds: int = 3 * 86_400
    providers: PaymentProviders = field(default_factory=PaymentProviders)
    """Each environment's payment providers: a test invoice never meets live credentials."""
    clock: Callable[[], int] = lambda: 0
    parallelism: int = 2
    secrets_file: str | None = None
    """With a secrets file, invoice-run tasks read the database URL from it, not from their
    arguments (:mod:`tallyray.credentials`)."""
    driver: str = field(default_factory=process_driver)
    """This process's name on the runs it drives (:mod:`tallyray.storage.leases`)."""
    config: InvoicingConfig = field(init=False)
    methods: SavedMethods = field(init=False)
    """Saved payment methods: cards saved on the providers' own pages."""
    recharges: AutoRecharges = field(init=False)
    """Auto-recharge: settings, and the sweep that charges each crossing once."""
    purchases: CreditPurchases = field(init=False)
    """Top-ups and recharges: prepaid credit bought through the providers."""
    _runs: dict[str, asyncio.Task[None]] = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        self.config = parse_invoicing_config(self.invoicing_raw)
        self.purchases = CreditPurchases(self, PurchaseStore(self.store.engine))
        self.methods = SavedMethods(self, PaymentMethodStore(self.store.engine))
        self.recharges = AutoRecharges(self, RechargeStore(self.store.engine))

    # -- invoice runs --------------------------------------------------------------------

    async def start_run(
        self,
        env: str,
        until: int | None,
        force: bool,
        finalize: bool | None,
        audit: AuditEntry | None = None,
    ) -> dict[str, Any]:
        now = self.clock()
        settled = now - self.grace_seconds * _US
        until = settled if until is None else until
        if until > now:
            raise InvalidInput(f"until {format_timestamp(until)} is in the future")
        if until > settled and not force:
            raise Conflict(
                f"periods ending after {format_timestamp(settled)} are still in their grace "
                'window for late events; wait, or send "force": true to close them now'
            )
        finalize = self.config.auto_finalize if finalize is None else finalize
        options = {"force": force, "finalize": finalize}
        if audit is not None:
            audit = replace(audit, summary={**options, "until": format_timestamp(until)})
        run_id = await run_in_threadpool(
            lambda: self.store.create_run(env, until, options, now, audit, driver=self.driver)
        )
        assert run_id is not None  # only a scheduled run's INSERT can lose its slot
        return await self._begin(env, run_id, until, finalize)

    async def start_scheduled_run(self, env: str, slot: int) -> dict[str, Any] | None:
        """Start the run of schedule slot ``slot`` (:mod:`tallyray.invoicing.scheduler`):
        the periods that ended by ``slot`` less the grace window, finalized as the config
        says. ``None`` when another process (a replica, or this one before a restart) has
        the slot already."""
        until = slot - self.grace_seconds * _US
        finalize = self.config.auto_finalize
        options = {"force": False, "finalize": finalize, "scheduled": True}
        run_id = await run_in_threadpool(
            lambda: self.store.create_run(
                env, until, options, self.clock(), scheduled_for=slot, driver=self.driver
            )
        )
        if run_id is None:
            return None
        return await self._begin(env, run_id, until, finalize)

    async def _begin(self, env: str, run_id: str, until: int, finalize: bool) -> dict[str, Any]:
        set_aside = await self._close(env, until)
        await self._launch(env, run_id, until, finalize, set_aside)
        return await run_in_threadpool(self.store.run, env, run_id, self.clock())

    async def resume_run(
        self, env: str, run_id: str, audit: AuditEntry | None = None
    ) -> dict[str, Any]:
        """Take over a run that failed, ended with errors, or whose driver stopped
        (``interrupted``), and drive it from this process: only what is missing is
        invoiced. Of two resumes at once, one drives it and the other is a
        :class:`Conflict`; so is a run whose driver still beats."""
        run = await run_in_threadpool(self.store.run, env, run_id, self.clock())
        if run["status"] == "succeeded":
            return run
        if not await run_in_threadpool(
            self.store.claim_run, env, run_id, self.driver, self.clock()
        ):
            run = await run_in_threadpool(self.store.run, env, run_id, self.clock())
            if run["status"] == "succeeded":
                return run
            raise Conflict(
                f"invoice run {run_id} is still running (its driver reports); follow it "
                f"with GET /v1/invoice-runs/{run_id}"
            )
        until = _micros(run["until"])
        await run_in_threadpool(lambda: self.store.update_run(run_id, audit, status="running"))
        set_aside = await self._close(env, until)
        await self._launch(
            env, run_id, until, bool(run["options"].get("finalize", True)), set_aside
        )
        return await run_in_threadpool(self.store.run, env, run_id, self.clock())

    async def _close(self, env: str, until: int) -> set[str]:
        """Close the periods on every shard; returns the customers whose accounts are set
        aside (their periods are not written: the run must leave them out)."""
        closed = await self.router.call_all("close_periods", env, until)
        return {customer for answer in closed for customer in answer.get("set_aside", ())}

    async def _launch(
        self, env: str, run_id: str, until: int, finalize: bool, set_aside: set[str]
    ) -> None:
        customers = sorted(
            (await run_in_threadpool(self.catalog.subscriptions, env, None, until)).keys()
        )
        if not await run_in_threadpool(
            lambda: self.store.beat_run(
                run_id, self.driver, self.clock(), status="running", customers=len(customers)
            )
        ):
            raise Conflict(f"invoice run {run_id} was taken over by another process")
        left_out = [c for c in customers if c in set_aside]
        if left_out:
            customers = [c for c in customers if c not in set_aside]
            await run_in_threadpool(
                self.store.run_progress,
                run_id,
                len(left_out),
                0,
                [
                    {
                        "customer_id": customer,
                        "message": "its account is set aside on its shard after an error "
                        "applying its stored data, so its periods are not closed; repair the "
                        "data, restart the shard, and resume this run",
                    }
                    for customer in left_out
                ],
            )
        spec = RunSpec(
            database_url=None if self.secrets_file else self.database_url,
            secrets_file=self.secrets_file,
            env=env,
            run_id=run_id,
            until=until,
            finalize=finalize,
            invoicing=dict(self.invoicing_raw or {}),
            tax=None if self.tax_raw is None else dict(self.tax_raw),
            rounding=self.rounding,
        )
        size = self.config.chunk_size
        chunks = [customers[i : i + size] for i in range(0, len(customers), size)]
        self._runs[run_id] = asyncio.get_running_loop().create_task(
            self._drive(spec, chunks, len(left_out)), name=f"invoice-run-{run_id}"
        )

    async def _drive(self, spec: RunSpec, chunks: Sequence[list[str]], left_out: int = 0) -> None:
        """Run the chunks as Ray tasks, ``parallelism`` at a time, then collect payment for
        what was finalized."""
        run_id = spec.run_id
        assert run_id is not None
        remote = invoice_chunk_task()
        gate = asyncio.Semaphore(self.parallelism)

        async def beat(**values: Any) -> None:
            """Say this process still drives the run; :class:`_Lost` when it no longer does."""
            if not await run_in_threadpool(
                lambda: self.store.beat_run(run_id, self.driver, self.clock(), **values)
            ):
                raise _Lost(run_id)

        async def one(chunk: list[str]) -> dict[str, Any]:
            async with gate:
                result: dict[str, Any] = await remote.remote(spec, chunk, self.clock())
            await beat()
            return result

        async def keep_beating() -> None:
            while True:
                await asyncio.sleep(HEARTBEAT_SECONDS)
                await beat()

        beating = asyncio.get_running_loop().create_task(keep_beating())
        work: asyncio.Future[list[dict[str, Any]]] | None = None
        try:
            work = asyncio.gather(*(one(c) for c in chunks))
            either: list[asyncio.Future[Any]] = [work, beating]
            done, _ = await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
            if beating in done:
                beating.result()  # raises what stopped it (_Lost)
            results = await work
            errors = left_out + sum(len(r["errors"]) for r in results)
            status = "succeeded" if not errors else "completed_with_errors"
            await beat(status=status, finished_at=self.clock())
        except _Lost:
            log.warning("invoice run %s: another process took it over; this one stops", run_id)
            return
        except Exception as error:  # noqa: BLE001 — the run's status must say it failed
            log.error("invoice run %s failed: %s", run_id, error)
            await run_in_threadpool(
                self.store.run_progress,
                run_id,
                0,
                0,
                [{"customer_id": None, "message": f"run failed: {error}; resume it"}],
            )
            await run_in_threadpool(
                lambda: self.store.beat_run(
                    run_id, self.driver, self.clock(), status="failed", finished_at=self.clock()
                )
            )
            return
        finally:
            beating.cancel()
            if work is not None and not work.done():
                work.cancel()
        if spec.finalize:
            try:
                await self.collect_due(spec.env)
            except Exception as error:  # noqa: BLE001 — the dunning clock tries again
                log.warning("collecting after run %s: %s", spec.run_id, error)

    async def wait(self, run_id: str) -> None:
        """Wait for a run this process drives (tests and the CLI's --wait)."""
        task = self._runs.get(run_id)
        if task is not None:
            await asyncio.shield(task)

    # -- invoice states ------------------------------------------------------------------

    async def finalize(
        self, env: str, invoice_id: str, audit: AuditEntry | None = None
    ) -> dict[str, Any]:
        cfg = self.config
        await run_in_threadpool(
            self.store.finalize,
            env,
            invoice_id,
            cfg.number_prefix,
            cfg.entity,
            cfg.payment_terms_days,
            self.clock(),
            audit,
        )
        await self.collect_due(env)
        return await run_in_threadpool(self.store.invoice, env, invoice_id)

    async def move(
        self, env: str, invoice_id: str, status: str, audit: AuditEntry | None = None
    ) -> dict[str, Any]:
        allowed = {
            "void": ("draft", "finalized", "uncollectible"),
            "paid": ("finalized", "uncollectible"),
            "uncollectible": ("finalized",),
        }[status]
        await run_in_threadpool(
            self.store.set_status, env, invoice_id, status, allowed, self.clock(), audit
        )
        return await run_in_threadpool(self.store.invoice, env, invoice_id)

    async def credit_note(
        self,
        env: str,
        invoice_id: str,
        body: Mapping[str, Any],
        audit: AuditEntry | None = None,
    ) -> Any:
        reason = body.get("reason")
        if not isinstance(reason, str) or not reason.strip():
            raise InvalidInput("say why the invoice is credited: 'reason' is required")
        raw_amount = body.get("amount")
        cfg = self.config

        def build(invoice: dict[str, Any], credited: Decimal) -> dict[str, Any]:
            cur = currency(invoice["currency"])
            total = Decimal(invoice["total"])
            left = total - credited
            amount = left if raw_amount is None else parse_amount(raw_amount, field="amount")
            if amount != round_amount(amount, cur):
                raise InvalidInput(f"amount has more decimals than {cur.code} allows")
            if amount <= 0 or amount > left:
                raise InvalidInput(
                    f"a credit note for invoice {invoice['number']} must be more than 0 and at "
                    f"most {left} {cur.code} (its total less what was credited before)"
                )
            return {
                "object": "credit_note",
                "credit_note_for": {"id": invoice["id"], "number": invoice["number"]},
                "reason": reason,
                "customer": invoice["customer"],
                "seller": invoice["seller"],
                "locale": invoice["locale"],
                "currency": cur.code,
                "period": invoice["period"],
                "lines": [
                    {
                        "kind": "credit",
                        "description": f"Credit for invoice {invoice['number']}: {reason}",
                        "amount": format(amount, "f"),
                        "precise_amount": format(amount, "f"),
                    }
                ],
                "subtotal": format(amount, "f"),
                "taxes": [],
                "tax": "0",
                "total": format(amount, "f"),
                "credits": [],
                "credits_applied": "0",
                "amount_due": "0",
                "notes": list(invoice.get("notes", [])),
            }

        return await run_in_threadpool(
            self.store.add_credit_note,
            env,
            invoice_id,
            build,
            cfg.credit_note_prefix,
            cfg.entity,
            self.clock(),
            audit,
        )

    # -- payments ------------------------------------------------------------------------

    def provider(self, env: str, name: str) -> PaymentProvider:
        """``env``'s provider ``name``: a :class:`Conflict` when ``env`` has no credentials
        for it, whatever the other environment has."""
        return self.providers.get(env, name)

    async def collect_due(self, env: str, page: int = 200, concurrency: int = 8) -> int:
        """Try to collect every finalized invoice whose next attempt is due, a page at a
        time, ``concurrency`` at once (a provider call is a network round trip)."""
        gate = asyncio.Semaphore(concurrency)
        seen: set[str] = set()

        async def one(invoice: Mapping[str, Any], customer: CustomerRecord | None) -> None:
            async with gate:
                try:
                    await self.collect(env, invoice, customer, reread=False)
                except TallyrayError as error:  # one invoice must not stop the others
                    log.warning("collecting %s: %s", invoice["id"], error)

        while True:
            due = await run_in_threadpool(self.store.due_for_payment, env, self.clock(), page)
            fresh = [i for i in due if i["id"] not in seen]
            if not fresh:
                return len(seen)
            seen.update(i["id"] for i in fresh)
            customers = await run_in_threadpool(
                self.catalog.customers, env, {i["customer_id"] for i in fresh}
            )
            await asyncio.gather(*(one(i, customers.get(i["customer_id"])) for i in fresh))

    async def collect(
        self,
        env: str,
        invoice: Mapping[str, Any],
        customer: CustomerRecord | None = None,
        reread: bool = True,
    ) -> dict[str, Any]:
        """One payment attempt for a finalized invoice; returns the invoice afterwards
        (as given, with ``reread`` false)."""
        if customer is None:
            customer = await run_in_threadpool(self.catalog.customer, env, invoice["customer_id"])
        name = (
            invoice["payment"]["provider"] or customer.billing.get("payment_provider") or "manual"
        )
        provider = self.provider(env, name)
        attempt = await run_in_threadpool(self.store.claim_attempt, env, invoice["id"])
        if attempt is None:
            return dict(invoice)  # another process took this attempt
        request = PaymentRequest(
            invoice_id=invoice["id"],
            invoice_number=invoice["number"],
            amount=Decimal(invoice["amount_due"]),
            currency=invoice["currency"],
            customer_id=customer.id,
            customer_email=customer.email,
            customer_name=customer.name,
            provider_customer_id=customer.billing.get("provider_customer_id"),
            payment_method=customer.billing.get("payment_method"),
            attempt=attempt,
            description=f"Invoice {invoice['number']}",
        )
        now = self.clock()
        try:
            result = await run_in_threadpool(provider.collect, request)
        except TallyrayError as error:
            # Nothing was charged as far as we know. An outage is tried again in an hour (the
            # same attempt); anything else (an amount the provider cannot take) waits for an
            # operator, who can retry with POST /v1/invoices/{id}/pay.
            retry = now + 3600 * _US if isinstance(error, ProviderUnavailable) else None
            await run_in_threadpool(
                self.store.record_payment,
                env,
                invoice["id"],
                attempt - 1,
                name,
                "error",
                None,
                {"message": error.message},
                retry,
                now,
            )
            raise
        if result.provider_customer_id and result.provider_customer_id != customer.billing.get(
            "provider_customer_id"
        ):
            await run_in_threadpool(
                self.catalog.set_billing,
                env,
                customer.id,
                {"provider_customer_id": result.provider_customer_id},
            )
        await self._settle(
            env,
            invoice["id"],
            attempt,
            name,
            result.status,
            result.reference,
            result.to_json(),
            now,
        )
        if not reread:
            return dict(invoice)
        return await run_in_threadpool(self.store.invoice, env, invoice["id"])

    async def _settle(
        self,
        env: str,
        invoice_id: str,
        attempt: int,
        provider: str,
        status: str,
        reference: str | None,
        detail: Mapping[str, Any],
        now: int,
    ) -> None:
        """Book the outcome of a payment attempt: paid, a retry by the dunning schedule, or
        uncollectible once the schedule is spent."""
        retry = None
        if status == "failed":
            retry = next_attempt(attempt, now, self.config.retry_days)
        await run_in_threadpool(
            self.store.record_payment,
            env,
            invoice_id,
            attempt,
            provider,
            status,
            reference,
            detail,
            retry,
            now,
        )
        if status == "succeeded":
            await run_in_threadpool(
                self.store.set_status, env, invoice_id, "paid", ("finalized", "uncollectible"), now
            )
        elif status == "failed" and retry is None:
            await run_in_threadpool(
                self.store.set_status, env, invoice_id, "uncollectible", ("finalized",), now
            )

    async def webhook(self, name: str, headers: Mapping[str, str], body: bytes) -> int:
        """Process a provider's webhook: each event once. Returns how many were new.

        The delivery belongs to the environment whose webhook secret verifies it, its events
        must say they are of that mode, and the invoices they name must be that
        environment's (:class:`WebhookRefused` otherwise, before anything is processed). A
        payment reported as succeeded marks its invoice paid only with the exact amount due
        in the invoice's currency; anything else is booked as a ``mismatch`` and the invoice
        stays due."""
        env, events = await run_in_threadpool(
            self.providers.parse_webhook, name, headers, body, system_clock()
        )
        bought: list[ProviderEvent] = []
        ours: list[ProviderEvent] = []
        saved: list[ProviderEvent] = []
        for event in events:
            if event.kind == "method.saved":
                saved.append(event)
                continue
            if event.kind != "ignored" and event.purchase_id is not None:
                found = await run_in_threadpool(self.purchases.store.env_of, event.purchase_id)
                if found is None:
                    log.warning("%s webhook for unknown purchase %s", name, event.purchase_id)
                elif found != env:
                    raise WebhookRefused(
                        f"{name} event {event.event_id} is signed for the {env} environment "
                        f"but names purchase {event.purchase_id}, which is not a {env} "
                        "purchase: refused"
                    )
                else:
                    bought.append(event)
                continue
            if event.kind not in ("payment.succeeded", "payment.failed"):
                continue
            if event.invoice_id is None:
                continue
            found = await run_in_threadpool(self.store.invoice_env, event.invoice_id)
            if found is None:
                log.warning("%s webhook for unknown invoice %s", name, event.invoice_id)
                continue
            if found != env:
                log.warning(
                    "%s webhook %s (%s) names a %s invoice: refused",
                    name,
                    event.event_id,
                    env,
                    found,
                )
                raise WebhookRefused(
                    f"{name} event {event.event_id} is signed for the {env} environment but "
                    f"names invoice {event.invoice_id}, which is not a {env} invoice: refused"
                )
            ours.append(event)
        fresh = 0
        for event in saved:  # saving is idempotent: every delivery may finish the job
            fresh += await self.methods.on_event(env, name, event)
        for event in bought:
            # Every delivery is processed (booking is idempotent): one that stopped half way
            # must be finishable by the provider's retry. The ledger only counts new ones.
            await self.purchases.on_event(env, name, event)
            fresh += await run_in_threadpool(
                self.store.first_time,
                name,
                event.event_id,
                env,
                event.kind,
                event.purchase_id,
                self.clock(),
            )
        for event in ours:
            assert event.invoice_id is not None
            first = await run_in_threadpool(
                self.store.first_time,
                name,
                event.event_id,
                env,
                event.kind,
                event.invoice_id,
                self.clock(),
            )
            if not first:
                continue
            fresh += 1
            await self._book_event(env, name, event)
        return fresh

    async def _book_event(self, env: str, name: str, event: ProviderEvent) -> None:
        """What one new, verified provider event means for its invoice."""
        assert event.invoice_id is not None
        invoice = await run_in_threadpool(self.store.invoice, env, event.invoice_id)
        if invoice["status"] in ("paid", "void"):
            return
        known = await run_in_threadpool(self.store.payments, env, event.invoice_id)
        if any(
            p["reference"] == event.reference and p["status"] in ("succeeded", "failed")
            for p in known
        ):
            return  # the provider confirms an outcome we booked when we asked
        attempt = max(invoice["payment"]["attempts"], 1)
        if event.kind == "payment.succeeded":
            mismatch = amount_mismatch(Decimal(invoice["amount_due"]), invoice["currency"], event)
            if mismatch is not None:
                log.warning(
                    "%s says invoice %s was paid %s %s, but %s %s is due: not marked paid",
                    name,
                    event.invoice_id,
                    mismatch["received"]["amount"],
                    mismatch["received"]["currency"],
                    mismatch["expected"]["amount"],
                    mismatch["expected"]["currency"],
                )
                await run_in_threadpool(
                    self.store.record_mismatch,
                    env,
                    event.invoice_id,
                    attempt,
                    name,
                    event.reference,
                    {"webhook": event.event_id, **mismatch},
                    self.clock(),
                )
                return
        status = "succeeded" if event.kind == "payment.succeeded" else "failed"
        await self._settle(
            env,
            event.invoice_id,
            attempt,
            name,
            status,
            event.reference,
            {"webhook": event.event_id, "failure_message": event.failure_message},
            self.clock(),
        )


def _micros(text: str) -> int:
    from tallyray.pricing.events import parse_timestamp

    return parse_timestamp(text)
