"""Segments: the parts of a billing period each priced under the plan in force.

A customer's subscriptions make a line of *plan spans*: plan A from ``since`` until the next
span's ``since``, then plan B, and so on. A span that begins strictly inside a period *cuts*
it: the period's usage is split by **event timestamp** against the cut, each part (a
*segment*) is priced under its own plan, and the period's cost is the sum of its segments'.
Usage a segment holds is never re-rated under another plan, so the spend a customer saw live
stays what it was after a plan change.

- A span that begins on a period boundary cuts nothing: the period is priced whole under it.
- Usage before the first span (a subscription that started mid-period) belongs to the first
  span's plan, as it always did.
- Two adjacent spans of the same plan and version are one span: re-subscribing to the same
  version makes no segment.

Pure: times are microseconds since the epoch, as everywhere in the pricing engine.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from tallyray.pricing.plans import Plan

__all__ = ["PlanSpan", "cuts_within", "merge_spans", "segment_bounds", "segment_start", "span_at"]


@dataclass(frozen=True, slots=True)
class PlanSpan:
    """One subscription's plan, in force from ``since`` until the next span's ``since``."""

    since: int
    plan: Plan | None
    version: int = 0

    @property
    def label(self) -> str:
        """``key@version`` (``-`` without a plan)."""
        return "-" if self.plan is None else f"{self.plan.key}@{self.version}"


def merge_spans(spans: Iterable[PlanSpan]) -> tuple[PlanSpan, ...]:
    """The spans sorted by ``since``, adjacent ones of the same plan version made one (the
    later start of a repeated version cuts nothing)."""
    out: list[PlanSpan] = []
    for span in sorted(spans, key=lambda s: s.since):
        if out and out[-1].label == span.label:
            continue
        if out and out[-1].since == span.since:
            out[-1] = span  # two spans from the same moment: the later one wins
            continue
        out.append(span)
    return tuple(out)


def span_at(spans: Sequence[PlanSpan], ts: int) -> PlanSpan | None:
    """The span in force at ``ts``: the last one that began at or before it, or the first one
    for a moment before every span (``None`` when there are none)."""
    if not spans:
        return None
    index = bisect_right([s.since for s in spans], ts) - 1
    return spans[max(index, 0)]


def cuts_within(spans: Sequence[PlanSpan], start: int, end: int) -> tuple[int, ...]:
    """The moments strictly inside ``[start, end)`` where another plan takes over, sorted.
    The first span cuts nothing (usage before it is its plan's)."""
    return tuple(s.since for s in spans[1:] if start < s.since < end)


def segment_start(period_start: int, cuts: Sequence[int], ts: int) -> int:
    """The start of the segment that holds ``ts``: the last cut at or before it, else the
    period's start. ``cuts`` sorted, as :func:`cuts_within` gives them."""
    index = bisect_right(cuts, ts)
    return cuts[index - 1] if index else period_start


def segment_bounds(start: int, end: int, cuts: Sequence[int]) -> list[tuple[int, int]]:
    """The segments ``[from, to)`` of the period ``[start, end)`` cut at ``cuts``."""
    edges = [start, *(c for c in cuts if start < c < end), end]
    return [(a, b) for a, b in zip(edges, edges[1:], strict=False)]
