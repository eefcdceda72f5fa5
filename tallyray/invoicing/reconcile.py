"""Reconciliation: a closed period's quantities recomputed from the raw event log and compared
with what the shard wrote when it closed the period (what the invoice was priced from).

The comparison is pure (:func:`compare`); :func:`reconcile_period` and
:func:`reconcile_env` read the store. A difference means the projection and the log
disagree — a bug or a tampered store — and is reported per meter and group, never fixed
silently.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from tallyray.errors import EventError
from tallyray.pricing.events import Event, format_timestamp
from tallyray.pricing.meters import MeterSet, Usage
from tallyray.storage.billing import BillingStore
from tallyray.storage.catalog import Catalog

__all__ = ["Difference", "Reconciliation", "compare", "recompute", "reconcile_env"]


@dataclass(frozen=True, slots=True)
class Difference:
    meter: str
    group: Mapping[str, Any]
    checkpoint: Decimal
    events: Decimal

    def to_json(self) -> dict[str, Any]:
        return {
            "meter": self.meter,
            "group": dict(self.group),
            "checkpoint": format(self.checkpoint, "f"),
            "events": format(self.events, "f"),
        }


@dataclass(frozen=True)
class Reconciliation:
    customer_id: str
    start: int
    end: int
    events: int
    """How many logged events fall in the period."""
    quantities: Mapping[str, str]
    """Per meter, the quantity recomputed from the events."""
    differences: tuple[Difference, ...] = field(default_factory=tuple)

    @property
    def ok(self) -> bool:
        return not self.differences

    def to_json(self) -> dict[str, Any]:
        return {
            "customer_id": self.customer_id,
            "period": {"start": format_timestamp(self.start), "end": format_timestamp(self.end)},
            "events": self.events,
            "quantities": dict(self.quantities),
            "ok": self.ok,
            "differences": [d.to_json() for d in self.differences],
        }


def recompute(meters: MeterSet, events: Sequence[Event]) -> Usage:
    """The period's usage folded afresh from its logged events. Events that no meter accepts
    were skipped by the shard too (see ``ShardCore._apply``), so they are skipped here."""
    try:
        return meters.fold(events)
    except EventError as error:
        bad = {int(p.where.strip("[]")) for p in error.problems}
        return meters.fold([e for i, e in enumerate(events) if i not in bad])


def reconcile_env(
    catalog: Catalog,
    store: BillingStore,
    env: str,
    customer_id: str | None = None,
    since: int = 0,
) -> list[Reconciliation]:
    """Every closed period of ``env`` (of one customer, or all) that ended after ``since``,
    recomputed from the log and compared."""
    meters = catalog.env_catalog(env).meters
    out = []
    for row in store.closed_period_rows(env, customer_id, since):
        events = store.period_events(env, row["customer_id"], row["start"], row["end"])
        checkpoint = meters.usage_from_json(row["usage"])
        out.append(
            compare(meters, row["customer_id"], row["start"], row["end"], checkpoint, events)
        )
    return out


def compare(
    meters: MeterSet,
    customer_id: str,
    start: int,
    end: int,
    checkpoint: Usage | None,
    events: list[Event],
) -> Reconciliation:
    recomputed = recompute(meters, events)
    recomputed.end = end  # a weighted_sum meter's last reading holds to the period's end
    stored = checkpoint if checkpoint is not None else meters.empty_usage()
    stored.end = end
    differences = []
    quantities = {}
    for key, spec in sorted(meters.meters.items()):
        quantities[key] = format(recomputed.quantity(spec), "f")
        mine, theirs = stored.by_group(spec), recomputed.by_group(spec)
        for group in sorted(set(mine) | set(theirs), key=repr):
            a, b = mine.get(group, Decimal(0)), theirs.get(group, Decimal(0))
            if a != b:
                named = dict(zip(spec.group_by, group, strict=False)) if spec.group_by else {}
                differences.append(Difference(key, named, a, b))
    return Reconciliation(customer_id, start, end, len(events), quantities, tuple(differences))
