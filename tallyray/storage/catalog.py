"""The catalog: API keys, meters, plans, customers, subscriptions — everything but the hot
path's event log. Read by the ingress and the shards, written through the API.

Every call takes the environment (``live`` / ``test``) of the caller's key, and every query is
scoped by it: a test key can neither read nor write live objects.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from decimal import Decimal
from typing import Any, Literal

from babel import Locale, UnknownLocaleError
from sqlalchemy import Engine, and_, exists, func, insert, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import aliased
from sqlalchemy.sql import ColumnElement, Select

from tallyray.errors import Conflict, InvalidInput, NotFound, Problem
from tallyray.pricing.config import parse_meter, parse_plan
from tallyray.pricing.credits import BILLING_MODES
from tallyray.pricing.events import format_timestamp, is_identifier
from tallyray.pricing.meters import MeterSet, MeterSpec
from tallyray.pricing.money import currency, parse_amount
from tallyray.pricing.periods import period_of
from tallyray.pricing.plans import Plan, per_event_sums
from tallyray.storage import tables as t
from tallyray.storage.audit import AuditEntry, write_audit
from tallyray.storage.pages import Page, PageRequest, read_page
from tallyray.storage.recharges import METHOD_CLEARED_REASON, when_method_changes

__all__ = [
    "CUSTOMER_FIELDS",
    "Catalog",
    "CustomerRecord",
    "EnvCatalog",
    "customer_from_json",
]

CUSTOMER_FIELDS = frozenset(
    {
        "id",
        "name",
        "email",
        "currency",
        "country",
        "vat_id",
        "address",
        "billing_mode",
        "overdraft",
        "credit_limit",
        "spend_cap",
        "spend_limit",
        *(
            "locale",
            "region",
            "tax_exempt",
            "exempt_reason",
            "payment_provider",
            "payment_method",
            "provider_customer_id",
        ),
    }
)

#: Free-text fields of a customer and the longest each may be.
TEXT_FIELDS = {"name": 500, "email": 320, "vat_id": 64}
MAX_ADDRESS_FIELDS = 20

#: Invoicing details kept in the customers table's ``billing`` JSON column.
BILLING_FIELDS = (
    "locale",
    "region",
    "tax_exempt",
    "exempt_reason",
    "payment_provider",
    "payment_method",
    "provider_customer_id",
)
PAYMENT_PROVIDERS = ("stripe", "adyen", "manual")


PlanStatus = Literal["draft", "published"]

CancelAt = Literal["period_end", "now"]
CANCEL_AT: tuple[CancelAt, ...] = ("period_end", "now")


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(12)}"


@dataclass(frozen=True, slots=True)
class CustomerRecord:
    env: str
    id: str
    currency: str
    name: str | None = None
    email: str | None = None
    country: str | None = None
    vat_id: str | None = None
    address: Mapping[str, Any] | None = None
    billing_mode: str = "prepaid"
    overdraft: Decimal = Decimal(0)
    credit_limit: Decimal | None = None
    """The operator's limit on a period's spend (``manage`` scope)."""
    spend_cap: Decimal | None = None
    """The customer's own limit on a period's spend (portal or API)."""
    plan_key: str | None = None
    plan_version: int | None = None
    subscription_id: str | None = None
    subscription_start: int | None = None
    subscription_end: int | None = None
    """When the subscription ends (it was cancelled); ``None``: it runs on."""
    billing: Mapping[str, Any] = field(default_factory=dict)
    """Invoicing details: locale, region, tax_exempt, payment provider and method."""
    anchor: int | None = None
    """The active subscription's anniversary anchor; ``None``: calendar periods."""

    @property
    def spend_limit(self) -> Decimal | None:
        """The limit that applies: the smaller of the credit limit and the spend cap."""
        limits = [x for x in (self.credit_limit, self.spend_cap) if x is not None]
        return min(limits) if limits else None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "email": self.email,
            "currency": self.currency,
            "country": self.country,
            "vat_id": self.vat_id,
            "address": self.address,
            "billing_mode": self.billing_mode,
            "overdraft": format(self.overdraft, "f"),
            "credit_limit": _text(self.credit_limit),
            "spend_cap": _text(self.spend_cap),
            "spend_limit": _text(self.spend_limit),
            **{name: self.billing.get(name) for name in BILLING_FIELDS if name in self.billing},
            "subscription": None
            if self.subscription_id is None
            else {
                "id": self.subscription_id,
                "plan": self.plan_key,
                "plan_version": self.plan_version,
                "start": None
                if self.subscription_start is None
                else format_timestamp(self.subscription_start),
                "end": None
                if self.subscription_end is None
                else format_timestamp(self.subscription_end),
                "anchor": "calendar" if self.anchor is None else "anniversary",
            },
        }


@dataclass(frozen=True)
class EnvCatalog:
    """Meters and plans of one environment, parsed and ready to fold and price."""

    env: str
    meters: MeterSet
    plans: Mapping[tuple[str, int], Plan]
    latest: Mapping[str, int]
    """Per key, its latest *published* version."""
    raw_plans: Mapping[tuple[str, int], Mapping[str, Any]]
    drafts: Mapping[str, int] = field(default_factory=dict)
    """Per key, the version of its draft (drafts are in ``plans`` and ``raw_plans`` too)."""

    def plan(self, key: str, version: int | None = None) -> Plan:
        """A plan version, drafts included (what a simulation prices); without ``version``,
        the latest published one."""
        version = self.latest.get(key) if version is None else version
        plan = self.plans.get((key, version)) if version is not None else None
        if plan is None:
            raise NotFound(f"no plan {key!r}" + (f" version {version}" if version else ""))
        return plan

    def status(self, key: str, version: int) -> PlanStatus:
        return "draft" if self.drafts.get(key) == version else "published"


class Catalog:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    # -- meters and plans ----------------------------------------------------------------

    def add_meter(
        self,
        env: str,
        definition: Mapping[str, Any],
        now: int,
        audit: AuditEntry | None = None,
    ) -> MeterSpec:
        """Create a meter. Meters never change once created (their state is folded live);
        posting the same definition again is a no-op, a different one is a conflict."""
        meter = parse_meter(definition)
        with self.engine.begin() as conn:
            existing = conn.execute(
                select(t.meters.c.definition).where(
                    t.meters.c.env == env, t.meters.c.key == meter.key
                )
            ).first()
            if existing is not None:
                if parse_meter(existing.definition) != meter:
                    raise Conflict(
                        f"meter {meter.key!r} exists with another definition; meters cannot "
                        "change once created: create a meter with a new key"
                    )
                return meter
            conn.execute(
                insert(t.meters).values(
                    env=env, key=meter.key, definition=dict(definition), created_at=now
                )
            )
            write_audit(conn, audit)
        return meter

    def meter_definitions(self, env: str) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(t.meters.c.definition).where(t.meters.c.env == env).order_by(t.meters.c.key)
            ).all()
        return [dict(row.definition) for row in rows]

    def add_plan(
        self,
        env: str,
        definition: Mapping[str, Any],
        now: int,
        audit: AuditEntry | None = None,
        draft: bool = False,
    ) -> tuple[Plan, int]:
        """Store a plan; re-posting a key makes a new version unless nothing changed.

        A ``draft`` is stored as the key's next version, not subscribable until published;
        a key has one draft at most, and posting a draft again replaces it. A published
        version cannot be posted while the key has a draft (publish or delete it first)."""
        catalog = self.env_catalog(env)
        plan = parse_plan(definition, catalog.meters.meters)
        draft_version = catalog.drafts.get(plan.key)
        if draft:
            return plan, self._save_draft(env, plan.key, definition, draft_version, now, audit)
        if draft_version is not None:
            raise Conflict(
                f"plan {plan.key!r} has a draft (version {draft_version}): publish it (POST "
                f"/v1/plans/{plan.key}/versions/{draft_version}/publish) or delete it (DELETE "
                f"/v1/plans/{plan.key}/versions/{draft_version}) before posting a new version"
            )
        latest = catalog.latest.get(plan.key)
        if latest is not None and catalog.raw_plans[(plan.key, latest)] == definition:
            return plan, latest
        version = (latest or 0) + 1
        try:
            with self.engine.begin() as conn:
                conn.execute(
                    insert(t.plans).values(
                        env=env,
                        key=plan.key,
                        version=version,
                        definition=dict(definition),
                        created_at=now,
                    )
                )
                write_audit(
                    conn, audit and replace(audit, summary={**audit.summary, "version": version})
                )
        except IntegrityError:
            raise Conflict(f"plan {plan.key!r} was changed at the same time; retry") from None
        return plan, version

    def _save_draft(
        self,
        env: str,
        key: str,
        definition: Mapping[str, Any],
        version: int | None,
        now: int,
        audit: AuditEntry | None,
    ) -> int:
        p = t.plans
        try:
            with self.engine.begin() as conn:
                if version is None:
                    top = conn.execute(
                        select(func.max(p.c.version)).where(p.c.env == env, p.c.key == key)
                    ).scalar()
                    version = int(top or 0) + 1
                    conn.execute(
                        insert(p).values(
                            env=env,
                            key=key,
                            version=version,
                            definition=dict(definition),
                            created_at=now,
                            status="draft",
                        )
                    )
                else:
                    done = conn.execute(
                        update(p)
                        .where(
                            p.c.env == env,
                            p.c.key == key,
                            p.c.version == version,
                            p.c.status == "draft",
                        )
                        .values(definition=dict(definition), created_at=now)
                    )
                    if done.rowcount != 1:
                        raise Conflict(f"plan {key!r} was changed at the same time; retry")
                write_audit(
                    conn, audit and replace(audit, summary={**audit.summary, "version": version})
                )
        except IntegrityError:
            raise Conflict(f"plan {key!r} was changed at the same time; retry") from None
        return version

    def env_catalog(self, env: str) -> EnvCatalog:
        with self.engine.connect() as conn:
            meter_rows = conn.execute(
                select(t.meters.c.definition).where(t.meters.c.env == env)
            ).all()
            plan_rows = conn.execute(
                select(t.plans.c.key, t.plans.c.version, t.plans.c.definition, t.plans.c.status)
                .where(t.plans.c.env == env)
                .order_by(t.plans.c.key, t.plans.c.version)
            ).all()
        specs = {spec.key: spec for spec in (parse_meter(row.definition) for row in meter_rows)}
        plans: dict[tuple[str, int], Plan] = {}
        raw: dict[tuple[str, int], Mapping[str, Any]] = {}
        latest: dict[str, int] = {}
        drafts: dict[str, int] = {}
        for row in plan_rows:
            plans[(row.key, row.version)] = parse_plan(row.definition, specs)
            raw[(row.key, row.version)] = row.definition
            if row.status == "draft":
                drafts[row.key] = row.version
            else:
                latest[row.key] = row.version
        # Charges priced event by event (a clamped percentage) need sums the meters keep.
        meters = MeterSet(specs.values(), per_event_sums(plans.values()))
        return EnvCatalog(env, meters, plans, latest, raw, drafts)

    # -- customers and subscriptions -----------------------------------------------------

    def upsert_customer(
        self,
        record: CustomerRecord,
        now: int,
        fields: Iterable[str] | None = None,
        audit: AuditEntry | None = None,
    ) -> CustomerRecord:
        """Create a customer, or update its details. The currency cannot change once set.

        An update changes only ``fields`` (the names the request gave; all when ``None``):
        a field left out keeps its value, so an update by the operator never clears the
        customer's own spend cap, and one from the portal never the operator's limit.

        An update that clears ``payment_method`` turns the customer's auto-recharge off in
        its transaction, as removing the last saved card does
        (:func:`~tallyray.storage.recharges.when_method_changes`).
        """
        values: dict[str, Any] = {
            "name": record.name,
            "email": record.email,
            "currency": record.currency,
            "country": record.country,
            "vat_id": record.vat_id,
            "address": record.address,
            "billing_mode": record.billing_mode,
            "overdraft": str(record.overdraft),
            "credit_limit": _text(record.credit_limit),
            "spend_cap": _text(record.spend_cap),
            "billing": dict(record.billing) or None,
        }
        key = and_(t.customers.c.env == record.env, t.customers.c.id == record.id)
        with self.engine.begin() as conn:
            existing = conn.execute(
                select(t.customers.c.currency, t.customers.c.billing).where(key).with_for_update()
            ).first()
            if audit is not None:
                verb = "created" if existing is None else "updated"
                write_audit(conn, replace(audit, action=f"customer.{verb}"))
            if existing is None:
                try:
                    conn.execute(
                        insert(t.customers).values(
                            env=record.env, id=record.id, created_at=now, **values
                        )
                    )
                except IntegrityError:
                    raise Conflict(f"customer {record.id!r} was created at the same time") from None
            else:
                if existing.currency != record.currency:
                    raise Conflict(
                        f"customer {record.id!r} is billed in {existing.currency}; its currency "
                        "cannot change"
                    )
                if fields is not None:
                    values = _changed(values, frozenset(fields), existing.billing, record)
                conn.execute(update(t.customers).where(key).values(**values))
                if "billing" in values:
                    when_method_changes(
                        conn,
                        record.env,
                        record.id,
                        existing.billing,
                        values["billing"],
                        now,
                        audit,
                        METHOD_CLEARED_REASON,
                    )
        return self.customer(record.env, record.id)

    def set_spend_cap(
        self, env: str, customer_id: str, cap: Decimal | None, audit: AuditEntry | None = None
    ) -> CustomerRecord:
        """Set (or, with ``None``, remove) the customer's own spend cap; nothing else."""
        key = and_(t.customers.c.env == env, t.customers.c.id == customer_id)
        with self.engine.begin() as conn:
            done = conn.execute(update(t.customers).where(key).values(spend_cap=_text(cap)))
            if done.rowcount == 0:
                raise NotFound(f"no customer {customer_id!r}")
            write_audit(conn, audit)
        return self.customer(env, customer_id)

    def set_billing(self, env: str, customer_id: str, values: Mapping[str, Any]) -> None:
        """Merge invoicing details (a provider's customer id, say) into a customer's."""
        key = and_(t.customers.c.env == env, t.customers.c.id == customer_id)
        with self.engine.begin() as conn:
            current = conn.execute(select(t.customers.c.billing).where(key)).scalar()
            conn.execute(
                update(t.customers).where(key).values(billing={**(current or {}), **values})
            )

    def customer(self, env: str, customer_id: str) -> CustomerRecord:
        found = self.customers(env, [customer_id])
        if customer_id not in found:
            raise NotFound(f"no customer {customer_id!r}")
        return found[customer_id]

    def customers(self, env: str, ids: Iterable[str] | None = None) -> dict[str, CustomerRecord]:
        """Customers of ``env`` (all, or those in ``ids``) with their active subscription."""
        c, s = t.customers, t.subscriptions
        query = _customer_query(env)
        joined = _current_subscription()
        if ids is not None:
            wanted = list(set(ids))
            if not wanted:
                return {}
            query = query.where(c.c.id.in_(wanted))
            # Narrow the subscriptions too, so the join uses their customer index whatever
            # the planner's statistics say.
            joined = and_(joined, s.c.customer_id.in_(wanted))
        query = query.select_from(c.outerjoin(s, joined))
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
        return {row.id: _customer(row) for row in rows}

    def customer_page(self, env: str, page: PageRequest) -> Page[CustomerRecord]:
        """A page of the environment's customers by id, with their active subscription."""
        c, s = t.customers, t.subscriptions
        query = _customer_query(env).select_from(c.outerjoin(s, _current_subscription()))
        with self.engine.connect() as conn:
            found = read_page(conn, query, [(c.c.id, False)], c.c.id, page, "customer")
        return Page([_customer(row) for row in found.items], found.has_more)

    def subscription_page(
        self, env: str, customer_id: str | None, page: PageRequest, now: int
    ) -> Page[dict[str, Any]]:
        """A page of the environment's subscriptions (of one customer, or all), ended ones
        too, oldest first."""
        s = t.subscriptions
        query = select(s).where(s.c.env == env)
        if customer_id is not None:
            query = query.where(s.c.customer_id == customer_id)
        order = [(s.c.created_at, False), (s.c.id, False)]
        with self.engine.connect() as conn:
            found = read_page(conn, query, order, s.c.id, page, "subscription")
        return Page([subscription_json(row, now) for row in found.items], found.has_more)

    def cancel(
        self,
        env: str,
        subscription_id: str,
        at: CancelAt,
        now: int,
        audit: AuditEntry | None = None,
    ) -> dict[str, Any]:
        """End a subscription ``now`` or at the end of its current period. Cancelling again
        answers the subscription as it is (or moves its end forward, from the period's end to
        now); an ended one is a conflict."""
        s = t.subscriptions
        with self.engine.begin() as conn:
            row = conn.execute(select(s).where(s.c.env == env, s.c.id == subscription_id)).first()
            if row is None:
                raise NotFound(f"no subscription {subscription_id!r}")
            if row.end is not None and row.end <= now:
                raise Conflict(
                    f"subscription {subscription_id!r} ended on {format_timestamp(row.end)}; "
                    "subscribe the customer again (POST /v1/subscriptions) to start another"
                )
            if at == "now":
                end = max(now, row.start)
            else:
                plan = self.env_catalog(env).plan(row.plan_key, row.plan_version)
                anchor = None if row.anchor in (None, "calendar") else int(row.anchor)
                end = period_of(max(now, row.start), plan.interval, anchor).end
            if row.end is not None:
                end = min(end, row.end)  # a cancellation only ever brings the end closer
            if end != row.end:
                conn.execute(update(s).where(s.c.id == subscription_id).values(end=end))
                if audit is not None:
                    summary = {**audit.summary, "end": format_timestamp(end)}
                    write_audit(conn, replace(audit, summary=summary))
            ended = conn.execute(select(s).where(s.c.id == subscription_id)).one()
        return subscription_json(ended, now)

    def subscribe(
        self,
        env: str,
        customer_id: str,
        plan_key: str,
        start: int,
        now: int,
        anchor: str = "calendar",
        discount: Mapping[str, Any] | None = None,
        audit: AuditEntry | None = None,
    ) -> tuple[str, int]:
        """Subscribe a customer to the latest version of a plan, ending any subscription it
        had. Returns (subscription id, plan version).

        ``anchor`` ``anniversary`` bills periods from the subscription's start; a plan change
        keeps the billing cycle of the subscription it replaces."""
        customer = self.customer(env, customer_id)
        with self.engine.begin() as conn:
            version = conn.execute(
                select(func.max(t.plans.c.version)).where(
                    t.plans.c.env == env,
                    t.plans.c.key == plan_key,
                    t.plans.c.status == "published",
                )
            ).scalar()
            if version is None:
                draft = conn.execute(
                    select(t.plans.c.version).where(t.plans.c.env == env, t.plans.c.key == plan_key)
                ).scalar()
                if draft is not None:
                    raise Conflict(
                        f"plan {plan_key!r} is a draft (version {draft}) and drafts cannot be "
                        f"subscribed to: publish it first (POST /v1/plans/{plan_key}/versions/"
                        f"{draft}/publish)"
                    )
                raise NotFound(f"no plan {plan_key!r}")
            definition = conn.execute(
                select(t.plans.c.definition).where(
                    t.plans.c.env == env, t.plans.c.key == plan_key, t.plans.c.version == version
                )
            ).scalar_one()
            plan_currency = definition.get("currency")
            if plan_currency != customer.currency and not _has_rate(
                conn, env, plan_currency, customer.currency
            ):
                raise Conflict(
                    f"plan {plan_key!r} is priced in {plan_currency} but customer "
                    f"{customer_id!r} is billed in {customer.currency}: store an exchange rate "
                    f"{plan_currency}→{customer.currency} first (POST /v1/exchange-rates)"
                )
            stored_anchor = "calendar"
            if anchor == "anniversary":
                stored_anchor = str(customer.anchor if customer.anchor is not None else start)
            conn.execute(
                update(t.subscriptions)
                .where(
                    t.subscriptions.c.env == env,
                    t.subscriptions.c.customer_id == customer_id,
                    # the one that runs on, or a cancelled one that has not ended yet
                    or_(t.subscriptions.c.end.is_(None), t.subscriptions.c.end > start),
                )
                .values(end=start)
            )
            sub_id = new_id("sub")
            conn.execute(
                insert(t.subscriptions).values(
                    id=sub_id,
                    env=env,
                    customer_id=customer_id,
                    plan_key=plan_key,
                    plan_version=version,
                    start=start,
                    created_at=now,
                    anchor=stored_anchor,
                    discount=dict(discount) if discount else None,
                )
            )
            if audit is not None:
                summary = {**audit.summary, "plan_version": int(version)}
                write_audit(conn, replace(audit, object_id=sub_id, summary=summary))
        return sub_id, int(version)

    def subscriptions(
        self, env: str, customer_ids: Iterable[str] | None = None, before: int | None = None
    ) -> dict[str, list[dict[str, Any]]]:
        """Every subscription (ended ones too) per customer, oldest first; with ``before``,
        only those that started before it."""
        s = t.subscriptions
        query = select(s).where(s.c.env == env).order_by(s.c.customer_id, s.c.start, s.c.created_at)
        if customer_ids is not None:
            query = query.where(s.c.customer_id.in_(list(customer_ids)))
        if before is not None:
            query = query.where(s.c.start < before)
        out: dict[str, list[dict[str, Any]]] = {}
        with self.engine.connect() as conn:
            for row in conn.execute(query):
                out.setdefault(row.customer_id, []).append(dict(row._mapping))
        return out

    def grants(self, env: str, customer_id: str) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(t.credit_grants).where(
                    t.credit_grants.c.env == env, t.credit_grants.c.customer_id == customer_id
                )
            ).all()
        return [dict(row._mapping) for row in rows]


def _customer_query(env: str) -> Select[Any]:
    c, s = t.customers, t.subscriptions
    return select(
        c,
        s.c.id.label("sub_id"),
        s.c.plan_key,
        s.c.plan_version,
        s.c.start.label("sub_start"),
        s.c.end.label("sub_end"),
        s.c.anchor,
    ).where(c.c.env == env)


def _current_subscription() -> ColumnElement[bool]:
    """Joins a customer to its current subscription: the one that runs on, or the last one,
    cancelled, that nothing followed (its record then says when it ends or ended: the live
    account keeps pricing under its plan until the end of the period it ends in)."""
    c, s = t.customers, t.subscriptions
    later = aliased(s)
    followed = exists().where(
        later.c.env == s.c.env,
        later.c.customer_id == s.c.customer_id,
        later.c.id != s.c.id,
        later.c.start >= s.c.end,
    )
    return and_(s.c.env == c.c.env, s.c.customer_id == c.c.id, or_(s.c.end.is_(None), ~followed))


SubscriptionStatus = Literal["scheduled", "active", "ending", "ended"]


def subscription_status(start: int, end: int | None, now: int) -> SubscriptionStatus:
    """``scheduled`` until it starts (a migration at period end writes such a row),
    ``ending`` once cancelled, until its end."""
    if start > now:
        return "scheduled"
    if end is None:
        return "active"
    return "ending" if end > now else "ended"


def subscription_json(row: Any, now: int) -> dict[str, Any]:
    """A subscription as the API shows it: ``ending`` once cancelled, until its end."""
    anchor = row.anchor
    return {
        "id": row.id,
        "customer_id": row.customer_id,
        "plan": row.plan_key,
        "plan_version": row.plan_version,
        "start": format_timestamp(row.start),
        "end": None if row.end is None else format_timestamp(row.end),
        "status": subscription_status(row.start, row.end, now),
        "anchor": "calendar" if anchor in (None, "calendar") else "anniversary",
        "discount": row.discount,
        "created_at": format_timestamp(row.created_at),
    }


def _customer(row: Any) -> CustomerRecord:
    return CustomerRecord(
        env=row.env,
        id=row.id,
        currency=row.currency,
        name=row.name,
        email=row.email,
        country=row.country,
        vat_id=row.vat_id,
        address=row.address,
        billing_mode=row.billing_mode,
        overdraft=Decimal(row.overdraft),
        credit_limit=None if row.credit_limit is None else Decimal(row.credit_limit),
        spend_cap=None if row.spend_cap is None else Decimal(row.spend_cap),
        plan_key=row.plan_key,
        plan_version=row.plan_version,
        subscription_id=row.sub_id,
        subscription_start=row.sub_start,
        subscription_end=row.sub_end,
        billing=row.billing or {},
        anchor=None if row.anchor in (None, "calendar") else int(row.anchor),
    )


def customer_from_json(env: str, doc: Mapping[str, Any]) -> CustomerRecord:
    """A customer from its JSON (API body or config file), or :class:`InvalidInput` naming
    each bad field."""
    problems: list[Problem] = []
    customer_id = doc.get("id")
    if not is_identifier(customer_id):
        problems.append(Problem("id", "must be a string of 1 to 255 printable characters"))
    code = doc.get("currency")
    places = 12
    try:
        places = currency(code).minor_units  # a limit is money: the currency's decimals
    except InvalidInput as error:
        problems.append(Problem("currency", error.message))
    mode = doc.get("billing_mode", "prepaid")
    if mode not in BILLING_MODES:
        problems.append(Problem("billing_mode", f"must be one of {', '.join(BILLING_MODES)}"))
    amounts: dict[str, Decimal | None] = {}
    for name in ("overdraft", "credit_limit", "spend_cap", "spend_limit"):
        if doc.get(name) is None:
            amounts[name] = None
            continue
        try:
            amounts[name] = parse_amount(doc[name], places=places, field=name, sign="non_negative")
        except InvalidInput as error:
            problems += error.problems
    if "spend_limit" in doc:  # the name of the credit limit before there were two limits
        if "credit_limit" in doc:
            problems.append(
                Problem("spend_limit", "give 'credit_limit' only ('spend_limit' is its old name)")
            )
        amounts["credit_limit"] = amounts["spend_limit"]
    country = doc.get("country")
    if country is not None and (not isinstance(country, str) or len(country) != 2):
        problems.append(Problem("country", "must be an ISO 3166 two-letter code such as 'DE'"))
    for name, longest in TEXT_FIELDS.items():
        value = doc.get(name)
        if value is not None and (not isinstance(value, str) or len(value) > longest):
            problems.append(Problem(name, f"must be a string of at most {longest} characters"))
    address = doc.get("address")
    if address is not None and (
        not isinstance(address, dict)
        or len(address) > MAX_ADDRESS_FIELDS
        or any(len(k) > 64 for k in address)
        or any(not isinstance(v, str) or len(v) > 500 for v in address.values())
    ):
        problems.append(
            Problem(
                "address",
                f"must be a JSON object of at most {MAX_ADDRESS_FIELDS} text fields "
                '(such as "line1", "postal_code", "city"), each at most 500 characters',
            )
        )
    billing = _billing_from_json(doc, problems)
    if problems:
        raise InvalidInput("the customer has problems", problems)
    return CustomerRecord(
        env=env,
        id=str(customer_id),
        currency=str(code),
        name=doc.get("name"),
        email=doc.get("email"),
        country=country.upper() if isinstance(country, str) else None,
        vat_id=doc.get("vat_id"),
        address=doc.get("address"),
        billing_mode=str(mode),
        overdraft=amounts["overdraft"] or Decimal(0),
        credit_limit=amounts["credit_limit"],
        spend_cap=amounts["spend_cap"],
        billing=billing,
    )


def _text(amount: Decimal | None) -> str | None:
    return None if amount is None else format(amount, "f")


def _changed(
    values: dict[str, Any],
    fields: frozenset[str],
    stored_billing: Mapping[str, Any] | None,
    record: CustomerRecord,
) -> dict[str, Any]:
    """The columns an update writes: those of the fields the request gave. The invoicing
    details merge into the stored ones (a detail given as null is removed)."""
    fields = fields | ({"credit_limit"} if "spend_limit" in fields else set())
    changed = {name: value for name, value in values.items() if name in fields}
    given = fields & set(BILLING_FIELDS)
    if given:
        billing = {k: v for k, v in (stored_billing or {}).items() if k not in given}
        billing.update({k: v for k, v in record.billing.items() if k in given})
        changed["billing"] = billing or None
    return changed


def _billing_from_json(doc: Mapping[str, Any], problems: list[Problem]) -> dict[str, Any]:
    billing: dict[str, Any] = {}
    for name in ("locale", "region", "exempt_reason", "payment_method", "provider_customer_id"):
        value = doc.get(name)
        if value is None:
            continue
        if not isinstance(value, str) or not value or len(value) > 255:
            problems.append(Problem(name, "must be a string of 1 to 255 characters"))
            continue
        billing[name] = value
    locale = billing.get("locale")
    if locale is not None:
        try:
            Locale.parse(locale)
        except (ValueError, UnknownLocaleError):
            problems.append(
                Problem("locale", f"unknown locale {locale!r}; use e.g. 'en' or 'de_DE'")
            )
    if doc.get("tax_exempt") is not None:
        if not isinstance(doc["tax_exempt"], bool):
            problems.append(Problem("tax_exempt", "must be true or false"))
        elif doc["tax_exempt"]:
            billing["tax_exempt"] = True
    provider = doc.get("payment_provider")
    if provider is not None:
        if provider not in PAYMENT_PROVIDERS:
            problems.append(
                Problem("payment_provider", f"must be one of {', '.join(PAYMENT_PROVIDERS)}")
            )
        else:
            billing["payment_provider"] = provider
    return billing


def _has_rate(conn: Any, env: str, base: object, quote: str) -> bool:
    rates = t.exchange_rates
    found = conn.execute(
        select(rates.c.rate)
        .where(rates.c.env == env, rates.c.base == base, rates.c.quote == quote)
        .limit(1)
    ).first()
    return found is not None
