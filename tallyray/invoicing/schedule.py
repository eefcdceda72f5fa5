"""Which periods a customer is billed for, and which subscription covered what part of each.

Pure: subscriptions in (as stored), billing periods out. A subscription's periods follow its
plan's interval and its anchor (calendar, or the anniversary it carries); a period is due when
it has ended by ``until``. A plan change mid-period gives that period two segments, each
prorated by the whole days it covered.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tallyray.pricing.periods import Period, Proration, period_of, prorate
from tallyray.pricing.plans import Plan

__all__ = ["Covered", "due_periods", "subscription_anchor"]


@dataclass(frozen=True, slots=True)
class Covered:
    """One subscription's share of one period."""

    subscription: Mapping[str, Any]
    plan: Plan
    proration: Proration


def subscription_anchor(subscription: Mapping[str, Any]) -> int | None:
    anchor = subscription.get("anchor")
    return None if anchor in (None, "calendar") else int(anchor)


def due_periods(
    subscriptions: Sequence[Mapping[str, Any]],
    plan_of: Callable[[str, int], Plan],
    until: int,
    after: int = 0,
) -> list[tuple[Period, list[Covered]]]:
    """Every period that ended by ``until`` (and after ``after``), oldest first, with the
    subscriptions that covered part of it."""
    found: dict[tuple[int, int], list[Covered]] = {}
    for sub in sorted(subscriptions, key=lambda s: (s["start"], s.get("created_at", 0))):
        plan = plan_of(sub["plan_key"], sub["plan_version"])
        anchor = subscription_anchor(sub)
        end = sub.get("end")
        period = period_of(sub["start"], plan.interval, anchor)
        continued = end is not None and any(s["start"] == end for s in subscriptions)
        while period.end <= until and (end is None or period.start < end):
            part = prorate(period, sub["start"], end, continued)
            if part.days and period.end > after:
                found.setdefault((period.start, period.end), []).append(Covered(sub, plan, part))
            period = period_of(period.end, plan.interval, anchor)
    return [(Period(*key), found[key]) for key in sorted(found)]
