"""Shared helpers for the HTTP benchmarks (bench_ingest.py, bench_quota.py).

Two modes, chosen by :func:`add_server_args` flags:

* default: create a fresh PostgreSQL database, start ``tallyray serve`` on it as a
  subprocess (output to a log file), create a test API key and N customers on the ``pro``
  plan with large credits, and at the end stop the server (SIGINT, then SIGKILL of its
  process group if it does not stop) and drop the database;
* ``--url URL --key KEY``: use a server that is already running (``--setup`` also creates
  the customers; ``--database-url`` lets the ingest benchmark count the stored events).

Everything talks to 127.0.0.1 only. Not a module of the tallyray package: run the benchmark
scripts from the repository root.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import httpx

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = ROOT / ".venv" / "bin"
DEFAULT_CONFIG = "examples/llm-api/tallyray.json"
LOG_DIR = Path(tempfile.gettempdir()) / "tallyray-bench"
PG = {"host": "127.0.0.1", "port": "5432", "user": "postgres"}
PG_ADMIN_URL = f"postgresql://{PG['user']}@{PG['host']}:{PG['port']}"


def log(message: str) -> None:
    print(f"[setup] {message}", file=sys.stderr, flush=True)


# -- PostgreSQL ----------------------------------------------------------------------------


def _psql(sql: str, database: str = "postgres", timeout: float = 60) -> str:
    """Run one SQL statement with psql; returns its unaligned, tuples-only output."""
    cmd = ["psql", "-h", PG["host"], "-p", PG["port"], "-U", PG["user"], "-d", database]
    cmd += ["-v", "ON_ERROR_STOP=1", "-tAc", sql]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"psql failed ({sql!r}): {done.stderr.strip()}")
    return done.stdout.strip()


def ensure_postgres() -> None:
    """Make sure PostgreSQL answers on 127.0.0.1:5432; start the local cluster if not."""
    try:
        _psql("SELECT 1", timeout=10)
        return
    except (RuntimeError, subprocess.TimeoutExpired):
        pass
    log("PostgreSQL does not answer; starting it (pg_ctlcluster 15 main start)")
    subprocess.run(
        ["pg_ctlcluster", "--skip-systemctl-redirect", "15", "main", "start"],
        check=True,
        timeout=60,
    )
    for _ in range(60):
        try:
            _psql("SELECT 1", timeout=10)
            return
        except (RuntimeError, subprocess.TimeoutExpired):
            time.sleep(0.5)
    raise RuntimeError("PostgreSQL did not come up on 127.0.0.1:5432")


def create_database(prefix: str = "tallyray_bench") -> tuple[str, str]:
    """A fresh, empty database. Returns (name, URL)."""
    ensure_postgres()
    name = f"{prefix}_{time.strftime('%Y%m%d_%H%M%S')}_{secrets.token_hex(3)}"
    _psql(f"CREATE DATABASE {name}")
    log(f"created database {name}")
    return name, f"{PG_ADMIN_URL}/{name}"


def drop_database(name: str) -> None:
    if not re.fullmatch(r"[a-z0-9_]+", name):
        raise ValueError(f"refusing to drop {name!r}")
    _psql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    log(f"dropped database {name}")


def database_name(url: str) -> str:
    return url.rsplit("/", 1)[1].split("?", 1)[0]


def count_rows(database_url: str, table: str = "events") -> int:
    """Rows in ``table`` of the database behind ``database_url`` (a postgresql:// URL on
    127.0.0.1)."""
    if not database_url.startswith(("postgresql://", "postgres://", "postgresql+psycopg://")):
        raise ValueError("row counting supports PostgreSQL URLs only")
    return int(_psql(f"SELECT count(*) FROM {table}", database=database_name(database_url)))


# -- the server ----------------------------------------------------------------------------


def _port_free(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


def wait_healthy(base_url: str, seconds: float, proc: subprocess.Popen[bytes] | None) -> None:
    deadline = time.monotonic() + seconds
    while True:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the server exited with code {proc.returncode} before it was up")
        try:
            with urllib.request.urlopen(base_url + "/healthz", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{base_url}/healthz did not answer within {seconds:.0f}s")
        time.sleep(0.5)


def start_server(
    database_url: str,
    port: int,
    shards: int,
    config: str,
    log_path: Path,
    timeout: float = 180,
) -> subprocess.Popen[bytes]:
    """Start ``tallyray serve`` in its own session (so it and all it spawns can be found and
    stopped), and wait until ``/healthz`` answers."""
    if not _port_free(port):
        raise RuntimeError(f"port {port} is taken; stop what listens there or pass --port")
    cmd = [str(VENV_BIN / "tallyray"), "serve", "--config", config]
    cmd += ["--port", str(port), "--shards", str(shards)]
    env = {**os.environ, "TALLYRAY_DATABASE_URL": database_url}
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log(f"starting: TALLYRAY_DATABASE_URL={database_url} {' '.join(cmd)}  (log: {log_path})")
    with open(log_path, "wb") as out:
        proc = subprocess.Popen(
            cmd,
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    started = time.monotonic()
    try:
        wait_healthy(f"http://127.0.0.1:{port}", timeout, proc)
    except BaseException:
        tail = log_path.read_text(errors="replace")[-3000:]
        log(f"server log tail:\n{tail}")
        stop_server(proc)
        raise
    log(f"server up in {time.monotonic() - started:.1f}s (pid {proc.pid})")
    return proc


def _session_members(sid: int) -> list[int]:
    """Pids of the live processes in session ``sid`` (the server and everything it spawned
    that did not leave the session)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # fields after the ")" that ends the command name: state ppid pgrp session ...
        rest = stat[stat.rfind(")") + 2 :].split()
        if len(rest) > 3 and int(rest[3]) == sid and rest[0] != "Z":
            found.append(int(entry.name))
    return found


def stop_server(proc: subprocess.Popen[bytes], grace: float = 60) -> None:
    """SIGINT (what Ctrl-C sends; the server then shuts Ray down), wait, then SIGKILL
    whatever is left of its session."""
    sid = proc.pid
    if proc.poll() is None:
        log(f"stopping the server (SIGINT to pid {proc.pid})")
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            log(f"the server did not stop within {grace:.0f}s; SIGKILL to its process group")
            with contextlib.suppress(ProcessLookupError):
                os.killpg(sid, signal.SIGKILL)
            proc.wait(timeout=30)
    deadline = time.monotonic() + 15
    while (left := _session_members(sid)) and time.monotonic() < deadline:
        time.sleep(0.5)
    if left:
        log(f"killing {len(left)} leftover process(es) of the server's session: {left}")
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    log(f"server stopped (exit code {proc.returncode})")


def create_key(database_url: str) -> str:
    done = subprocess.run(
        [str(VENV_BIN / "tallyray"), "keys", "create", "--env", "test"]
        + ["--database-url", database_url, "--name", "bench"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"tallyray keys create failed: {done.stderr.strip()}")
    return str(json.loads(done.stdout)["key"])


def customer_ids(count: int) -> list[str]:
    return [f"cust-{i:04d}" for i in range(1, count + 1)]


async def _setup_customers(
    base_url: str, key: str, ids: list[str], plan: str, credits: str, concurrency: int
) -> None:
    headers = {"Authorization": f"Bearer {key}"}
    queue = list(reversed(ids))

    async def post(client: httpx.AsyncClient, path: str, body: dict[str, object]) -> None:
        for attempt in range(5):
            response = await client.post(path, json=body)
            if response.status_code < 300:
                return
            if response.status_code != 503 or attempt == 4:
                raise RuntimeError(f"POST {path} -> {response.status_code}: {response.text}")
            await asyncio.sleep(0.2 * (attempt + 1))

    async def worker(client: httpx.AsyncClient) -> None:
        while queue:
            customer = queue.pop()
            await post(client, "/v1/customers", {"id": customer, "currency": "EUR"})
            await post(client, "/v1/subscriptions", {"customer_id": customer, "plan": plan})
            await post(client, f"/v1/customers/{customer}/credits", {"amount": credits})

    async with httpx.AsyncClient(base_url=base_url, headers=headers, timeout=60) as client:
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))


def setup_customers(
    base_url: str,
    key: str,
    count: int,
    plan: str = "pro",
    credits: str = "1000000.00",
    concurrency: int = 16,
) -> list[str]:
    """Create (or update) customers cust-0001… on ``plan`` with ``credits`` EUR each."""
    ids = customer_ids(count)
    started = time.monotonic()
    asyncio.run(_setup_customers(base_url, key, ids, plan, credits, concurrency))
    took = time.monotonic() - started
    log(f"{count} customers on plan {plan!r} with {credits} EUR in {took:.1f}s")
    return ids


def _sid(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat[stat.rfind(")") + 2 :].split()[3])


def _listener_sid(port: int) -> int | None:
    """The session of the process listening on 127.0.0.1:``port`` (None if not found)."""
    try:
        listing = subprocess.run(
            ["ss", "-Hltnp", f"sport = :{port}"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    for pid in re.findall(r"pid=(\d+)", listing):
        sid = _sid(int(pid))
        if sid is not None:
            return sid
    return None


def code_version() -> str:
    """The commit the server's code comes from, and any uncommitted change to it (the code a
    server runs is read when it starts)."""
    try:
        head = subprocess.run(
            ["git", "log", "-1", "--format=%h %cd %s", "--date=format:%Y-%m-%d %H:%M"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "tallyray", "pyproject.toml"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.split("\n")
    except (OSError, subprocess.SubprocessError):
        return "unknown (no git)"
    changed = [line[3:] for line in dirty if line.strip()]
    return head + (f" + uncommitted: {', '.join(changed)}" if changed else "")


# -- the command line and the whole life cycle ---------------------------------------------


def add_server_args(parser: argparse.ArgumentParser, customers: int = 1000) -> None:
    group = parser.add_argument_group("server")
    group.add_argument(
        "--url",
        help="use an already-running server at this base URL (e.g. http://127.0.0.1:8000) "
        "instead of starting one; needs --key",
    )
    group.add_argument("--key", help="API key (trk_test_…) for --url")
    group.add_argument(
        "--database-url",
        help="with --url: the server's PostgreSQL URL, to verify stored events",
    )
    group.add_argument(
        "--setup",
        action="store_true",
        help="with --url: create/refresh the customers first (default: assume they exist)",
    )
    group.add_argument(
        "--customers", type=int, default=customers, help=f"customers (default {customers})"
    )
    group.add_argument("--port", type=int, default=8000, help="port for our server (8000)")
    group.add_argument("--shards", type=int, default=2, help="shards for our server (2)")
    group.add_argument("--config", default=DEFAULT_CONFIG, help=f"config ({DEFAULT_CONFIG})")
    group.add_argument(
        "--server-log",
        default=None,
        help=f"server log file (default: {LOG_DIR}/<script>-<time>.log)",
    )
    group.add_argument(
        "--keep-db", action="store_true", help="do not drop the benchmark database at the end"
    )
    group.add_argument(
        "--quiet-wait",
        type=float,
        default=60.0,
        help="before each phase, wait up to this many seconds for processes outside the "
        "benchmark to go quiet (60)",
    )


@dataclass
class Target:
    base_url: str
    key: str
    customers: list[str]
    database_url: str | None = None
    server_pid: int | None = None
    """The server's session id (its pid when we started it): tells its processes apart."""
    log_path: Path | None = None
    code: str = ""

    @property
    def database(self) -> str | None:
        return database_name(self.database_url) if self.database_url else None

    def cpu_table(self, before: dict[int, Proc], after: dict[int, Proc], wall: float) -> str:
        return cpu_table(before, after, wall, self.server_pid, self.database)

    def quiet_check(self, max_wait: float = 0.0) -> str:
        """How busy the machine is before a timed phase. Waits up to ``max_wait`` seconds
        for processes outside the benchmark to use under 10% of the cores and for the
        server itself to be idle (under 30% of one core: a previous phase's backlog)."""
        cores = os.cpu_count() or 1
        deadline = time.monotonic() + max_wait
        while True:
            before = cpu_snapshot()
            busy = machine_busy(1.0)
            after = cpu_snapshot()
            other = server = 0.0
            for pid, proc in after.items():
                old = before.get(pid)
                if old is None:
                    continue
                label = _label(pid, proc, self.server_pid, self.database)
                spent = max(0.0, proc.seconds - old.seconds)
                if label.startswith("OTHER"):
                    other += spent / cores
                elif label.startswith(("server:", "postgres: backends")):
                    server += spent
            known = self.server_pid is not None
            quiet = other < 0.10 and (not known or server < 0.30)
            if quiet or time.monotonic() >= deadline:
                break
            time.sleep(1.0)
        note = f"machine busy before the phase: {100 * busy:.0f}% of all cores"
        if self.server_pid is not None:
            note += (
                f" ({100 * other:.0f}% outside this benchmark, "
                f"server {100 * server:.0f}% of a core)"
            )
            if other >= 0.10:
                note += " — WARNING: other processes are busy; results will be disturbed"
            elif server >= 0.30:
                note += " — WARNING: the server is still busy (backlog of the previous phase?)"
        return note


@contextlib.contextmanager
def bench_target(args: argparse.Namespace, script: str) -> Iterator[Target]:
    """Yield a ready :class:`Target`; tear down whatever was started here, always."""
    if args.url:
        if not args.key:
            raise SystemExit("--url needs --key")
        base = args.url.rstrip("/")
        if not re.match(r"https?://(127\.0\.0\.1|localhost)(:\d+)?$", base):
            raise SystemExit("--url must be on 127.0.0.1")
        wait_healthy(base, 10, None)
        server_sid = _listener_sid(int(base.rsplit(":", 1)[1]) if base.count(":") == 2 else 80)
        ids = (
            setup_customers(base, args.key, args.customers)
            if args.setup
            else customer_ids(args.customers)
        )
        yield Target(
            base, args.key, ids, args.database_url, server_sid, code="unknown (started elsewhere)"
        )
        return

    name, url = create_database()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    log_path = Path(args.server_log or LOG_DIR / f"{script}-{stamp}.log")
    proc: subprocess.Popen[bytes] | None = None
    try:
        code = code_version()
        proc = start_server(url, args.port, args.shards, args.config, log_path)
        base = f"http://127.0.0.1:{args.port}"
        key = create_key(url)
        ids = setup_customers(base, key, args.customers)
        yield Target(base, key, ids, url, proc.pid, log_path, code)
    finally:
        if proc is not None:
            stop_server(proc)
        if args.keep_db:
            log(f"kept database {name}")
        else:
            drop_database(name)


# -- a minimal HTTP/1.1 client (--client raw) -------------------------------------------------


def _endpoint(base_url: str, headers: dict[str, str]) -> tuple[str, int, str]:
    """(host, port, the header lines) for the raw clients, which speak plain HTTP/1.1."""
    match = re.fullmatch(r"http://([^:/]+):(\d+)", base_url)
    if not match:
        raise ValueError(f"raw HTTP clients need http://host:port, not {base_url!r}")
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    return match.group(1), int(match.group(2)), head


class RawPool:
    """Keep-alive HTTP/1.1 POSTs over asyncio streams to one host, with at most ``size``
    connections. Far less CPU per request than httpx, which matters when the load generator
    shares the cores with the server. Understands Content-Length and chunked responses."""

    def __init__(self, base_url: str, headers: dict[str, str], size: int) -> None:
        self.host, self.port, self._head = _endpoint(base_url, headers)
        self._idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self._slots = asyncio.Semaphore(size)

    async def post(self, path: str, body: bytes) -> tuple[int, bytes, float]:
        """(status, body, when the request was written: ``loop.time()`` once a connection
        was free)."""
        async with self._slots:
            sent_at = asyncio.get_running_loop().time()
            conn = self._idle.pop() if self._idle else None
            if conn is None:
                conn = await asyncio.open_connection(self.host, self.port)
            reader, writer = conn
            try:
                writer.write(
                    (
                        f"POST {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n{self._head}"
                        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
                    ).encode()
                    + body
                )
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                status = int(lines[0].split(" ", 2)[1])
                fields = {}
                for line in lines[1:]:
                    name, _, value = line.partition(":")
                    fields[name.strip().lower()] = value.strip()
                if "content-length" in fields:
                    data = await reader.readexactly(int(fields["content-length"]))
                elif fields.get("transfer-encoding", "").lower() == "chunked":
                    parts = []
                    while size := int((await reader.readuntil(b"\r\n")).strip(), 16):
                        parts.append(await reader.readexactly(size))
                        await reader.readexactly(2)
                    await reader.readuntil(b"\r\n")
                    data = b"".join(parts)
                else:
                    data = await reader.read()
                    fields["connection"] = "close"
            except BaseException:
                writer.close()
                raise
            if fields.get("connection", "").lower() == "close":
                writer.close()
            else:
                self._idle.append(conn)
            return status, data, sent_at

    async def aclose(self) -> None:
        for _, writer in self._idle:
            writer.close()
        self._idle.clear()


class LeanPool:
    """Open-loop HTTP/1.1 POSTs with the least CPU a Python client spends per request: up to
    ``size`` keep-alive connections, each an :class:`asyncio.Protocol` (no stream reader, no
    task per request), requests queued FIFO while every connection is busy, and the answer
    handed to a callback. For the load generators that share the cores with the server
    (issue 12, item 7): what they spend is taken from the server. Understands answers with a
    ``Content-Length`` (every answer Tallyray's hot routes give); any other answer fails the
    request and closes its connection."""

    def __init__(self, base_url: str, headers: dict[str, str], size: int) -> None:
        self.host, self.port, self._head = _endpoint(base_url, headers)
        self._prefixes: dict[str, bytes] = {}
        self._size = size
        self._open = 0
        self._idle: list[_LeanConnection] = []
        self._queue: collections.deque[_LeanRequest] = collections.deque()
        self._all: set[_LeanConnection] = set()
        self._loop = asyncio.get_running_loop()
        self._closed = False

    def send(self, path: str, body: bytes, answered: LeanAnswer, failed: LeanFailure) -> None:
        """Write the request now on an idle connection, or as soon as one is free;
        ``answered(status, body, sent_at)`` (``time.perf_counter()`` when it was written:
        uvloop's ``loop.time()`` counts whole milliseconds) or ``failed(error)`` is called
        once."""
        prefix = self._prefixes.get(path)
        if prefix is None:
            prefix = self._prefixes[path] = (
                f"POST {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n{self._head}"
                "Content-Type: application/json\r\nContent-Length: "
            ).encode()
        request = (prefix + b"%d\r\n\r\n" % len(body) + body, answered, failed)
        if self._idle:
            self._idle.pop().write(request)
            return
        self._queue.append(request)
        self._grow()

    def _grow(self) -> None:
        """Open one more connection for the queued requests, if the pool may."""
        if self._queue and self._open < self._size and not self._closed:
            self._open += 1
            self._loop.create_task(self._connect())

    async def _connect(self) -> None:
        try:
            _, conn = await self._loop.create_connection(
                lambda: _LeanConnection(self), self.host, self.port
            )
        except OSError as error:
            self._open -= 1
            if self._queue:  # that request fails; the next one tries again
                self._queue.popleft()[2](error)
            self._grow()
            return
        self._all.add(conn)
        self.free(conn)

    def free(self, conn: _LeanConnection) -> None:
        """``conn`` finished a request: the next queued one, or idle."""
        if self._queue:
            conn.write(self._queue.popleft())
        else:
            self._idle.append(conn)

    def lost(self, conn: _LeanConnection) -> None:
        """``conn`` closed: queued requests get a new connection."""
        self._open -= 1
        self._all.discard(conn)
        if conn in self._idle:
            self._idle.remove(conn)
        self._grow()

    def close(self) -> None:
        self._closed = True
        for conn in list(self._all):
            if conn.transport is not None:
                conn.transport.close()


LeanAnswer = Callable[[int, bytes, float], None]
LeanFailure = Callable[[BaseException], None]
_LeanRequest = tuple[bytes, LeanAnswer, LeanFailure]


class _LeanConnection(asyncio.Protocol):
    def __init__(self, pool: LeanPool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.current: _LeanRequest | None = None
        self.sent_at = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def write(self, request: _LeanRequest) -> None:
        assert self.transport is not None
        self.current = request
        self.sent_at = time.perf_counter()
        self.transport.write(request[0])

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer + data if self.buffer else data
        end = buffer.find(b"\r\n\r\n")
        if end < 0:
            self.buffer = buffer
            return
        head = buffer[:end].lower()
        at = head.find(b"\r\ncontent-length:")
        if at < 0 or self.current is None:
            self._fail(ValueError(f"answer without Content-Length: {head[:200]!r}"))
            return
        stop = head.find(b"\r\n", at + 17)
        length = int(head[at + 17 : stop if stop >= 0 else None])
        if len(buffer) < end + 4 + length:
            self.buffer = buffer
            return
        self.buffer = buffer[end + 4 + length :]
        request, self.current = self.current, None
        closing = b"\r\nconnection: close" in head
        if closing:
            assert self.transport is not None
            self.transport.close()
        else:
            self.pool.free(self)
        request[1](int(head[9:12]), buffer[end + 4 : end + 4 + length], self.sent_at)

    def _fail(self, error: BaseException) -> None:
        request, self.current = self.current, None
        if self.transport is not None:
            self.transport.close()
        if request is not None:
            request[2](error)

    def connection_lost(self, exc: Exception | None) -> None:
        self.pool.lost(self)
        request, self.current = self.current, None
        if request is not None:
            request[2](exc or ConnectionResetError("the server closed the connection"))


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


class Poster:
    """POST bytes with either httpx (several AsyncClients, round robin) or :class:`RawPool`."""

    def __init__(self, kind: str, base_url: str, key: str, connections: int, clients: int = 1):
        headers = auth(key)
        self.kind = kind
        clients = max(1, min(clients, connections))
        per = max(1, connections // clients)
        self._next = 0
        if kind == "httpx":
            limits = httpx.Limits(max_connections=per, max_keepalive_connections=per)
            timeout = httpx.Timeout(60.0, pool=None)
            self._clients = [
                httpx.AsyncClient(
                    base_url=base_url,
                    headers={**headers, "Content-Type": "application/json"},
                    limits=limits,
                    timeout=timeout,
                )
                for _ in range(clients)
            ]
        elif kind == "raw":
            self._raw = [RawPool(base_url, headers, per) for _ in range(clients)]
        else:
            raise ValueError(f"unknown client {kind!r} (httpx, raw)")

    async def post(self, path: str, body: bytes) -> tuple[int, bytes, float]:
        """(status, body, send time). The send time is when a connection was free (raw) or
        when the call began (httpx, which does not tell when it got a connection)."""
        self._next += 1
        if self.kind == "httpx":
            client = self._clients[self._next % len(self._clients)]
            sent_at = asyncio.get_running_loop().time()
            response = await client.post(path, content=body)
            return response.status_code, response.content, sent_at
        pool = self._raw[self._next % len(self._raw)]
        return await asyncio.wait_for(pool.post(path, body), 60)

    async def aclose(self) -> None:
        if self.kind == "httpx":
            for client in self._clients:
                await client.aclose()
        else:
            for pool in self._raw:
                await pool.aclose()


# -- reporting -----------------------------------------------------------------------------


def percentiles(values_s: list[float], points: tuple[float, ...] = (50, 90, 99)) -> str:
    """``p50 1.23 ms  p90 …  max …`` for latencies given in seconds."""
    import numpy as np

    if not values_s:
        return "(no samples)"
    arr = np.asarray(values_s) * 1000.0
    parts = [f"p{p:g} {np.percentile(arr, p):.2f} ms" for p in points]
    parts.append(f"max {arr.max():.2f} ms")
    return "  ".join(parts)


_TICK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Proc:
    name: str
    sid: int
    cmdline: str
    seconds: float


def cpu_snapshot() -> dict[int, Proc]:
    """CPU seconds (user+system) so far of every process on the machine."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            name = stat[stat.find("(") + 1 : stat.rfind(")")]
            cmdline = ""
            if name == "postgres":
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        rest = stat[stat.rfind(")") + 2 :].split()
        seconds = (int(rest[11]) + int(rest[12])) / _TICK
        found[int(entry.name)] = Proc(name, int(rest[3]), cmdline, seconds)
    return found


def machine_busy(seconds: float = 1.0) -> float:
    """Fraction of all cores busy over the next ``seconds`` (from /proc/stat)."""

    def sample() -> tuple[int, int]:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        idle = fields[3] + fields[4]
        return sum(fields), idle

    total0, idle0 = sample()
    time.sleep(seconds)
    total1, idle1 = sample()
    return 1.0 - (idle1 - idle0) / max(1, total1 - total0)


def _label(pid: int, proc: Proc, server_sid: int | None, database: str | None) -> str:
    if pid == os.getpid():
        return "load generator (this process)"
    if server_sid is not None and proc.sid == server_sid:
        return f"server: {proc.name}"
    if proc.name == "postgres":
        if database and f" {database} " in proc.cmdline + " ":
            return "postgres: backends of the bench db"
        if re.search(r"postgres: \d+/\w+: (\w+ )?\w+ \S+ \S+", proc.cmdline):
            return "OTHER: postgres backends of other dbs"
        return "postgres: wal writer, checkpointer, …"
    if server_sid is None:
        return proc.name
    return f"OTHER: {proc.name}"


def cpu_table(
    before: dict[int, Proc],
    after: dict[int, Proc],
    wall: float,
    server_sid: int | None = None,
    database: str | None = None,
) -> str:
    """CPU used between two snapshots per kind of process, as % of one core over ``wall``.
    With ``server_sid``, processes outside the server's session (and the bench database's
    PostgreSQL backends) are marked OTHER: load that is not part of the benchmark."""
    used: dict[str, float] = {}
    for pid, proc in after.items():
        # by pid only: a Ray worker renames itself (python3 -> ray::…) but keeps its times
        earlier = before.get(pid)
        spent = proc.seconds - (earlier.seconds if earlier else 0.0)
        if spent < 0:  # the pid was reused
            spent = proc.seconds
        if spent <= 0:
            continue
        label = _label(pid, proc, server_sid, database)
        used[label] = used.get(label, 0.0) + spent
    total = sum(used.values())
    other = sum(v for k, v in used.items() if k.startswith("OTHER"))
    cores = os.cpu_count() or 1
    rows = [
        f"  {label:<42} {seconds:6.1f} cpu-s {100 * seconds / wall:6.1f}% of a core"
        for label, seconds in sorted(used.items(), key=lambda kv: -kv[1])
        if seconds / wall >= 0.005
    ]
    rows.append(
        f"  {'total':<42} {total:6.1f} cpu-s {100 * total / wall:6.1f}% of a core "
        f"({100 * total / wall / cores:.0f}% of {cores} cores)"
    )
    if server_sid is not None and other / wall > 0.05:
        rows.append(
            f"  WARNING: {100 * other / wall:.0f}% of a core went to processes outside this "
            "benchmark; the figures above are disturbed"
        )
    return "\n".join(rows)
