"""A scheduled invoice run over N customers (goal of issue 15: figures for 10,000), started by
the scheduler's own loop at its slot, on a test clock.

    python bench/bench_scheduled_run.py [--customers 10000] [--events-per-customer 100]
                                        [--store postgres|sqlite] [--shards 2]

Setup, not timed:

* a fresh database (PostgreSQL on 127.0.0.1:5432 as user postgres, a database of its own; or
  a SQLite file in a temporary directory), migrated and seeded from
  examples/llm-api/tallyray.json without its customers; dropped (deleted) at the end;
* N customers in env "test" on "pro" since 1 October 2026 (EUR, DE, manual payments) and
  their October events (``--events-per-customer`` on average: completions on two models,
  seat pings, GPU jobs; bench_simulation.py's mix), written through the shards' own
  group-commit path, each to the shard its customer belongs to;
* a local Ray (2 CPUs) and the shard actors, which recover October from the log as after a
  restart and then, their clock being past October's grace window, close it on their own,
  as a running server's shards do before the run's slot.

The clock: every process runs on one shifted clock (:mod:`tallyray.clock`), 2026-11-04
00:30 UTC when the shards start. Once October is closed, the schedule's time of day is set a
few seconds ahead (``RunSchedule``, as ``TALLYRAY_INVOICE_RUN_AT`` makes it, but to the
second), so the slot falls on 4 November, past the 3 days of grace.

Timed: :meth:`InvoiceScheduler.run_forever`, the loop each Serve replica runs, with the
schedule on for "test": its first look finds nothing due (the day before's slot), it sleeps
until the slot, looks, finds October due (every subscription read), claims the slot and
starts the run; the run lists its customers, writes the invoices in chunk tasks (Ray, two at
a time), then collects every finalized invoice through the manual provider. From the slot to
the run's end. Printed: the phases, invoices/s, CPU seconds per process kind during the run
and per invoice (psutil; processes outside the benchmark are marked OTHER: the box is
shared), and the peak RSS of the benchmark's processes (sampled every 0.25 s).

Checked afterwards, not timed: one run for the slot, N invoices for October, each paid
once; a second scheduler (a restarted replica) at the same slot starts nothing.

Everything talks to 127.0.0.1 only. Not a module of the tallyray package: run it from the
repository root.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import _server
import psutil
from _seed import (
    CONFIG,
    INSERT_BATCH,
    PERIOD_END,
    PERIOD_START,
    SELLER,
    TAX,
    analyze,
    customer_rows,
    fresh_store,
    log,
    shards_running,
    subscription_rows,
)
from bench_simulation import synthetic
from sqlalchemy import Engine, func, insert, select

from tallyray.actors.routing import shard_of
from tallyray.clock import ShiftedClock, offset_to
from tallyray.cluster import Settings, prepare_store
from tallyray.invoicing.scheduler import InvoiceScheduler, RunSchedule
from tallyray.invoicing.service import Billing
from tallyray.pricing import parse_timestamp
from tallyray.pricing.events import format_timestamp
from tallyray.serve.shards import ShardRouter
from tallyray.storage import tables as t
from tallyray.storage.billing import BillingStore
from tallyray.storage.eventlog import ShardStore

SHARDS_START = "2026-11-04T00:30:00Z"
"""Where the clock stands when the shards start: past October's grace window (3 days)."""
GRACE_SECONDS = 3 * 86_400
SLOT_AHEAD = 3.0
"""Seconds between setting the schedule and its slot."""
COMMIT_BATCH = 20_000
_US = 1_000_000


def config_without_customers(folder: Path) -> str:
    """The example config's pricing and invoicing, without its customers (only the
    benchmark's are billed)."""
    config = json.loads(Path(CONFIG).read_text())
    config.pop("customers", None)
    path = folder / "tallyray.json"
    path.write_text(json.dumps(config))
    return str(path)


def seed(engine: Engine, ids: list[str], per_customer: int, shards: int, now: int) -> int:
    """Customers on "pro" since 1 October, and their October events in the shards' logs
    (as the shards' group commits write them). Returns how many events."""
    for i in range(0, len(ids), INSERT_BATCH):
        batch = ids[i : i + INSERT_BATCH]
        with engine.begin() as conn:
            conn.execute(insert(t.customers), customer_rows("test", batch, now, "postpaid"))
            conn.execute(insert(t.subscriptions), subscription_rows("test", batch, now))
    rows = synthetic(len(ids) * per_customer, len(ids), seed=11)
    by_shard: dict[int, list[tuple[Any, ...]]] = defaultdict(list)
    for row in rows:
        by_shard[shard_of("test", row[0], shards)].append(("test", *row))
    for shard, events in by_shard.items():
        store = ShardStore(engine, shard)
        events.sort(key=lambda r: r[4])  # in time order, as they arrive
        position = 0
        for i in range(0, len(events), COMMIT_BATCH):
            position = store.commit(events[i : i + COMMIT_BATCH], position, at=now).position
    return len(rows)


def closed_shards(engine: Engine) -> int:
    """How many shards have closed October (their cutoff is past its end)."""
    with engine.connect() as conn:
        return int(
            conn.execute(
                select(func.count()).where(
                    t.period_closes.c.env == "test", t.period_closes.c.cutoff >= PERIOD_END
                )
            ).scalar_one()
        )


# -- processes: CPU and memory ---------------------------------------------------------------


def _ours() -> set[int]:
    """This process and every process it started (Ray's raylet, GCS, workers, actors)."""
    me = psutil.Process()
    return {me.pid, *(p.pid for p in me.children(recursive=True))}


def _role(pid: int, ours: set[int], database: str | None) -> str:
    try:
        proc = psutil.Process(pid)
        name = proc.name()
        cmdline = " ".join(proc.cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return "OTHER: exited before it was named"  # ours live on: Ray keeps its workers
    if pid == os.getpid():
        return "bench: scheduler, run driver, payment collection (this process)"
    if pid in ours:
        if "ShardActor" in name or "ShardActor" in cmdline:
            return "bench: shard actors"
        if name.startswith("ray::") or "default_worker.py" in cmdline:
            return "bench: Ray workers (invoice chunk tasks)"
        return (
            f"bench: Ray's own processes ({name})"
            if name in ("raylet", "gcs_server")
            else ("bench: Ray's other processes (dashboard, log monitor, …)")
        )
    if name == "postgres":
        if database and f" {database} " in cmdline + " ":
            return "bench: PostgreSQL backends of the bench database"
        if "postgres:" in cmdline and any(
            w in cmdline for w in ("writer", "checkpointer", "walwriter", "autovacuum")
        ):
            return "shared: PostgreSQL's background processes"
        return "OTHER: PostgreSQL backends of other databases"
    return f"OTHER: {name}"


def cpu_times() -> dict[int, float]:
    """User + system CPU seconds so far of every process on the machine."""
    found = {}
    for proc in psutil.process_iter(["cpu_times"]):
        times = proc.info["cpu_times"]
        if times is not None:
            found[proc.pid] = times.user + times.system
    return found


@dataclass
class Memory:
    """Peak RSS of the benchmark's processes, sampled."""

    peak: dict[int, int] = field(default_factory=dict)
    peak_total: int = 0
    cpu_seconds: float = 0.0
    """What the sampling cost this process (taken off its figure in the report)."""

    async def sample(self, every: float = 0.25) -> None:
        while True:
            started = time.thread_time()  # the loop's thread: the sampling's own CPU
            total = 0
            for pid in _ours():
                with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
                    rss = psutil.Process(pid).memory_info().rss
                    total += rss
                    self.peak[pid] = max(self.peak.get(pid, 0), rss)
            self.peak_total = max(self.peak_total, total)
            self.cpu_seconds += time.thread_time() - started
            await asyncio.sleep(every)


# -- the timed part --------------------------------------------------------------------------


@dataclass
class Timeline:
    slot_us: int = 0
    claimed_us: int | None = None
    """The run's row created: the look found October due and won the slot."""
    chunks_done_us: int | None = None
    """The run's row left "running": every invoice written (collection follows)."""
    finished_us: int = 0
    """The run's task ended: payments collected too."""


async def scheduled_run(
    billing: Billing,
    store: BillingStore,
    engine: Engine,
    timeline: Timeline,
    memory: Memory,
    cpu_before: dict[int, float],
) -> dict[str, Any]:
    """Start the scheduler's loop with the slot :data:`SLOT_AHEAD` seconds ahead; wait for
    the run it starts and for its end."""
    clock = billing.clock
    ahead = clock() + int(SLOT_AHEAD * _US)
    timeline.slot_us = ahead - ahead % _US + _US  # a whole second, as a schedule's time is
    at_seconds = (timeline.slot_us % (86_400 * _US)) // _US
    scheduler = InvoiceScheduler(billing, RunSchedule(("test",), at_seconds))
    sampler = asyncio.create_task(memory.sample())
    loop = asyncio.create_task(scheduler.run_forever())  # its first look: nothing due yet
    await asyncio.sleep((timeline.slot_us - clock()) / _US - 0.2)
    cpu_before.update(cpu_times())  # just before the slot
    try:
        while (
            run_id := await asyncio.to_thread(store.scheduled_run, "test", timeline.slot_us)
        ) is None:
            await asyncio.sleep(0.05)
        timeline.claimed_us = clock()
        while (row := await asyncio.to_thread(store.run, "test", run_id, clock()))["status"] in (
            "pending",
            "running",
        ):
            await asyncio.sleep(0.25)
        timeline.chunks_done_us = clock()
        await billing.wait(run_id)
        timeline.finished_us = clock()
    finally:
        loop.cancel()
        sampler.cancel()
        for task in (loop, sampler):
            with contextlib.suppress(asyncio.CancelledError):
                await task
    row = store.run("test", run_id, clock())
    # A restarted replica at the same slot: nothing to start.
    again = await InvoiceScheduler(billing, RunSchedule(("test",), at_seconds)).tick()
    row["restarted_replica_started"] = len(again)
    with engine.connect() as conn:
        row["runs_total"] = conn.execute(
            select(func.count()).select_from(t.invoice_runs)
        ).scalar_one()
    return row


def report(
    args: argparse.Namespace,
    run: dict[str, Any],
    timeline: Timeline,
    cpu: dict[str, float],
    memory: Memory,
    roles: dict[int, str],
) -> None:
    wall = (timeline.finished_us - timeline.slot_us) / _US
    invoices = run["invoices"]
    s = lambda us: (us - timeline.slot_us) / _US  # noqa: E731
    print("\n== timed: from the slot to the run's end (the scheduler's own loop)")
    print(f"  slot                    {format_timestamp(timeline.slot_us)} (test clock)")
    print(f"  run                     {run['id']}: {run['status']}, "
          f"scheduled_for {run['scheduled_for']}, until {run['until']}")  # fmt: skip
    print(f"  invoices written        {invoices:,}  (customers {run['customers']:,})")
    errors = run["errors"]
    print(f"  errors                  {len(errors)}" + (f"  e.g. {errors[:3]}" if errors else ""))
    print(f"  time to finish          {wall:.2f} s")
    print(f"  invoices/s              {invoices / wall:,.0f}")
    print("  phases (from polling the run's row):")
    assert timeline.claimed_us is not None and timeline.chunks_done_us is not None
    print(f"    look at the slot, October due, slot claimed   by {s(timeline.claimed_us):6.2f} s")
    print(
        f"    customers listed, invoices written (chunks)   by {s(timeline.chunks_done_us):6.2f} s"
    )
    print(f"    payments collected (manual provider)          by {wall:6.2f} s")
    print("  CPU during the run, per kind of process (cpu-s; per invoice; % of one core):")
    for role, seconds in sorted(cpu.items(), key=lambda kv: -kv[1]):
        if seconds / wall < 0.005 or role.startswith("OTHER"):
            continue
        print(
            f"    {role:<66} {seconds:6.2f} cpu-s {1000 * seconds / max(invoices, 1):6.3f} ms"
            f"/invoice {100 * seconds / wall:6.1f}%"
        )
    ours = sum(v for k, v in cpu.items() if k.startswith("bench"))
    others = sorted(((v, k) for k, v in cpu.items() if k.startswith("OTHER")), reverse=True)
    other = sum(v for v, _ in others)
    print(f"    {'benchmark total':<66} {ours:6.2f} cpu-s {1000 * ours / max(invoices, 1):6.3f} ms"
          f"/invoice {100 * ours / wall:6.1f}%")  # fmt: skip
    print(f"    {'OTHER: not this benchmark (the box is shared)':<66} {other:6.2f} cpu-s"
          f"                  {100 * other / wall:6.1f}%")  # fmt: skip
    top = ", ".join(f"{k.removeprefix('OTHER: ')} {v:.1f}" for v, k in others[:5])
    print(f"      most: {top} cpu-s")
    print("  peak RSS during the run (sampled every 0.25 s):")
    by_role: dict[str, list[int]] = defaultdict(list)
    for pid, rss in memory.peak.items():
        by_role[roles.get(pid, "bench: Ray's other processes (dashboard, log monitor, …)")].append(
            rss
        )
    for role, values in sorted(by_role.items(), key=lambda kv: -max(kv[1])):
        print(
            f"    {role:<66} {len(values):3d} process(es), largest {max(values) / 2**20:7.1f} MiB"
        )
    everything = "all of the benchmark's processes at once"
    print(f"    {everything:<66} {memory.peak_total / 2**20:7.1f} MiB")


def check(engine: Engine, run: dict[str, Any], customers: int) -> bool:
    i = t.invoices
    with engine.connect() as conn:
        invoices = conn.execute(
            select(func.count()).where(i.c.env == "test", i.c.period_start == PERIOD_START)
        ).scalar_one()
        attempted = conn.execute(
            select(func.count()).where(
                i.c.env == "test", i.c.period_start == PERIOD_START, i.c.payment_attempts == 1
            )
        ).scalar_one()
    restarted = run["restarted_replica_started"]
    ok = {
        f"one run in all (found {run['runs_total']})": run["runs_total"] == 1,
        f"a restarted replica at the slot starts nothing (started {restarted})": restarted == 0,
        f"{customers:,} invoices for October (found {invoices:,})": invoices == customers,
        f"each with one payment attempt (found {attempted:,})": attempted == customers,
        f"status succeeded ({run['status']})": run["status"] == "succeeded",
    }
    print("\n== check (not timed)")
    for what, good in ok.items():
        print(f"  {what} -> {'OK' if good else 'FAILED'}")
    return all(ok.values())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--customers", type=int, default=10_000, help="customers (10000)")
    parser.add_argument(
        "--events-per-customer", type=int, default=100, help="October events each, on average (100)"
    )
    parser.add_argument("--store", choices=["postgres", "sqlite"], default="postgres")
    parser.add_argument("--shards", type=int, default=2, help="shard actors (2)")
    args = parser.parse_args(argv)
    if args.customers < 1 or args.events_per_customer < 0 or args.shards < 1:
        parser.error("--customers and --shards must be positive")

    ids = [f"c{n:05d}" for n in range(args.customers)]
    offset = offset_to(parse_timestamp(SHARDS_START))
    clock = ShiftedClock(offset)
    folder = Path(tempfile.mkdtemp(prefix="tallyray-bench-sched-config-"))
    with fresh_store(args.store, "tallyray_bench_sched") as url:
        settings = Settings.load(
            database_url=url,
            shards=args.shards,
            config_path=config_without_customers(folder),
            clock_offset_us=offset,
            grace_seconds=GRACE_SECONDS,
            checkpoint_seconds=1.0,
        )
        catalog = prepare_store(settings)
        engine = catalog.engine
        started = time.perf_counter()
        events = seed(engine, ids, args.events_per_customer, args.shards, clock())
        if args.store == "postgres":
            analyze(engine)
        seconds = time.perf_counter() - started
        log(f"seeded {len(ids):,} customers, {events:,} events in {seconds:.1f} s")

        started = time.perf_counter()
        try:
            with shards_running(settings) as settings:
                seconds = time.perf_counter() - started
                log(f"{args.shards} shards recovered October in {seconds:.1f} s")
                while closed_shards(engine) < args.shards:
                    time.sleep(0.2)
                log(f"… and closed it on their own by {time.perf_counter() - started:.1f} s")
                store = BillingStore(engine)
                billing = Billing(
                    catalog=catalog,
                    store=store,
                    database_url=settings.database_url,
                    router=ShardRouter(args.shards),
                    invoicing_raw={"seller": SELLER},
                    tax_raw=TAX,
                    rounding="half_up",
                    grace_seconds=GRACE_SECONDS,
                    clock=clock,
                )
                print(
                    f"Tallyray scheduled invoice run: {args.customers:,} customers, {events:,} "
                    f"October events, {args.shards} shards, {args.store} store, "
                    f"{os.cpu_count()} cores (shared: other work may run; see OTHER below)"
                )
                print(f"  {bench_quiet()}")
                database = _server.database_name(url) if args.store == "postgres" else None
                timeline, memory = Timeline(), Memory()
                before: dict[int, float] = {}
                run = asyncio.run(scheduled_run(billing, store, engine, timeline, memory, before))
                after = cpu_times()
                ours = _ours()
                roles = {pid: _role(pid, ours, database) for pid in after}
                cpu: dict[str, float] = defaultdict(float)
                for pid, seconds in after.items():
                    spent = seconds - before.get(pid, 0.0)
                    if spent > 0:
                        cpu[roles[pid]] += spent
                cpu[roles[os.getpid()]] -= memory.cpu_seconds
                log(f"sampling memory cost this process {memory.cpu_seconds:.2f} cpu-s (taken off)")
                report(args, run, timeline, cpu, memory, roles)
                ok = check(engine, run, args.customers)
        finally:
            engine.dispose()
            shutil.rmtree(folder, ignore_errors=True)
    return 0 if ok else 1


def bench_quiet() -> str:
    busy = _server.machine_busy(1.0)
    return f"machine before the run: {100 * busy:.0f}% of {os.cpu_count()} cores busy"


if __name__ == "__main__":
    sys.exit(main())
