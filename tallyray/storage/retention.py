"""Event retention: how old an event must be before the log may forget it, and forgetting it.

The *horizon* is the earliest of these instants (all UTC microseconds); an event is past it
when its ``ts`` is before it:

====================  ==========================================================================
rule                  instant
====================  ==========================================================================
``retention``         now − ``TALLYRAY_EVENT_RETENTION_DAYS`` days (the operator's wish)
``dedup window``      now − 35 days: the events themselves are kept at least as long as the
                      API's dedup window (their ids are kept for ever in ``event_ids``)
``late events``       the start of the calendar month that was open ``grace`` ago: the oldest
                      timestamp intake still accepts for a monthly customer; nothing may be
                      written into a month retention has removed
``open period``       per subscription still running at the reference instant, the start of its
                      period holding that instant; the reference is the earlier of now − grace
                      and the environment's period-close cutoff (every shard's), or the
                      subscription's start when no shard has closed a period there yet
``uninvoiced period`` the start of the earliest closed period (``billing_periods``) that has no
                      invoice yet: invoicing and reconciliation still read its events
====================  ==========================================================================

Removal works in whole months on both stores: the *cut* is the start of the horizon's month,
and every event with ``ts`` before the cut goes (PostgreSQL drops the monthly partitions
that end at or before the cut and deletes the default partition's older rows; SQLite deletes
the rows). It also refuses, for the whole round, when an event to remove has a ``seq`` past
some shard's checkpoint position (a shard that has not checkpointed it would not find it on
replay), or when no shard has checkpointed yet.

With an export directory configured, the events to remove are first written as Parquet by day
(:mod:`tallyray.storage.export`) and synced to disk; only then are they removed. A failed
export removes nothing.

:func:`retention_horizon` is pure; :func:`apply_retention` reads and writes the store.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from sqlalchemy import Engine, and_, delete, func, select, text

from tallyray.pricing.periods import period_of
from tallyray.storage import tables as t
from tallyray.storage.export import export_events
from tallyray.storage.partitions import drop_partition, month_start, partitions

__all__ = [
    "DEDUP_WINDOW_DAYS",
    "Horizon",
    "RetentionResult",
    "SubscriptionSpan",
    "apply_retention",
    "retention_horizon",
]

DAY_US = 86_400 * 1_000_000
DEDUP_WINDOW_DAYS = 35
"""The API's promise: a repeated event id is recognised for at least this long."""

Rule = Literal["retention", "dedup window", "late events", "open period", "uninvoiced period"]


@dataclass(frozen=True, slots=True)
class SubscriptionSpan:
    env: str
    start: int
    end: int | None
    interval: str
    anchor: int | None = None


@dataclass(frozen=True, slots=True)
class Horizon:
    at: int
    """Events with ``ts`` before this may be removed."""
    rule: Rule
    """The rule that set it (the earliest)."""

    @property
    def cut(self) -> int:
        """What removal uses: the start of the horizon's month."""
        return month_start(self.at)


def retention_horizon(
    now: int,
    retention_days: int,
    grace_seconds: int,
    cutoffs: Mapping[str, int | None],
    subscriptions: Sequence[SubscriptionSpan] = (),
    uninvoiced_starts: Sequence[int] = (),
) -> Horizon:
    """The retention horizon (see the module's table). ``cutoffs``: per environment, the
    period-close cutoff every shard has reached (``None``: not every shard has closed one)."""
    late_ref = now - grace_seconds * 1_000_000
    candidates: list[tuple[int, Rule]] = [
        (now - retention_days * DAY_US, "retention"),
        (now - DEDUP_WINDOW_DAYS * DAY_US, "dedup window"),
        (period_of(late_ref, "month").start, "late events"),
    ]
    for sub in subscriptions:
        cutoff = cutoffs.get(sub.env)
        reference = sub.start if cutoff is None else max(min(late_ref, cutoff), sub.start)
        if sub.end is not None and sub.end <= reference:
            continue  # every period of it has ended and closed: the uninvoiced rule holds them
        candidates.append((period_of(reference, sub.interval, sub.anchor).start, "open period"))
    candidates.extend((start, "uninvoiced period") for start in uninvoiced_starts)
    at, rule = min(candidates, key=lambda c: c[0])
    return Horizon(at, rule)


@dataclass
class RetentionResult:
    horizon: Horizon | None = None
    removed: int = 0
    """Events removed."""
    dropped: list[str] = field(default_factory=list)
    """PostgreSQL partitions dropped."""
    exported: int = 0
    """Events written to the export directory before removal."""
    refused: str | None = None
    """Why nothing was removed, when something was past the horizon."""

    def to_json(self) -> dict[str, object]:
        return {
            "horizon": None if self.horizon is None else self.horizon.at,
            "rule": None if self.horizon is None else self.horizon.rule,
            "cut": None if self.horizon is None else self.horizon.cut,
            "removed": self.removed,
            "dropped": self.dropped,
            "exported": self.exported,
            "refused": self.refused,
        }


def _inputs(
    engine: Engine,
) -> tuple[dict[str, int | None], list[SubscriptionSpan], list[int]]:
    """What the horizon needs from the store."""
    s, p, pc, bp, inv = (
        t.subscriptions,
        t.plans,
        t.period_closes,
        t.billing_periods,
        t.invoices,
    )
    with engine.connect() as conn:
        cutoffs: dict[str, int | None] = {}
        for row in conn.execute(select(pc.c.env, func.min(pc.c.cutoff)).group_by(pc.c.env)):
            cutoffs[row[0]] = int(row[1])
        spans = [
            SubscriptionSpan(
                env=row.env,
                start=int(row.start),
                end=None if row.end is None else int(row.end),
                interval=str(row.definition.get("interval", "month")),
                anchor=None if row.anchor in (None, "calendar") else int(row.anchor),
            )
            for row in conn.execute(
                select(s.c.env, s.c.start, s.c.end, s.c.anchor, p.c.definition).join(
                    p,
                    and_(
                        p.c.env == s.c.env,
                        p.c.key == s.c.plan_key,
                        p.c.version == s.c.plan_version,
                    ),
                )
            )
        ]
        invoiced = (
            select(inv.c.id)
            .where(
                inv.c.env == bp.c.env,
                inv.c.customer_id == bp.c.customer_id,
                inv.c.period_start == bp.c.start,
            )
            .exists()
        )
        first = conn.execute(select(func.min(bp.c.start)).where(~invoiced)).scalar()
    return cutoffs, spans, ([] if first is None else [int(first)])


def apply_retention(
    engine: Engine,
    now: int,
    retention_days: int,
    grace_seconds: int,
    export_dir: str | Path | None = None,
) -> RetentionResult:
    """Remove the events before the horizon's cut (see the module's docstring)."""
    cutoffs, spans, uninvoiced = _inputs(engine)
    horizon = retention_horizon(now, retention_days, grace_seconds, cutoffs, spans, uninvoiced)
    result = RetentionResult(horizon=horizon)
    cut = horizon.cut
    e = t.events
    postgres = engine.dialect.name == "postgresql"
    with engine.connect() as conn:
        newest = conn.execute(select(func.max(e.c.seq)).where(e.c.ts < cut)).scalar()
        if newest is None:
            return result  # nothing past the cut
        checkpointed = conn.execute(select(func.min(t.shard_checkpoints.c.position))).scalar()
        old = [p for p in partitions(conn) if p.end <= cut] if postgres else []
    if checkpointed is None or int(newest) > int(checkpointed):
        result.refused = (
            f"event seq {newest} is not in every shard's checkpoint yet "
            f"(the oldest checkpoint holds up to {checkpointed}); retention waits for it"
        )
        return result
    if export_dir is not None:
        result.exported = export_events(engine, None, cut, Path(export_dir)).rows
    with engine.begin() as conn:
        for partition in old:
            count = conn.execute(text(f"SELECT count(*) FROM {partition.name}")).scalar_one()
            drop_partition(conn, partition.name)
            result.dropped.append(partition.name)
            result.removed += int(count)
        gone = conn.execute(delete(e).where(e.c.ts < cut))
        result.removed += gone.rowcount
        conn.execute(delete(t.event_chunks).where(t.event_chunks.c.ts_max < cut))
    return result
