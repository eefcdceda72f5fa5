"""A simulation's request, and its work as Ray tasks over chunks of customers.

One chunk (:func:`simulate_chunk`) reads its customers' subscriptions, invoices and the
event log of the range as columns, replays the events once into each billing period's usage
(:mod:`tallyray.simulation.replay`), builds each period's invoice under the draft plan with
the invoice builder's own input (:func:`tallyray.invoicing.runs.period_input`), compares it
with the actual one (:mod:`tallyray.simulation.compare`) and writes the results and its
progress in one transaction, and marks the chunk done there: a chunk run twice (Ray may
retry it; a resumed job's old driver may still finish it) is stored once.

"Actual" is the customer's stored invoice for the period when there is one (not voided);
otherwise what the invoice run would build for it now: the usage the shard closed the
period with, or, for a period not closed yet, the replayed usage.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from tallyray.errors import InvalidInput, NotFound, Problem, TallyrayError
from tallyray.invoicing.builder import build_invoice
from tallyray.invoicing.runs import RunSpec, context, period_input
from tallyray.invoicing.schedule import Covered, due_periods
from tallyray.pricing.config import parse_plan
from tallyray.pricing.events import parse_timestamp
from tallyray.pricing.meters import MeterSet
from tallyray.pricing.money import shown
from tallyray.pricing.periods import Period
from tallyray.pricing.plans import Plan, per_event_sums
from tallyray.simulation.compare import ActualSource, compare_customer
from tallyray.simulation.replay import EventColumns, replay
from tallyray.storage.catalog import EnvCatalog
from tallyray.storage.simulations import SimulationStore

log = logging.getLogger("tallyray.simulation")

__all__ = [
    "CHUNK_SIZE",
    "MAX_CUSTOMERS",
    "SimulationRequest",
    "SimulationSpec",
    "SimulationState",
    "catalog_plan",
    "parse_request",
    "simulate_chunk",
    "simulate_chunk_task",
]

SimulationState = Literal["pending", "running", "interrupted", "succeeded", "failed"]
"""A job's state as the API shows it. ``interrupted`` is never stored: it is ``pending`` or
``running`` with a driver that stopped beating (:mod:`tallyray.storage.leases`)."""

CHUNK_SIZE = 500
"""Customers per Ray task."""

MAX_CUSTOMERS = 100_000
"""The longest explicit ``customers`` list a request may carry."""

FIELDS = frozenset({"plan", "from", "to", "customers", "subscribers_of"})


@dataclass(frozen=True)
class SimulationRequest:
    """A checked ``POST /v1/simulations`` body."""

    plan: Plan
    definition: Mapping[str, Any]
    """The plan's JSON (the draft as sent, or the stored version's)."""
    plan_ref: str | None
    """``key@version`` when the plan was read from the catalog."""
    plan_version: int
    start: int
    end: int
    customers: tuple[str, ...] | None
    subscribers_of: str | None


def catalog_plan(env: EnvCatalog, ref: str) -> tuple[Plan, Mapping[str, Any], int]:
    """The plan a ``"key@version"`` (or ``"key"``: its latest version) names, with its JSON
    and version. The one place a simulation reads plans from the catalog."""
    key, _, version_text = ref.partition("@")
    version: int | None = None
    if version_text:
        if not version_text.isdigit():
            raise InvalidInput(
                f"plan {ref!r}: the version after '@' must be a whole number, like 'pro@2'",
                [Problem("plan", "not key@version")],
            )
        version = int(version_text)
    plan = env.plan(key, version)  # NotFound names what is missing
    found = version if version is not None else env.latest[key]
    return plan, env.raw_plans[(key, found)], found


def parse_request(doc: Mapping[str, Any], env: EnvCatalog, now: int) -> SimulationRequest:
    """Check a request body against the environment's catalog; :class:`InvalidInput` names
    every problem."""
    problems: list[Problem] = []
    unknown = sorted(set(doc) - FIELDS)
    if unknown:
        problems.append(
            Problem(unknown[0], f"unknown field; a simulation takes {', '.join(sorted(FIELDS))}")
        )
    raw_plan = doc.get("plan")
    plan: Plan | None = None
    definition: Mapping[str, Any] = {}
    plan_ref: str | None = None
    version = 0
    if isinstance(raw_plan, str):
        try:
            plan, definition, version = catalog_plan(env, raw_plan)
            plan_ref = f"{plan.key}@{version}"
        except NotFound as missing:
            problems.append(Problem("plan", str(missing)))
    elif isinstance(raw_plan, dict):
        try:
            plan = parse_plan(raw_plan, env.meters.meters)
            definition = raw_plan
        except InvalidInput as bad:
            problems += [Problem(f"plan.{p.where}", p.message) for p in bad.problems] or [
                Problem("plan", str(bad))
            ]
    else:
        problems.append(
            Problem("plan", 'required: a draft plan object, or "key@version" of a stored plan')
        )
    moments: dict[str, int] = {}
    for name in ("from", "to"):
        value = doc.get(name)
        if value is None:
            problems.append(Problem(name, "required: an RFC 3339 time"))
            continue
        try:
            moments[name] = parse_timestamp(value)
        except ValueError:
            problems.append(
                Problem(
                    name,
                    f"must be an RFC 3339 time like '2026-10-01T00:00:00Z', got {shown(value)}",
                )
            )
    if len(moments) == 2:
        if moments["from"] >= moments["to"]:
            problems.append(Problem("to", "must be after 'from'"))
        elif moments["to"] > now:
            problems.append(
                Problem("to", "is in the future: a simulation replays periods that have ended")
            )
    customers = doc.get("customers")
    subscribers_of = doc.get("subscribers_of")
    if (customers is None) == (subscribers_of is None):
        problems.append(
            Problem("customers", "give either 'customers' (a list of ids) or 'subscribers_of'")
        )
    elif customers is not None:
        if not isinstance(customers, list) or not customers:
            problems.append(Problem("customers", "must be a non-empty list of customer ids"))
        elif len(customers) > MAX_CUSTOMERS:
            problems.append(Problem("customers", f"at most {MAX_CUSTOMERS:,} customers"))
        elif not all(isinstance(c, str) and c for c in customers):
            problems.append(Problem("customers", "every customer id must be a non-empty string"))
    elif not isinstance(subscribers_of, str) or subscribers_of not in env.latest:
        problems.append(Problem("subscribers_of", f"no plan {subscribers_of!r}"))
    if problems:
        raise InvalidInput(
            problems[0].message
            if len(problems) == 1
            else "the simulation request is invalid: see details",
            problems,
        )
    assert plan is not None
    return SimulationRequest(
        plan=plan,
        definition=definition,
        plan_ref=plan_ref,
        plan_version=version,
        start=moments["from"],
        end=moments["to"],
        customers=None if customers is None else tuple(dict.fromkeys(customers)),
        subscribers_of=subscribers_of if isinstance(subscribers_of, str) else None,
    )


@dataclass(frozen=True)
class SimulationSpec:
    """What every chunk needs; plain data, so it crosses the Ray boundary."""

    run: RunSpec
    """Database, environment and the invoicing and tax config, as an invoice run has them
    (``until`` is the range's end)."""
    simulation_id: str
    plan: Mapping[str, Any]
    plan_version: int
    start: int
    end: int


def _buckets(
    periods: Mapping[str, Sequence[Period]],
    first: Mapping[str, int],
    event_customers: Sequence[str],
    ts: np.ndarray[Any, Any],
) -> np.ndarray[Any, Any]:
    """For each event, the index of the (customer, period) usage it counts in, or ``-1``."""
    out = np.full(len(ts), -1, dtype=np.int64)
    if not len(ts):
        return out
    codes, inverse = np.unique(np.asarray(event_customers, dtype=object), return_inverse=True)
    for code, customer in enumerate(codes.tolist()):
        spans = periods.get(customer)
        if not spans:
            continue
        rows = np.flatnonzero(inverse == code)
        starts = np.asarray([p.start for p in spans], dtype=np.int64)
        ends = np.asarray([p.end for p in spans], dtype=np.int64)
        at = np.searchsorted(starts, ts[rows], side="right") - 1
        inside = (at >= 0) & (ts[rows] < ends[np.maximum(at, 0)])
        out[rows[inside]] = first[customer] + at[inside]
    return out


def simulate_chunk(spec: SimulationSpec, seq: int, customer_ids: Sequence[str]) -> dict[str, Any]:
    """Simulate chunk ``seq`` (these customers) and store its results; returns how many were
    done, an error per customer that could not be, and whether this run stored them (not
    when the chunk was stored before: a retry)."""
    ctx = context(spec.run)
    env = spec.run.env
    store = SimulationStore(ctx.catalog.engine)
    draft = parse_plan(spec.plan, ctx.env.meters.meters)
    records = ctx.catalog.customers(env, customer_ids)
    subscriptions = ctx.catalog.subscriptions(env, customer_ids, before=spec.end)
    errors: list[dict[str, Any]] = []
    work: list[tuple[str, Period, list[Covered]]] = []
    periods: dict[str, list[Period]] = {}
    first: dict[str, int] = {}
    for customer in customer_ids:
        if customer not in records:
            errors.append({"customer_id": customer, "message": "no such customer"})
            continue
        due = due_periods(subscriptions.get(customer, []), ctx.env.plan, spec.end, spec.start)
        if not due:
            errors.append(
                {
                    "customer_id": customer,
                    "message": "none of its subscriptions has a billing period that ends in "
                    "the range",
                }
            )
            continue
        first[customer] = len(work)
        periods[customer] = [p for p, _ in due]
        work += [(customer, p, covered) for p, covered in due]
    usages = []
    if work:
        lo = min(p.start for _, p, _ in work)
        hi = max(p.end for _, p, _ in work)
        who, event_id, kind, ts, properties = store.events(env, list(periods), lo, hi)
        bucket = _buckets(periods, first, who, ts)
        meters = MeterSet(
            ctx.env.meters.meters.values(), per_event_sums([*ctx.env.plans.values(), draft])
        )
        usages = replay(
            meters,
            EventColumns(bucket, event_id, kind, ts, properties),
            len(work),
            [p.end for _, p, _ in work],
        )
        closed = ctx.billing.closed_periods(env, list(periods), spec.end)
        invoices = store.invoices(env, list(periods), lo, hi)
    results = []
    for customer in periods:
        record = records[customer]
        compared: list[tuple[Mapping[str, Any], ActualSource, Mapping[str, Any]]] = []
        try:
            for index in range(first[customer], first[customer] + len(periods[customer])):
                _, period, covered = work[index]
                if any(c.plan.interval != draft.interval for c in covered):
                    raise InvalidInput(
                        f"the plan bills per {draft.interval}, the customer's per "
                        f"{covered[-1].plan.interval}: a simulation compares periods of "
                        "one length"
                    )
                stored = invoices.get((customer, period.start))
                source: ActualSource = "invoice" if stored is not None else "computed"
                if stored is None:
                    row = closed.get((customer, period.start))
                    usage = (
                        usages[index]
                        if row is None
                        else ctx.env.meters.usage_from_json(row["usage"], period.end)
                    )
                    stored = build_invoice(
                        period_input(ctx, env, record, period, covered, usage, {})
                    )
                under_draft = [
                    Covered(
                        {
                            **c.subscription,
                            "plan_key": draft.key,
                            "plan_version": spec.plan_version,
                        },
                        draft,
                        c.proration,
                    )
                    for c in covered
                ]
                simulated = build_invoice(
                    period_input(ctx, env, record, period, under_draft, usages[index], {})
                )
                compared.append((stored, source, simulated))
            results.append(compare_customer(customer, compared))
        except (TallyrayError, LookupError, ValueError) as error:
            log.warning("simulation %s: customer %s: %s", spec.simulation_id, customer, error)
            errors.append({"customer_id": customer, "message": str(error)})
    written = store.add_results(spec.simulation_id, seq, results, len(customer_ids), errors)
    return {"done": len(customer_ids), "errors": errors, "stored": written}


def _chunk_task(spec: SimulationSpec, seq: int, customer_ids: list[str]) -> dict[str, Any]:
    from tallyray.logs import configure_logging

    configure_logging()
    return simulate_chunk(spec, seq, customer_ids)


def simulate_chunk_task() -> Any:
    """The Ray remote function for one chunk (made on first use: importing this module must
    not need Ray). Retried by Ray if its worker dies: a chunk is stored once."""
    import ray

    global _remote
    if _remote is None:
        _remote = ray.remote(num_cpus=0, max_retries=3)(_chunk_task)
    return _remote


_remote: Any = None
