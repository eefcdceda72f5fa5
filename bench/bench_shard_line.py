"""The shard line between nodes against the Ray call it replaces: latency and CPU per call.

    .venv/bin/python bench/bench_shard_line.py [--calls 3000] [--in-flight 32] [--checks 1]

Starts a 2-node Ray cluster on 127.0.0.1 (``ray.cluster_utils.Cluster``, its files in a
temporary ``RAY_TMPDIR``) and one actor on each node that answers ``check_many`` the way a
shard's line does (:class:`~tallyray.actors.shard_line.ShardLineServer`, the same function
behind the Ray method), with real :class:`~tallyray.actors.account.QuotaAnswer` replies, so
only the transport differs. From the driver on the head node it times each way:

- ``ray``: ``await actor.check_many.remote(...)`` to the actor on the other node;
- ``line-remote``: the same call over the actor's TCP line (the other node);
- ``line-remote-tls``: the same over TLS (a self-signed certificate made here);
- ``line-local``: over the Unix socket of the actor on the driver's node, for reference.

Latency is one call at a time (p50/p99). CPU per call is the caller's and the callee's
process CPU time (user + system, ``resource.getrusage``, all threads) over ``--calls`` calls
with ``--in-flight`` in flight, divided by the calls: it suffers less than wall time from
other load on a shared machine. The answer itself costs the same on every way.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import os
import resource
import statistics
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
os.environ.setdefault("RAY_TMPDIR", tempfile.mkdtemp(prefix="trb-", dir="/tmp"))

import ray  # noqa: E402
from ray._private import ray_constants  # noqa: E402
from ray.cluster_utils import Cluster  # noqa: E402

from tallyray.actors.account import QuotaAnswer  # noqa: E402
from tallyray.actors.shard_line import LineTLS, ShardLine, ShardLineServer  # noqa: E402

ray_constants.ENABLE_RAY_CLUSTER = False


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def check_many(checks: list[Any]) -> list[QuotaAnswer]:
    return [QuotaAnswer(True, Decimal("0.0025"), Decimal("7.99"), None, "EUR") for _ in checks]


@ray.remote(num_cpus=0)
class LineActor:
    def __init__(self, tls: LineTLS | None) -> None:
        self.tls = tls
        self.servers: dict[bool, ShardLineServer] = {}

    async def line_endpoint(self, with_tls: bool) -> Any:
        if with_tls not in self.servers:
            from ray.util import get_node_ip_address

            node = ray.get_runtime_context().get_node_id()
            self.servers[with_tls] = ShardLineServer(
                node,
                {"check_many": check_many},
                host=get_node_ip_address(),
                tls=self.tls if with_tls else None,
            )
        return await self.servers[with_tls].endpoint()

    async def check_many(self, checks: list[Any]) -> list[QuotaAnswer]:
        return check_many(checks)

    def node(self) -> str:
        return str(ray.get_runtime_context().get_node_id())

    def cpu(self) -> float:
        return cpu_seconds()


def self_signed(workdir: Path) -> LineTLS:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bench")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    (workdir / "c.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (workdir / "c.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return LineTLS(str(workdir / "c.crt"), str(workdir / "c.key"))


async def measure(
    name: str, call: Any, actor: Any, calls: int, in_flight: int, payload: list[Any]
) -> dict[str, Any]:
    for _ in range(200):  # warm up
        await call(payload)
    latencies = []
    for _ in range(min(calls, 1000)):
        started = time.perf_counter()
        await call(payload)
        latencies.append(time.perf_counter() - started)
    latencies.sort()
    callee_before = await actor.cpu.remote()
    caller_before = cpu_seconds()
    started = time.perf_counter()
    left = calls

    async def worker() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            await call(payload)

    await asyncio.gather(*(worker() for _ in range(in_flight)))
    wall = time.perf_counter() - started
    caller = cpu_seconds() - caller_before
    callee = await actor.cpu.remote() - callee_before
    return {
        "way": name,
        "p50_us": statistics.median(latencies) * 1e6,
        "p99_us": latencies[int(len(latencies) * 0.99)] * 1e6,
        "caller_cpu_us": caller / calls * 1e6,
        "callee_cpu_us": callee / calls * 1e6,
        "calls_per_s": calls / wall,
    }


async def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    workdir = Path(tempfile.mkdtemp(prefix="trb-certs-"))
    tls = self_signed(workdir)
    local = LineActor.options(resources={"bench_head": 0.001}).remote(tls)
    remote = LineActor.options(resources={"bench_other": 0.001}).remote(tls)
    here = str(ray.get_runtime_context().get_node_id())
    assert await local.node.remote() == here
    assert await remote.node.remote() != here, "the remote actor is on the driver's node"
    event = ("c1", "evt-1", "llm.completion", 0, {"model": "gpt-4o", "input_tokens": 1000})
    payload = [("test", f"c{i}", [event]) for i in range(args.checks)]
    lines = {
        "line-remote": await ShardLine.open(await remote.line_endpoint.remote(False), local=False),
        "line-remote-tls": await ShardLine.open(
            await remote.line_endpoint.remote(True), local=False, tls=tls
        ),
        "line-local": await ShardLine.open(await local.line_endpoint.remote(False), local=True),
    }
    results = [
        await measure(
            "ray",
            lambda p: remote.check_many.remote(p),
            remote,
            args.calls,
            args.in_flight,
            payload,
        )
    ]
    for name, line in lines.items():
        actor = local if name == "line-local" else remote
        results.append(
            await measure(
                name,
                lambda p, line=line: line.call("check_many", p),
                actor,
                args.calls,
                args.in_flight,
                payload,
            )
        )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--in-flight", type=int, default=32)
    parser.add_argument("--checks", type=int, default=1, help="checks per call")
    args = parser.parse_args()
    node = {"node_ip_address": "127.0.0.1", "include_dashboard": False, "num_cpus": 1}
    cluster = Cluster(initialize_head=True, head_node_args={**node, "resources": {"bench_head": 1}})
    cluster.add_node(**node, resources={"bench_other": 1})
    cluster.wait_for_nodes()
    cluster.connect()
    try:
        results = asyncio.run(run(args))
    finally:
        ray.shutdown()
        cluster.shutdown()
    print(f"{args.calls} calls, {args.in_flight} in flight, {args.checks} check(s) a call")
    print(
        f"{'way':<16} {'p50 µs':>8} {'p99 µs':>8} {'caller CPU µs':>14} {'callee CPU µs':>14}"
        f" {'calls/s':>9}"
    )
    for r in results:
        print(
            f"{r['way']:<16} {r['p50_us']:>8.0f} {r['p99_us']:>8.0f} {r['caller_cpu_us']:>14.1f}"
            f" {r['callee_cpu_us']:>14.1f} {r['calls_per_s']:>9.0f}"
        )
    sys.stdout.flush()


if __name__ == "__main__":
    main()
