"""Plans move forward: publishing and deleting drafts, and moving subscribers of older
versions to a newer one (``POST /v1/plans/{key}/migrate``).

A migration moves, in batches of :data:`MIGRATION_BATCH` subscriptions (one transaction and
one audit entry each), every subscription that runs on (no end) on an older version of the
plan: ``now`` ends it at once and starts one on the new version from the same moment;
``period_end`` ends it at the end of its current period and starts the new one there (a
future-dated subscription row: the live account prices the rest of the period under the old
version and what follows under the new one). The new subscription keeps the old one's anchor
(billing cycle) and discount.

Idempotent: a subscription already on the target version, or already scheduled to move to
it, is counted as ``already`` and left alone, so a retried migration moves nothing twice.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from sqlalchemy import Connection, and_, delete, select, update
from sqlalchemy import insert as sql_insert

from tallyray.errors import Conflict, InvalidInput, NotFound, Problem
from tallyray.pricing.events import format_timestamp
from tallyray.pricing.periods import period_of
from tallyray.pricing.plans import Plan
from tallyray.storage import tables as t
from tallyray.storage.audit import AuditEntry, write_audit
from tallyray.storage.catalog import Catalog, PlanStatus, _has_rate, new_id

__all__ = [
    "MIGRATE_AT",
    "MIGRATION_BATCH",
    "MigrateAt",
    "Migration",
    "delete_draft",
    "migrate_subscribers",
    "publish_plan",
]

MigrateAt = Literal["period_end", "now"]
MIGRATE_AT: tuple[MigrateAt, ...] = ("period_end", "now")
#: Subscriptions moved per transaction (and audit entry).
MIGRATION_BATCH = 200


def publish_plan(
    catalog: Catalog, env: str, key: str, version: int, audit: AuditEntry | None = None
) -> PlanStatus:
    """Make a draft subscribable. Publishing a published version changes nothing. Returns
    the status it had."""
    p = t.plans
    with catalog.engine.begin() as conn:
        status = _status(conn, env, key, version)
        if status == "published":
            return status
        conn.execute(
            update(p)
            .where(p.c.env == env, p.c.key == key, p.c.version == version)
            .values(status="published")
        )
        write_audit(conn, audit)
    return status


def delete_draft(
    catalog: Catalog, env: str, key: str, version: int, audit: AuditEntry | None = None
) -> None:
    """Delete a draft; a published version is never deleted (subscriptions and invoices
    refer to it)."""
    p = t.plans
    with catalog.engine.begin() as conn:
        if _status(conn, env, key, version) == "published":
            raise Conflict(
                f"plan {key!r} version {version} is published and cannot be deleted (its "
                "subscriptions and invoices refer to it); post a new version instead"
            )
        conn.execute(delete(p).where(p.c.env == env, p.c.key == key, p.c.version == version))
        write_audit(conn, audit)


def _status(conn: Connection, env: str, key: str, version: int) -> PlanStatus:
    p = t.plans
    found = conn.execute(
        select(p.c.status).where(p.c.env == env, p.c.key == key, p.c.version == version)
    ).scalar()
    if found is None:
        raise NotFound(f"no plan {key!r} version {version}")
    return "draft" if found == "draft" else "published"


@dataclass
class Migration:
    """What a migration did."""

    plan: str
    to_version: int
    at: MigrateAt
    from_version: int | None
    moved: list[dict[str, Any]] = field(default_factory=list)
    """Per subscription moved: customer, old and new subscription, versions, when."""
    already: int = 0
    skipped: list[dict[str, Any]] = field(default_factory=list)

    def customers(self) -> list[str]:
        return sorted({m["customer_id"] for m in self.moved})

    def to_json(self) -> dict[str, Any]:
        return {
            "plan": self.plan,
            "from_version": self.from_version,
            "to_version": self.to_version,
            "at": self.at,
            "moved": len(self.moved),
            "already": self.already,
            "skipped": self.skipped,
            "subscriptions": self.moved,
        }


def migrate_subscribers(
    catalog: Catalog,
    env: str,
    key: str,
    from_version: int | None,
    to_version: int,
    at: MigrateAt,
    now: int,
    audit: AuditEntry | None = None,
    batch: int = MIGRATION_BATCH,
) -> Migration:
    """Move the subscribers of older versions of plan ``key`` (of ``from_version`` only,
    when given) to ``to_version``, ``now`` or at the end of their current period."""
    cat = catalog.env_catalog(env)
    target = _target(cat.plans, cat.drafts, key, to_version)
    sources = sorted(
        v for (k, v) in cat.plans if k == key and v < to_version and cat.status(k, v) == "published"
    )
    if from_version is not None:
        if (key, from_version) not in cat.plans:
            raise NotFound(f"no plan {key!r} version {from_version}")
        if from_version >= to_version:
            raise InvalidInput(
                f"'from_version' ({from_version}) must be older than 'to_version' "
                f"({to_version}): a migration moves subscribers forward",
                [Problem("from_version", str(from_version))],
            )
        sources = [from_version]
    for version in sources:
        if cat.plans[(key, version)].interval != target.interval:
            raise InvalidInput(
                f"plan {key!r} version {version} is billed per {cat.plans[(key, version)].interval}"
                f" and version {to_version} per {target.interval}: a migration keeps the "
                "billing cycle; subscribe those customers again (POST /v1/subscriptions) "
                "to change it",
                [Problem("to_version", str(to_version))],
            )
    done = Migration(key, to_version, at, from_version)
    s, c = t.subscriptions, t.customers
    with catalog.engine.connect() as conn:
        rows = conn.execute(
            select(s, c.c.currency)
            .join(c, and_(c.c.env == s.c.env, c.c.id == s.c.customer_id))
            .where(s.c.env == env, s.c.plan_key == key)
            .order_by(s.c.customer_id, s.c.start, s.c.created_at)
        ).all()
    by_customer: dict[str, list[Any]] = {}
    for row in rows:
        by_customer.setdefault(row.customer_id, []).append(row)
    todo: list[Any] = []
    for history in by_customer.values():
        last = history[-1]
        if last.plan_version == to_version and (last.end is None or last.end > now):
            done.already += 1  # moved before, or scheduled to move: a retry
        elif last.end is None and last.plan_version in sources:
            todo.append(last)
        elif last.end is not None and last.end > now and last.plan_version in sources:
            done.skipped.append(
                {
                    "customer_id": last.customer_id,
                    "subscription_id": last.id,
                    "reason": f"cancelled: ends {format_timestamp(last.end)}",
                }
            )
    for index in range(0, len(todo), batch):
        _move(
            catalog,
            env,
            target,
            key,
            to_version,
            at,
            now,
            todo[index : index + batch],
            done,
            audit,
            index // batch,
        )
    return done


def _target(plans: Any, drafts: Any, key: str, version: int) -> Plan:
    plan: Plan | None = plans.get((key, version))
    if plan is None:
        raise NotFound(f"no plan {key!r} version {version}")
    if drafts.get(key) == version:
        raise Conflict(
            f"plan {key!r} version {version} is a draft: publish it first (POST "
            f"/v1/plans/{key}/versions/{version}/publish), then migrate"
        )
    return plan


def _move(
    catalog: Catalog,
    env: str,
    target: Plan,
    key: str,
    to_version: int,
    at: MigrateAt,
    now: int,
    rows: Sequence[Any],
    done: Migration,
    audit: AuditEntry | None,
    number: int,
) -> None:
    """One batch in one transaction, with its audit entry."""
    s = t.subscriptions
    moved: list[dict[str, Any]] = []
    with catalog.engine.begin() as conn:
        for row in rows:
            if target.currency.code != row.currency and not _has_rate(
                conn, env, target.currency.code, row.currency
            ):
                done.skipped.append(
                    {
                        "customer_id": row.customer_id,
                        "subscription_id": row.id,
                        "reason": f"billed in {row.currency}, version {to_version} is priced "
                        f"in {target.currency.code} and there is no exchange rate "
                        "(POST /v1/exchange-rates)",
                    }
                )
                continue
            anchor = None if row.anchor in (None, "calendar") else int(row.anchor)
            switch = now if at == "now" else period_of(now, target.interval, anchor).end
            switch = max(switch, row.start)
            if switch == row.start:  # not started yet: it becomes the new version
                changed = conn.execute(
                    update(s)
                    .where(s.c.id == row.id, s.c.end.is_(None))
                    .values(plan_version=to_version)
                ).rowcount
                new = row.id
            else:
                changed = conn.execute(
                    update(s).where(s.c.id == row.id, s.c.end.is_(None)).values(end=switch)
                ).rowcount
                new = new_id("sub")
                if changed:
                    conn.execute(
                        sql_insert(s).values(
                            id=new,
                            env=env,
                            customer_id=row.customer_id,
                            plan_key=key,
                            plan_version=to_version,
                            start=switch,
                            created_at=now,
                            anchor=row.anchor,
                            discount=row.discount,
                        )
                    )
            if not changed:
                continue  # changed by another request meanwhile: it decides
            moved.append(
                {
                    "customer_id": row.customer_id,
                    "from_subscription": row.id,
                    "to_subscription": new,
                    "from_version": row.plan_version,
                    "to_version": to_version,
                    "at": format_timestamp(switch),
                }
            )
        if audit is not None and moved:
            summary = {
                **audit.summary,
                "batch": number,
                "subscriptions": [
                    {k: m[k] for k in ("customer_id", "from_subscription", "to_subscription")}
                    for m in moved
                ],
            }
            write_audit(conn, replace(audit, summary=summary))
    done.moved += moved
