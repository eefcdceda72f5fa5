"""Quota-check latency at a fixed request rate: POST /v1/quota/check, open loop.

    .venv/bin/python bench/bench_quota.py [--rate 1000] [--duration 20] [--customers 1000]
        [--client raw|httpx] [--connections 256] [--clients 4]

Open loop: request i is scheduled at start + i/rate and sent then whether or not earlier
requests have been answered (asyncio tasks over a pool of keep-alive connections spread
across several clients). Its latency is measured from its *scheduled* time to its answer, so
queueing anywhere — server, connection pool, or a late generator — counts (no coordinated
omission); the latency from the actual send and the send lag are printed too.
"From send" starts when the request is written to a free connection (raw client) and so is
the server's share; the send lag is the generator's share (late timer, or all connections
busy). ``--rate 0`` measures idle latency instead: one request at a time, closed loop, for
--duration seconds.

By default it creates a fresh PostgreSQL database, starts ``tallyray serve --shards 2`` on it
(examples/llm-api/tallyray.json), creates a test key and the customers (plan ``pro``, big
credits), runs one phase against the API port (--port), and then stops the server and drops
the database. ``--url/--key`` runs against a running server.

Request bodies (random customer, model and token counts) are encoded with orjson before
timing. The default client is the minimal keep-alive HTTP/1.1 client in _server.py
(``--client raw``): at 1000/s it costs a few % of a core, whereas httpx.AsyncClient costs most
of a core and, once the server saturates, falls far behind its own send schedule. The
generator shares the machine's cores with the server; its CPU use is printed.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _server  # noqa: E402

PATH = "/v1/quota/check"
MODELS = ("gpt-4o", "gpt-4o-mini")


def make_bodies(count: int, customers: list[str], seed: int, in_order: bool = False) -> list[bytes]:
    """``count`` encoded checks for random customers (or each customer in turn)."""
    rng = random.Random(seed)
    return [
        orjson.dumps(
            {
                "customer_id": customers[i % len(customers)] if in_order else rng.choice(customers),
                "event": {
                    "type": "llm.completion",
                    "properties": {
                        "model": rng.choice(MODELS),
                        "input_tokens": rng.randint(50, 4000),
                        "output_tokens": rng.randint(10, 1000),
                    },
                },
            }
        )
        for i in range(count)
    ]


@dataclass
class Phase:
    label: str
    base_url: str
    rate: float
    scheduled: int = 0
    ok: int = 0
    denied: int = 0
    latencies: list[float] = field(default_factory=list)  # from the scheduled time
    service: list[float] = field(default_factory=list)  # from the actual send
    lags: list[float] = field(default_factory=list)  # actual send − scheduled (answered)
    statuses: Counter[int] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    samples: list[str] = field(default_factory=list)
    wall: float = 0.0
    send_span: float = 0.0
    unfinished: int = 0
    gen_cpu: float = 0.0
    cpu: str = ""
    quiet: str = ""


async def one(poster: _server.Poster, body: bytes, phase: Phase, scheduled: float) -> None:
    loop = asyncio.get_running_loop()
    try:
        status, data, sent = await poster.post(PATH, body)
    except Exception as error:  # noqa: BLE001 — count it, the run goes on
        phase.errors[type(error).__name__] += 1
        return
    done = loop.time()
    phase.lags.append(sent - scheduled)
    phase.statuses[status] += 1
    if 200 <= status < 300:
        phase.ok += 1
        phase.latencies.append(done - scheduled)
        phase.service.append(done - sent)
        if not orjson.loads(data)["allowed"]:
            phase.denied += 1
    elif len(phase.samples) < 5:
        phase.samples.append(f"{status}: {data[:500].decode(errors='replace')}")


async def warm_up(poster: _server.Poster, customers: list[str], phase: Phase) -> None:
    """One check per customer (loads every account on its shard and fills the ingress
    caches) and opens the connections; not recorded."""
    scratch = Phase("warm-up", phase.base_url, 0)
    queue = make_bodies(len(customers), customers, seed=0, in_order=True)

    async def worker() -> None:
        while queue:
            await one(poster, queue.pop(), scratch, asyncio.get_running_loop().time())

    await asyncio.gather(*(worker() for _ in range(32)))
    if scratch.ok != len(customers):
        print(f"  warm-up: {scratch.ok}/{len(customers)} ok; {dict(scratch.statuses)}")
        for sample in scratch.samples:
            print(f"    e.g. {sample}")


async def open_loop(
    args: argparse.Namespace, poster: _server.Poster, phase: Phase, bodies: list[bytes]
) -> None:
    loop = asyncio.get_running_loop()
    total = int(args.rate * args.duration)
    interval = 1.0 / args.rate
    tasks: set[asyncio.Task[None]] = set()
    start = loop.time() + 0.01
    i = 0
    while i < total:
        due = min(total, int((loop.time() - start) / interval) + 1)
        while i < due:
            task = asyncio.create_task(
                one(poster, bodies[i % len(bodies)], phase, start + i * interval)
            )
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            i += 1
        await asyncio.sleep(max(0.0, start + i * interval - loop.time()))
    phase.scheduled = total
    phase.send_span = loop.time() - start
    if tasks:
        _, pending = await asyncio.wait(set(tasks), timeout=args.drain)
        phase.unfinished = len(pending)
        for task in pending:
            task.cancel()
    phase.wall = loop.time() - start


async def closed_loop(
    args: argparse.Namespace, poster: _server.Poster, phase: Phase, bodies: list[bytes]
) -> None:
    loop = asyncio.get_running_loop()
    start = loop.time()
    deadline = start + args.duration
    i = 0
    while loop.time() < deadline:
        await one(poster, bodies[i % len(bodies)], phase, loop.time())
        i += 1
    phase.scheduled = i
    phase.wall = phase.send_span = loop.time() - start


async def run_phase(
    args: argparse.Namespace, target: _server.Target, label: str, base_url: str
) -> Phase:
    phase = Phase(label, base_url, args.rate)
    connections, clients = (args.connections, args.clients) if args.rate else (1, 1)
    poster = _server.Poster(args.client, base_url, target.key, connections, clients)
    try:
        await warm_up(poster, target.customers, phase)
        bodies = make_bodies(args.bodies, target.customers, args.seed)
        phase.quiet = target.quiet_check(args.quiet_wait)
        cpu_before = _server.cpu_snapshot()
        gen_before = time.process_time()
        await (open_loop if args.rate else closed_loop)(args, poster, phase, bodies)
        phase.gen_cpu = time.process_time() - gen_before
        phase.cpu = target.cpu_table(cpu_before, _server.cpu_snapshot(), phase.wall)
    finally:
        await poster.aclose()
    return phase


def report(args: argparse.Namespace, phase: Phase) -> None:
    non2xx = sum(n for s, n in phase.statuses.items() if not 200 <= s < 300)
    mode = (
        f"open loop at {args.rate:g}/s"
        if args.rate
        else "closed loop, one request at a time (idle latency)"
    )
    print(f"\n== {phase.label}: {phase.base_url}{PATH} — {mode}")
    print(f"  {phase.quiet}")
    print(
        f"  requests             {phase.scheduled:,} scheduled, {phase.ok:,} answered 2xx "
        f"({phase.denied:,} not allowed)"
    )
    if args.rate:
        print(
            f"  achieved rate        {phase.ok / phase.wall:,.1f}/s answered "
            f"(sent {phase.scheduled / max(phase.send_span, 1e-9):,.1f}/s over "
            f"{phase.send_span:.2f} s; last answer at {phase.wall:.2f} s)"
        )
        print(f"  latency (from sched) {_server.percentiles(phase.latencies)}")
        if phase.ok < phase.scheduled:
            print(
                f"    (percentiles over the {phase.ok:,} answered requests only; the "
                f"{phase.scheduled - phase.ok:,} others would only raise them)"
            )
        print(f"  latency (from send)  {_server.percentiles(phase.service)}")
        print(
            f"  send lag             {_server.percentiles(phase.lags)}  (scheduled → written; "
            "includes waiting for a free connection)"
        )
    else:
        print(f"  achieved rate        {phase.ok / phase.wall:,.1f}/s over {phase.wall:.2f} s")
        print(f"  latency              {_server.percentiles(phase.latencies)}")
    errors = non2xx + sum(phase.errors.values()) + phase.unfinished
    print(f"  errors               {errors}", end="")
    details = []
    if non2xx:
        details.append(f"non-2xx {dict(sorted(phase.statuses.items()))}")
    if phase.errors:
        details.append(f"transport {dict(phase.errors)}")
    if phase.unfinished:
        details.append(f"{phase.unfinished} unanswered after a {args.drain:g} s drain")
    print(f"  ({'; '.join(details)})" if details else "")
    for sample in phase.samples:
        print(f"    e.g. {sample}")
    print(
        f"  load generator CPU   {phase.gen_cpu:.1f} cpu-s = "
        f"{100 * phase.gen_cpu / phase.wall:.0f}% of one core ({args.client} client)"
    )
    print("  CPU by process during the phase (whole machine):")
    print(phase.cpu)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--rate", type=float, default=1000.0, help="requests/s, open loop; 0 = closed loop (1000)"
    )
    parser.add_argument("--duration", type=float, default=20.0, help="seconds per phase (20)")
    parser.add_argument(
        "--client",
        choices=["httpx", "raw"],
        default="raw",
        help="HTTP client: raw = the minimal keep-alive client in _server.py (default; a few "
        "%% of a core at 1000/s), httpx = httpx.AsyncClient (costs most of a core at 1000/s "
        "and falls behind its schedule once the server saturates)",
    )
    parser.add_argument("--connections", type=int, default=256, help="max connections in all (256)")
    parser.add_argument("--clients", type=int, default=4, help="clients sharing them (4)")
    parser.add_argument(
        "--drain", type=float, default=30.0, help="seconds to wait for late answers (30)"
    )
    parser.add_argument("--bodies", type=int, default=5000, help="distinct request bodies")
    parser.add_argument("--seed", type=int, default=1)
    _server.add_server_args(parser, customers=1000)
    args = parser.parse_args(argv)
    if args.rate < 0 or args.duration <= 0:
        parser.error("--rate must be ≥ 0 and --duration > 0")
    if args.rate * args.duration > 2_000_000:
        parser.error("more than 2,000,000 requests per phase; lower --rate or --duration")

    with _server.bench_target(args, "quota") as target:
        print(
            "Tallyray quota-check benchmark: "
            + (f"{args.rate:g} requests/s open loop" if args.rate else "closed loop (--rate 0)")
            + f", {args.duration:g} s per phase, {len(target.customers)} customers, "
            f"{args.client} client"
            + (f" ({args.clients} clients, ≤{args.connections} connections)" if args.rate else "")
        )
        print(
            f"note: the load generator runs on the same machine ({os.cpu_count()} cores) as "
            "the server and PostgreSQL; its CPU use is shown per phase."
        )
        if target.server_pid:
            print(f"server: pid {target.server_pid}, {args.shards} shards, log {target.log_path}")
            print(f"server code: {target.code}")
        phases = []
        for label, base in [("api", target.base_url)]:
            phase = asyncio.run(run_phase(args, target, label, base))
            report(args, phase)
            phases.append(phase)
        if len(phases) > 1:
            best = min(phases, key=lambda p: sorted(p.latencies)[len(p.latencies) // 2])
            print(f"\nlower median latency: {best.label}")
        failed = any(p.ok < p.scheduled or sum(p.errors.values()) or p.unfinished for p in phases)
        return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
