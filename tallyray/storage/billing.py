"""The billing store: closed periods, exchange rates, invoice runs, invoices, credit notes,
document numbers and payments.

Invariants kept here, in the database, so that they hold across processes and crashes:

- one invoice per customer and period (a unique constraint): an invoice run can be repeated
  or resumed and never bills a period twice;
- document numbers are taken in the transaction that issues the document, from a counter row
  locked by the update: numbers are sequential without gaps per environment, issuing entity
  and kind (a rolled-back issue rolls its number back);
- a finalized invoice's document never changes; only its status moves on (paid, void,
  uncollectible), and corrections are credit notes;
- each payment-provider webhook event is processed once.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from decimal import Decimal
from typing import Any

import orjson
from sqlalchemy import Connection, Engine, and_, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from tallyray.errors import Conflict, NotFound
from tallyray.pricing.events import Event, format_timestamp
from tallyray.storage import tables as t
from tallyray.storage.alerts import write_messages
from tallyray.storage.audit import AuditEntry, write_audit
from tallyray.storage.catalog import new_id
from tallyray.storage.eventlog import customer_events
from tallyray.storage.leases import beat, claim, process_driver, shown_state
from tallyray.storage.pages import FIRST_PAGE, Page, PageRequest, read_page

__all__ = ["INVOICE_STATES", "BillingStore", "Rate"]

#: draft → finalized → paid | void | uncollectible
INVOICE_STATES = ("draft", "finalized", "paid", "void", "uncollectible")

Rate = tuple[Decimal, str, int]
"""(rate, source, as_of)."""


RUN_LIVE = ("pending", "running")
"""A run in these states has a driver (:mod:`tallyray.storage.leases`): shown
``interrupted`` when it stopped beating."""
RUN_RESUMABLE = ("failed", "completed_with_errors")


class BillingStore:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    # -- closing periods -----------------------------------------------------------------

    def cutoffs(self, shard: int) -> dict[str, int]:
        pc = t.period_closes
        with self.engine.connect() as conn:
            rows = conn.execute(select(pc.c.env, pc.c.cutoff).where(pc.c.shard == shard)).all()
        return {row.env: row.cutoff for row in rows}

    def close_periods(
        self, shard: int, env: str, cutoff: int, periods: Sequence[Mapping[str, Any]], now: int
    ) -> None:
        """Record closed periods and the shard's new cutoff, in one transaction. Writing a
        period that is already recorded changes nothing (a retried close)."""
        pc = t.period_closes
        with self.engine.begin() as conn:
            _record_periods(conn, shard, env, periods, now)
            done = conn.execute(
                update(pc)
                .where(pc.c.shard == shard, pc.c.env == env)
                .values(cutoff=cutoff, closed_at=now)
            )
            if done.rowcount == 0:
                conn.execute(insert(pc).values(shard=shard, env=env, cutoff=cutoff, closed_at=now))

    def record_periods(
        self, shard: int, env: str, periods: Sequence[Mapping[str, Any]], now: int
    ) -> None:
        """Record closed periods that are not recorded yet (a recovering shard's, for an
        account that was set aside when its environment closed them); leave the rest."""
        with self.engine.begin() as conn:
            _record_periods(conn, shard, env, periods, now)

    def closed_periods(
        self, env: str, customer_ids: Iterable[str], until: int
    ) -> dict[tuple[str, int], dict[str, Any]]:
        bp = t.billing_periods
        wanted = list(set(customer_ids))
        if not wanted:
            return {}
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(bp).where(bp.c.env == env, bp.c.customer_id.in_(wanted), bp.c.end <= until)
            ).all()
        return {(row.customer_id, row.start): dict(row._mapping) for row in rows}

    def closed_period_rows(
        self, env: str, customer_id: str | None = None, since: int = 0
    ) -> list[dict[str, Any]]:
        bp = t.billing_periods
        query = select(bp).where(bp.c.env == env, bp.c.end > since)
        if customer_id is not None:
            query = query.where(bp.c.customer_id == customer_id)
        with self.engine.connect() as conn:
            rows = conn.execute(query.order_by(bp.c.customer_id, bp.c.start)).all()
        return [dict(row._mapping) for row in rows]

    def period_events(self, env: str, customer_id: str, start: int, end: int) -> list[Event]:
        """The logged events of one customer in ``[start, end)``, in log order."""
        with self.engine.connect() as conn:
            rows = customer_events(conn, env, customer_id, start, end)
        return [
            Event(row.event_id, customer_id, row.type, row.ts, orjson.loads(row.properties))
            for row in rows
        ]

    def env_cutoff(self, env: str) -> int | None:
        """The cutoff every shard has reached for ``env`` (``None`` if one has not closed)."""
        pc = t.period_closes
        with self.engine.connect() as conn:
            rows = conn.execute(select(pc.c.cutoff).where(pc.c.env == env)).all()
        return min(row.cutoff for row in rows) if rows else None

    # -- exchange rates ------------------------------------------------------------------

    def add_rate(
        self,
        env: str,
        base: str,
        quote: str,
        rate: Decimal,
        source: str,
        as_of: int,
        now: int,
        audit: AuditEntry | None = None,
    ) -> None:
        r = t.exchange_rates
        key = and_(r.c.env == env, r.c.base == base, r.c.quote == quote, r.c.as_of == as_of)
        with self.engine.begin() as conn:
            write_audit(conn, audit)
            if conn.execute(select(r.c.rate).where(key)).first() is not None:
                conn.execute(update(r).where(key).values(rate=str(rate), source=source))
            else:
                conn.execute(
                    insert(r).values(
                        env=env,
                        base=base,
                        quote=quote,
                        as_of=as_of,
                        rate=str(rate),
                        source=source,
                        created_at=now,
                    )
                )

    def rate(self, env: str, base: str, quote: str, at: int | None = None) -> Rate | None:
        """The latest rate ``base → quote`` as of ``at`` (or the newest of all)."""
        r = t.exchange_rates
        query = select(r.c.rate, r.c.source, r.c.as_of).where(
            r.c.env == env, r.c.base == base, r.c.quote == quote
        )
        if at is not None:
            query = query.where(r.c.as_of <= at)
        with self.engine.connect() as conn:
            row = conn.execute(query.order_by(r.c.as_of.desc()).limit(1)).first()
        return None if row is None else (Decimal(row.rate), row.source, row.as_of)

    def rates(self, env: str) -> list[dict[str, Any]]:
        r = t.exchange_rates
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(r).where(r.c.env == env).order_by(r.c.base, r.c.quote, r.c.as_of)
            ).all()
        return [
            {
                "id": f"fx_{row.base}_{row.quote}_{row.as_of}",
                "from": row.base,
                "to": row.quote,
                "rate": row.rate,
                "source": row.source,
                "as_of": format_timestamp(row.as_of),
            }
            for row in rows
        ]

    # -- invoice runs --------------------------------------------------------------------

    def create_run(
        self,
        env: str,
        until: int,
        options: Mapping[str, Any],
        now: int,
        audit: AuditEntry | None = None,
        scheduled_for: int | None = None,
        driver: str | None = None,
    ) -> str | None:
        """Store a new run, ``pending`` and driven by ``driver`` (this process by default);
        its id. With ``scheduled_for`` (a schedule slot), ``None`` when a run for that slot
        exists already: the row is the slot's claim, and the unique index on
        (env, scheduled_for) lets exactly one INSERT have it."""
        run_id = new_id("run")
        try:
            with self.engine.begin() as conn:
                write_audit(conn, audit and replace(audit, object_id=run_id))
                conn.execute(
                    insert(t.invoice_runs).values(
                        id=run_id,
                        env=env,
                        until=until,
                        status="pending",
                        options=dict(options),
                        customers=0,
                        done=0,
                        invoices=0,
                        errors=[],
                        created_at=now,
                        scheduled_for=scheduled_for,
                        driver=driver or process_driver(),
                        heartbeat_at=now,
                    )
                )
        except IntegrityError:
            if scheduled_for is None:
                raise
            return None
        return run_id

    def scheduled_run(self, env: str, slot: int) -> str | None:
        """The id of the run that schedule slot ``slot`` started, if one did."""
        r = t.invoice_runs
        with self.engine.connect() as conn:
            found = conn.execute(
                select(r.c.id).where(r.c.env == env, r.c.scheduled_for == slot)
            ).scalar()
        return None if found is None else str(found)

    def covered_until(self, env: str) -> int:
        """How far the environment's runs reach: the latest ``until`` of a run that did not
        fail (started by hand or by the schedule); 0 when there is none."""
        r = t.invoice_runs
        with self.engine.connect() as conn:
            found = conn.execute(
                select(func.max(r.c.until)).where(r.c.env == env, r.c.status != "failed")
            ).scalar()
        return 0 if found is None else int(found)

    def update_run(self, run_id: str, audit: AuditEntry | None = None, **values: Any) -> None:
        with self.engine.begin() as conn:
            write_audit(conn, audit)
            conn.execute(update(t.invoice_runs).where(t.invoice_runs.c.id == run_id).values(values))

    def beat_run(self, run_id: str, driver: str, now: int, **values: Any) -> bool:
        """The driver's heartbeat on a live run (and ``values``, e.g. its final status);
        ``False`` when ``driver`` no longer drives it (another took it over, or it ended)."""
        r = t.invoice_runs
        with self.engine.begin() as conn:
            return beat(
                conn, r, run_id, driver, now, state=r.c.status, live=RUN_LIVE, values=values
            )

    def claim_run(self, env: str, run_id: str, driver: str, now: int) -> bool:
        """Take over a run that failed, ended with errors, or lost its driver, for
        ``driver``: one conditional UPDATE, so of two claims at once one wins."""
        r = t.invoice_runs
        with self.engine.begin() as conn:
            found = conn.execute(select(r.c.id).where(r.c.id == run_id, r.c.env == env)).first()
            if found is None:
                raise NotFound(f"no invoice run {run_id!r}")
            return claim(
                conn,
                r,
                run_id,
                driver,
                now,
                state=r.c.status,
                live=RUN_LIVE,
                resumable=RUN_RESUMABLE,
                values={"status": "running", "done": 0, "finished_at": None},
            )

    def run_progress(
        self, run_id: str, done: int, invoices: int, errors: Sequence[Mapping[str, Any]]
    ) -> None:
        """Add a finished chunk to the run's counters."""
        r = t.invoice_runs
        with self.engine.begin() as conn:
            row = conn.execute(select(r.c.errors).where(r.c.id == run_id)).one()
            conn.execute(
                update(r)
                .where(r.c.id == run_id)
                .values(
                    done=r.c.done + done,
                    invoices=r.c.invoices + invoices,
                    errors=[*row.errors, *errors][:1000],
                )
            )

    def run(self, env: str, run_id: str, now: int | None = None) -> dict[str, Any]:
        """The run as the API shows it: ``interrupted`` rather than ``running`` when its
        driver stopped beating by ``now`` (as stored, without ``now``)."""
        r = t.invoice_runs
        with self.engine.connect() as conn:
            row = conn.execute(select(r).where(r.c.env == env, r.c.id == run_id)).first()
        if row is None:
            raise NotFound(f"no invoice run {run_id!r}")
        return _run_json(row, now)

    def runs(self, env: str, page: PageRequest, now: int | None = None) -> Page[dict[str, Any]]:
        """A page of the environment's invoice runs, newest first."""
        r = t.invoice_runs
        order = [(r.c.created_at, True), (r.c.id, True)]
        with self.engine.connect() as conn:
            found = read_page(conn, select(r).where(r.c.env == env), order, r.c.id, page, "run")
        return Page([_run_json(row, now) for row in found.items], found.has_more)

    # -- invoices ------------------------------------------------------------------------

    def invoiced_periods(self, env: str, customer_ids: Iterable[str]) -> set[tuple[str, int]]:
        i = t.invoices
        wanted = list(set(customer_ids))
        if not wanted:
            return set()
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(i.c.customer_id, i.c.period_start).where(
                    i.c.env == env, i.c.customer_id.in_(wanted)
                )
            ).all()
        return {(row.customer_id, row.period_start) for row in rows}

    def add_invoices(
        self,
        env: str,
        docs: Sequence[dict[str, Any]],
        *,
        run_id: str | None,
        finalize: bool,
        prefix: str,
        entity: str,
        due_days: int,
        now: int,
    ) -> int:
        """Write built invoices (``doc`` carries ``customer_id``, ``period_start``,
        ``period_end``); finalize them (numbers taken) if asked. A period that already has an
        invoice is skipped. Returns how many were written."""
        if not docs:
            return 0
        if finalize:
            self._ensure_sequence(env, entity, "invoice")
        try:
            with self.engine.begin() as conn:
                return self._add_invoices(
                    conn, env, docs, run_id, finalize, prefix, entity, due_days, now
                )
        except IntegrityError as error:
            if not _period_taken(error):
                raise
            # A draft of one of these periods was written meanwhile (drafts take no lock):
            # go one by one, skipping only the periods that have an invoice now.
            written = 0
            for doc in docs:
                try:
                    with self.engine.begin() as conn:
                        written += self._add_invoices(
                            conn, env, [doc], run_id, finalize, prefix, entity, due_days, now
                        )
                except IntegrityError as error:
                    if not _period_taken(error):
                        raise
            return written

    def _ensure_sequence(self, env: str, entity: str, kind: str) -> None:
        """Create a number sequence's counter row if it is missing (once, ever)."""
        dn = t.document_numbers
        key = and_(dn.c.env == env, dn.c.entity == entity, dn.c.kind == kind)
        with self.engine.connect() as conn:
            if conn.execute(select(dn.c.next).where(key)).first() is not None:
                return
        try:
            with self.engine.begin() as conn:
                conn.execute(insert(dn).values(env=env, entity=entity, kind=kind, next=1))
        except IntegrityError:
            pass  # another process made it first

    def _add_invoices(
        self,
        conn: Connection,
        env: str,
        docs: Sequence[dict[str, Any]],
        run_id: str | None,
        finalize: bool,
        prefix: str,
        entity: str,
        due_days: int,
        now: int,
    ) -> int:
        i = t.invoices
        if finalize:
            # Lock the number sequence first: finalizing writers then run one at a time, so
            # what this transaction reads as already invoiced stays true until it commits,
            # and the numbers it takes are the next ones (SQLite takes its write lock here).
            _lock_sequence(conn, env, entity, "invoice")
        taken = {
            (row.customer_id, row.period_start)
            for row in conn.execute(
                select(i.c.customer_id, i.c.period_start).where(
                    i.c.env == env, i.c.customer_id.in_(list({d["customer_id"] for d in docs}))
                )
            )
        }
        fresh = [d for d in docs if (d["customer_id"], d["period_start"]) not in taken]
        if not fresh:
            return 0
        numbers = (
            _take_numbers(conn, env, entity, "invoice", len(fresh), prefix) if finalize else None
        )
        rows = []
        for index, doc in enumerate(fresh):
            invoice_id = new_id("inv")
            document = {k: v for k, v in doc.items() if k not in _ROW_ONLY}
            number = numbers[index] if numbers else None
            status = "finalized" if finalize else "draft"
            document.update(
                _identity(invoice_id, number, status, env, now if finalize else None, due_days)
            )
            rows.append(
                {
                    "id": invoice_id,
                    "env": env,
                    "customer_id": doc["customer_id"],
                    "period_start": doc["period_start"],
                    "period_end": doc["period_end"],
                    "status": status,
                    "number": number,
                    "currency": document["currency"],
                    "total": document["total"],
                    "amount_due": document["amount_due"],
                    "document": document,
                    "run_id": run_id,
                    "payment_provider": doc.get("payment_provider"),
                    "payment_attempts": 0,
                    "next_attempt_at": now if finalize and _due(document) else None,
                    "created_at": now,
                    "finalized_at": now if finalize else None,
                    "paid_at": None,
                    "closed_at": None,
                }
            )
        conn.execute(insert(i), rows)
        if finalize:
            write_messages(
                conn, [_message("invoice.finalized", r["id"], r["document"], now) for r in rows]
            )
        return len(rows)

    def invoice(self, env: str, invoice_id: str) -> dict[str, Any]:
        i = t.invoices
        with self.engine.connect() as conn:
            row = conn.execute(select(i).where(i.c.env == env, i.c.id == invoice_id)).first()
        if row is None:
            raise NotFound(f"no invoice {invoice_id!r}")
        return _invoice_json(row)

    def invoices(
        self,
        env: str,
        customer_id: str | None = None,
        status: str | None = None,
        run_id: str | None = None,
        page: PageRequest = FIRST_PAGE,
    ) -> Page[dict[str, Any]]:
        """A page of invoices, newest period first."""
        i = t.invoices
        query = select(i).where(i.c.env == env)
        if customer_id is not None:
            query = query.where(i.c.customer_id == customer_id)
        if status is not None:
            query = query.where(i.c.status == status)
        if run_id is not None:
            query = query.where(i.c.run_id == run_id)
        order = [(i.c.period_start, True), (i.c.customer_id, False), (i.c.id, False)]
        with self.engine.connect() as conn:
            found = read_page(conn, query, order, i.c.id, page, "invoice")
        return Page([_invoice_json(row) for row in found.items], found.has_more)

    def finalize(
        self,
        env: str,
        invoice_id: str,
        prefix: str,
        entity: str,
        due_days: int,
        now: int,
        audit: AuditEntry | None = None,
    ) -> None:
        i = t.invoices
        self._ensure_sequence(env, entity, "invoice")
        with self.engine.begin() as conn:
            _lock_sequence(conn, env, entity, "invoice")
            row = self._locked(conn, env, invoice_id)
            if row.status != "draft":
                raise Conflict(f"invoice {invoice_id} is {row.status}; only a draft is finalized")
            (number,) = _take_numbers(conn, env, entity, "invoice", 1, prefix)
            document = {
                **row.document,
                **_identity(invoice_id, number, "finalized", env, now, due_days),
            }
            conn.execute(
                update(i)
                .where(i.c.id == invoice_id)
                .values(
                    status="finalized",
                    number=number,
                    document=document,
                    finalized_at=now,
                    next_attempt_at=now if _due(document) else None,
                )
            )
            write_messages(conn, [_message("invoice.finalized", invoice_id, document, now)])
            if audit is not None:
                write_audit(conn, replace(audit, summary={**audit.summary, "number": number}))

    def set_status(
        self,
        env: str,
        invoice_id: str,
        status: str,
        allowed_from: Sequence[str],
        now: int,
        audit: AuditEntry | None = None,
    ) -> None:
        """Move an invoice to ``status`` (paid, void, uncollectible) from one of
        ``allowed_from``; the document's content stays as it was."""
        i = t.invoices
        with self.engine.begin() as conn:
            row = self._locked(conn, env, invoice_id)
            if row.status == status:
                return
            if row.status not in allowed_from:
                raise Conflict(
                    f"invoice {invoice_id} is {row.status}; it cannot become {status} "
                    f"(only from {' or '.join(allowed_from)})"
                )
            document = {**row.document, "status": status}
            values: dict[str, Any] = {
                "status": status,
                "document": document,
                "next_attempt_at": None,
            }
            if status == "paid":
                values["paid_at"] = now
                document["paid_at"] = format_timestamp(now)
                write_messages(conn, [_message("invoice.paid", invoice_id, document, now)])
            else:
                values["closed_at"] = now
            conn.execute(update(i).where(i.c.id == invoice_id).values(values))
            if audit is not None:
                summary = {**audit.summary, "from": row.status, "to": status}
                write_audit(conn, replace(audit, summary=summary))

    def _locked(self, conn: Connection, env: str, invoice_id: str) -> Any:
        i = t.invoices
        row = conn.execute(
            select(i).where(i.c.env == env, i.c.id == invoice_id).with_for_update()
        ).first()
        if row is None:
            raise NotFound(f"no invoice {invoice_id!r}")
        return row

    # -- payments ------------------------------------------------------------------------

    def due_for_payment(self, env: str, now: int, limit: int = 100) -> list[dict[str, Any]]:
        i = t.invoices
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(i)
                .where(
                    i.c.env == env,
                    i.c.status == "finalized",
                    i.c.next_attempt_at.is_not(None),
                    i.c.next_attempt_at <= now,
                )
                .order_by(i.c.next_attempt_at)
                .limit(limit)
            ).all()
        return [_invoice_json(row) for row in rows]

    def make_due(
        self, env: str, invoice_id: str, now: int, audit: AuditEntry | None = None
    ) -> None:
        """Schedule a finalized invoice's next payment attempt for now."""
        i = t.invoices
        with self.engine.begin() as conn:
            write_audit(conn, audit)
            conn.execute(
                update(i)
                .where(i.c.env == env, i.c.id == invoice_id, i.c.status == "finalized")
                .values(next_attempt_at=now)
            )

    def claim_attempt(self, env: str, invoice_id: str) -> int | None:
        """Take the next payment attempt of a finalized invoice: its number, or ``None`` when
        another process took it first (or the invoice is no longer due)."""
        i = t.invoices
        with self.engine.begin() as conn:
            row = conn.execute(
                select(i.c.payment_attempts, i.c.next_attempt_at, i.c.status).where(
                    i.c.env == env, i.c.id == invoice_id
                )
            ).first()
            if row is None or row.status != "finalized" or row.next_attempt_at is None:
                return None
            attempt = row.payment_attempts + 1
            taken = conn.execute(
                update(i)
                .where(
                    i.c.id == invoice_id,
                    i.c.payment_attempts == row.payment_attempts,
                    i.c.next_attempt_at == row.next_attempt_at,
                )
                .values(payment_attempts=attempt, next_attempt_at=None)
            )
            return attempt if taken.rowcount == 1 else None

    def record_payment(
        self,
        env: str,
        invoice_id: str,
        attempt: int,
        provider: str,
        status: str,
        reference: str | None,
        detail: Mapping[str, Any],
        next_attempt_at: int | None,
        now: int,
    ) -> None:
        """Log one payment attempt and schedule the next (``None``: no more attempts)."""
        i = t.invoices
        with self.engine.begin() as conn:
            conn.execute(
                insert(t.payments).values(
                    id=new_id("pay"),
                    env=env,
                    invoice_id=invoice_id,
                    attempt=attempt,
                    provider=provider,
                    status=status,
                    reference=reference,
                    detail=dict(detail),
                    created_at=now,
                )
            )
            conn.execute(
                update(i)
                .where(i.c.env == env, i.c.id == invoice_id)
                .values(
                    payment_attempts=attempt,
                    payment_provider=provider,
                    payment_reference=reference,
                    next_attempt_at=next_attempt_at,
                )
            )
            if status == "failed":
                document = conn.execute(select(i.c.document).where(i.c.id == invoice_id)).scalar()
                message = _message("payment.failed", invoice_id, document or {}, now)
                message["id"] = f"payment.failed:{invoice_id}:{attempt}"
                message["payload"].update(
                    attempt=attempt,
                    provider=provider,
                    failure=detail.get("failure_message") or detail.get("failure_code"),
                    next_attempt_at=None
                    if next_attempt_at is None
                    else format_timestamp(next_attempt_at),
                )
                write_messages(conn, [message])

    def record_mismatch(
        self,
        env: str,
        invoice_id: str,
        attempt: int,
        provider: str,
        reference: str | None,
        detail: Mapping[str, Any],
        now: int,
    ) -> None:
        """Log a payment the provider reported with another amount or currency than the
        invoice's amount due (status ``mismatch``). The invoice stays as it was: still due,
        its schedule untouched, for an operator to look at."""
        with self.engine.begin() as conn:
            conn.execute(
                insert(t.payments).values(
                    id=new_id("pay"),
                    env=env,
                    invoice_id=invoice_id,
                    attempt=attempt,
                    provider=provider,
                    status="mismatch",
                    reference=reference,
                    detail=dict(detail),
                    created_at=now,
                )
            )

    def payments(self, env: str, invoice_id: str) -> list[dict[str, Any]]:
        p = t.payments
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(p)
                .where(p.c.env == env, p.c.invoice_id == invoice_id)
                .order_by(p.c.attempt, p.c.created_at)
            ).all()
        return [
            {
                "id": row.id,
                "attempt": row.attempt,
                "provider": row.provider,
                "status": row.status,
                "reference": row.reference,
                "detail": row.detail,
                "created_at": format_timestamp(row.created_at),
            }
            for row in rows
        ]

    def first_time(
        self, provider: str, event_id: str, env: str, kind: str, invoice_id: str | None, now: int
    ) -> bool:
        """Remember a provider's webhook event; ``False`` if it was seen before."""
        try:
            with self.engine.begin() as conn:
                conn.execute(
                    insert(t.provider_events).values(
                        provider=provider,
                        event_id=event_id,
                        env=env,
                        kind=kind,
                        invoice_id=invoice_id,
                        received_at=now,
                    )
                )
        except IntegrityError:
            return False
        return True

    def invoice_env(self, invoice_id: str) -> str | None:
        """The environment an invoice belongs to (provider webhooks carry only our id)."""
        i = t.invoices
        with self.engine.connect() as conn:
            return conn.execute(select(i.c.env).where(i.c.id == invoice_id)).scalar()

    # -- credit notes --------------------------------------------------------------------

    def add_credit_note(
        self,
        env: str,
        invoice_id: str,
        build: Any,
        prefix: str,
        entity: str,
        now: int,
        audit: AuditEntry | None = None,
    ) -> dict[str, Any]:
        """Issue a credit note against a finalized (or paid) invoice. ``build(invoice,
        already_credited)`` returns the note's document; the number is taken in the same
        transaction."""
        cn = t.credit_notes
        self._ensure_sequence(env, entity, "credit_note")
        with self.engine.begin() as conn:
            _lock_sequence(conn, env, entity, "credit_note")
            row = self._locked(conn, env, invoice_id)
            if row.status not in ("finalized", "paid"):
                raise Conflict(
                    f"invoice {invoice_id} is {row.status}; credit notes are issued against "
                    "finalized or paid invoices"
                )
            credited = sum(
                (
                    Decimal(r.total)
                    for r in conn.execute(
                        select(cn.c.total).where(cn.c.env == env, cn.c.invoice_id == invoice_id)
                    )
                ),
                Decimal(0),
            )
            document = build(_invoice_json(row), credited)
            (number,) = _take_numbers(conn, env, entity, "credit_note", 1, prefix)
            note_id = new_id("cn")
            if audit is not None:
                summary = {**audit.summary, "number": number, "total": document.get("total")}
                write_audit(conn, replace(audit, object_id=note_id, summary=summary))
            document.update(
                {
                    "id": note_id,
                    "number": number,
                    "status": "issued",
                    "env": env,
                    "issued_at": format_timestamp(now),
                }
            )
            conn.execute(
                insert(cn).values(
                    id=note_id,
                    env=env,
                    invoice_id=invoice_id,
                    number=number,
                    currency=document["currency"],
                    total=document["total"],
                    document=document,
                    created_at=now,
                )
            )
        return dict(document)

    def credit_notes(self, env: str, invoice_id: str | None = None) -> list[dict[str, Any]]:
        cn = t.credit_notes
        query = select(cn.c.document).where(cn.c.env == env)
        if invoice_id is not None:
            query = query.where(cn.c.invoice_id == invoice_id)
        with self.engine.connect() as conn:
            return [dict(row.document) for row in conn.execute(query.order_by(cn.c.created_at))]

    def credit_note(self, env: str, note_id: str) -> dict[str, Any]:
        cn = t.credit_notes
        with self.engine.connect() as conn:
            row = conn.execute(
                select(cn.c.document).where(cn.c.env == env, cn.c.id == note_id)
            ).first()
        if row is None:
            raise NotFound(f"no credit note {note_id!r}")
        return dict(row.document)


_ROW_ONLY = frozenset({"customer_id", "period_start", "period_end", "payment_provider"})


def _identity(
    invoice_id: str,
    number: str | None,
    status: str,
    env: str,
    issued: int | None,
    due_days: int,
) -> dict[str, Any]:
    return {
        "id": invoice_id,
        "number": number,
        "status": status,
        "env": env,
        "issued_at": None if issued is None else format_timestamp(issued),
        "due_at": None if issued is None else format_timestamp(issued + due_days * _DAY),
    }


_DAY = 86_400 * 1_000_000


def _message(kind: str, invoice_id: str, document: Mapping[str, Any], now: int) -> dict[str, Any]:
    """An outbox message announcing an invoice's change (one per invoice and kind)."""
    customer = document.get("customer") or {}
    return {
        "id": f"{kind}:{invoice_id}",
        "env": document.get("env", ""),
        "type": kind,
        "payload": {
            "invoice_id": invoice_id,
            "number": document.get("number"),
            "customer_id": customer.get("id"),
            "currency": document.get("currency"),
            "total": document.get("total"),
            "amount_due": document.get("amount_due"),
            "period": document.get("period"),
        },
        "created_at": now,
    }


def _due(document: Mapping[str, Any]) -> bool:
    return Decimal(document["amount_due"]) > 0


def _lock_sequence(conn: Connection, env: str, entity: str, kind: str) -> None:
    """Take the sequence's counter row for this transaction: a write that changes nothing
    locks the row on PostgreSQL and takes the database's write lock on SQLite."""
    dn = t.document_numbers
    key = and_(dn.c.env == env, dn.c.entity == entity, dn.c.kind == kind)
    conn.execute(update(dn).where(key).values(next=dn.c.next))


def _take_numbers(
    conn: Connection, env: str, entity: str, kind: str, count: int, prefix: str
) -> list[str]:
    """``count`` consecutive numbers of a sequence, in the caller's transaction. The update
    is atomic (``next = next + count``), so two transactions never take the same number."""
    dn = t.document_numbers
    key = and_(dn.c.env == env, dn.c.entity == entity, dn.c.kind == kind)
    row = conn.execute(
        update(dn).where(key).values(next=dn.c.next + count).returning(dn.c.next)
    ).first()
    if row is None:
        conn.execute(insert(dn).values(env=env, entity=entity, kind=kind, next=1 + count))
        first = 1
    else:
        first = row.next - count
    return [f"{prefix}{n:06d}" for n in range(first, first + count)]


def _period_taken(error: IntegrityError) -> bool:
    """Whether an insert failed because the customer's period already has an invoice."""
    text = str(error.orig)
    return "uq_invoices_period" in text or "invoices.period_start" in text


def _invoice_json(row: Any) -> dict[str, Any]:
    document = dict(row.document)
    document.update(
        {
            "id": row.id,
            "number": row.number,
            "status": row.status,
            "customer_id": row.customer_id,
            "run_id": row.run_id,
            "payment": {
                "provider": row.payment_provider,
                "reference": row.payment_reference,
                "attempts": row.payment_attempts,
                "next_attempt_at": None
                if row.next_attempt_at is None
                else format_timestamp(row.next_attempt_at),
            },
        }
    )
    if row.paid_at is not None:
        document["paid_at"] = format_timestamp(row.paid_at)
    return document


def _record_periods(
    conn: Connection, shard: int, env: str, periods: Sequence[Mapping[str, Any]], now: int
) -> None:
    bp = t.billing_periods
    if not periods:
        return
    keys = {(p["customer_id"], p["start"]) for p in periods}
    existing = {
        (row.customer_id, row.start)
        for row in conn.execute(
            select(bp.c.customer_id, bp.c.start).where(
                bp.c.env == env,
                bp.c.customer_id.in_(list({k[0] for k in keys})),
            )
        )
    }
    fresh = [
        {**p, "env": env, "shard": shard, "closed_at": now}
        for p in periods
        if (p["customer_id"], p["start"]) not in existing
    ]
    if fresh:
        conn.execute(insert(bp), fresh)


def _run_json(row: Any, now: int | None = None) -> dict[str, Any]:
    status = row.status if now is None else shown_state(row.status, RUN_LIVE, row.heartbeat_at, now)
    return {
        "id": row.id,
        "status": status,
        "until": format_timestamp(row.until),
        "customers": row.customers,
        "done": row.done,
        "invoices": row.invoices,
        "errors": row.errors,
        "options": row.options,
        "created_at": format_timestamp(row.created_at),
        "finished_at": None if row.finished_at is None else format_timestamp(row.finished_at),
        "scheduled_for": None if row.scheduled_for is None else format_timestamp(row.scheduled_for),
    }
