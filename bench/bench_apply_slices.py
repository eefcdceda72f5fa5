"""How long a shard's event loop is held by applying a group commit (issue 12, item 7).

    PYTHONPATH=$PWD .venv/bin/python bench/bench_apply_slices.py [--store postgres|sqlite]
        [--customers 1000] [--commits 20] [--events 2000] [--slice-ms 1,none]

A quota check is answered on the shard's event loop, the loop that also applies each group
commit in memory once it is durable. This drives one :class:`~tallyray.actors.shard.ShardCore`
(no Ray, no HTTP: its own store, ``--customers`` customers on ``pro``) with ``--commits``
commits of ``--events`` events each (100-event requests, one event per customer per request,
all submitted before the commit runs, as under load), while a ticker task on the same loop
wakes every 0.5 ms and records how late it woke. Per ``--slice-ms`` setting
(``APPLY_SLICE_SECONDS``; ``none``: the whole apply in one go, as before slicing), it prints
the ticker's lateness p50/p99/max — the longest a check arriving at a bad moment waits for the
loop — and CPU time per event of this process (the shard) and of PostgreSQL's backends (slicing
must not make ingest dearer; ``--events`` shows what a fuller commit saves).

Everything runs on 127.0.0.1 (PostgreSQL) or a temporary SQLite file.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import math
import statistics
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _seed  # noqa: E402
import _server  # noqa: E402

from tallyray.actors import shard as shard_module  # noqa: E402
from tallyray.actors.shard import IncomingEvent, ShardCore  # noqa: E402
from tallyray.clock import clock_for, offset_to  # noqa: E402
from tallyray.cluster import Settings, prepare_store  # noqa: E402
from tallyray.pricing import parse_timestamp  # noqa: E402
from tallyray.storage.catalog import CustomerRecord  # noqa: E402

NOW = "2026-10-15T12:00:00Z"
"""The benchmark's clock starts here (a fixed day, whatever day it runs on)."""
PROPERTIES = {"model": "gpt-4o", "input_tokens": 1000, "output_tokens": 100}
TICK = 0.0005


def prepare(url: str, customers: int) -> list[str]:
    catalog = prepare_store(Settings.load(database_url=url, config_path=_seed.CONFIG))
    now = clock_for(offset_to(parse_timestamp(NOW)))()
    ids = [f"c{i:05d}" for i in range(customers)]
    for customer in ids:
        catalog.upsert_customer(CustomerRecord("test", customer, "EUR"), now)
        catalog.subscribe("test", customer, "pro", now, now)
    catalog.engine.dispose()
    return ids


class Stalls:
    """With ``--stalls``: a thread that, whenever the loop's ticker is over 20 ms late, notes
    what the loop's thread is running (its innermost frames), to say what holds the loop."""

    def __init__(self) -> None:
        self.seen: collections.Counter[str] = collections.Counter()
        self.beat = time.perf_counter()
        self.on = False
        self.loop_thread = threading.get_ident()
        threading.Thread(target=self._watch, daemon=True).start()

    def _watch(self) -> None:
        while True:
            time.sleep(0.005)
            if self.on and time.perf_counter() - self.beat > 0.02:
                frame = sys._current_frames().get(self.loop_thread)
                if frame is not None:
                    stack = traceback.extract_stack(frame)[-4:][::-1]
                    self.seen[" <- ".join(f"{f.name}:{f.lineno}" for f in stack)] += 1


async def run(
    url: str, ids: list[str], commits: int, events: int, stalls: Stalls | None = None
) -> dict[str, Any]:
    clock = clock_for(offset_to(parse_timestamp(NOW)))
    core = ShardCore(0, 1, url, checkpoint_seconds=3600, clock=clock)
    late: list[float] = []
    running = True

    async def ticker() -> None:
        loop = asyncio.get_running_loop()
        while running:
            due = loop.time() + TICK
            if stalls is not None:
                stalls.beat = time.perf_counter()
            await asyncio.sleep(TICK)
            late.append(loop.time() - due)

    n = 0

    def request(size: int) -> list[IncomingEvent]:
        nonlocal n
        batch = []
        for _ in range(size):
            customer = ids[n % len(ids)]
            batch.append((customer, f"e{n}", "llm.completion", clock(), PROPERTIES))
            n += 1
        return batch

    try:
        # Warm-up: every account loaded and rated once (not measured).
        for start in range(0, len(ids), 100):
            await core.ingest("test", request(min(100, len(ids) - start)))
        tick = asyncio.create_task(ticker())
        await asyncio.sleep(0.05)
        late.clear()
        if stalls is not None:
            stalls.on = True
        database = url.rsplit("/", 1)[1]
        before = _server.cpu_snapshot()
        cpu, wall = time.process_time(), time.perf_counter()
        for _ in range(commits):
            await asyncio.gather(*(core.ingest("test", request(100)) for _ in range(events // 100)))
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        postgres = _postgres_seconds(before, _server.cpu_snapshot(), database)
        running = False
        if stalls is not None:
            stalls.on = False
        await tick
    finally:
        core.close()
    late.sort()
    return {
        "p50": statistics.median(late) * 1000,
        "p99": late[int(len(late) * 0.99)] * 1000,
        "max": late[-1] * 1000,
        "cpu_us": cpu / (commits * events) * 1e6,
        "postgres_us": postgres / (commits * events) * 1e6,
        "wall": wall,
    }


def _postgres_seconds(before: dict[int, Any], after: dict[int, Any], database: str) -> float:
    """CPU seconds the PostgreSQL backends of ``database`` spent between two snapshots (0
    on SQLite)."""
    spent = 0.0
    for pid, proc in after.items():
        if proc.name == "postgres" and f" {database} " in proc.cmdline + " ":
            earlier = before.get(pid)
            spent += proc.seconds - (earlier.seconds if earlier else 0.0)
    return spent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", choices=["postgres", "sqlite"], default="postgres")
    parser.add_argument("--customers", type=int, default=1000)
    parser.add_argument("--commits", type=int, default=20)
    parser.add_argument("--events", type=int, default=2000, help="events per commit")
    parser.add_argument("--slice-ms", default="1,none", help="comma-separated; none = unsliced")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds per setting")
    parser.add_argument("--stalls", action="store_true", help="say what held the loop >20 ms")
    args = parser.parse_args(argv)
    settings = [None if s == "none" else float(s) / 1000 for s in args.slice_ms.split(",")]
    print(
        f"store {args.store}, {args.customers} customers, {args.commits} commits of "
        f"{args.events} events (100-event requests), ticker every {TICK * 1000:.1f} ms"
    )
    for round_ in range(args.rounds):
        for slice_seconds in settings:
            shard_module.APPLY_SLICE_SECONDS = math.inf if slice_seconds is None else slice_seconds
            with _seed.fresh_store(args.store, "tallyray_bench_slices") as url:
                ids = prepare(url, args.customers)
                stalls = Stalls() if args.stalls else None
                found = asyncio.run(run(url, ids, args.commits, args.events, stalls))
            label = "unsliced" if slice_seconds is None else f"{slice_seconds * 1000:g} ms"
            print(
                f"  round {round_ + 1}, slices {label:>8}: loop late p50 {found['p50']:.2f} "
                f"p99 {found['p99']:.2f} max {found['max']:.2f} ms; "
                f"CPU µs/event: shard {found['cpu_us']:.1f}, PostgreSQL "
                f"{found['postgres_us']:.1f}; {found['wall']:.2f} s"
            )
            for where, times in stalls.seen.most_common(8) if stalls else []:
                print(f"      held {times * 5} ms in all at {where}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
