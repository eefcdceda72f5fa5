"""Time one invoice run over N customers whose October is closed (goal: 10,000 in ≤ 60 s).

    python bench/bench_invoice_run.py [--customers 10000] [--chunk-size 500] [--parallelism 2]
                                      [--store postgres|sqlite] [--shards 2] [--profile]
                                      [--collect-all] [--no-analyze]

Setup, not timed: a fresh database (PostgreSQL on 127.0.0.1:5432, user postgres, or a SQLite
file in a temporary directory), migrated and seeded from examples/llm-api/tallyray.json; N
customers in env "test" on plan "pro" (EUR, DE, manual payments) bulk-inserted with their
subscription, their closed October period (usage folded from a few synthetic events per
customer by the meters, priced per charge by the plan) and the shards' period_closes rows;
then ANALYZE (PostgreSQL: what autovacuum does shortly after a bulk load; ``--no-analyze``
skips it); a local Ray (2 CPUs) and the shard actors.

Timed: ``Billing.start_run("test", until=2026-11-01, force=True, finalize=True)`` and
``Billing.wait(run_id)``: closing the periods on the shards, every chunk as a Ray task
(``parallelism`` at a time), the invoice writes, then the run's payment collection through
the manual provider. Printed: the phases (from polling the run's row), CPU per process, the
run's status and errors.

Checked afterwards, not timed: exactly N invoices for October, numbered gapless 1..N.

``--collect-all`` then times collecting every invoice still due (``collect_due`` until it
finds none). ``--profile`` then runs one chunk in this process under cProfile (customers
seeded in env "live" for it, so the run above is not disturbed) and prints the top entries.

Everything talks to 127.0.0.1 only; the database is dropped at the end. Not a module of the
tallyray package: run it from the repository root.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import gc
import io
import os
import pstats
import random
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import _server
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
from sqlalchemy import Engine, func, insert, select

from tallyray.actors.routing import shard_of
from tallyray.cluster import Settings, prepare_store
from tallyray.invoicing.runs import RunSpec, invoice_chunk
from tallyray.invoicing.service import Billing
from tallyray.pricing import Event
from tallyray.pricing.plans import charge_costs
from tallyray.serve.shards import ShardRouter
from tallyray.storage import tables as t
from tallyray.storage.billing import BillingStore
from tallyray.storage.catalog import Catalog, EnvCatalog

MODELS = ("gpt-4o", "gpt-4o-mini")


def now_us() -> int:
    return time.time_ns() // 1000


# -- the store -------------------------------------------------------------------------------


def _usage_events(customer_id: str, rng: random.Random) -> list[Event]:
    """A few October events of one customer: completions on both models and seat pings."""
    events = []
    for n in range(rng.randint(3, 8)):
        events.append(
            Event(
                f"e{n}",
                customer_id,
                "llm.completion",
                PERIOD_START + rng.randrange(PERIOD_END - PERIOD_START),
                {
                    "model": rng.choice(MODELS),
                    "input_tokens": rng.randint(1_000, 4_000_000),
                    "output_tokens": rng.randint(100, 400_000),
                },
            )
        )
    for n in range(rng.randint(1, 15)):
        events.append(
            Event(f"s{n}", customer_id, "seat.active", PERIOD_START, {"user_id": f"u{n}"})
        )
    return events


def _period_row(
    cat: EnvCatalog, env: str, customer_id: str, shards: int, rng: random.Random, now: int
) -> dict[str, Any]:
    """The billing_periods row a shard writes when it closes October (see ShardCore)."""
    usage = cat.meters.fold(_usage_events(customer_id, rng))
    costs = charge_costs(cat.plan("pro", 1), usage, cat.meters.meters)
    return {
        "env": env,
        "customer_id": customer_id,
        "start": PERIOD_START,
        "end": PERIOD_END,
        "shard": shard_of(env, customer_id, shards),
        "usage": usage.to_json(),
        "spend": format(sum(costs, Decimal(0)), "f"),  # plan and customer both in EUR
        "costs": [format(c, "f") for c in costs],
        "burned": {},
        "position": 0,
        "closed_at": now,
    }


def seed(engine: Engine, catalog: Catalog, env: str, ids: list[str], shards: int) -> None:
    """Customers on "pro" since 1 October with a closed October, and every shard's cutoff at
    1 November; bulk inserts (executemany), as the API would have left them."""
    cat = catalog.env_catalog(env)
    rng = random.Random(f"{env}-{len(ids)}")
    now = now_us()
    for i in range(0, len(ids), INSERT_BATCH):
        batch = ids[i : i + INSERT_BATCH]
        periods = [_period_row(cat, env, c, shards, rng, now) for c in batch]
        with engine.begin() as conn:
            conn.execute(insert(t.customers), customer_rows(env, batch, now, "prepaid"))
            conn.execute(insert(t.subscriptions), subscription_rows(env, batch, now))
            conn.execute(insert(t.billing_periods), periods)
    with engine.begin() as conn:
        conn.execute(
            insert(t.period_closes),
            [
                {"shard": i, "env": env, "cutoff": PERIOD_END, "closed_at": now}
                for i in range(shards)
            ],
        )


# -- the timed run ---------------------------------------------------------------------------


@dataclass
class Timeline:
    started: float = 0.0
    launched: float | None = None
    """start_run returned: run row created, periods closed on every shard, chunks launched."""
    chunks_done: float | None = None
    """The run's row left "running": every chunk written (collection follows)."""
    finished: float = 0.0
    """wait() returned: payment collection done too."""
    progress: list[tuple[float, int]] = field(default_factory=list)


async def timed_run(billing: Billing, store: BillingStore, timeline: Timeline) -> dict[str, Any]:
    timeline.started = time.perf_counter()
    run = await billing.start_run("test", until=PERIOD_END, force=True, finalize=True)
    timeline.launched = time.perf_counter()

    async def watch() -> None:
        while True:
            row = await asyncio.to_thread(store.run, "test", run["id"])
            at = time.perf_counter()
            timeline.progress.append((at - timeline.started, row["done"]))
            if row["status"] not in ("pending", "running"):
                timeline.chunks_done = at
                return
            await asyncio.sleep(0.25)

    watcher = asyncio.create_task(watch())
    await billing.wait(run["id"])
    timeline.finished = time.perf_counter()
    with contextlib.suppress(asyncio.CancelledError, TimeoutError):
        await asyncio.wait_for(watcher, 10)
    return store.run("test", run["id"])


def report_run(run: dict[str, Any], timeline: Timeline, customers: int) -> float:
    wall = timeline.finished - timeline.started
    print("\n== timed run: start_run + wait")
    print(f"  customers            {customers:,}")
    print(f"  invoices written     {run['invoices']:,}  (run row: done {run['done']:,})")
    print(f"  wall time            {wall:.2f} s")
    print(f"  customers/s          {customers / wall:,.0f}")
    print(f"  status               {run['status']}")
    errors = run["errors"]
    print(f"  errors               {len(errors)}" + (f"  e.g. {errors[:3]}" if errors else ""))
    launched = (timeline.launched or timeline.started) - timeline.started
    done = (timeline.chunks_done or timeline.finished) - timeline.started
    print("  phases (from polling the run's row every 0.25 s):")
    print(f"    create run, close periods on shards, list customers  {launched:6.2f} s")
    print(f"    chunk tasks (build + write invoices)                 {done - launched:6.2f} s")
    print(f"    payment collection after the run (collect_due)       {wall - done:6.2f} s")
    marks = [(at, n) for at, n in timeline.progress if n]
    if marks:
        steps = ", ".join(f"{n:,} at {at:.1f}s" for at, n in marks[:: max(1, len(marks) // 8)])
        print(f"    customers done: {steps}")
    return wall


def quiet(max_wait: float) -> str:
    """Wait up to ``max_wait`` seconds for the machine to be under 15% busy; say how busy
    it was."""
    deadline = time.monotonic() + max_wait
    while True:
        busy = _server.machine_busy(1.0)
        if busy < 0.15 or time.monotonic() > deadline:
            state = "quiet" if busy < 0.15 else "BUSY (other load; figures disturbed)"
            return (
                f"machine before the run: {100 * busy:.0f}% of {os.cpu_count()} cores busy, {state}"
            )
        time.sleep(1.0)


def _parents() -> dict[int, int]:
    found = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                stat = Path(f"/proc/{entry.name}/stat").read_text()
                found[int(entry.name)] = int(stat[stat.rfind(")") + 2 :].split()[1])
    return found


def cpu_table(
    before: dict[int, _server.Proc], after: dict[int, _server.Proc], wall: float, db: str | None
) -> str:
    """:func:`_server.cpu_table` with this process and everything it started (Ray: raylet,
    the shard actors, the chunk workers) marked "bench", any other process "OTHER"."""
    parents = _parents()
    ours = {os.getpid()}
    for pid in sorted(parents):
        chain, seen = pid, set()
        while chain in parents and chain not in ours and chain not in seen and chain > 1:
            seen.add(chain)
            chain = parents[chain]
        if chain in ours:
            ours |= seen
    mark = -1  # a session id no process has

    def marked(snapshot: dict[int, _server.Proc]) -> dict[int, _server.Proc]:
        return {
            pid: _server.Proc(p.name, mark, p.cmdline, p.seconds) if pid in ours else p
            for pid, p in snapshot.items()
        }

    table = _server.cpu_table(marked(before), marked(after), wall, mark, db)
    return table.replace("server: ", "bench: ").replace("load generator", "bench driver  ")


def verify(engine: Engine, ids: list[str], prefix: str) -> bool:
    customers = len(ids)
    i = t.invoices
    with engine.connect() as conn:
        rows = conn.execute(
            select(i.c.customer_id, i.c.number, i.c.status).where(
                i.c.env == "test", i.c.period_start == PERIOD_START
            )
        ).all()
        payments = conn.execute(
            select(func.count()).select_from(t.payments).where(t.payments.c.env == "test")
        ).scalar_one()
        attempted = conn.execute(
            select(func.count()).where(i.c.env == "test", i.c.payment_attempts > 0)
        ).scalar_one()
    numbers = sorted(r.number for r in rows if r.number is not None)
    expected = [f"{prefix}{n:06d}" for n in range(1, len(rows) + 1)]
    count_ok = len(rows) == customers
    gapless = numbers == expected
    print("\n== check (not timed)")
    print(f"  invoices for October {len(rows):,} (expected {customers:,}) -> {_ok(count_ok)}")
    print(
        f"  numbers              {numbers[0] if numbers else '-'} .. "
        f"{numbers[-1] if numbers else '-'}, one each, gapless from 1 -> {_ok(gapless)}"
    )
    if not count_ok:
        missing = sorted(set(ids) - {r.customer_id for r in rows})
        print(f"  customers without an invoice: {len(missing):,}, e.g. {missing[:5]}")
    print(f"  statuses             {dict(Counter(r.status for r in rows))}")
    print(f"  payment attempts     {attempted:,} invoices attempted, {payments:,} payment rows")
    return count_ok and gapless


def _ok(flag: bool) -> str:
    return "OK" if flag else "FAILED"


async def collect_all(billing: Billing) -> tuple[int, float]:
    started = time.perf_counter()
    total = 0
    while attempted := await billing.collect_due("test"):
        total += attempted
    return total, time.perf_counter() - started


# -- profile of one chunk --------------------------------------------------------------------


def profile_chunk(
    engine: Engine,
    catalog: Catalog,
    url: str,
    shards: int,
    size: int,
    analyzed: bool,
    top: int = 25,
) -> None:
    """Seed ``size`` + 1 customers in env "live" and run one chunk of ``size`` in this
    process under cProfile (after a one-customer warm-up that builds the per-process
    context: engine, catalog, tax engine)."""
    ids = [f"prof-{n:05d}" for n in range(size + 1)]
    seed(engine, catalog, "live", ids, shards)
    if analyzed:
        analyze(engine)
    spec = RunSpec(
        database_url=url,
        env="live",
        run_id=None,
        until=PERIOD_END,
        finalize=True,
        invoicing={"seller": SELLER, "chunk_size": size},
        tax=TAX,
        rounding="half_up",
    )
    invoice_chunk(spec, ids[:1], now_us())
    # This process holds far more long-lived objects than a chunk worker (Ray's driver, the
    # run above): freeze them, or a full collection lands in whichever C call allocates
    # (json decoding, say) and skews the listing. What the collector still costs is shown.
    gc.collect()
    gc.freeze()
    pauses: list[float] = []

    def on_gc(phase: str, _info: dict[str, int]) -> None:
        if phase == "start":
            pauses.append(-time.perf_counter())
        elif pauses:
            pauses[-1] += time.perf_counter()

    gc.callbacks.append(on_gc)
    profiler = cProfile.Profile()
    started = time.perf_counter()
    profiler.enable()
    try:
        result = invoice_chunk(spec, ids[1:], now_us())
    finally:
        profiler.disable()
        gc.callbacks.remove(on_gc)
        gc.unfreeze()
    wall = time.perf_counter() - started
    print(f"\n== profile: one chunk of {size} customers in this process (env live)")
    print(
        f"  wall {wall:.2f} s under cProfile = {1000 * wall / size:.2f} ms per customer; "
        f"{result['invoices']} invoices, {len(result['errors'])} errors; garbage collector "
        f"{1000 * sum(p for p in pauses if p > 0):.0f} ms in {len(pauses)} collections"
    )
    for order in ("cumulative", "tottime"):
        out = io.StringIO()
        stats = pstats.Stats(profiler, stream=out).strip_dirs().sort_stats(order)
        stats.print_stats(top if order == "cumulative" else 15)
        listing = out.getvalue()
        print(f"  -- top by {order}")
        print(listing[listing.find("   ncalls") :].rstrip())


# -- main ------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--customers", type=int, default=10_000, help="customers (10000)")
    parser.add_argument("--chunk-size", type=int, default=500, help="customers per task (500)")
    parser.add_argument(
        "--parallelism", type=int, default=2, help="chunk tasks at a time (Billing, 2)"
    )
    parser.add_argument("--store", choices=["postgres", "sqlite"], default="postgres")
    parser.add_argument("--shards", type=int, default=2, help="shard actors (2)")
    parser.add_argument(
        "--collect-all",
        action="store_true",
        help="after the run, time collecting every invoice still due",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="after the run, profile one chunk in this process (cProfile, top 25 cumulative)",
    )
    parser.add_argument(
        "--no-analyze",
        dest="analyze",
        action="store_false",
        help="skip ANALYZE after seeding (PostgreSQL): the run then meets the planner's "
        "empty-table estimates, as right after a bulk load before autovacuum's analyze",
    )
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=60.0,
        help="wait up to this many seconds for the machine to be idle before the run (60)",
    )
    args = parser.parse_args(argv)
    if args.customers < 1 or args.chunk_size < 1 or args.parallelism < 1 or args.shards < 1:
        parser.error("--customers, --chunk-size, --parallelism and --shards must be positive")

    ids = [f"cust-{n:05d}" for n in range(1, args.customers + 1)]
    with fresh_store(args.store, "tallyray_bench_inv") as url:
        settings = Settings.load(database_url=url, shards=args.shards, config_path=CONFIG)
        catalog = prepare_store(settings)
        engine = catalog.engine
        started = time.perf_counter()
        seed(engine, catalog, "test", ids, args.shards)
        if args.store == "postgres" and args.analyze:
            analyze(engine)  # see --no-analyze
        log(f"seeded {len(ids):,} customers in {time.perf_counter() - started:.1f}s")

        started = time.perf_counter()
        try:
            with shards_running(settings) as settings:
                log(f"{args.shards} shards up in {time.perf_counter() - started:.1f}s")
                store = BillingStore(engine)
                billing = Billing(
                    catalog=catalog,
                    store=store,
                    database_url=settings.database_url,
                    router=ShardRouter(args.shards),
                    invoicing_raw={"seller": SELLER, "chunk_size": args.chunk_size},
                    tax_raw=TAX,
                    rounding="half_up",
                    grace_seconds=3 * 86_400,
                    clock=now_us,
                    parallelism=args.parallelism,
                )
                print(
                    f"Tallyray invoice-run benchmark: {args.customers:,} customers, chunks of "
                    f"{args.chunk_size}, {args.parallelism} at a time, {args.shards} shards, "
                    f"{args.store} store"
                    + (
                        ", ANALYZE after seeding"
                        if args.store == "postgres" and args.analyze
                        else ""
                    )
                    + f", {os.cpu_count()} cores"
                )
                print(f"  {quiet(args.quiet_wait)}")
                timeline = Timeline()
                cpu_before = _server.cpu_snapshot()
                run = asyncio.run(timed_run(billing, store, timeline))
                cpu_after = _server.cpu_snapshot()
                wall = report_run(run, timeline, args.customers)
                database = _server.database_name(url) if args.store == "postgres" else None
                print("  CPU by process during the run (whole machine):")
                print(cpu_table(cpu_before, cpu_after, wall, database))
                verdict = "reached" if wall <= 60 else "NOT reached"
                print(f"  goal 10,000 customers in <= 60 s: {verdict} ({wall:.1f} s)")

                ok = verify(engine, ids, billing.config.number_prefix)
                if args.collect_all:
                    attempted, seconds = asyncio.run(collect_all(billing))
                    print("\n== collecting every invoice still due (collect_due until none)")
                    print(
                        f"  {attempted:,} attempts in {seconds:.2f} s "
                        f"({attempted / seconds if seconds else 0:,.0f}/s)"
                    )
                if args.profile:
                    profile_chunk(
                        engine,
                        catalog,
                        settings.database_url,
                        args.shards,
                        args.chunk_size,
                        args.store == "postgres" and args.analyze,
                    )
        finally:
            engine.dispose()
    return 0 if ok and run["status"] == "succeeded" else 1


if __name__ == "__main__":
    sys.exit(main())
