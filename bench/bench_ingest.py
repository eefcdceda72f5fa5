"""HTTP ingest throughput: POST /v1/events in batches, then check every ack is stored.

    .venv/bin/python bench/bench_ingest.py [--duration 30 | --events N] [--batch 1000]
        [--concurrency 8] [--customers 1000] [--client httpx|raw]

By default it creates a fresh PostgreSQL database, starts ``tallyray serve --shards 2`` on it
(examples/llm-api/tallyray.json), creates a test key and the customers (plan ``pro``, big
credits), runs one timed phase against the API port (--port), and then stops the server and
drops the database. ``--url/--key`` runs against a running server.

Request bodies are rendered with orjson before timing: a few template batches are encoded
once, and each request only substitutes its batch number into the event ids (one
``bytes.replace``), so the generator costs little CPU; it still shares the machine's cores
with the server, and its own CPU use is printed. Each event has a unique id; events carry no
timestamp (the server stamps receipt time). A 503 is retried (same body: idempotent).

Printed per phase: events/s sustained (acknowledged events / wall time of the phase),
requests/s, per-request ack latency p50/p90/p99/max, non-2xx counts, and CPU per process.
At the end: rows in the events table versus acknowledged new events.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import secrets
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _server  # noqa: E402

PATH = "/v1/events"
MODELS = ("gpt-4o", "gpt-4o-mini")
SLOT = b"#########"  # 9 characters in every event id, replaced by the batch number


def make_templates(count: int, size: int, customers: list[str], run: str, seed: int) -> list[bytes]:
    """``count`` encoded batches of ``size`` events whose ids contain :data:`SLOT`."""
    rng = random.Random(seed)
    templates = []
    for t in range(count):
        events = [
            {
                "id": f"{run}-{SLOT.decode()}-{i:05d}",
                "customer_id": rng.choice(customers),
                "type": "llm.completion",
                "properties": {
                    "model": rng.choice(MODELS),
                    "input_tokens": rng.randint(50, 4000),
                    "output_tokens": rng.randint(10, 1000),
                },
            }
            for i in range(size)
        ]
        body = orjson.dumps(events)
        assert body.count(SLOT) == size, f"template {t}: the id slot must be unique"
        templates.append(body)
    return templates


def render(templates: list[bytes], number: int) -> bytes:
    return templates[number % len(templates)].replace(SLOT, b"%09d" % number)


@dataclass
class Phase:
    label: str
    base_url: str
    requests_ok: int = 0
    ingested: int = 0
    duplicates: int = 0
    latencies: list[float] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    samples: list[str] = field(default_factory=list)
    warm_ingested: int = 0
    quiet: str = ""
    retries: int = 0
    failed_batches: int = 0
    wall: float = 0.0
    cpu: str = ""
    gen_cpu: float = 0.0


class Batches:
    """Hands out batch numbers (unique across phases) until a deadline or a total."""

    def __init__(self, start: int) -> None:
        self.next = start
        self.limit: int | None = None
        self.deadline: float | None = None

    def take(self) -> int | None:
        if self.limit is not None and self.next >= self.limit:
            return None
        if self.deadline is not None and time.monotonic() >= self.deadline:
            return None
        number = self.next
        self.next += 1
        return number


async def send(
    poster: _server.Poster,
    body: bytes,
    phase: Phase,
    retries: int,
    record: bool = True,
) -> int:
    """POST one batch, retrying 503s; returns events acknowledged as new."""
    started = time.perf_counter()
    for attempt in range(retries + 1):
        try:
            status, data, _ = await poster.post(PATH, body)
        except Exception as error:  # noqa: BLE001 — count it, the run goes on
            phase.errors[type(error).__name__] += 1
            status, data = 0, b""
        else:
            if record:
                phase.statuses[status] += 1
            if 200 <= status < 300:
                answer = orjson.loads(data)
                phase.ingested += answer["ingested"]
                phase.duplicates += answer["duplicates"]
                if record:
                    phase.requests_ok += 1
                    phase.latencies.append(time.perf_counter() - started)
                return int(answer["ingested"])
            if len(phase.samples) < 5:
                phase.samples.append(f"{status}: {data[:500].decode(errors='replace')}")
            if status not in (429, 503):
                break
        if attempt < retries:
            phase.retries += 1
            await asyncio.sleep(min(1.0, 0.05 * 2**attempt))
    phase.failed_batches += 1
    return 0


async def run_phase(
    args: argparse.Namespace,
    target: _server.Target,
    label: str,
    base_url: str,
    batches: Batches,
    templates: list[bytes],
) -> Phase:
    phase = Phase(label, base_url)
    poster = _server.Poster(args.client, base_url, target.key, args.concurrency)
    try:
        # Warm-up (not timed, not in the latency figures; its events count for durability):
        # connections, the ingress caches, the shards' accounts.
        for _ in range(args.warmup):
            warm = [batches.take() for _ in range(args.concurrency)]
            await asyncio.gather(
                *(
                    send(poster, render(templates, n), phase, args.retries, record=False)
                    for n in warm
                    if n is not None
                )
            )
        warm_ingested, warm_dups = phase.ingested, phase.duplicates
        phase.quiet = target.quiet_check(args.quiet_wait)

        prebuilt: dict[int, bytes] = {}
        if args.events:
            batches.limit = batches.next + -(-args.events // args.batch)
            prebuilt = {n: render(templates, n) for n in range(batches.next, batches.limit)}
        else:
            batches.deadline = time.monotonic() + args.duration

        async def worker() -> None:
            while (number := batches.take()) is not None:
                body = prebuilt.pop(number, None) or render(templates, number)
                await send(poster, body, phase, args.retries)

        cpu_before = _server.cpu_snapshot()
        gen_before = time.process_time()
        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(args.concurrency)))
        phase.wall = time.perf_counter() - started
        phase.gen_cpu = time.process_time() - gen_before
        phase.cpu = target.cpu_table(cpu_before, _server.cpu_snapshot(), phase.wall)
        batches.deadline = batches.limit = None
        # the timed figures leave out the warm-up's events
        phase.ingested -= warm_ingested
        phase.duplicates -= warm_dups
        phase.warm_ingested = warm_ingested
    finally:
        await poster.aclose()
    return phase


def report(args: argparse.Namespace, phase: Phase) -> None:
    wall = phase.wall
    non2xx = sum(n for s, n in phase.statuses.items() if not 200 <= s < 300)
    print(f"\n== {phase.label}: {phase.base_url}{PATH}")
    print(f"  {phase.quiet}")
    print(f"  wall time            {wall:.2f} s")
    print(
        f"  events/s sustained   {phase.ingested / wall:,.0f}  "
        f"({phase.ingested:,} acknowledged new events / wall time)"
    )
    print(f"  requests/s           {phase.requests_ok / wall:,.1f}  ({phase.requests_ok:,} × 2xx)")
    print(f"  ack latency/request  {_server.percentiles(phase.latencies)}")
    print(f"  duplicates           {phase.duplicates:,}")
    print(
        f"  non-2xx responses    {non2xx}"
        + (f"  {dict(sorted(phase.statuses.items()))}" if non2xx else "")
    )
    if phase.errors:
        print(f"  transport errors     {dict(phase.errors)}")
    if phase.retries or phase.failed_batches:
        print(f"  retries {phase.retries}, batches given up {phase.failed_batches}")
    for sample in phase.samples:
        print(f"    e.g. {sample}")
    print(
        f"  load generator CPU   {phase.gen_cpu:.1f} cpu-s = "
        f"{100 * phase.gen_cpu / wall:.0f}% of one core ({args.client} client)"
    )
    print("  CPU by process during the phase (whole machine):")
    print(phase.cpu)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    how_long = parser.add_mutually_exclusive_group()
    how_long.add_argument("--duration", type=float, default=30.0, help="seconds per phase (30)")
    how_long.add_argument(
        "--events",
        type=int,
        help="send this many events per phase instead (rounded up to whole batches)",
    )
    parser.add_argument("--batch", type=int, default=1000, help="events per request (1000)")
    parser.add_argument("--concurrency", type=int, default=8, help="requests in flight (8)")
    parser.add_argument(
        "--client", choices=["httpx", "raw"], default="httpx", help="HTTP client (httpx)"
    )
    parser.add_argument(
        "--warmup", type=int, default=1, help="untimed rounds of one batch per worker (1)"
    )
    parser.add_argument("--retries", type=int, default=5, help="retries of a 503 (5)")
    parser.add_argument("--templates", type=int, default=16, help="distinct batch templates")
    parser.add_argument("--seed", type=int, default=1)
    _server.add_server_args(parser, customers=1000)
    args = parser.parse_args(argv)
    if not 1 <= args.batch <= 10_000:
        parser.error("--batch must be 1..10000 (the server's limit)")
    if args.duration <= 0 or (args.events is not None and args.events <= 0):
        parser.error("--duration and --events must be positive")

    run = "b" + secrets.token_hex(4)
    with _server.bench_target(args, "ingest") as target:
        templates = make_templates(args.templates, args.batch, target.customers, run, args.seed)
        stored_before = _server.count_rows(target.database_url) if target.database_url else None
        cores = os.cpu_count()
        print(
            f"Tallyray ingest benchmark: batches of {args.batch} events over "
            f"{len(target.customers)} customers, {args.concurrency} requests in flight, "
            + (f"{args.events:,} events" if args.events else f"{args.duration:g} s")
            + f" per phase, {args.client} client"
        )
        print(
            f"note: the load generator runs on the same machine ({cores} cores) as the "
            "server and PostgreSQL; its CPU use is shown per phase."
        )
        if target.server_pid:
            print(f"server: pid {target.server_pid}, {args.shards} shards, log {target.log_path}")
            print(f"server code: {target.code}")
        phases = []
        batches = Batches(0)
        for label, base in [("api", target.base_url)]:
            phase = asyncio.run(run_phase(args, target, label, base, batches, templates))
            report(args, phase)
            phases.append(phase)

        if len(phases) > 1:
            fastest = max(phases, key=lambda p: p.ingested / p.wall)
            print(f"\nfaster: {fastest.label} ({fastest.ingested / fastest.wall:,.0f} events/s)")
        acked = sum(p.ingested + p.warm_ingested for p in phases)
        print("\n== durability")
        if stored_before is None or target.database_url is None:
            print("  skipped: pass --database-url to count the stored events")
            return 0
        time.sleep(0.5)
        stored = _server.count_rows(target.database_url) - stored_before
        if stored == acked:
            verdict = "OK"
        elif stored < acked:
            verdict = f"LOST {acked - stored:,} ACKNOWLEDGED EVENTS"
        else:
            verdict = (
                f"OK, no loss; {stored - acked:,} more stored than acknowledged (requests "
                "that failed or timed out may have been stored without an answer)"
            )
        print(
            f"  events table: {stored:,} new rows; acknowledged as new: {acked:,} "
            f"(incl. warm-up) -> {verdict}"
        )
        return 1 if stored < acked else 0


if __name__ == "__main__":
    sys.exit(main())
