"""Quota checks while events stream in: both open loop, at the same time (issue 12).

    .venv/bin/python bench/bench_mixed.py [--phases 0:1000,20000:500,20000:1000]
        [--duration 20] [--batch 100] [--customers 1000]

Each phase is ``EVENTS:CHECKS`` — events/s and checks/s offered together for --duration
seconds, against one server (started once, as the other benchmarks do: a fresh PostgreSQL
database, ``tallyray serve --shards 2``, N customers on ``pro`` with big credits; or
``--url/--key``). ``0:1000`` is checks alone (what a check costs), ``20000:0`` events alone.

Both streams are open loop: request i of a stream is scheduled at start + i/rate and sent
then, whatever became of the earlier ones, over a pool of keep-alive connections
(_server.LeanPool, on uvloop: a write and a callback per request). Latency is measured from
the *scheduled* time to the answer, so queueing anywhere shows. Events go ``--batch`` to a
POST (100 by default: 20,000 events/s is 200 requests/s) from a second process, so that the
two generators do not share an event loop; checks are single requests from this process.
Each event has a unique id and no timestamp.

Printed per phase: check latency p50/p90/p99/max (from the schedule, and from the send);
the checks over 10 ms and the spells they fall in (checks that waited at the same time: a
few long spells are stalls or the box queueing for its cores, many lone ones are not);
achieved rates, errors, event-request latency, and CPU per process kind during the phase
(from /proc/<pid>/stat: the Serve replica, the shard actors, PostgreSQL, the generators);
for a phase with checks, CPU per check of the replica and of the shards — with events
streaming in as well that figure includes the events' share, so take it from a checks-only
phase (or subtract an events-only phase).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import multiprocessing
import os
import secrets
import sys
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _server  # noqa: E402
from bench_ingest import make_templates, render  # noqa: E402
from bench_quota import make_bodies  # noqa: E402

CHECK_PATH = "/v1/quota/check"
EVENTS_PATH = "/v1/events"
SLOW_SECONDS = 0.010
"""A check answered later than this after its scheduled time is slow: the goal's p99 (issue
12, item 7)."""
SPELL_GAP_SECONDS = 0.005
"""A slow check scheduled within this of the previous slow spell's end belongs to it."""


@dataclass
class Stream:
    """What one open-loop stream saw."""

    scheduled: int = 0
    ok: int = 0
    latencies: list[float] = field(default_factory=list)  # from the scheduled time, s
    service: list[float] = field(default_factory=list)  # from the send, s
    statuses: Counter[int] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    samples: list[str] = field(default_factory=list)
    unfinished: int = 0
    send_span: float = 0.0
    wall: float = 0.0
    items: int = 0  # events acknowledged as new, or checks not allowed
    cpu: float = 0.0  # the generator's own CPU seconds
    slow: list[tuple[float, float]] = field(default_factory=list)  # (scheduled, latency), s


async def _one(
    poster: _server.Poster, path: str, body: bytes, stream: Stream, scheduled: float, kind: str
) -> None:
    loop = asyncio.get_running_loop()
    try:
        status, data, sent = await poster.post(path, body)
    except Exception as error:  # noqa: BLE001 — count it, the run goes on
        stream.errors[type(error).__name__] += 1
        return
    _record(stream, kind, scheduled, status, data, sent, loop.time())


def _record(
    stream: Stream, kind: str, scheduled: float, status: int, data: bytes, sent: float, done: float
) -> None:
    stream.statuses[status] += 1
    if 200 <= status < 300:
        stream.ok += 1
        stream.latencies.append(done - scheduled)
        stream.service.append(done - sent)
        if done - scheduled > SLOW_SECONDS:
            stream.slow.append((scheduled, done - scheduled))
        answer = orjson.loads(data)
        if kind == "events":
            stream.items += answer["ingested"]
        elif not answer["allowed"]:
            stream.items += 1
    elif len(stream.samples) < 5:
        stream.samples.append(f"{status}: {data[:300].decode(errors='replace')}")


async def open_loop(
    pool: _server.LeanPool,
    path: str,
    body_of: Any,
    rate: float,
    duration: float,
    start_wall: float,
    drain: float,
    kind: str,
) -> Stream:
    """Send request i at ``start_wall + i / rate`` (wall clock, shared by both processes).

    Each request is a write on one of the pool's connections and a callback when its answer
    is read: no task or coroutine per request, so that the generator takes as little of the
    cores the server needs as it can (it took ~0.2 ms of CPU per check with a task per
    request over asyncio streams, docs/benchmarks.md)."""
    stream = Stream()
    now = time.perf_counter  # uvloop's loop.time() counts whole milliseconds
    total = int(rate * duration)
    interval = 1.0 / rate
    start = now() + (start_wall - time.time())
    await asyncio.sleep(max(0.0, start - now()))
    cpu0 = time.process_time()
    outstanding = 0
    settled = asyncio.Event()
    sending = True

    def one_done() -> None:
        nonlocal outstanding
        outstanding -= 1
        if not outstanding and not sending:
            settled.set()

    def sender(scheduled: float) -> tuple[_server.LeanAnswer, _server.LeanFailure]:
        def answered(status: int, data: bytes, sent: float) -> None:
            _record(stream, kind, scheduled, status, data, sent, now())
            one_done()

        def failed(error: BaseException) -> None:
            stream.errors[type(error).__name__] += 1
            one_done()

        return answered, failed

    i = 0
    while i < total:
        due = min(total, int((now() - start) / interval) + 1)
        while i < due:
            outstanding += 1
            pool.send(path, body_of(i), *sender(start + i * interval))
            i += 1
        # Whole milliseconds, rounded up (as asyncio's epoll does): uvloop rounds a timer to
        # the nearest one, and a wait rounded down to 0 would spin.
        await asyncio.sleep(math.ceil(max(0.0, start + i * interval - now()) * 1000) / 1000)
    sending = False
    stream.scheduled = total
    stream.send_span = now() - start
    if outstanding:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(settled.wait(), drain)
        stream.unfinished = outstanding
    stream.wall = now() - start
    stream.cpu = time.process_time() - cpu0
    return stream


# -- the events stream, in a process of its own ----------------------------------------------


def _events_main(job: dict[str, Any], out: Any) -> None:
    templates = make_templates(16, job["batch"], job["customers"], job["run"], job["seed"])

    async def run() -> Stream:
        pool = _server.LeanPool(job["base_url"], _server.auth(job["key"]), job["connections"])
        try:
            return await open_loop(
                pool,
                EVENTS_PATH,
                lambda i: render(templates, job["first"] + i),
                job["rate"] / job["batch"],
                job["duration"],
                job["start_wall"],
                job["drain"],
                "events",
            )
        finally:
            pool.close()

    out.put(uvloop.run(run()).__dict__)


# -- a phase ----------------------------------------------------------------------------------


@dataclass
class Result:
    events_rate: float
    checks_rate: float
    checks: Stream | None = None
    events: Stream | None = None
    cpu: dict[str, float] = field(default_factory=dict)
    wall: float = 0.0
    quiet: str = ""
    switches: int = 0
    """Context switches on the whole machine during the phase (/proc/stat ``ctxt``)."""
    applies: Counter[str] = field(default_factory=Counter)
    """The shards' account applies in the phase, by way, and the commits they gave
    (``commits:<way>``), from ``/metrics``."""


def context_switches() -> int:
    """The machine's context switches since boot."""
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith("ctxt "):
            return int(line.split()[1])
    return 0


def shard_applies(target: _server.Target) -> Counter[str]:
    """The shards' cumulative ``tallyray_shard_applies_total`` and
    ``tallyray_shard_applied_commits_total`` by way (the latter as ``commits:<way>``)."""
    request = urllib.request.Request(target.base_url + "/metrics", headers=_server.auth(target.key))
    with urllib.request.urlopen(request, timeout=30) as answer:
        text = answer.read().decode()
    totals: Counter[str] = Counter()
    for line in text.splitlines():
        for metric, prefix in (
            ("tallyray_shard_applies_total{", ""),
            ("tallyray_shard_applied_commits_total{", "commits:"),
        ):
            if line.startswith(metric):
                labels, _, value = line.rpartition(" ")
                way = labels.split('way="', 1)[1].split('"', 1)[0]
                totals[prefix + way] += int(float(value))
    return totals


def _kind(label: str) -> str:
    """Process kinds worth a line of their own."""
    if "ShardActor" in label:
        return "shards"
    if "ServeRepli" in label or "Ingress" in label:  # the name is cut at 15 characters
        return "replica"
    if label.startswith("postgres: backends"):
        return "postgres (bench db)"
    return label


async def _checks(
    args: argparse.Namespace, target: _server.Target, rate: float, start: float
) -> Stream:
    bodies = make_bodies(args.bodies, target.customers, seed=args.seed)
    pool = _server.LeanPool(target.base_url, _server.auth(target.key), args.connections)
    try:
        return await open_loop(
            pool,
            CHECK_PATH,
            lambda i: bodies[i % len(bodies)],
            rate,
            args.duration,
            start,
            args.drain,
            "checks",
        )
    finally:
        pool.close()


async def _warm_up(target: _server.Target) -> None:
    """One check per customer: loads every account and fills the caches (not recorded)."""
    poster = _server.Poster("raw", target.base_url, target.key, 32, 1)
    bodies = make_bodies(len(target.customers), target.customers, seed=0, in_order=True)
    scratch = Stream()

    async def worker() -> None:
        while bodies:
            await _one(poster, CHECK_PATH, bodies.pop(), scratch, 0.0, "checks")

    try:
        await asyncio.gather(*(worker() for _ in range(32)))
    finally:
        await poster.aclose()
    if scratch.ok != len(target.customers):
        print(f"  warm-up: {scratch.ok}/{len(target.customers)} ok; {dict(scratch.statuses)}")


def run_phase(
    args: argparse.Namespace, target: _server.Target, events_rate: float, checks_rate: float, n: int
) -> Result:
    result = Result(events_rate, checks_rate)
    result.quiet = target.quiet_check(args.quiet_wait)
    start_wall = time.time() + (3.0 if events_rate else 0.2)
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    child = None
    if events_rate:
        job = {
            "base_url": target.base_url,
            "key": target.key,
            "customers": target.customers,
            "run": f"mix{secrets.token_hex(3)}",
            "seed": n,
            "first": n * 10_000_000,
            "batch": args.batch,
            "rate": events_rate,
            "duration": args.duration,
            "start_wall": start_wall,
            "drain": args.drain,
            "connections": args.event_connections,
        }
        child = ctx.Process(target=_events_main, args=(job, queue), daemon=True)
        child.start()
    # CPU from just before the streams start to just after they end
    time.sleep(max(0.0, start_wall - time.time() - 0.05))
    applies = shard_applies(target)
    before = _server.cpu_snapshot()
    switches = context_switches()
    t0 = time.monotonic()
    if checks_rate:
        result.checks = uvloop.run(_checks(args, target, checks_rate, start_wall))
    if child is not None:
        result.events = Stream(**queue.get(timeout=args.duration + args.drain + 60))
        child.join(30)
        # gone from /proc by now: the child measured its own CPU over the stream
        result.cpu["generator: events"] = result.events.cpu
    result.wall = time.monotonic() - t0
    result.switches = context_switches() - switches
    after = _server.cpu_snapshot()
    result.applies = shard_applies(target) - applies
    me = os.getpid()
    for pid, proc in after.items():
        earlier = before.get(pid)
        spent = proc.seconds - (earlier.seconds if earlier else 0.0)
        if spent < 0:
            spent = proc.seconds
        if spent <= 0:
            continue
        if pid == me:
            label = "generator: checks"
        else:
            label = _kind(_server._label(pid, proc, target.server_pid, target.database))
        result.cpu[label] = result.cpu.get(label, 0.0) + spent
    return result


def _rate(stream: Stream) -> str:
    return (
        f"{stream.ok / max(stream.wall, 1e-9):,.1f}/s answered 2xx of {stream.scheduled:,} "
        f"scheduled (sent over {stream.send_span:.1f} s, last answer at {stream.wall:.1f} s)"
    )


def _errors(stream: Stream) -> str:
    non2xx = {s: n for s, n in stream.statuses.items() if not 200 <= s < 300}
    count = sum(non2xx.values()) + sum(stream.errors.values()) + stream.unfinished
    parts = []
    if non2xx:
        parts.append(f"non-2xx {non2xx}")
    if stream.errors:
        parts.append(f"transport {dict(stream.errors)}")
    if stream.unfinished:
        parts.append(f"{stream.unfinished} unanswered after the drain")
    return f"{count}" + (f" ({'; '.join(parts)})" if parts else "")


def slow_spells(slow: list[tuple[float, float]]) -> list[tuple[float, float, int]]:
    """The slow checks ``(scheduled, latency)`` grouped into spells ``(start, end, checks)``:
    a check scheduled while an earlier one was still waiting (or just after,
    :data:`SPELL_GAP_SECONDS`) joins its spell. Many checks in few long spells is the whole
    path stalling or queueing for the CPU, not lone slow checks."""
    spells: list[tuple[float, float, int]] = []
    for scheduled, latency in sorted(slow):
        if spells and scheduled <= spells[-1][1] + SPELL_GAP_SECONDS:
            start, end, count = spells[-1]
            spells[-1] = (start, max(end, scheduled + latency), count + 1)
        else:
            spells.append((scheduled, scheduled + latency, 1))
    return spells


def _slow(stream: Stream) -> str:
    spells = slow_spells(stream.slow)
    if not spells:
        return "none"
    share = 100 * len(stream.slow) / max(stream.ok, 1)
    covered = sum(end - start for start, end, _ in spells)
    largest = max(count for _, _, count in spells)
    return (
        f"{len(stream.slow):,} ({share:.1f} %) in {len(spells):,} spells covering "
        f"{covered:.2f} s of {stream.wall:.1f} s (largest: {largest:,} checks)"
    )


def _applies(applies: Counter[str]) -> str:
    calls = sum(n for way, n in applies.items() if not way.startswith("commits:"))
    commits = sum(n for way, n in applies.items() if way.startswith("commits:"))
    ways = ", ".join(
        f"{way.replace('_', ' ')} {applies[way]:,} ({applies['commits:' + way]:,} commits)"
        for way in ("alone", "together", "one_by_one")
    )
    each = commits / max(calls, 1)
    return f"{calls:,} giving {commits:,} account commits ({each:.2f} each): {ways}"


def report(result: Result) -> None:
    print(
        f"\n== {result.events_rate:,.0f} events/s + {result.checks_rate:,.0f} checks/s "
        f"(open loop, {result.wall:.1f} s)"
    )
    print(f"  {result.quiet}")
    if result.checks is not None:
        c = result.checks
        print(f"  checks   {_rate(c)}; {c.items:,} not allowed")
        print(f"    latency from schedule  {_server.percentiles(c.latencies)}")
        print(f"    latency from send      {_server.percentiles(c.service)}")
        print(f"    over {1000 * SLOW_SECONDS:g} ms            {_slow(c)}")
        print(f"    errors                 {_errors(c)}")
        for sample in c.samples:
            print(f"      e.g. {sample}")
    if result.events is not None:
        e = result.events
        print(
            f"  events   {e.items / max(e.wall, 1e-9):,.0f} events/s acknowledged new "
            f"({e.items:,}); requests {_rate(e)}"
        )
        print(f"    latency from schedule  {_server.percentiles(e.latencies)}")
        print(f"    errors                 {_errors(e)}")
        for sample in e.samples:
            print(f"      e.g. {sample}")
        print(f"  account applies {_applies(result.applies)}")
    cores = os.cpu_count() or 1
    total = sum(result.cpu.values())
    print("  CPU during the phase:")
    for label, seconds in sorted(result.cpu.items(), key=lambda kv: -kv[1]):
        if seconds / result.wall >= 0.005:
            print(
                f"    {label:<40} {seconds:6.2f} cpu-s "
                f"{100 * seconds / result.wall:6.1f}% of a core"
            )
    print(
        f"    {'total':<40} {total:6.2f} cpu-s {100 * total / result.wall:6.1f}% of a core "
        f"({100 * total / result.wall / cores:.0f}% of {cores} cores)"
    )
    print(f"  context switches on the machine: {result.switches / result.wall:,.0f}/s")
    if result.checks is not None and result.checks.ok:
        n = result.checks.ok
        replica = result.cpu.get("replica", 0.0)
        shards = result.cpu.get("shards", 0.0)
        note = "" if not result.events_rate else "  (includes the events' share)"
        print(
            f"  CPU per check: replica {1000 * replica / n:.3f} ms, shards "
            f"{1000 * shards / n:.3f} ms, both {1000 * (replica + shards) / n:.3f} ms, "
            f"generator {1000 * result.cpu.get('generator: checks', 0.0) / n:.3f} ms{note}"
        )
    if result.events is not None and result.events.items:
        n = result.events.items
        print(
            "  CPU per event (whole phase): "
            + ", ".join(
                f"{k} {1e6 * result.cpu.get(k, 0.0) / n:.1f} µs"
                for k in ("replica", "shards", "postgres (bench db)")
            )
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--phases",
        default="0:1000,20000:500,20000:1000",
        help="comma-separated EVENTS:CHECKS rates per second (0:1000,20000:500,20000:1000)",
    )
    parser.add_argument("--duration", type=float, default=20.0, help="seconds per phase (20)")
    parser.add_argument("--batch", type=int, default=100, help="events per POST (100)")
    parser.add_argument("--connections", type=int, default=256, help="check connections (256)")
    parser.add_argument("--event-connections", type=int, default=64, help="event connections (64)")
    parser.add_argument("--drain", type=float, default=30.0, help="seconds for late answers")
    parser.add_argument("--bodies", type=int, default=5000, help="distinct check bodies")
    parser.add_argument("--seed", type=int, default=1)
    _server.add_server_args(parser, customers=1000)
    args = parser.parse_args(argv)
    phases = []
    for spec in args.phases.split(","):
        events, _, checks = spec.partition(":")
        phases.append((float(events), float(checks or 0)))
    with _server.bench_target(args, "mixed") as target:
        print(
            f"Tallyray checks-while-ingesting benchmark: phases {args.phases} (events/s:checks/s),"
            f" {args.duration:g} s each, {args.batch} events per POST, "
            f"{len(target.customers)} customers; {os.cpu_count()} cores shared with the "
            "load generators"
        )
        if target.server_pid:
            print(f"server: pid {target.server_pid}, {args.shards} shards, log {target.log_path}")
            print(f"server code: {target.code}")
        asyncio.run(_warm_up(target))
        failed = False
        for n, (events, checks) in enumerate(phases):
            result = run_phase(args, target, events, checks, n)
            report(result)
            for stream in (result.checks, result.events):
                if stream is not None and (
                    stream.ok < stream.scheduled or stream.errors or stream.unfinished
                ):
                    failed = True
        return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
