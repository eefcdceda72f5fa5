"""The pricing sandbox: the column-wise replay's rate on one core, and a simulation over a
stored month for N customers end to end.

    python bench/bench_simulation.py [--events 1000000] [--customers 10000]
                                     [--events-per-customer 100] [--store sqlite|postgres]
                                     [--parallelism 2] [--skip-e2e]

1. **Replay** (in memory, one core): N synthetic events (completions on two models with
   token counts, seat pings, GPU jobs) as the columns the event log gives (properties as
   JSON text) → :func:`tallyray.simulation.replay.replay` into one usage per customer.
   Printed: events/s for the whole replay; and, apart, for Arrow's JSON reader alone on the
   same properties (joined beforehand) and for the rest of the replay (joining the text,
   the masks per type and filter, the vectorised per-meter aggregation, filling the usages).
2. **End to end** (not with ``--skip-e2e``): a fresh store (SQLite file, or PostgreSQL on
   127.0.0.1:5432 as user postgres) seeded from examples/llm-api/tallyray.json with N
   customers on "pro" since 1 October and their October events, written through the shards'
   own group-commit path (untimed). Timed: every chunk of 500 customers as a Ray task
   (``parallelism`` at a time, as the API runs them) reading its events, replaying them,
   building actual and simulated invoices and writing its results; then the summary.

Everything talks to 127.0.0.1 only; the database is dropped at the end. Run it from the
repository root.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import random
import time
from typing import Any

import numpy as np
import orjson
import pyarrow.json as pj
from _seed import (
    CONFIG,
    PERIOD_END,
    PERIOD_START,
    SELLER,
    TAX,
    fresh_store,
    log,
    subscription_rows,
)
from sqlalchemy import insert

from tallyray.cluster import Settings, prepare_store, start_ray, stop
from tallyray.invoicing.runs import RunSpec
from tallyray.simulation.compare import summarize
from tallyray.simulation.jobs import CHUNK_SIZE, SimulationSpec, simulate_chunk_task
from tallyray.simulation.replay import _READ, EventColumns, replay
from tallyray.storage import tables as t
from tallyray.storage.eventlog import ShardStore
from tallyray.storage.simulations import SimulationStore

MODELS = ("gpt-4o", "gpt-4o-mini")
SPAN = PERIOD_END - PERIOD_START


def synthetic(n: int, customers: int, seed: int = 7) -> list[tuple[str, str, str, int, str]]:
    """(customer, event id, type, ts, properties JSON): 80% completions, 15% seats, 5% GPU."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        customer = f"c{rng.randrange(customers):05d}"
        roll = rng.random()
        if roll < 0.8:
            kind = "llm.completion"
            props: dict[str, Any] = {
                "model": MODELS[rng.random() < 0.6],
                "input_tokens": rng.randint(10, 8000),
                "output_tokens": rng.randint(10, 2000),
            }
        elif roll < 0.95:
            kind, props = "seat.active", {"user_id": f"u{rng.randrange(40)}"}
        else:
            kind = "gpu.job"
            props = {"gpu": ("h100", "a10")[rng.random() < 0.5], "seconds": rng.randint(1, 900)}
        ts = PERIOD_START + rng.randrange(SPAN)
        out.append((customer, f"e{i}", kind, ts, orjson.dumps(props).decode()))
    return out


def bench_replay(n: int, customers: int) -> None:
    from tallyray.pricing.config import parse_config

    meters = parse_config(orjson.loads(open(CONFIG, "rb").read())).meters  # noqa: SIM115
    rows = synthetic(n, customers)
    ids = sorted({r[0] for r in rows})
    index = {c: i for i, c in enumerate(ids)}
    columns = EventColumns(
        bucket=np.asarray([index[r[0]] for r in rows], dtype=np.int64),
        event_id=[r[1] for r in rows],
        type=[r[2] for r in rows],
        ts=np.asarray([r[3] for r in rows], dtype=np.int64),
        properties=[r[4] for r in rows],
    )
    texts = ["\n".join(columns.properties).encode()]  # every type is metered: one decode
    best = {"replay": 1e9, "decode": 1e9}
    for _ in range(3):
        started = time.perf_counter()
        usages = replay(meters, columns, len(ids))
        best["replay"] = min(best["replay"], time.perf_counter() - started)
        # Arrow's JSON reader alone, on the same properties already joined
        started = time.perf_counter()
        for text in texts:
            pj.read_json(io.BytesIO(text), read_options=_READ)
        best["decode"] = min(best["decode"], time.perf_counter() - started)
    assert sum(len(u.groups["requests"]) for u in usages) > 0
    total, decode = best["replay"], best["decode"]
    print(f"replay: {n:,} events, {len(ids):,} customers, one core (best of 3)")
    print(f"  whole replay           {total:7.3f} s  {n / total / 1e6:5.2f} M events/s")
    print(f"  of which JSON decode   {decode:7.3f} s  {n / decode / 1e6:5.2f} M events/s alone")
    rest = max(total - decode, 1e-9)
    print(f"  the rest               {rest:7.3f} s  {n / rest / 1e6:5.2f} M events/s alone")


def seed(url: str, customers: int, per_customer: int) -> Settings:
    settings = Settings.load(database_url=url, shards=1, config_path=CONFIG)
    catalog = prepare_store(settings)
    engine = catalog.engine
    now = time.time_ns() // 1000
    ids = [f"c{i:05d}" for i in range(customers)]
    with engine.begin() as conn:
        conn.execute(
            insert(t.customers),
            [
                {
                    "env": "test",
                    "id": c,
                    "name": c,
                    "email": None,
                    "currency": "EUR",
                    "country": "DE",
                    "vat_id": None,
                    "address": None,
                    "billing_mode": "postpaid",
                    "overdraft": "0",
                    "spend_limit": None,
                    "created_at": now,
                    "billing": {},
                }
                for c in ids
            ],  # fmt: skip
        )
        conn.execute(insert(t.subscriptions), subscription_rows("test", ids, now))
    store = ShardStore(engine, 0)
    rows = synthetic(customers * per_customer, customers, seed=11)
    rows.sort(key=lambda r: r[0])
    position = 0
    started = time.perf_counter()
    for i in range(0, len(rows), 20_000):
        batch = [("test", *r) for r in rows[i : i + 20_000]]
        position = store.commit(batch, position, at=now).position
    log(f"{len(rows):,} events written in {time.perf_counter() - started:.1f} s")
    engine.dispose()
    return settings


async def bench_e2e(url: str, customers: int, per_customer: int, parallelism: int) -> None:
    settings = seed(url, customers, per_customer)
    pro = orjson.loads(open(CONFIG, "rb").read())["plans"][1]  # noqa: SIM115
    draft = {**pro, "minimum": "150.00"}
    draft["charges"] = [dict(c) for c in pro["charges"]]
    draft["charges"][0]["unit_amount"] = "0.000002"  # gpt-4o input 20% cheaper
    catalog = prepare_store(settings)
    sims = SimulationStore(catalog.engine)
    ids = [f"c{i:05d}" for i in range(customers)]
    chunks = [ids[i : i + CHUNK_SIZE] for i in range(0, len(ids), CHUNK_SIZE)]
    sim_id = sims.create("test", {"from": "2026-10-01", "to": "2026-11-01"}, chunks, 0, "bench")
    spec = SimulationSpec(
        run=RunSpec(database_url=url, env="test", run_id=None, until=PERIOD_END,
                    finalize=False, invoicing={"seller": SELLER}, tax=TAX),
        simulation_id=sim_id, plan=draft, plan_version=0, start=PERIOD_START, end=PERIOD_END,
    )  # fmt: skip
    start_ray(settings, num_cpus=2)
    remote = simulate_chunk_task()
    try:
        # a warm worker, as in a running server (a chunk the job has not: nothing stored)
        await remote.remote(spec, len(chunks), chunks[0][:1])
        gate = asyncio.Semaphore(parallelism)

        async def one(seq: int, chunk: list[str]) -> None:
            async with gate:
                await remote.remote(spec, seq, chunk)

        started = time.perf_counter()
        await asyncio.gather(*(one(seq, c) for seq, c in enumerate(chunks)))
        results = sims.results(sim_id)
        summary = summarize(results)
        elapsed = time.perf_counter() - started
    finally:
        stop(settings)
        catalog.engine.dispose()
    events = customers * per_customer
    eur = summary["currencies"]["EUR"]
    print(f"end to end: {customers:,} customers, {events:,} events of October, "
          f"{len(chunks)} chunks as Ray tasks, {parallelism} at a time")  # fmt: skip
    print(f"  simulation        {elapsed:7.2f} s  {events / elapsed / 1e3:6.1f} k events/s  "
          f"{customers / elapsed:6.0f} customers/s")  # fmt: skip
    print(
        f"  revenue {eur['revenue']['actual']} → {eur['revenue']['simulated']} EUR; "
        f"more {eur['pay_more']}, less {eur['pay_less']}, same {eur['pay_same']}"
    )
    assert len(results) == customers, len(results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--customers", type=int, default=10_000)
    parser.add_argument("--events-per-customer", type=int, default=100)
    parser.add_argument("--store", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--parallelism", type=int, default=2)
    parser.add_argument("--skip-e2e", action="store_true")
    args = parser.parse_args()
    bench_replay(args.events, args.customers)
    if args.skip_e2e:
        return
    with fresh_store(args.store, "tallyray_bench_sim") as url:
        asyncio.run(bench_e2e(url, args.customers, args.events_per_customer, args.parallelism))


if __name__ == "__main__":
    main()
