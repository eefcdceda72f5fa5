"""Capacity inputs: CPU per event and per check per component, memory per customer, storage
per event. The figures docs/scaling.md sizes clusters from.

    .venv/bin/python bench/bench_capacity.py [--events 400000] [--checks 20000]
        [--memory-customers 10000] [--memory-rounds 1] [--shards 2]

It creates a fresh PostgreSQL database and starts ``tallyray serve`` on it with a copy of
examples/llm-api/tallyray.json that also lists --customers customers (plan ``pro``, postpaid
with a credit limit, so that checks price against a limit; the server seeds them at start,
faster than three API calls per customer on a busy box), creates a test key, and then, each
phase measured on its own:

1. **idle**: CPU of every component over --idle seconds with no load (Ray's and the
   server's background work), to subtract from the phases below;
2. **ingest**: a fixed number of events (--events) in 1,000-event batches, 8 in flight
   (bench_ingest.py's request bodies and retry rule); CPU per event per component, and the
   PostgreSQL storage (events with its partitions, event_ids, event_chunks, the database)
   and WAL bytes (``pg_current_wal_lsn``) it added;
3. **checks**: a fixed number of quota checks (--checks) offered at --check-rate a second,
   open loop (bench_quota.py's client); CPU per check per component;
4. **memory**: RSS of the shard and replica processes; then --memory-customers more
   customers, copied in SQL from the first one (its customer and subscription rows: a
   bulk insert, not the API, which seeds a few dozen a second on a busy box), given usage
   (--memory-events events each, shuffled; a shard loads an account when it first needs
   it), and RSS again; repeated --memory-rounds times;
5. with --restart: one shard process killed, and its recovery (accounts restored from their
   checkpoints, events replayed, seconds) as the server logs it.

CPU is read from /proc (user + system seconds of each process, and of each thread of the
shard processes, listed busiest first under each phase: with ingest and checks both over the
shard line, a shard's busy threads are its asyncio event loop — applying commits, answering
checks — and its database thread, which runs the group commit's COPY/INSERT and is idle
during checks; the rest are Ray's). Seconds of CPU per unit of work are much less disturbed by other
load on a shared machine than throughput or latency are: another process slows our work down
but does not add to its CPU seconds (it does make caches colder, so figures still move by
10–20 % between runs). The phases' throughput is printed too, but is not the point.

Everything talks to 127.0.0.1 only; the database is dropped at the end (--keep-db keeps it).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import random
import secrets
import signal
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _server  # noqa: E402
import bench_ingest  # noqa: E402
import bench_quota  # noqa: E402

_TICK = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")
BATCH = 1000
CONCURRENCY = 8

# -- processes and threads -----------------------------------------------------------------


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def _cmdline(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ""
    return raw.replace(b"\0", b" ").decode(errors="replace").strip()


def _stat_fields(stat: str) -> list[str]:
    """The fields after the command name of a /proc stat line (state is the first)."""
    return stat[stat.rfind(")") + 2 :].split()


def _cpu_seconds(fields: list[str]) -> float:
    return (int(fields[11]) + int(fields[12])) / _TICK


def component(pid: int, cmdline: str, server_sid: int, database: str) -> str | None:
    """Which part of the system a process is, or None if it is not ours to count."""
    stat = _read(Path(f"/proc/{pid}/stat"))
    if not stat:
        return None
    fields = _stat_fields(stat)
    name = stat[stat.find("(") + 1 : stat.rfind(")")]
    if name == "postgres":
        if f" {database} " in f"{cmdline} ":
            return "postgres backends (this db)"
        if any(
            word in cmdline
            for word in ("walwriter", "wal writer", "checkpointer", "background writer")
        ):
            return "postgres wal writer, checkpointer, bgwriter (shared)"
        return None  # other databases' backends, the postmaster, autovacuum of others…
    if int(fields[3]) != server_sid:
        return None
    if cmdline.startswith("ray::ShardActor"):
        return "shard actors"
    if cmdline.startswith("ray::ServeReplica"):
        return "ingress replicas"
    if "raylet" in cmdline or "gcs_server" in cmdline:
        return "ray: raylet + gcs"
    if cmdline.startswith("ray::"):
        return f"ray actor {cmdline.split()[0][5:]}"
    if "tallyray serve" in cmdline or cmdline.endswith("tallyray"):
        return "tallyray serve (driver)"
    return "ray: other (dashboard, monitors, idle workers)"


@dataclass
class Snapshot:
    at: float
    cpu: dict[str, float] = field(default_factory=dict)  # component -> cpu-s
    threads: dict[int, tuple[str, float]] = field(default_factory=dict)  # shard tid -> comm, s
    pids: dict[int, tuple[str, float]] = field(default_factory=dict)


def snapshot(server_sid: int, database: str) -> Snapshot:
    snap = Snapshot(time.monotonic())
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        cmdline = _cmdline(pid)
        label = component(pid, cmdline, server_sid, database)
        if label is None:
            continue
        stat = _read(entry / "stat")
        if not stat:
            continue
        seconds = _cpu_seconds(_stat_fields(stat))
        snap.pids[pid] = (label, seconds)
        if label == "shard actors":
            for task in (entry / "task").iterdir():
                tstat = _read(task / "stat")
                if tstat:
                    comm = tstat[tstat.find("(") + 1 : tstat.rfind(")")]
                    snap.threads[int(task.name)] = (comm, _cpu_seconds(_stat_fields(tstat)))
    return snap


def spent(before: Snapshot, after: Snapshot) -> dict[str, float]:
    """CPU seconds per component between two snapshots (by pid: a pid new since ``before``
    counts whole)."""
    used: dict[str, float] = {}
    for pid, (label, seconds) in after.pids.items():
        old = before.pids.get(pid)
        delta = seconds - (old[1] if old and old[0] == label else 0.0)
        if delta > 0:
            used[label] = used.get(label, 0.0) + delta
    return used


def thread_spent(before: Snapshot, after: Snapshot) -> dict[int, tuple[str, float]]:
    """CPU seconds of each shard thread between two snapshots."""
    return {
        tid: (comm, seconds - before.threads.get(tid, (comm, 0.0))[1])
        for tid, (comm, seconds) in after.threads.items()
    }


def rss_mib(pid: int) -> float:
    fields = _read(Path(f"/proc/{pid}/statm")).split()
    return int(fields[1]) * _PAGE / 2**20 if fields else 0.0


def pids_of(label: str, snap: Snapshot) -> list[int]:
    return sorted(pid for pid, (lab, _) in snap.pids.items() if lab == label)


# -- PostgreSQL storage --------------------------------------------------------------------

SIZES = {
    "events (all partitions, with indexes and TOAST)": (
        "SELECT coalesce(sum(pg_total_relation_size(relid)), 0) FROM pg_partition_tree('events')"
    ),
    "event_ids": "SELECT pg_total_relation_size('event_ids')",
    "event_chunks": "SELECT pg_total_relation_size('event_chunks')",
    "account_checkpoints": "SELECT pg_total_relation_size('account_checkpoints')",
    "whole database": "SELECT pg_database_size(current_database())",
}


def storage(database: str) -> dict[str, int]:
    return {name: int(_server._psql(sql, database=database)) for name, sql in SIZES.items()}


def wal_lsn() -> str:
    return _server._psql("SELECT pg_current_wal_lsn()")


def wal_bytes(start: str, end: str) -> int:
    return int(_server._psql(f"SELECT pg_wal_lsn_diff('{end}', '{start}')"))


# -- phases --------------------------------------------------------------------------------


@dataclass
class Measured:
    label: str
    units: int
    unit: str
    wall: float
    cpu: dict[str, float]
    threads: dict[int, tuple[str, float]] = field(default_factory=dict)
    extra: list[str] = field(default_factory=list)


def print_cpu(m: Measured, idle_rate: dict[str, float]) -> None:
    """CPU per unit per component: raw, and less the idle rate over the phase's wall time."""
    print(f"\n== {m.label}: {m.units:,} {m.unit}s in {m.wall:.1f} s ({m.units / m.wall:,.0f}/s)")
    for line in m.extra:
        print(f"  {line}")
    scale, sym = (1e6, "µs") if m.unit == "event" else (1e3, "ms")
    print(f"  {'component':<54} {'cpu-s':>7} {f'{sym}/{m.unit}':>10} {'net of idle':>12}")
    rows = sorted(m.cpu.items(), key=lambda kv: -kv[1])
    total = net_total = 0.0
    for label, seconds in rows:
        net = max(0.0, seconds - idle_rate.get(label, 0.0) * m.wall)
        total += seconds
        net_total += net
        if seconds / m.units * scale < 0.005:
            continue
        print(
            f"  {label:<54} {seconds:7.2f} {seconds / m.units * scale:10.2f} "
            f"{net / m.units * scale:12.2f}"
        )
    print(
        f"  {'total (counted components)':<54} {total:7.2f} {total / m.units * scale:10.2f} "
        f"{net_total / m.units * scale:12.2f}"
    )
    shard_total = m.cpu.get("shard actors", 0.0)
    busy = sorted(m.threads.items(), key=lambda kv: -kv[1][1])
    print("  the shard processes' busiest threads (thread name as the kernel has it):")
    for tid, (comm, seconds) in busy[:6]:
        if seconds < 0.03 * shard_total:
            break
        print(f"    tid {tid:<8} {comm:<18} {seconds:7.2f} {seconds / m.units * scale:10.2f}")


def measure_idle(target: _server.Target, seconds: float) -> dict[str, float]:
    """CPU per second of wall time per component, with no load."""
    assert target.server_pid is not None and target.database
    before = snapshot(target.server_pid, target.database)
    time.sleep(seconds)
    after = snapshot(target.server_pid, target.database)
    wall = after.at - before.at
    rates = {label: s / wall for label, s in spent(before, after).items()}
    print(f"\n== idle: {wall:.1f} s without load (subtracted as 'net of idle' below)")
    for label, rate in sorted(rates.items(), key=lambda kv: -kv[1]):
        if rate >= 0.001:
            print(f"  {label:<54} {100 * rate:6.1f}% of a core")
    return rates


async def _ingest(
    target: _server.Target, bodies: list[bytes], start: int, count: int
) -> tuple[int, int]:
    """Send ``count`` batches numbered from ``start``; (events acknowledged new, failures)."""
    phase = bench_ingest.Phase("capacity", target.base_url)
    poster = _server.Poster("raw", target.base_url, target.key, CONCURRENCY)
    numbers = iter(range(start, start + count))

    async def worker() -> None:
        for number in numbers:
            await bench_ingest.send(poster, bench_ingest.render(bodies, number), phase, 8)

    try:
        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    finally:
        await poster.aclose()
    return phase.ingested, phase.failed_batches


def ingest_phase(target: _server.Target, events: int, run: str) -> Measured:
    assert target.server_pid is not None and target.database
    templates = bench_ingest.make_templates(16, BATCH, target.customers, run, 1)
    batches = -(-events // BATCH)
    asyncio.run(_ingest(target, templates, 0, CONCURRENCY))  # warm-up, not measured
    time.sleep(2)
    sizes0, lsn0 = storage(target.database), wal_lsn()
    before = snapshot(target.server_pid, target.database)
    gen0 = time.process_time()
    acked, failed = asyncio.run(_ingest(target, templates, CONCURRENCY, batches))
    gen = time.process_time() - gen0
    after = snapshot(target.server_pid, target.database)
    wall = after.at - before.at
    lsn1 = wal_lsn()
    time.sleep(1)
    sizes1 = storage(target.database)
    wal = wal_bytes(lsn0, lsn1)
    extra = [
        f"acknowledged new: {acked:,}; batches failed: {failed}; "
        f"load generator {1e6 * gen / max(acked, 1):.2f} µs/event (not counted below)",
        f"WAL written (whole PostgreSQL cluster, other databases included): "
        f"{wal / 2**20:,.1f} MiB = {wal / max(acked, 1):,.0f} bytes/event",
    ]
    for name in SIZES:
        grown = sizes1[name] - sizes0[name]
        extra.append(
            f"storage {name}: +{grown / 2**20:,.1f} MiB = {grown / max(acked, 1):,.0f} bytes/event "
            f"({grown * 1e6 / max(acked, 1) / 2**30:,.2f} GiB per million)"
        )
    return Measured(
        "ingest",
        acked,
        "event",
        wall,
        spent(before, after),
        thread_spent(before, after),
        extra,
    )


def check_phase(target: _server.Target, checks: int, rate: float) -> Measured:
    assert target.server_pid is not None and target.database
    args = argparse.Namespace(rate=rate, duration=checks / rate, drain=30.0)
    phase = bench_quota.Phase("capacity", target.base_url, rate)

    async def run() -> float:
        poster = _server.Poster("raw", target.base_url, target.key, 256, 4)
        try:
            await bench_quota.warm_up(poster, target.customers, phase)
            bodies = bench_quota.make_bodies(5000, target.customers, 1)
            nonlocal before
            before = snapshot(target.server_pid or 0, target.database or "")
            gen0 = time.process_time()
            await bench_quota.open_loop(args, poster, phase, bodies)
            return time.process_time() - gen0
        finally:
            await poster.aclose()

    before = Snapshot(0.0)
    gen = asyncio.run(run())
    after = snapshot(target.server_pid, target.database)
    extra = [
        f"answered 2xx: {phase.ok:,} of {phase.scheduled:,}; latency from schedule "
        f"{_server.percentiles(phase.latencies)}",
        f"load generator {1e3 * gen / max(phase.ok, 1):.3f} ms/check (not counted below)",
    ]
    return Measured(
        "quota checks",
        phase.ok,
        "check",
        after.at - before.at,
        spent(before, after),
        thread_spent(before, after),
        extra,
    )


def memory_phase(
    target: _server.Target,
    customers: int,
    rounds: int,
    events_each: int,
    run: str,
) -> None:
    assert target.server_pid is not None and target.database
    snap = snapshot(target.server_pid, target.database)
    shards = pids_of("shard actors", snap)
    replicas = pids_of("ingress replicas", snap)

    def rss() -> tuple[float, float, int]:
        time.sleep(7)  # past a checkpoint round (5 s)
        checkpoints = int(
            _server._psql("SELECT count(*) FROM account_checkpoints", database=target.database)
        )
        return (sum(rss_mib(p) for p in shards), sum(rss_mib(p) for p in replicas), checkpoints)

    print(f"\n== memory: + {customers:,} customers per round, {events_each} events each")
    print(f"  shard pids {shards}, replica pids {replicas}")
    shard0, replica0, ck0 = rss()
    print(
        f"  before: {len(target.customers):,} customers with usage; shards {shard0:,.1f} MiB RSS, "
        f"replicas {replica0:,.1f} MiB, {ck0:,} account checkpoints"
    )
    have = len(target.customers)
    for round_ in range(1, rounds + 1):
        ids = memory_ids(customers, round_)
        copy_customers(target, round_, customers)
        time.sleep(3)  # past the replicas' catalog cache (2 s)
        rng = random.Random(round_)
        order = [c for c in ids for _ in range(events_each)]
        rng.shuffle(order)
        payloads = [
            orjson.dumps(
                [
                    {
                        "id": f"{run}-m{round_}-{b * BATCH + i}",
                        "customer_id": customer,
                        "type": "llm.completion",
                        "properties": {
                            "model": rng.choice(bench_ingest.MODELS),
                            "input_tokens": rng.randint(50, 4000),
                            "output_tokens": rng.randint(10, 1000),
                        },
                    }
                    for i, customer in enumerate(order[b * BATCH : (b + 1) * BATCH])
                ]
            )
            for b in range(-(-len(order) // BATCH))
        ]
        asyncio.run(_post_all(target, payloads))
        have += customers
        shard1, replica1, ck1 = rss()
        print(
            f"  round {round_}: {have:,} customers with usage ({len(order):,} events); "
            f"shards {shard1:,.1f} MiB (+{shard1 - shard0:,.1f}), replicas {replica1:,.1f} MiB "
            f"(+{replica1 - replica0:,.1f}), {ck1:,} account checkpoints"
        )
        print(
            f"    per 10,000 customers: shards +{(shard1 - shard0) * 10_000 / customers:,.1f} MiB "
            f"= {(shard1 - shard0) * 2**20 / customers:,.0f} bytes/customer; replicas "
            f"+{(replica1 - replica0) * 10_000 / customers:,.1f} MiB"
        )
        shard0, replica0 = shard1, replica1
    sizes = storage(target.database)
    print(f"  database now: {sizes['whole database'] / 2**20:,.1f} MiB")


def restart_phase(target: _server.Target, wait: float = 600.0) -> None:
    """Kill one shard process (SIGKILL: Ray restarts it) and report its recovery as the
    server logs it: accounts restored from their checkpoints, events replayed, seconds."""
    assert target.server_pid is not None and target.database and target.log_path
    shards = pids_of("shard actors", snapshot(target.server_pid, target.database))
    if not shards:
        print("\n== restart: no shard process found")
        return
    time.sleep(7)  # a checkpoint round after the last writes
    seen = target.log_path.read_text(errors="replace").count("recovered at position")
    print(f"\n== restart: SIGKILL to shard process {shards[0]}")
    os.kill(shards[0], signal.SIGKILL)
    started = time.monotonic()
    while time.monotonic() - started < wait:
        lines = [
            line
            for line in target.log_path.read_text(errors="replace").splitlines()
            if "recovered at position" in line
        ]
        if len(lines) > seen:
            message = lines[-1][lines[-1].find("shard ") :].split('"', 1)[0]
            print(f"  after {time.monotonic() - started:.1f} s: {message}")
            return
        time.sleep(0.5)
    print(f"  no recovery logged within {wait:.0f} s")


async def _post_all(target: _server.Target, payloads: list[bytes]) -> None:
    phase = bench_ingest.Phase("memory", target.base_url)
    poster = _server.Poster("raw", target.base_url, target.key, CONCURRENCY)
    queue = list(reversed(payloads))

    async def worker() -> None:
        while queue:
            await bench_ingest.send(poster, queue.pop(), phase, 8)

    try:
        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    finally:
        await poster.aclose()
    if phase.failed_batches:
        raise RuntimeError(f"{phase.failed_batches} batches failed: {phase.samples}")


def memory_ids(customers: int, round_: int) -> list[str]:
    return [f"mem{round_}-{i:07d}" for i in range(customers)]


def copy_customers(target: _server.Target, round_: int, count: int) -> None:
    """``count`` customers of the test environment named by :func:`memory_ids`, each a copy
    of the first load customer with its subscription (every column as the table has it)."""
    assert target.database
    first = target.customers[0]
    series = f"generate_series(0, {count - 1}) AS i"
    name = f"'mem{round_}-' || lpad(i::text, 7, '0')"
    copies = {
        "customers": ("id", name, f"id = '{first}'"),
        "subscriptions": ("customer_id", name, f"customer_id = '{first}'"),
    }
    for table, (column, value, where) in copies.items():
        columns = _server._psql(
            "SELECT string_agg(quote_ident(column_name), ',' ORDER BY ordinal_position) "
            f"FROM information_schema.columns WHERE table_name = '{table}' "
            "AND table_schema = 'public'",
            database=target.database,
        ).split(",")
        chosen = [
            value
            if c == column
            else f"'sub_mem{round_}_' || i"
            if (table, c) == ("subscriptions", "id")
            else c
            for c in columns
        ]
        _server._psql(
            f"INSERT INTO {table} ({','.join(columns)}) SELECT {','.join(chosen)} "
            f"FROM {table}, {series} WHERE env = 'test' AND {where}",
            database=target.database,
            timeout=600,
        )


def write_config(args: argparse.Namespace, path: Path) -> list[str]:
    """The example config plus the load's customers; returns their ids."""
    raw = json.loads((_server.ROOT / args.config).read_text())
    load = _server.customer_ids(args.customers)
    raw["customers"] = [
        {
            "id": c,
            "currency": "EUR",
            "country": "DE",
            "plan": "pro",
            "billing_mode": "postpaid",
            "credit_limit": "1000000.00",
        }
        for c in load
    ]
    path.write_text(json.dumps(raw))
    return load


@contextlib.contextmanager
def server(args: argparse.Namespace) -> Iterator[_server.Target]:
    """A fresh database and server with the bench's customers; both gone afterwards."""
    name, url = _server.create_database("tallyray_capacity")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    log_path = Path(args.server_log or _server.LOG_DIR / f"capacity-{stamp}.log")
    proc = None
    with tempfile.TemporaryDirectory(prefix="tallyray-capacity-") as tmp:
        config = Path(tmp) / "tallyray.json"
        try:
            load = write_config(args, config)
            code = _server.code_version()
            proc = _server.start_server(
                url, args.port, args.shards, str(config), log_path, timeout=args.start_timeout
            )
            key = _server.create_key(url)
            yield _server.Target(
                f"http://127.0.0.1:{args.port}", key, load, url, proc.pid, log_path, code
            )
        finally:
            if proc is not None:
                _server.stop_server(proc)
            if args.keep_db:
                _server.log(f"kept database {name}")
            else:
                _server.drop_database(name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--events", type=int, default=400_000, help="events measured (400,000)")
    parser.add_argument("--checks", type=int, default=20_000, help="checks measured (20,000)")
    parser.add_argument("--check-rate", type=float, default=1000.0, help="checks/s offered")
    parser.add_argument("--idle", type=float, default=10.0, help="seconds of idle measured (10)")
    parser.add_argument("--memory-customers", type=int, default=10_000)
    parser.add_argument("--memory-rounds", type=int, default=1)
    parser.add_argument("--memory-events", type=int, default=10, help="events per new customer")
    parser.add_argument(
        "--restart",
        action="store_true",
        help="at the end, kill a shard and report its recovery (accounts restored, seconds)",
    )
    parser.add_argument(
        "--start-timeout", type=float, default=900.0, help="seconds for the server to seed (900)"
    )
    _server.add_server_args(parser, customers=1000)
    args = parser.parse_args(argv)
    if args.url:
        parser.error("bench_capacity starts its own server (it reads its processes)")
    if args.memory_customers * args.memory_rounds > 100_000:
        parser.error("at most 100,000 memory customers in all")
    run = "c" + secrets.token_hex(4)
    # Ray's ray.init() without an address joins any Ray cluster that runs on the machine (it
    # finds /tmp/ray/ray_current_cluster); "local" makes the server start its own.
    os.environ["RAY_ADDRESS"] = "local"
    gc.disable()  # the generator's own pauses are not what we measure
    with server(args) as target:
        print(
            f"Tallyray capacity benchmark: {args.shards} shards, 1 ingress replica, "
            f"{len(target.customers):,} customers, PostgreSQL; {os.cpu_count()} cores "
            "shared with the load generator and with other work on this machine"
        )
        print(f"server code: {target.code}")
        print(f"load before: {_read(Path('/proc/loadavg')).strip()}")
        idle = measure_idle(target, args.idle)
        ingest = ingest_phase(target, args.events, run)
        print_cpu(ingest, idle)
        print(f"  load after: {_read(Path('/proc/loadavg')).strip()}")
        checks = check_phase(target, args.checks, args.check_rate)
        print_cpu(checks, idle)
        print(f"  load after: {_read(Path('/proc/loadavg')).strip()}")
        if args.memory_rounds > 0 and args.memory_customers > 0:
            memory_phase(
                target,
                args.memory_customers,
                args.memory_rounds,
                args.memory_events,
                run,
            )
        if args.restart:
            restart_phase(target)
    return 0


if __name__ == "__main__":
    sys.exit(main())
