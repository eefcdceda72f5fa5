"""How long writes pause while the shard count changes, for N live customers (goal: 10,000
in <= 30 s).

    python bench/bench_reshard.py [--customers 10000] [--events 5] [--store postgres|sqlite]
                                  [--from 2] [--to 4 3]

Setup, not timed: a fresh database (PostgreSQL on 127.0.0.1:5432, user postgres, or a SQLite
file in a temporary directory), migrated and seeded from examples/llm-api/tallyray.json; N
customers in env "test" on plan "pro", bulk-inserted; a local Ray (2 CPUs) and ``--from``
shard actors; ``--events`` events per customer ingested through the shards (so every account
is live in memory), a credit grant for every tenth customer, and a checkpoint.

Timed, for each count in ``--to``: :func:`tallyray.cluster.reshard.reshard_live` — every
shard drains (writes would answer 503) and checkpoints, the store is handed over in one
transaction, the old actors are killed and the new set starts and recovers from the
checkpoints. Printed: each phase's wall time, the pause (their sum), and the CPU seconds the
new shard processes spent getting ready (start + recovery). Then the same for
``tallyray reshard --offline`` (the server stopped) back to ``--from``.

Checked afterwards: every customer's ``input_tokens`` is what was ingested, asked of its new
shard.

Everything talks to 127.0.0.1 only; the database is dropped at the end. Run it from the
repository root.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import _server
import ray
from sqlalchemy import insert

from tallyray.actors.routing import shard_of
from tallyray.actors.shard import ShardActor
from tallyray.cluster import Settings, prepare_store, start_ray
from tallyray.cluster.reshard import reshard_live, reshard_offline
from tallyray.storage import tables as t
from tallyray.storage.catalog import new_id
from tallyray.storage.layout import settle_shard_count

CONFIG = str(Path(__file__).resolve().parents[1] / "examples" / "llm-api" / "tallyray.json")
ENV = "test"
BATCH = 1000


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def fresh_store(kind: str) -> Iterator[str]:
    if kind == "postgres":
        name, url = _server.create_database("tallyray_bench_reshard")
        try:
            yield url
        finally:
            _server.drop_database(name)
    else:
        folder = tempfile.mkdtemp(prefix="tallyray-bench-reshard-")
        try:
            yield f"sqlite:///{folder}/tallyray.db"
        finally:
            shutil.rmtree(folder, ignore_errors=True)


def seed_customers(engine: Any, ids: list[str], now: int) -> None:
    for i in range(0, len(ids), BATCH):
        batch = ids[i : i + BATCH]
        with engine.begin() as conn:
            conn.execute(
                insert(t.customers),
                [
                    {
                        "env": ENV,
                        "id": c,
                        "name": c,
                        "email": None,
                        "currency": "EUR",
                        "country": "DE",
                        "vat_id": None,
                        "address": None,
                        "billing_mode": "prepaid",
                        "overdraft": "0",
                        "credit_limit": None,
                        "spend_cap": None,
                        "created_at": now,
                        "billing": None,
                    }
                    for c in batch
                ],
            )
            conn.execute(
                insert(t.subscriptions),
                [
                    {
                        "id": new_id("sub"),
                        "env": ENV,
                        "customer_id": c,
                        "plan_key": "pro",
                        "plan_version": 1,
                        "start": now - 86_400_000_000,
                        "end": None,
                        "created_at": now,
                        "anchor": "calendar",
                        "discount": None,
                    }
                    for c in batch
                ],
            )


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process so far (from /proc: no psutil needed)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start(url: str, count: int) -> tuple[list[Any], float, float]:
    """``count`` shard actors, recovered: (handles, wall seconds, CPU seconds of their
    processes until ready)."""
    began = time.perf_counter()
    actors = [
        ray.remote(ShardActor).options(max_restarts=-1).remote(i, count, url, 3600.0)
        for i in range(count)
    ]
    ray.get([a.ready.remote() for a in actors])
    wall = time.perf_counter() - began
    pids = ray.get([a.__ray_call__.remote(lambda _self: __import__("os").getpid()) for a in actors])
    cpu = sum(cpu_seconds(p) for p in pids)
    return actors, wall, cpu


async def main(args: argparse.Namespace) -> int:
    ids = [f"cust-{i:06d}" for i in range(args.customers)]
    with fresh_store(args.store) as url:
        settings = Settings.load(database_url=url, config_path=CONFIG)
        catalog = prepare_store(settings)
        engine = catalog.engine
        now = settings.clock()
        settle_shard_count(engine, args.from_count, now)
        log(f"seeding {args.customers} customers ({args.store})")
        seed_customers(engine, ids, now)
        start_ray(settings, num_cpus=2)
        actors, wall, _ = start(url, args.from_count)
        log(f"{args.from_count} shards up in {wall:.1f}s; ingesting {args.events} events each")
        expected = dict.fromkeys(ids, 0)
        n = 0
        for round_ in range(args.events):
            by_shard: dict[int, list[Any]] = {}
            for c in ids:
                tokens = 1000 + (n % 97)
                n += 1
                expected[c] += tokens
                props = {"model": "gpt-4o", "input_tokens": tokens, "output_tokens": 10}
                event = (c, f"e{round_}-{c}", "llm.completion", now, props)
                by_shard.setdefault(shard_of(ENV, c, args.from_count), []).append(event)
            calls = []
            for index, events in by_shard.items():
                for i in range(0, len(events), BATCH):
                    calls.append(actors[index].ingest.remote(ENV, events[i : i + BATCH]))
            await asyncio.gather(*calls)
        for i, c in enumerate(ids[::10]):
            grant = {
                "id": f"grant-{i}",
                "env": ENV,
                "customer_id": c,
                "amount": "50.00",
                "currency": "EUR",
                "priority": 1,
                "expires_at": None,
                "created_at": now,
            }
            await actors[shard_of(ENV, c, args.from_count)].add_grant.remote(ENV, c, grant)
        await asyncio.gather(*(a.checkpoint.remote() for a in actors))
        log("seeded and checkpointed; resharding")
        print(
            "| store | customers | change | drain s | hand-over s | restart s | pause s "
            "| new shards' CPU s |"
        )
        print("| --- | --- | --- | --- | --- | --- | --- | --- |")
        for count in args.to:
            old = actors
            new_cpu = 0.0

            async def restart(new: int, old: list[Any] = old) -> list[Any]:
                nonlocal actors, new_cpu
                for a in old:
                    ray.kill(a, no_restart=True)
                actors, _, new_cpu = await asyncio.to_thread(start, url, new)
                return actors

            result = await reshard_live(engine, old, count, restart, settings.clock())
            print(
                f"| {args.store} | {args.customers} | {result['from']} → {count} online | "
                f"{result['drain_seconds']:.2f} | {result['hand_over_seconds']:.2f} | "
                f"{result['restart_seconds']:.2f} | **{result['pause_seconds']:.2f}** | "
                f"{new_cpu:.1f} |",
                flush=True,
            )
        for a in actors:
            ray.kill(a, no_restart=True)
        began = time.perf_counter()
        result = await asyncio.to_thread(
            reshard_offline, engine, url, args.from_count, settings.clock
        )
        offline = time.perf_counter() - began
        actors, wall, cpu = start(url, args.from_count)
        print(
            f"| {args.store} | {args.customers} | {result['from']} → {args.from_count} offline "
            f"| | {offline:.2f} (recover + checkpoint + hand-over) | {wall:.2f} | "
            f"(server stopped) | {cpu:.1f} |",
            flush=True,
        )
        wrong = 0
        for c in ids[:: max(1, len(ids) // 500)]:
            index = shard_of(ENV, c, args.from_count)
            balance = await actors[index].balance.remote(ENV, c)
            if int(balance["usage"]["input_tokens"]["quantity"]) != expected[c]:
                wrong += 1
        checked = len(ids[:: max(1, len(ids) // 500)])
        log(f"checked {checked} customers' input_tokens after 3 reshards: {wrong} wrong")
        for a in actors:
            ray.kill(a, no_restart=True)
        catalog.engine.dispose()
        ray.shutdown()
        return 1 if wrong else 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--customers", type=int, default=10_000)
    parser.add_argument("--events", type=int, default=5)
    parser.add_argument("--store", choices=["postgres", "sqlite"], default="postgres")
    parser.add_argument("--from", dest="from_count", type=int, default=2)
    parser.add_argument("--to", type=int, nargs="+", default=[4, 3])
    sys.exit(asyncio.run(main(parser.parse_args())))
