"""CustomerAccount: one customer's live state, as a pure state machine.

No Ray, no database, no clock: the shard actor passes the time in (``now`` and ``at``, in
microseconds since the epoch) and persists what the account says. Everything here is exact
``Decimal`` arithmetic on top of :mod:`tallyray.pricing`.

State per account:

- usage per open billing period (:class:`~tallyray.pricing.meters.Usage`), and the
  full-precision cost of each period's usage under the customer's plan (*spend*, in the
  customer's currency: converted at the profile's exchange rate when the plan is priced in
  another one);
- per period, how much of each credit grant its usage burned (the invoice's credit lines);
- where each alert rule stands (triggered or not, how many crossings this period);
- the credit :class:`~tallyray.pricing.credits.Ledger`: grants, what is left of each, and spend
  no grant covered;
- active holds (reservations);
- the customer's limits (:class:`Profile`): billing mode, overdraft, and two limits on a
  period's spend: the operator's *credit limit* and the customer's own *spend cap*;
- the units used per window of each of the plan's unit limits (``window_units``; a
  ``period`` limit reads the period's usage instead, see :mod:`tallyray.pricing.quotas`).

What a quota check compares (``available``):

- prepaid (the default): credits remaining + overdraft − uncovered spend − holds;
- the credit limit and the spend cap, per period, for any mode: limit − this period's
  spend − holds;
- the smallest of those that apply; a postpaid customer without a limit is unlimited. The
  customer can lower what it may spend with its cap, never raise the operator's limit.

Before money, a quota check and a reservation ask the plan's entitlements (a feature not
allowed is refused) and its unit limits (units used in the window + units held + what the
request adds must stay within each). A refusal names what refused it (:data:`Refusal`).
"""

from __future__ import annotations

import copy
import enum
from bisect import bisect_right
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from decimal import Decimal
from itertools import chain
from typing import Any, Literal, assert_never

from tallyray.actors.alerting import DEPLETED, AlertRule, Firing, crossings
from tallyray.actors.limits import Limits
from tallyray.errors import Conflict, EventError, Problem
from tallyray.pricing.bounds import SpendBound, meters_that_can_lower_cost, spend_bound
from tallyray.pricing.credits import BILLING_MODES, CreditGrant, Ledger
from tallyray.pricing.events import Event, format_timestamp
from tallyray.pricing.meters import GroupKey, MeterSet, MeterSpec, Usage
from tallyray.pricing.money import currency as currency_of
from tallyray.pricing.money import round_amount
from tallyray.pricing.periods import Period, period_of
from tallyray.pricing.plans import Plan, charge_costs
from tallyray.pricing.quotas import (
    LimitUse,
    UnitLimit,
    WindowUnits,
    denied_feature,
    feature_reason,
    limit_reason,
    over_limit,
    units_by_window,
    units_of,
    window_of,
)
from tallyray.pricing.segments import (
    PlanSpan,
    cuts_within,
    segment_bounds,
    segment_start,
    span_at,
)
from tallyray.pricing.unpriced import PricedLookup, describe_group, lookup_for, matches_group

__all__ = [
    "BILLING_MODES",
    "ClosedPeriod",
    "CustomerAccount",
    "Hold",
    "PlanSpan",
    "Profile",
    "QuotaAnswer",
    "Refusal",
    "SegmentRecord",
]

ZERO = Decimal(0)

FlagKey = tuple[str, int | None, str, GroupKey]
"""(plan key, plan version, meter, group): where flagged unpriced usage is counted."""


@dataclass(slots=True)
class FlagNews:
    """What :meth:`CustomerAccount.record` flagged since the shard last asked."""

    events: int
    """Events with unpriced usage."""
    new: list[tuple[int, FlagKey]]
    """(period start, key) seen for the first time in that period: announce each once."""
    touched: set[tuple[int, FlagKey]]
    """Every (period start, key) whose count moved: write their records."""


def unpriced_message(plan: str, meter: MeterSpec, group: GroupKey) -> str:
    """What a plan that refuses unpriced usage says about one meter's group, and what to do."""
    where = describe_group(meter, group)
    return (
        f"unpriced usage: plan {plan!r} has no charge for meter {meter.key!r}"
        f"{f' ({where})' if where else ''} and refuses usage it does not price; add a charge "
        'that covers it to the plan, or set the plan\'s "unpriced" to "flag" or "allow"'
    )


Refusal = Literal["credit", "credit_limit", "spend_cap", "unit_limit", "entitlement", "unpriced"]
"""What refused a quota check or a reservation: not enough credit, the operator's credit
limit, the customer's spend cap, a unit limit of the plan, a feature the plan does not
include, usage no charge of a plan that refuses unpriced usage prices."""


@dataclass(frozen=True, slots=True)
class Profile:
    """What the account needs to know about its customer and subscription."""

    customer_id: str
    currency: str
    plan: Plan | None = None
    billing_mode: str = "prepaid"
    overdraft: Decimal = ZERO
    credit_limit: Decimal | None = None
    """The operator's limit on a period's spend."""
    spend_cap: Decimal | None = None
    """The customer's own limit on a period's spend (set in the portal)."""
    anchor: int | None = None
    """Start of an anniversary-billed subscription; ``None``: calendar periods."""
    fx_rate: Decimal | None = None
    """Plan currency → customer currency, when they differ (the latest stored rate)."""
    plan_until: int | None = None
    """A cancelled subscription: the start of the first period its plan no longer prices
    (the end of the period it ends in — that period is invoiced whole under the plan)."""
    plan_version: int | None = None
    """The version of ``plan`` (unpriced usage is recorded per plan version)."""
    spans: tuple[PlanSpan, ...] = ()
    """The customer's plans over time (:mod:`tallyray.pricing.segments`), merged; empty:
    ``plan`` prices every moment. A span that begins inside a period cuts it in segments."""

    @property
    def interval(self) -> str:
        return self.plan.interval if self.plan else "month"

    def plan_at(self, ts: int) -> Plan | None:
        """The plan that prices usage at ``ts``."""
        spans = self.spans
        if not spans:
            return self.plan
        if len(spans) == 1:
            return spans[0].plan
        span = span_at(spans, ts)
        return None if span is None else span.plan

    def plans(self) -> tuple[Plan, ...]:
        """Every plan that may price usage, without repeats."""
        found = {id(s.plan): s.plan for s in self.spans if s.plan is not None}
        if self.plan is not None:
            found.setdefault(id(self.plan), self.plan)
        return tuple(found.values())

    @property
    def spend_limit(self) -> Decimal | None:
        """The limit that applies: the smaller of the credit limit and the spend cap."""
        return _smallest(self.credit_limit, self.spend_cap)

    def period_of(self, ts: int) -> Period:
        return period_of(ts, self.interval, self.anchor)


@dataclass(frozen=True, slots=True)
class Hold:
    id: str
    amount: Decimal
    expires_at: int
    units: Mapping[str, Decimal] = field(default_factory=dict)
    """Units held per unit limit of the plan (:attr:`UnitLimit.key`): while the hold is
    active they count against the limit's current window."""


@dataclass(frozen=True, slots=True)
class QuotaAnswer:
    allowed: bool
    cost: Decimal
    available: Decimal | None
    reason: str | None = None
    currency: str = ""
    refusal: Refusal | None = None
    """What refused it (``None`` when allowed)."""
    limit: LimitUse | None = None
    """The unit limit that refused it (``refusal == "unit_limit"``)."""
    feature: str | None = None
    """The feature the plan does not include (``refusal == "entitlement"``)."""

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        # A quota check's answer crosses to the ingress on every check: pickled by its
        # fields, it costs a fifth of the dataclass's default (__getstate__ per slot).
        return QuotaAnswer, (
            self.allowed,
            self.cost,
            self.available,
            self.reason,
            self.currency,
            self.refusal,
            self.limit,
            self.feature,
        )


@dataclass(frozen=True, slots=True)
class SegmentRecord:
    """One segment of a period a plan change cut: its usage, priced under its own plan."""

    start: int
    end: int
    plan: str | None
    """``key@version`` of the plan that priced it (``None``: no plan)."""
    usage: Usage
    costs: tuple[Decimal, ...]
    """Per charge of its plan, in the plan's currency, full precision."""
    spend: Decimal
    """In the customer's currency."""

    def to_json(self) -> dict[str, Any]:
        key, _, version = (self.plan or "").rpartition("@")
        return {
            "start": self.start,
            "end": self.end,
            "plan": key or None,
            "plan_version": int(version) if version else None,
            "usage": self.usage.to_json(),
            "costs": [format(c, "f") for c in self.costs],
            "spend": format(self.spend, "f"),
        }


@dataclass(frozen=True, slots=True)
class ClosedPeriod:
    """A billing period frozen for invoicing: its usage, what it cost under the plan, and what
    it burned of each credit grant."""

    start: int
    end: int
    usage: Usage
    spend: Decimal
    """In the customer's currency."""
    costs: tuple[Decimal, ...]
    """Per charge of the plan, in the plan's currency, full precision."""
    burned: Mapping[str, Decimal]
    segments: tuple[SegmentRecord, ...] = ()
    """When a plan change cut the period: its segments, oldest first (``costs`` are then the
    last segment's)."""


class _Apart(enum.Enum):
    APART = "apart"


_APART = _Apart.APART
"""What :meth:`CustomerAccount._record` answers for commits that must be recorded one by
one (nothing recorded)."""


@dataclass(frozen=True, slots=True)
class _Quiet:
    """After an alert evaluation: how much more spend no alert can notice, and until when."""

    headroom: Decimal
    until: int
    """The end of the period, or the next grant expiry, whichever is first."""
    rules: tuple[AlertRule, ...]


@dataclass
class CustomerAccount:
    profile: Profile
    meters: MeterSet
    periods: dict[int, Usage] = field(default_factory=dict)
    spend: dict[int, Decimal] = field(default_factory=dict)
    ledger: Ledger = field(init=False)
    holds: dict[str, Hold] = field(default_factory=dict)
    costs: dict[int, list[Decimal]] = field(default_factory=dict)
    """Per period, the cost of each of the plan's charges in the plan's currency (``spend``
    is their sum, converted)."""
    burned: dict[int, dict[str, Decimal]] = field(default_factory=dict)
    """Per period, what its usage burned of each grant (negative: credit given back)."""
    rules: tuple[AlertRule, ...] = ()
    """Alert rules: the customer's own and its plan's defaults."""
    alert_state: dict[str, Any] = field(default_factory=dict)
    """Where each rule stands (see :mod:`tallyray.actors.alerting`); part of the snapshot."""
    _bounds: tuple[int, int] = (0, 0)
    _unpriced: dict[int, set[str]] = field(default_factory=dict)
    """Usage folded in but not yet priced: period start → meters it touched."""
    _unpriced_window: tuple[int, int] | None = None
    """The earliest and latest commit time of the unpriced usage."""
    _quiet: _Quiet | None = None
    """Set by an alert evaluation that left every rule quiet; ``None``: evaluate."""
    _spent_since: Decimal = ZERO
    """An upper bound on the spend folded in since the last alert evaluation."""
    _cost_bound: SpendBound = SpendBound({})
    _lowering: frozenset[str] = frozenset()
    """Meters whose new usage can lower the plan's cost: their commits are priced at once."""
    _lowering_types: frozenset[str] = frozenset()
    """The event types that feed a meter of ``_lowering``."""
    _expiries: tuple[int, tuple[int, ...]] = (0, ())
    """(how many grants, their expiry times sorted): grants are only ever added."""
    _grant_ids: tuple[int, frozenset[str]] = (0, frozenset())
    """(how many grants, their ids), for the same reason."""
    _crowding: tuple[int, int] | None = None
    """What :meth:`crowding` answers, kept up to date by :meth:`record` (``None``: work it
    out again)."""
    flagged: dict[int, dict[FlagKey, int]] = field(default_factory=dict)
    """Unpriced usage (:mod:`tallyray.pricing.unpriced`; not to be mixed up with
    ``_unpriced``, usage waiting to be priced): per period, how many events landed in each
    (plan, version, meter, group) that no charge prices. Part of the snapshot."""
    _priced: PricedLookup | None = None
    """The plan's lookup, unless the plan allows unpriced usage (or there is no plan)."""
    _flag_news: FlagNews = field(default_factory=lambda: FlagNews(0, [], set()))
    """What :meth:`record` flagged since :meth:`take_flags` last asked."""
    window_units: WindowUnits = field(default_factory=dict)
    """Units used per unit limit (its key) and window (its start) — day, week and month
    windows; part of the snapshot."""
    parts: dict[int, dict[int, Usage]] = field(default_factory=dict)
    """Periods a plan change cuts: period start → segment start → the segment's usage
    (``periods`` keeps the whole period's, for reading)."""
    part_costs: dict[int, dict[int, list[Decimal]]] = field(default_factory=dict)
    """Per cut period and segment, the cost of each charge of the segment's plan."""
    _cuts: dict[int, tuple[int, ...]] = field(default_factory=dict)
    """Period start → where plan spans cut it (worked out once per profile)."""

    def __post_init__(self) -> None:
        self.ledger = Ledger(self.profile.currency)
        self._plan_changed()

    def _plan_changed(self) -> None:
        """Work out again what follows from the plan and the meters."""
        plan = self.profile.plan
        meters = self.meters.meters
        self._cost_bound = SpendBound({}) if plan is None else spend_bound(plan, meters)
        self._lowering = frozenset() if plan is None else meters_that_can_lower_cost(plan, meters)
        self._priced = (
            None if plan is None or plan.unpriced == "allow" else lookup_for(plan, meters)
        )
        plans = self.profile.plans()
        if len(plans) > 1:  # several plans price usage: no bound, and any may lower cost
            self._cost_bound = SpendBound({m: None for p in plans for m in p.meters_used()})
            self._lowering = frozenset().union(
                *(meters_that_can_lower_cost(p, meters) for p in plans)
            )
        self._lowering_types = self.meters.types_feeding(self._lowering)

    # -- usage ---------------------------------------------------------------------------

    def _batches(self, events: Sequence[Event]) -> list[tuple[int, Sequence[Event], Sequence[int]]]:
        """The events by billing period: (period start, its events, their indices in
        ``events``). All in the last period seen is the common case, answered without a
        calendar lookup."""
        if not events:
            return []
        start, end = self._bounds
        if all(start <= e[3] < end for e in events):
            return [(start, events, range(len(events)))]
        profile = self.profile
        split: dict[int, tuple[list[Event], list[int]]] = defaultdict(lambda: ([], []))
        for index, e in enumerate(events):
            ts = e[3]
            if not start <= ts < end:
                start, end = profile.period_of(ts)
            batch, indices = split[start]
            batch.append(e)
            indices.append(index)
        self._bounds = (start, end)
        return [(s, batch, indices) for s, (batch, indices) in split.items()]

    def _fold(self, events: Sequence[Event]) -> list[tuple[int, Usage, dict[int, Usage] | None]]:
        """Each period's events folded (and per segment, in a period a plan change cuts), or
        :class:`EventError` naming bad events by their index in ``events``."""
        if not events:
            return []
        start, end = self._bounds
        if len(self.profile.spans) < 2 and all(start <= e[3] < end for e in events):
            # The common case — every event in the last period seen, which no plan change
            # cuts — without the general path's per-call lists and look-ups.
            return [(start, self.meters.fold(events, label=_LABEL), None)]
        deltas: list[tuple[int, Usage, dict[int, Usage] | None]] = []
        problems: list[Problem] = []
        for start, batch, indices in self._batches(events):
            try:
                cuts = self._cuts_of(start)
                if cuts:
                    deltas.append(self._fold_segments(start, cuts, batch, indices))
                else:
                    label = _LABEL if type(indices) is range else _label_from(indices)
                    deltas.append((start, self.meters.fold(batch, label=label), None))
            except EventError as error:
                problems += error.problems
        if problems:
            problems.sort(key=lambda p: int(p.where.strip("[]")))
            raise EventError.of(problems)
        return deltas

    def _cuts_of(self, start: int) -> tuple[int, ...]:
        """Where plan changes cut the period that starts at ``start`` (usually nowhere)."""
        spans = self.profile.spans
        if len(spans) < 2:
            return ()
        found = self._cuts.get(start)
        if found is None:
            end = self.profile.period_of(start).end
            found = self._cuts[start] = cuts_within(spans, start, end)
        return found

    def _segment_end(self, start: int, segment: int) -> int:
        """The end of the segment that starts at ``segment`` in the period that starts at
        ``start`` (a ``weighted_sum`` gauge's reading holds until then)."""
        later = [cut for cut in self._cuts_of(start) if cut > segment]
        return later[0] if later else self._end_of(start)

    def _fold_segments(
        self, start: int, cuts: tuple[int, ...], batch: Sequence[Event], indices: Sequence[int]
    ) -> tuple[int, Usage, dict[int, Usage]]:
        """A cut period's events folded per segment (by event timestamp), and as a whole."""
        split: dict[int, tuple[list[Event], list[int]]] = {}
        for event, index in zip(batch, indices, strict=True):
            events, where = split.setdefault(segment_start(start, cuts, event[3]), ([], []))
            events.append(event)
            where.append(index)
        parts: dict[int, Usage] = {}
        problems: list[Problem] = []
        for segment, (events, where) in split.items():
            try:
                parts[segment] = self.meters.fold(events, label=_label_from(where))
                parts[segment].end = self._segment_end(start, segment)
            except EventError as error:
                problems += error.problems
        if problems:
            raise EventError.of(problems)
        whole = self.meters.empty_usage(self._end_of(start))
        for part in parts.values():
            whole.merge(part)
        return start, whole, parts

    def _charge_costs(
        self, start: int, usage: Usage, touched: frozenset[str] | None
    ) -> list[Decimal]:
        return self._costs_under(start, usage, self.costs.get(start), touched)

    def _costs_under(
        self,
        start: int,
        usage: Usage,
        known: Sequence[Decimal] | None,
        touched: frozenset[str] | None,
    ) -> list[Decimal]:
        """The cost of each charge of the plan in force at ``start`` (a period's or a
        segment's) for ``usage``; ``known`` and ``touched`` as in :func:`charge_costs`."""
        plan = self.profile.plan_at(start)
        if plan is None:
            return []
        until = self.profile.plan_until
        if until is not None and start >= until:
            return []  # after the subscription: no plan prices it
        return charge_costs(plan, usage, self.meters.meters, known, touched)

    def _reprice(self, start: int, touched: frozenset[str] | None = None) -> Decimal:
        """Price the period again (only the charges on ``touched`` meters, if given) and
        return how much its spend moved."""
        parts = self.parts.get(start)
        if parts is None:
            costs = self._charge_costs(start, self.periods[start], touched)
            self.costs[start] = costs
            total = sum(costs, ZERO)
        else:
            total = self._reprice_parts(start, parts, touched)
        after = self._converted(total)
        delta = after - self.spend.get(start, ZERO)
        self.spend[start] = after
        return delta

    def _reprice_parts(
        self, start: int, parts: Mapping[int, Usage], touched: frozenset[str] | None
    ) -> Decimal:
        """Price each segment of a cut period under its own plan; the period's cost."""
        known = self.part_costs.setdefault(start, {})
        total = ZERO
        for segment in sorted(parts):
            before = known.get(segment)
            costs = self._costs_under(
                segment, parts[segment], before, touched if before is not None else None
            )
            known[segment] = costs
            total += sum(costs, ZERO)
        self.costs[start] = known[max(parts)]
        return total

    def _merge_parts(self, start: int, parts: Mapping[int, Usage]) -> None:
        mine = self.parts.setdefault(start, {})
        for segment, delta in parts.items():
            usage = mine.get(segment)
            if usage is None:
                mine[segment] = delta
            else:
                usage.merge(delta)

    def record_together(self, commits: Sequence[tuple[int, Sequence[Event]]]) -> bool:
        """Record several commits' events, ``(commit time, events)`` oldest first, in one
        go — when that is the same as recording them one by one and evaluating the alerts
        after each. Returns ``False``, having recorded nothing, when it is not: then record
        them one by one.

        Most of :meth:`record`'s work is per call, not per event, and with many customers
        a commit brings an account one or two events: a shard holds an account's commits
        until something reads it, or a moment later (:mod:`tallyray.actors.unapplied`).
        In one go they cost what they cost one by one unless a grant expires between the
        first commit and the last (a commit's events are priced with the grants active at
        its time), or an event feeds a meter whose usage can lower the cost (such a commit
        is priced on its own, see :meth:`record`). And the alerts fire alike unless one
        could cross a threshold over them: the one-by-one evaluations find a crossing at
        the commit that carries it, with that commit's figures. So they go together only
        while the account's alerts stay quiet (:meth:`evaluate_alerts`) with the spend
        bound of all of them, each commit counted as a fold of its own.
        """
        if len(commits) < 2:
            raise ValueError("record_together takes two commits or more")
        first, last = commits[0][0], commits[-1][0]
        if self._expiry_within(first, last):
            return False
        lowering = self._lowering_types
        if lowering and any(e[2] in lowering for _, events in commits for e in events):
            return False
        events = [e for _, batch in commits for e in batch]
        return self._record(events, first, last, len(commits)) is not _APART

    def _quiet_through(
        self, deltas: Sequence[tuple[int, Usage, dict[int, Usage] | None]], folds: int, at: int
    ) -> bool:
        """Would every alert evaluation stay quiet (skipped) while ``deltas`` are folded in,
        in ``folds`` commits up to ``at``?"""
        if not self.rules and not self.ledger.grants:
            return True  # nothing to evaluate: see evaluate_alerts
        quiet = self._quiet
        if quiet is None or at >= quiet.until or quiet.rules is not self.rules:
            return False
        spent = self._spent_since
        for _, delta, _ in deltas:
            bound = self._cost_bound.of(delta, folds)
            if bound is None:
                return False
            spent += self._converted(bound)
        return spent < quiet.headroom

    def record(self, events: Sequence[Event], at: int) -> Decimal | None:
        """Fold events committed at ``at`` in, and price them later (the hot path).

        Returns what the events cost when they were priced at once, else ``None``.

        Pricing waits until something reads the account, or until a credit grant's expiry
        falls between the commits waiting to be priced: burning is then the same as if each
        batch had been priced at once (the set of active grants is constant over the window,
        and burning is split-invariant for a constant set), at a fraction of the cost.

        That holds while cost only grows. A commit touching a meter whose usage can *lower*
        the cost (volume pricing, a ``latest`` meter, negative values) is priced at once, and
        what waited before it first, on its own: giving credit back is capped by what active
        grants burned, so netting a reduction against other commits' costs could give a
        different ledger than pricing commit by commit — and the ledger must not depend on
        when something read the account (replay reads less often than live traffic).
        """
        found = self._record(events, at, at, 1)
        assert found is not _APART
        return found

    def _record(
        self, events: Sequence[Event], first: int, at: int, folds: int
    ) -> Decimal | None | _Apart:
        """:meth:`record` of the events of ``folds`` commits made from ``first`` to ``at``;
        several only while the alerts stay quiet over them (else :data:`_APART`, nothing
        recorded: see :meth:`record_together`)."""
        if not events:
            return None
        window = self._unpriced_window
        if window is not None:
            low, high = min(window[0], first), max(window[1], at)
            if self._expiry_within(low, high):
                self._catch_up()
        # Fold every period's events before merging any: a bad event leaves no partial write.
        deltas = self._fold(events)
        if folds > 1 and not self._quiet_through(deltas, folds, at):
            return _APART
        plan = self.profile.plan
        if plan is not None and plan.limits:
            self._count_units(plan.limits, events)
        # Each delta's touched meters, worked out once (a commit usually brings one or two
        # events per account, so this per-call work is most of the cost of an event).
        touches = [delta.touched() for _, delta, _ in deltas]
        lowering = self._lowering
        price_now = bool(lowering) and any(not lowering.isdisjoint(t) for t in touches)
        if price_now:
            self._catch_up()
        priced = self._priced
        if priced is not None and priced.open_meters:
            self._flag(events, deltas, priced)
        for (start, delta, parts), touched in zip(deltas, touches, strict=True):
            usage = self.periods.get(start)
            if usage is None:
                usage = self.periods[start] = self.meters.empty_usage(self._end_of(start))
            usage.merge(delta)
            if parts is not None:
                self._merge_parts(start, parts)
            unpriced = self._unpriced.get(start)
            if unpriced is None:
                self._unpriced[start] = set(touched)
            else:
                unpriced |= touched
            if self._crowding is not None:  # kept up to date: caps are checked per request
                self._crowding = _crowding_of(usage, touched, *self._crowding)
            if self._quiet is not None:
                bound = self._cost_bound.of(delta, folds)
                if bound is None:
                    self._quiet = None  # not bounded: the next evaluation prices
                else:
                    self._spent_since += self._converted(bound)
        window = self._unpriced_window
        self._unpriced_window = (
            (first, at) if window is None else (min(window[0], first), max(window[1], at))
        )
        return self._catch_up() if price_now else None

    def _flag(
        self,
        events: Sequence[Event],
        deltas: Sequence[tuple[int, Usage, dict[int, Usage] | None]],
        priced: PricedLookup,
    ) -> None:
        """Count the events with unpriced usage in (one look per group the batch touched;
        only a batch that has some looks at its events)."""
        found = {start: g for start, delta, _ in deltas if (g := priced.unpriced_groups(delta))}
        if not found:
            return
        profile = self.profile
        assert profile.plan is not None
        until = profile.plan_until
        plan, version, news = profile.plan.key, profile.plan_version, self._flag_news
        for start, batch, _ in self._batches(events):
            groups = found.get(start)
            if groups is None or (until is not None and start >= until):
                continue
            counts, flagged_events = priced.count_events(batch, groups)
            mine = self.flagged.setdefault(start, {})
            for (meter, group), count in counts.items():
                key = (plan, version, meter, group)
                if key not in mine:
                    news.new.append((start, key))
                mine[key] = mine.get(key, 0) + count
                news.touched.add((start, key))
            news.events += flagged_events

    def take_flags(self) -> FlagNews:
        """What was flagged since the last call (and forget it): how many events, the keys
        seen for the first time in their period (announce them), and every key touched."""
        news = self._flag_news
        if news.events or news.new or news.touched:  # else nothing to forget: no new object
            self._flag_news = FlagNews(0, [], set())
        return news

    def flag_row(self, start: int, key: FlagKey) -> dict[str, Any]:
        """One flagged group's record: its period, events and quantity (the group's quantity
        in the period)."""
        plan_key, version, meter_key, group = key
        spec = self.meters.meters[meter_key]
        usage = self.periods.get(start)
        quantity = usage.quantity(spec, matches_group(spec, group)) if usage else ZERO
        return {
            "customer_id": self.profile.customer_id,
            "plan_key": plan_key,
            "plan_version": version,
            "meter": meter_key,
            "groups": dict(zip(spec.group_by, group, strict=True)),
            "period_start": start,
            "period_end": self.profile.period_of(start).end,
            "events": self.flagged.get(start, {}).get(key, 0),
            "quantity": format(quantity, "f"),
        }

    def unpriced_refusal(self, events: Sequence[Event]) -> str | None:
        """Why a plan that refuses unpriced usage refuses these events (``None``: it does
        not, or the plan does not refuse)."""
        plan, priced = self.profile.plan, self._priced
        if plan is None or priced is None or plan.unpriced != "reject":
            return None
        for event in events:
            found = priced.event_unpriced(self.meters, event)
            if found:
                return unpriced_message(plan.key, *found[0])
        return None

    def _count_units(self, limits: Sequence[UnitLimit], events: Sequence[Event]) -> None:
        """Add what (valid) events use to their windows of the day, week and month limits
        (a period limit reads the period's usage)."""
        windowed = [limit for limit in limits if limit.window != "period"]
        if not windowed:
            return
        added = units_by_window(windowed, self.meters.meters, events, self.profile.period_of)
        for key, per_window in added.items():
            mine = self.window_units.setdefault(key, {})
            for start, units in per_window.items():
                mine[start] = mine.get(start, ZERO) + units

    def _expiry_within(self, low: int, high: int) -> bool:
        """Does a grant expire in ``(low, high]``? Asked on every commit: a binary search,
        not a walk through every grant the customer ever had."""
        grants = self.ledger.grants
        if not grants:
            return False
        if self._expiries[0] != len(grants):
            stamps = sorted(g.expires_at for g in grants if g.expires_at is not None)
            self._expiries = (len(grants), tuple(stamps))
        expiries = self._expiries[1]
        after = bisect_right(expiries, low)
        return after < len(expiries) and expiries[after] <= high

    def _catch_up(self) -> Decimal:
        """Price what :meth:`record` folded in, and burn credits for it."""
        if self._unpriced_window is None:
            return ZERO
        at = self._unpriced_window[1]
        changes = {
            start: self._reprice(start, frozenset(touched) if start in self.costs else None)
            for start, touched in self._unpriced.items()
        }
        self._unpriced.clear()
        self._unpriced_window = None
        self.rebook(changes, at)
        return sum(changes.values(), ZERO)

    def _end_of(self, start: int) -> int:
        """The end of the period that starts at ``start`` (a ``weighted_sum`` meter's last
        reading holds until then)."""
        return self.profile.period_of(start).end

    def _converted(self, amount: Decimal) -> Decimal:
        rate = self.profile.fx_rate
        return amount if rate is None else amount * rate

    def apply(self, events: Sequence[Event], at: int) -> Decimal:
        """Fold committed events in; burn credits for what they cost. Returns the cost."""
        booked = self.record(events, at)
        return self._catch_up() if booked is None else booked

    def price(self, events: Sequence[Event]) -> Decimal:
        """What these events would cost now, without applying them."""
        self._catch_up()
        total = ZERO
        for start, delta, parts in self._fold(events):
            if parts is not None:
                total += self._price_parts(start, parts)
                continue
            usage = self.periods.get(start)
            if usage is None:
                delta.end = self._end_of(start)
            merged = usage.plus(delta) if usage is not None else delta
            touched = delta.touched() if start in self.costs else None
            after = self._converted(sum(self._charge_costs(start, merged, touched), ZERO))
            total += after - self.spend.get(start, ZERO)
        return total

    def _price_parts(self, start: int, parts: Mapping[int, Usage]) -> Decimal:
        """What would-be usage of a cut period costs, each part in its segment."""
        held = self.parts.get(start, {})
        known = self.part_costs.get(start, {})
        total = ZERO
        for segment, delta in parts.items():
            usage = held.get(segment)
            merged = usage.plus(delta) if usage is not None else delta
            before = known.get(segment)
            touched = delta.touched() if before is not None else None
            after = sum(self._costs_under(segment, merged, before, touched), ZERO)
            total += self._converted(after - sum(before or (), ZERO))
        return total

    def set_meters(self, meters: MeterSet) -> None:
        """Meters were added to the environment (they are never changed or removed)."""
        self.meters = meters
        self._plan_changed()
        self._quiet = None
        self._crowding = None
        for usage in chain(self.periods.values(), *(p.values() for p in self.parts.values())):
            usage.aggregations = meters.aggregations
            for key in meters.meters:
                usage.groups.setdefault(key, {})

    def set_profile(self, profile: Profile) -> dict[int, Decimal]:
        """A new plan or new limits: re-rate every open period under the new plan. Returns
        how much each period's spend moved (book it with :meth:`rebook`).

        With plan spans, each period (or segment) is priced under the plan in force at its
        start instead. A span that now cuts a period with usage makes it a cut period: the
        usage recorded so far is the first segment's — recorded before the change, it stays
        priced under the plan it was recorded under."""
        self._catch_up()
        self.profile = profile
        self._plan_changed()
        self._quiet = None
        self.costs.clear()
        self.part_costs.clear()
        self._cuts.clear()
        self._bounds = (0, 0)  # the interval may have changed
        for start, usage in self.periods.items():
            usage.end = self._end_of(start)
            if start not in self.parts and self._cuts_of(start):
                self.parts[start] = {start: usage.copy()}
        for start, parts in self.parts.items():
            for segment, part in parts.items():
                part.end = self._segment_end(start, segment)
        return {start: self._reprice(start) for start in self.periods}

    def rebook(self, changes: Mapping[int, Decimal], at: int) -> None:
        """Book cost changes per period: burn credit for them (or give it back), and keep
        what each period burned of each grant. Periods are booked oldest first, whatever
        order their usage arrived in: the ledger must not depend on it."""
        for start, change in sorted(changes.items()):
            if not change:
                continue
            if change < ZERO:
                self._quiet = None  # credit given back: a rule may recover
            self.ledger, burned = self.ledger.charge(change, at)
            if burned:
                per_grant = self.burned.setdefault(start, {})
                for b in burned:
                    per_grant[b.grant_id] = per_grant.get(b.grant_id, ZERO) + b.amount

    # -- credits and holds ---------------------------------------------------------------

    def has_grant(self, grant_id: str) -> bool:
        grants = self.ledger.grants
        if self._grant_ids[0] != len(grants):
            self._grant_ids = (len(grants), frozenset(g.id for g in grants))
        return grant_id in self._grant_ids[1]

    def add_grant(self, grant: CreditGrant) -> None:
        if self.has_grant(grant.id):
            return  # replaying a grant that is already in the checkpoint
        self._catch_up()  # usage before the grant never burns it
        self.ledger = self.ledger.add_grant(grant)
        self._quiet = None

    def holds_total(self, now: int) -> Decimal:
        return sum((h.amount for h in self.holds.values() if h.expires_at > now), ZERO)

    def expire_holds(self, now: int) -> list[str]:
        gone = [h.id for h in self.holds.values() if h.expires_at <= now]
        for hold_id in gone:
            del self.holds[hold_id]
        if gone:
            self._quiet = None
        return gone

    def period_spend(self, now: int) -> Decimal:
        self._catch_up()
        return self.spend.get(self._current_period(now), ZERO)

    def _limits(self, now: int) -> list[tuple[Decimal, str]]:
        """Each limit that applies: (what may still be spent under it, which limit)."""
        self._catch_up()
        holds = self.holds_total(now)
        limits: list[tuple[Decimal, str]] = []
        if self.profile.billing_mode == "prepaid":
            credit = self.ledger.remaining(now) + self.profile.overdraft - self.ledger.uncovered
            limits.append((credit - holds, "credit"))
        for limit, name in (
            (self.profile.credit_limit, "credit_limit"),
            (self.profile.spend_cap, "spend_cap"),
        ):
            if limit is not None:
                limits.append((limit - self.period_spend(now) - holds, name))
        return limits

    def available(self, now: int) -> Decimal | None:
        """What may still be spent now; ``None`` when nothing limits it."""
        limits = self._limits(now)
        return min(value for value, _ in limits) if limits else None

    def check(self, events: Sequence[Event], now: int) -> QuotaAnswer:
        """May these events be spent now? Entitlements first, then unit limits, then money."""
        cost = self.price(events)
        refused = self._refused(events, self.units_of(events), cost, now)
        return refused if refused is not None else self.decide(cost, now)

    # -- unit limits and entitlements ----------------------------------------------------

    def units_of(self, events: Sequence[Event]) -> dict[str, Decimal]:
        """What would-be events add to each of the plan's unit limits (what a hold keeps)."""
        plan = self.profile.plan
        if plan is None or not plan.limits:
            return {}
        return units_of(plan.limits, self.meters.meters, events)

    def units_held(self, now: int) -> dict[str, Decimal]:
        """Units held by the active holds, per unit limit."""
        held: dict[str, Decimal] = {}
        for hold in self.holds.values():
            if hold.expires_at > now:
                for key, units in hold.units.items():
                    held[key] = held.get(key, ZERO) + units
        return held

    def limit_use(self, limit: UnitLimit, now: int, held: Decimal = ZERO) -> LimitUse:
        """Where ``limit`` stands in the window holding ``now`` (``held``: units held)."""
        start, end = window_of(now, limit.window, self.profile.period_of)
        if limit.window == "period":
            usage = self.periods.get(start)
            meter = self.meters.meters.get(limit.meter)
            used = usage.quantity(meter, limit.groups) if usage and meter else ZERO
        else:
            used = self.window_units.get(limit.key, {}).get(start, ZERO)
        return LimitUse(limit, used + held, start, end)

    def _refused(
        self,
        events: Sequence[Event],
        adding: Mapping[str, Decimal],
        cost: Decimal,
        now: int,
    ) -> QuotaAnswer | None:
        """The answer when the plan refuses these would-be events: a feature it does not
        include, usage it does not price while it refuses unpriced usage, or a unit limit
        they would pass (counting the units held). ``None``: the plan lets them through
        (money decides)."""
        plan = self.profile.plan
        until = self.profile.plan_until
        if plan is None or (until is not None and now >= until):
            return None  # no plan, or after the subscription: nothing it includes applies
        code = self.profile.currency
        feature = denied_feature(plan.entitlements, events)
        if feature is not None:
            return QuotaAnswer(
                False,
                cost,
                self.available(now),
                feature_reason(feature),
                code,
                "entitlement",
                feature=feature,
            )
        refusal = self.unpriced_refusal(events)
        if refusal is not None:
            return QuotaAnswer(False, cost, self.available(now), refusal, code, "unpriced")
        if not adding:
            return None
        held = self.units_held(now)
        for limit in plan.limits:
            more = adding.get(limit.key, ZERO)
            if not more:
                continue
            use = self.limit_use(limit, now, held.get(limit.key, ZERO))
            if over_limit(limit, use.used, more):
                return QuotaAnswer(
                    False,
                    cost,
                    self.available(now),
                    limit_reason(limit, use.used, more, use.resets_at),
                    code,
                    "unit_limit",
                    limit=replace(use, adding=more),
                )
        return None

    def decide(self, cost: Decimal, now: int) -> QuotaAnswer:
        limits = self._limits(now)
        code = self.profile.currency
        if not limits:
            return QuotaAnswer(True, cost, None, currency=code)
        available, binding = min(limits)
        if cost <= ZERO or cost <= available:
            return QuotaAnswer(True, cost, available, currency=code)
        cur = currency_of(self.profile.currency)
        left = round_amount(max(available, ZERO), cur)
        needed = round_amount(cost, cur, "ROUND_CEILING")
        refusal: Refusal
        if binding == "credit_limit":
            refusal = "credit_limit"
            reason = (
                f"credit limit of {self.profile.credit_limit} {cur.code} for this period "
                f"reached: {left} left, this costs {needed}"
            )
        elif binding == "spend_cap":
            refusal = "spend_cap"
            reason = (
                f"the customer's spend cap of {self.profile.spend_cap} {cur.code} for this "
                f"period reached: {left} left, this costs {needed}"
            )
        else:
            refusal = "credit"
            reason = f"insufficient credit: {left} {cur.code} available, this costs {needed}"
        return QuotaAnswer(False, cost, available, reason, code, refusal)

    def place_hold(
        self,
        hold: Hold,
        now: int,
        max_holds: int | None = None,
        events: Sequence[Event] = (),
    ) -> QuotaAnswer:
        """Hold ``hold.amount`` and ``hold.units`` if they fit in what is available and in
        the plan's unit limits, and ``events`` (the would-be usage) use no feature the plan
        leaves out (atomically: the caller serializes calls to one account).
        :class:`Conflict` when the customer already has ``max_holds`` active holds
        (zero-cost ones too)."""
        if max_holds is not None and len(self.holds) >= max_holds:
            active = sum(1 for h in self.holds.values() if h.expires_at > now)
            if active >= max_holds:
                raise Conflict(
                    f"customer {self.profile.customer_id!r} has {active:,} active holds, the "
                    f"most one customer may have ({max_holds:,}); settle or release some "
                    "(POST /v1/reservations/{id}/settle or /release) before reserving more"
                )
        refused = self._refused(events, hold.units, hold.amount, now)
        answer = refused if refused is not None else self.decide(hold.amount, now)
        if answer.allowed:
            self.holds[hold.id] = hold
            self._quiet = None  # less is available: a balance alert may be due
        return answer

    def release(self, hold_id: str) -> Hold | None:
        self._quiet = None
        return self.holds.pop(hold_id, None)

    # -- limits --------------------------------------------------------------------------

    def crowding(self) -> tuple[int, int]:
        """The most groups one meter has in one open period, and the most values one
        ``unique_count`` meter holds in one (over all of its groups). Asked for every
        account of every request, so kept up to date as events are recorded."""
        if self._crowding is None:
            groups = values = 0
            for usage in self.periods.values():
                groups, values = _crowding_of(usage, usage.groups, groups, values)
            self._crowding = (groups, values)
        return self._crowding

    def near_limits(self, adding: int, limits: Limits) -> bool:
        """Could ``adding`` more events take a meter past a cap? Each event adds at most one
        group and one value to each meter, so far from the caps this is all there is to
        ask; near them, :meth:`over_limits` looks at the events."""
        groups, values = self.crowding()
        return groups + adding > limits.groups_per_meter or values + adding > limits.unique_values

    def over_limits(
        self,
        events: Sequence[Event],
        limits: Limits,
        pending: Sequence[Event] = (),
        label: Callable[[int], str] = "[{}]".format,
    ) -> list[Problem]:
        """The events that would take one of their meters past a cap in their billing
        period, in order, each named by ``label(index)`` with the meter and the cap.
        ``pending`` are events accepted already but not recorded yet: they count, and are
        never refused."""
        tallies: dict[tuple[int, str], _Tally] = {}
        problems: list[Problem] = []
        marked = chain(((-1, e) for e in pending), enumerate(events))
        start, end = self._bounds
        for index, event in marked:
            if not start <= event[3] < end:
                start, end = self.profile.period_of(event[3])
            kept: list[tuple[_Tally, GroupKey, Any]] = []
            for meter, group, value in self.meters.footprint(event):
                tally = tallies.get((start, meter.key))
                if tally is None:
                    usage = self.periods.get(start)
                    held = usage.groups.get(meter.key, {}) if usage is not None else {}
                    tally = tallies[(start, meter.key)] = _Tally(held, meter)
                kept.append((tally, group, value))
            if index >= 0:  # not a pending event
                overs = (t.over(g, v, limits) for t, g, v in kept)
                over = next((o for o in overs if o is not None), None)
                if over is not None:  # refused whole: counted in none of its meters
                    problems.append(Problem(label(index), over))
                    continue
            for tally, group, value in kept:
                tally.add(group, value)
        return problems

    # -- alerts --------------------------------------------------------------------------

    def _current_period(self, now: int) -> int:
        """The start of the period holding ``now`` (the last one looked up, usually)."""
        start, end = self._bounds
        if start <= now < end:
            return start
        start, end = self.profile.period_of(now)
        self._bounds = (start, end)
        return start

    def alert_values(self, now: int) -> dict[str, Decimal | None]:
        """What each rule watches, now (and the credit left, for ``credits.depleted``)."""
        self._catch_up()
        start = self._current_period(now)
        values: dict[str, Decimal | None] = {}
        # Each figure is worked out once, however many rules watch it (each is a walk
        # through the holds or the grants).
        available: list[Decimal | None] = []
        percent: list[Decimal | None] = []
        for rule in self.rules:
            match rule.kind:
                case "balance_below":
                    if not available:
                        available.append(self.available(now))
                    values[rule.id] = available[0]
                case "spend_above":
                    values[rule.id] = self.spend.get(start, ZERO)
                case "usage_above":
                    usage = self.periods.get(start)
                    spec = self.meters.meters.get(rule.meter or "")
                    values[rule.id] = (
                        None if spec is None else usage.quantity(spec) if usage else ZERO
                    )
                case "credits_used_percent":
                    if not percent:
                        granted = self._granted(now)
                        used = granted - self.ledger.remaining(now)
                        percent.append(None if not granted else used * 100 / granted)
                    values[rule.id] = percent[0]
                case _:
                    assert_never(rule.kind)
        if self.ledger.grants:
            values[DEPLETED] = self.ledger.remaining(now)
        return values

    def _granted(self, now: int) -> Decimal:
        """Credit granted by the grants active now."""
        return sum((g.amount for g in self.ledger.grants if g.active_at(now)), ZERO)

    def evaluate_alerts(self, now: int, key: str) -> list[Firing]:
        """The alerts this account's state crosses now, moving the alert state along.

        Pricing every touched account on every commit only to find that nothing crossed was
        the shard's largest cost, so an evaluation that leaves every rule quiet also notes
        how much more spend it would take to cross any of them (the *headroom*). Until the
        period ends or a grant expires, later commits skip evaluating while an upper bound
        on the spend folded in since (:mod:`tallyray.pricing.bounds`) stays below it: what
        fires, and when, is the same as evaluating every time.
        """
        if not self.rules and not self.ledger.grants:
            return []
        quiet = self._quiet
        if (
            quiet is not None
            and now < quiet.until
            and quiet.rules is self.rules
            and self._spent_since < quiet.headroom
        ):
            return []
        cur = currency_of(self.profile.currency)
        describe = {"customer_id": self.profile.customer_id, "currency": cur.code}
        values = self.alert_values(now)
        start = self._current_period(now)
        fired = crossings(self.rules, values, self.alert_state, start, key, describe)
        self._quiet = self._quiet_after(values, now) if not fired else None
        self._spent_since = ZERO
        return fired

    def _quiet_after(self, values: Mapping[str, Decimal | None], now: int) -> _Quiet | None:
        """How much more spend every rule (all quiet now) can take without crossing, or
        ``None`` when that is not a question of spend alone."""
        state = self.alert_state
        if state.get("depleted", {}).get("on"):
            return None
        rules_state = state.get("rules", {})
        headroom: list[Decimal] = []
        left = values.get(DEPLETED)
        if left is not None:
            headroom.append(left)
        credit: list[tuple[Decimal, Decimal]] = []  # (granted, remaining), worked out once
        for rule in self.rules:
            value = values.get(rule.id)
            if value is None:
                continue
            if rules_state.get(rule.id, {}).get("on"):
                return None
            if rule.source == "recharge" and state.get("recharge", {}).get("on"):
                return None  # armed again only by a grant: evaluate until then
            match rule.kind:
                case "usage_above":
                    return None  # usage is not a question of spend
                case "balance_below" | "spend_above":
                    headroom.append(abs(value - rule.threshold))
                case "credits_used_percent":  # used grows by at most the spend
                    if not credit:
                        credit.append((self._granted(now), self.ledger.remaining(now)))
                    granted, remaining = credit[0]
                    headroom.append(remaining - granted * (1 - rule.threshold / 100))
                case _:
                    assert_never(rule.kind)
        if not headroom or min(headroom) <= ZERO:
            return None
        until = self.profile.period_of(now).end
        for grant in self.ledger.grants:
            if grant.expires_at is not None and now < grant.expires_at < until:
                until = grant.expires_at
        return _Quiet(min(headroom), until, self.rules)

    # -- closing periods -----------------------------------------------------------------

    def has_due(self, cutoff: int) -> bool:
        """Does an open period end at or before ``cutoff``? (What :meth:`due_periods` would
        find, without pricing anything.)"""
        period_of = self.profile.period_of
        return any(period_of(start).end <= cutoff for start in self.periods)

    def due_periods(self, cutoff: int) -> list[ClosedPeriod]:
        """The open periods that ended at or before ``cutoff``, priced, oldest first. They
        stay in memory until :meth:`drop_periods` (once they are written out)."""
        self._catch_up()
        due = []
        for start in sorted(self.periods):
            period = self.profile.period_of(start)
            if period.end > cutoff:
                continue
            due.append(
                ClosedPeriod(
                    start=start,
                    end=period.end,
                    usage=self.periods[start],
                    spend=self.spend.get(start, ZERO),
                    costs=tuple(self.costs.get(start, ())),
                    burned=dict(self.burned.get(start, {})),
                    segments=self.segments(start),
                )
            )
        return due

    def segments(self, start: int) -> tuple[SegmentRecord, ...]:
        """The segments of the period that starts at ``start``, priced (none when no plan
        change cuts it)."""
        parts = self.parts.get(start)
        cuts = self._cuts_of(start)
        if parts is None and not cuts:
            return ()
        self._catch_up()
        parts = parts or {}
        known = self.part_costs.get(start, {})
        end = self.profile.period_of(start).end
        out = []
        for low, high in segment_bounds(start, end, sorted({*cuts, *parts} - {start})):
            usage = parts.get(low) or self.meters.empty_usage(high)
            costs = known.get(low)
            if costs is None:
                costs = self._costs_under(low, usage, None, None)
            span = span_at(self.profile.spans, low)
            plan = self.profile.plan_at(low)
            label = span.label if span is not None else None
            if span is None and plan is not None:
                label = f"{plan.key}@0"
            out.append(
                SegmentRecord(
                    low, high, label, usage, tuple(costs), self._converted(sum(costs, ZERO))
                )
            )
        return tuple(out)

    def drop_periods(self, starts: Sequence[int]) -> None:
        """Forget closed periods: their usage now lives in the billing-period records."""
        self._crowding = None
        for start in starts:
            self.periods.pop(start, None)
            self.parts.pop(start, None)
            self.part_costs.pop(start, None)
            self._cuts.pop(start, None)
            self.spend.pop(start, None)
            self.costs.pop(start, None)
            self.burned.pop(start, None)
            self._unpriced.pop(start, None)
            self.flagged.pop(start, None)
        self._bounds = (0, 0)
        self._quiet = None
        # Forget the unit windows that ended before the oldest period still open, and those
        # of limits the plan no longer has.
        oldest = min(self.periods) if self.periods else max(starts, default=0)
        plan = self.profile.plan
        windows = {limit.key: limit.window for limit in plan.limits} if plan else {}
        period_of = self.profile.period_of
        for key in list(self.window_units):
            window = windows.get(key)
            kept = {
                start: units
                for start, units in self.window_units[key].items()
                if window is not None and window_of(start, window, period_of)[1] > oldest
            }
            if kept:
                self.window_units[key] = kept
            else:
                del self.window_units[key]

    # -- reading -------------------------------------------------------------------------

    def balance(self, now: int) -> dict[str, Any]:
        self._catch_up()
        cur = currency_of(self.profile.currency)
        start = self.profile.period_of(now).start
        usage = self.periods.get(start)
        available = self.available(now)
        return {
            "customer_id": self.profile.customer_id,
            "currency": cur.code,
            "plan": plan.key if (plan := self.profile.plan_at(now)) is not None else None,
            "billing_mode": self.profile.billing_mode,
            "credits_remaining": _amount(self.ledger.remaining(now), cur),
            "credits_expired": _amount(self.ledger.expired(now), cur),
            "uncovered": _amount(self.ledger.uncovered, cur),
            "period_spend": _amount(self.spend.get(start, ZERO), cur),
            "period_spend_precise": format(self.spend.get(start, ZERO).normalize(), "f"),
            "holds": _amount(self.holds_total(now), cur),
            "overdraft": _amount(self.profile.overdraft, cur),
            "credit_limit": _optional_amount(self.profile.credit_limit, cur),
            "spend_cap": _optional_amount(self.profile.spend_cap, cur),
            "spend_limit": _optional_amount(self.profile.spend_limit, cur),
            "available": None if available is None else _amount(available, cur),
            "usage": _usage_json(usage, self.meters) if usage is not None else {},
            "segments": [
                {
                    "plan": segment.plan,
                    "start": format_timestamp(segment.start),
                    "end": format_timestamp(segment.end),
                    "spend": _amount(segment.spend, cur),
                }
                for segment in self.segments(start)
            ],
            "grants": [
                {
                    "id": g.id,
                    "amount": _amount(g.amount, cur),
                    "remaining": _amount(g.remaining, cur),
                    "priority": g.priority,
                    "expires_at": g.expires_at,
                    "expired": not g.active_at(now),
                }
                for g in self.ledger.grants
            ],
            **self.plan_limits(now),
        }

    def plan_limits(self, now: int) -> dict[str, Any]:
        """The plan's unit limits (where each stands in its current window: used, held,
        remaining, when it resets) and its entitlements, as the balance shows them."""
        plan = self.profile.plan
        if plan is None:
            return {"limits": [], "entitlements": []}
        held = self.units_held(now)
        limits = []
        for limit in plan.limits:
            use = self.limit_use(limit, now)
            holding = held.get(limit.key, ZERO)
            limits.append(
                {
                    **use.to_json(),
                    "held": _dec(holding),
                    "remaining": _dec(max(limit.limit - use.used - holding, ZERO)),
                }
            )
        return {
            "limits": limits,
            "entitlements": [
                {"feature": e.feature, "allowed": e.allowed} for e in plan.entitlements
            ],
        }

    # -- checkpoints ---------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        self._catch_up()
        return {
            "periods": {str(start): u.to_json() for start, u in self.periods.items()},
            "spend": {str(start): _dec(s) for start, s in self.spend.items()},
            "uncovered": _dec(self.ledger.uncovered),
            "grants": [_grant_json(g) for g in self.ledger.grants],
            "burned": {
                str(start): {gid: _dec(amount) for gid, amount in per_grant.items()}
                for start, per_grant in self.burned.items()
            },
            "alerts": copy.deepcopy(self.alert_state),
            **(
                {
                    "units": {
                        key: {str(start): _dec(units) for start, units in sorted(windows.items())}
                        for key, windows in sorted(self.window_units.items())
                    }
                }
                if self.window_units
                else {}
            ),
            **(
                {
                    "flagged": [
                        [start, plan, version, meter, list(group), count]
                        for start, keys in self.flagged.items()
                        for (plan, version, meter, group), count in keys.items()
                    ]
                }
                if self.flagged
                else {}
            ),
            **(
                {
                    "parts": {
                        str(start): {str(seg): u.to_json() for seg, u in parts.items()}
                        for start, parts in self.parts.items()
                    }
                }
                if self.parts
                else {}
            ),
        }

    @classmethod
    def restore(
        cls, snapshot: Mapping[str, Any], profile: Profile, meters: MeterSet, now: int
    ) -> CustomerAccount:
        account = cls(profile, meters)
        account.periods = {
            int(start): meters.usage_from_json(raw, profile.period_of(int(start)).end)
            for start, raw in snapshot["periods"].items()
        }
        account.spend = {int(start): Decimal(s) for start, s in snapshot["spend"].items()}
        account.ledger = Ledger(
            profile.currency,
            tuple(_grant_from_json(g) for g in snapshot["grants"]),
            Decimal(snapshot["uncovered"]),
        )
        account.alert_state = dict(snapshot.get("alerts", {}))
        for start, plan, version, meter, group, count in snapshot.get("flagged", []):
            account.flagged.setdefault(start, {})[(plan, version, meter, tuple(group))] = count
        account.window_units = {
            key: {int(start): Decimal(units) for start, units in windows.items()}
            for key, windows in snapshot.get("units", {}).items()
        }
        account.parts = {
            int(start): {int(seg): meters.usage_from_json(raw) for seg, raw in parts.items()}
            for start, parts in snapshot.get("parts", {}).items()
        }  # set_profile (below) sets where each segment ends
        account.burned = {
            int(start): {gid: Decimal(amount) for gid, amount in per_grant.items()}
            for start, per_grant in snapshot.get("burned", {}).items()
        }
        # The plan may have changed since the checkpoint: bring spend in line with it.
        account.rebook(account.set_profile(profile), now)
        return account


def _crowding_of(usage: Usage, meters: Iterable[str], groups: int, values: int) -> tuple[int, int]:
    """``(groups, values)`` raised to what ``meters`` hold in ``usage``, if that is more."""
    aggregations = usage.aggregations
    for key in meters:
        found = usage.groups.get(key)
        if not found:
            continue
        if len(found) > groups:
            groups = len(found)
        if aggregations[key] == "unique_count":
            held = (
                sum(map(len, found.values())) if len(found) > 1 else len(next(iter(found.values())))
            )
            if held > values:
                values = held
    return groups, values


class _Tally:
    """One meter's groups and values in one period, while a batch is checked against the
    caps: what the account holds, and what the batch would add."""

    def __init__(self, held: Mapping[GroupKey, Any], meter: MeterSpec) -> None:
        self.held = held
        self.meter = meter
        self.unique = meter.aggregation == "unique_count"
        self.groups = len(held)
        self.values = sum(map(len, held.values())) if self.unique else 0
        self.new_groups: set[GroupKey] = set()
        self.new_values: dict[GroupKey, set[Any]] = {}

    def _new(self, group: GroupKey, value: Any) -> tuple[bool, bool]:
        """Would this group, and this value, be new?"""
        new_group = group not in self.held and group not in self.new_groups
        if not self.unique:
            return new_group, False
        added = self.new_values.get(group)
        new_value = value not in self.held.get(group, ()) and (added is None or value not in added)
        return new_group, new_value

    def over(self, group: GroupKey, value: Any, limits: Limits) -> str | None:
        """What is wrong if one more event in this group with this value would pass a cap."""
        new_group, new_value = self._new(group, value)
        if new_group and self.groups >= limits.groups_per_meter:
            return (
                f"meter {self.meter.key!r} already has {limits.groups_per_meter:,} groups "
                f"(by {', '.join(self.meter.group_by)}) for this customer in this billing "
                "period, the most it may have; this event would start another "
                "(TALLYRAY_MAX_GROUPS_PER_METER)"
            )
        if new_value and self.values >= limits.unique_values:
            return (
                f"meter {self.meter.key!r} already counts {limits.unique_values:,} distinct "
                "values for this customer in this billing period, the most it may hold; "
                "this event would add another (TALLYRAY_MAX_UNIQUE_VALUES)"
            )
        return None

    def add(self, group: GroupKey, value: Any) -> None:
        """Count one event in."""
        new_group, new_value = self._new(group, value)
        if new_group:
            self.new_groups.add(group)
            self.groups += 1
        if new_value:
            self.new_values.setdefault(group, set()).add(value)
            self.values += 1


def _label_from(indices: Sequence[int]) -> Callable[[int], str]:
    return lambda i: f"[{indices[i]}]"


_LABEL: Callable[[int], str] = "[{}]".format
"""The label of events that keep their own indices."""


def _dec(value: Decimal) -> str:
    """A decimal as canonical text: equal values give equal text (0.00 and 0 are "0")."""
    return format(value.normalize(), "f") if value else "0"


def _amount(value: Decimal, cur: Any) -> str:
    return format(round_amount(value, cur), "f")


def _optional_amount(value: Decimal | None, cur: Any) -> str | None:
    return None if value is None else _amount(value, cur)


def _smallest(*limits: Decimal | None) -> Decimal | None:
    given = [limit for limit in limits if limit is not None]
    return min(given) if given else None


def _usage_json(usage: Usage, meters: MeterSet) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, spec in meters.meters.items():
        groups = usage.groups.get(key)
        if not groups:
            continue
        entry: dict[str, Any] = {"quantity": format(usage.quantity(spec), "f")}
        if spec.group_by:
            entry["groups"] = [
                {
                    "group": dict(zip(spec.group_by, g, strict=True)),
                    "quantity": format(q, "f"),
                }
                for g, q in usage.by_group(spec).items()
            ]
        out[key] = entry
    return out


def _grant_json(g: CreditGrant) -> dict[str, Any]:
    return {
        "id": g.id,
        "amount": _dec(g.amount),
        "currency": g.currency,
        "remaining": _dec(g.remaining),
        "priority": g.priority,
        "expires_at": g.expires_at,
        "created_at": g.created_at,
    }


def _grant_from_json(raw: Mapping[str, Any]) -> CreditGrant:
    return CreditGrant(
        raw["id"],
        Decimal(raw["amount"]),
        raw["currency"],
        Decimal(raw["remaining"]),
        raw["priority"],
        raw["expires_at"],
        raw["created_at"],
    )
