"""Run by test_node_failure.py in a process of its own (its Ray cluster must not be the test
session's): a 3-node ``ray.cluster_utils.Cluster`` on 127.0.0.1, Tallyray deployed on it
with its shards on a worker node, producers streaming events over HTTP, and that worker
node killed in the middle of the stream. Prints one JSON line: what every customer's
balance shows against what was acknowledged, where the shards are afterwards, and how long
the shards took to serve again. ``bench/bench_node_failure.py`` runs it for figures.

``python node_failure_child.py <database URL> [events per producer]
[<Redis host:port> <key namespace> <seconds down>]``

With a Redis, the cluster's GCS keeps its tables there (under the key namespace given,
removed at the end), and once the node's loss is measured, the head's GCS is killed and
restarted under a second stream (head_restart_child.py's phase, for test_head_restart.py):
one cluster start for both tests. Its outcome is the JSON's ``head_restart``.

Producers behave as the API asks of them: a batch answered with anything but ``200`` (a
``503`` while a shard restarts, a refused connection while the killed node's replica's
listener is gone) is sent again with the same event ids until it is acknowledged.

Where the shards run: on the two worker nodes, which offer the custom resource
``TALLYRAY_SHARD_RESOURCE`` names (docs/deploy.md, "Placement"). The node killed is the
worker holding the most shards: a worker, not the head, whose loss is the GCS's
(docs/deploy.md, "Node failures").
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # every node on loopback

import httpx  # noqa: E402
import ray  # noqa: E402
from ray import serve  # noqa: E402
from ray.cluster_utils import Cluster  # noqa: E402

from tallyray.access import ADMIN, generate_key  # noqa: E402
from tallyray.actors.routing import shard_of  # noqa: E402
from tallyray.cluster import Settings  # noqa: E402
from tallyray.cluster.wiring import (  # noqa: E402
    prepare_store,
    settle_shards,
    share_secrets,
    start_ingress,
    start_ray,
    start_shards,
    start_webhook_deliverer,
)
from tallyray.serve.shards import NAMESPACE, shard_name  # noqa: E402
from tallyray.storage.keys import KeyStore  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))
from free_ports import free_port  # noqa: E402
from suite_clock import TEST_NOW  # noqa: E402

SHARDS = 4
PRODUCERS = 4
BATCH = 20
CUSTOMERS = 12
CPUS_PER_NODE = 2
SHARD_RESOURCE = "tallyray_shard"


def node_of(handle: Any, seconds: float = 60) -> str:
    """The node the actor runs on; a shard still restarting after its node died is waited for
    (Ray answers ``ActorUnavailableError`` meanwhile)."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            return str(
                ray.get(
                    handle.__ray_call__.remote(
                        lambda _self: ray.get_runtime_context().get_node_id()
                    ),
                    timeout=30,
                )
            )
        except ray.exceptions.ActorUnavailableError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def process_times(_self: Any) -> dict[str, float]:
    """Run in an actor: when its process started (epoch seconds) and the CPU it has used."""
    ticks = os.sysconf("SC_CLK_TCK")
    with open("/proc/self/stat") as f:
        started_ticks = int(f.read().rsplit(")", 1)[1].split()[19])
    with open("/proc/uptime") as f:
        uptime = float(f.read().split()[0])
    times = os.times()
    return {
        "started_at": time.time() - (uptime - started_ticks / ticks),
        "cpu_s": times.user + times.system,
    }


def until_ok(
    client: httpx.Client, method: str, path: str, body: Any = None, deadline_s: float = 120
) -> httpx.Response:
    deadline = time.monotonic() + deadline_s
    while True:
        try:
            r = client.request(method, path, json=body)
            if r.status_code < 300:
                return r
            if r.status_code not in (502, 503, 504):
                raise AssertionError(f"{method} {path}: {r.status_code} {r.text}")
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"{method} {path}: no answer in {deadline_s} s")
        time.sleep(0.1)


class Stream:
    """Producers posting batches, each retried with the same ids until acknowledged."""

    def __init__(
        self, base: str, key: str, customers: list[str], per_producer: int, prefix: str = ""
    ) -> None:
        self.base, self.key, self.customers = base, key, customers
        self.prefix = prefix
        """Of the event ids: another stream to the same customers has ids of its own."""
        self.per_producer = per_producer
        self.sent: dict[str, list[int]] = {c: [] for c in customers}  # input tokens a customer
        self.acknowledged = 0
        self.retries = 0
        self.failures: list[float] = []  # monotonic times of unacknowledged attempts
        self.lock = threading.Lock()
        self.threads = [
            threading.Thread(target=self.produce, args=(p,), daemon=True) for p in range(PRODUCERS)
        ]

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def join(self) -> None:
        for thread in self.threads:
            thread.join()

    def produce(self, producer: int) -> None:
        client = httpx.Client(
            base_url=self.base, headers={"Authorization": f"Bearer {self.key}"}, timeout=10
        )
        for start in range(0, self.per_producer, BATCH):
            batch = []
            for n in range(start, min(start + BATCH, self.per_producer)):
                customer = self.customers[(producer + n) % len(self.customers)]
                tokens = 100 + (producer * 7 + n) % 50
                batch.append(
                    {
                        "id": f"evt_{self.prefix}{producer}_{n}",
                        "customer_id": customer,
                        "type": "llm.completion",
                        "properties": {"model": "m", "input_tokens": tokens, "output_tokens": 1},
                    }
                )
            while True:
                try:
                    r = client.post("/v1/events", json=batch)
                    if r.status_code == 200:
                        break
                    assert r.status_code in (502, 503, 504), r.text
                except httpx.TransportError:
                    pass
                with self.lock:
                    self.retries += 1
                    self.failures.append(time.monotonic())
                time.sleep(0.1)
            with self.lock:
                self.acknowledged += len(batch)
                for event in batch:
                    self.sent[event["customer_id"]].append(event["properties"]["input_tokens"])
        client.close()


class Prober:
    """Every 0.1 s, one balance read per shard: the last time any shard did not answer."""

    def __init__(self, base: str, key: str, probes: dict[int, str]) -> None:
        self.client = httpx.Client(
            base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=2
        )
        self.probes = probes
        self.last_failure: dict[int, float] = {}
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        while not self.stopping.is_set():
            for index, customer in self.probes.items():
                try:
                    ok = self.client.get(f"/v1/customers/{customer}/balance").status_code == 200
                except httpx.TransportError:
                    ok = False
                if not ok:
                    self.last_failure[index] = time.monotonic()
            self.stopping.wait(0.1)


@dataclass
class Deployed:
    cluster: Cluster
    workers: list[Any]
    base: str
    key: str
    client: httpx.Client
    customers: list[str]
    probes: dict[int, str]  # shard index -> a customer of it, outside the stream
    shard_nodes: list[str]  # the node id of each shard

    def label(self, node_id: str) -> str:
        names = {self.cluster.head_node.node_id: "head"}
        names.update({w.node_id: f"worker{i}" for i, w in enumerate(self.workers)})
        return names.get(node_id, node_id)

    def stop(self) -> None:
        try:
            serve.shutdown()
        finally:
            ray.shutdown()
            self.cluster.shutdown()


def deploy(database_url: str) -> Deployed:
    """The cluster, Tallyray on it, a test key, customers with credits, one probe a shard."""
    cluster = Cluster(
        initialize_head=True,
        head_node_args={
            "num_cpus": CPUS_PER_NODE,
            "gcs_server_port": free_port(),  # never 6379: Redis is there
            "include_dashboard": False,
            "node_ip_address": "127.0.0.1",
        },
    )
    try:
        workers = [
            cluster.add_node(
                num_cpus=CPUS_PER_NODE, node_ip_address="127.0.0.1", resources={SHARD_RESOURCE: 1}
            )
            for _ in range(2)
        ]
        cluster.wait_for_nodes()
        port = free_port()
        settings = Settings.load(
            database_url=database_url,
            admin_key=generate_key(ADMIN),
            shards=SHARDS,
            replicas=2,
            host="127.0.0.1",
            port=port,
            ray_address=cluster.address,
            config_path=str(ROOT / "examples/llm-api/tallyray.json"),
            checkpoint_seconds=2.0,
            clock_start=TEST_NOW,
            shard_resource=SHARD_RESOURCE,
        )
        catalog = prepare_store(settings)
        settings = settle_shards(settings, catalog.engine)  # as tallyray serve: the count stored
        settings = share_secrets(settings)
        start_ray(settings)
    except BaseException:
        cluster.shutdown()
        raise
    start_shards(settings)
    start_webhook_deliverer(settings)
    start_ingress(settings)
    base = f"http://127.0.0.1:{port}"
    until_ok(httpx.Client(base_url=base, timeout=10), "GET", "/healthz")
    _, key = KeyStore(catalog.engine).create("test", settings.clock(), "node-failure")
    client = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=10)
    customers = [f"cust_{uuid.uuid4().hex[:8]}" for _ in range(CUSTOMERS)]
    for customer in customers:
        until_ok(client, "POST", "/v1/customers", {"id": customer, "currency": "USD"})
        until_ok(client, "POST", "/v1/subscriptions", {"customer_id": customer, "plan": "starter"})
        until_ok(client, "POST", f"/v1/customers/{customer}/credits", {"amount": "100.00"})
    probes: dict[int, str] = {}
    i = 0
    while len(probes) < SHARDS:
        probe = f"probe_{i}"
        probes.setdefault(shard_of("test", probe, SHARDS), probe)
        i += 1
    for probe in probes.values():
        until_ok(client, "POST", "/v1/customers", {"id": probe, "currency": "USD"})
    handles = [ray.get_actor(shard_name(i), namespace=NAMESPACE) for i in range(SHARDS)]
    shard_nodes = [node_of(h) for h in handles]
    return Deployed(cluster, workers, base, key, client, customers, probes, shard_nodes)


def compare_totals(client: httpx.Client, *streams: Stream) -> tuple[bool, dict[str, Any]]:
    """Each customer's balance against the events the streams had acknowledged for it:
    requests counted and input tokens summed, each event once."""
    mismatches = {}
    sent: dict[str, list[int]] = {}
    for stream in streams:
        for customer, tokens in stream.sent.items():
            sent.setdefault(customer, []).extend(tokens)
    for customer, tokens in sent.items():
        usage = until_ok(client, "GET", f"/v1/customers/{customer}/balance").json()["usage"]
        found = {
            "requests": usage.get("requests", {}).get("quantity", "0"),
            "input_tokens": usage.get("input_tokens", {}).get("quantity", "0"),
        }
        expected = {"requests": str(len(tokens)), "input_tokens": str(sum(tokens))}
        if found != expected:
            mismatches[customer] = {"found": found, "expected": expected}
    return not mismatches, mismatches


def main(
    database_url: str, per_producer: int, gcs: tuple[str, str, float] | None = None
) -> dict[str, Any]:
    """The node's loss; with ``gcs`` (Redis host:port, key namespace, seconds down), then the
    head's GCS restart too."""
    if gcs is None:
        return node_failure(database_url, per_producer, None)
    import head_restart_child

    redis, ns, _ = gcs
    head_restart_child.use_redis(redis, ns)
    try:
        return node_failure(database_url, per_producer, gcs)
    finally:
        head_restart_child.remove_tables(redis, ns)


def node_failure(
    database_url: str, per_producer: int, gcs: tuple[str, str, float] | None
) -> dict[str, Any]:
    deployed = deploy(database_url)
    try:
        handles = [ray.get_actor(shard_name(i), namespace=NAMESPACE) for i in range(SHARDS)]
        before = deployed.shard_nodes
        victim = max(deployed.workers, key=lambda w: before.count(w.node_id))
        on_victim = sorted(i for i, node in enumerate(before) if node == victim.node_id)

        stream = Stream(deployed.base, deployed.key, deployed.customers, per_producer)
        prober = Prober(deployed.base, deployed.key, deployed.probes)
        stream.start()
        prober.thread.start()
        while stream.acknowledged < PRODUCERS * per_producer // 3:  # mid-stream
            time.sleep(0.05)
        acknowledged_at_kill = stream.acknowledged
        killed_at = time.monotonic()
        print(f"killing {victim.node_id} at {time.time():.3f}", file=sys.stderr, flush=True)
        deployed.cluster.remove_node(victim, allow_graceful=False)  # SIGKILL: a machine lost
        declared_dead = None
        while declared_dead is None and time.monotonic() - killed_at < 120:
            if not any(n["Alive"] for n in ray.nodes() if n["NodeID"] == victim.node_id):
                declared_dead = round(time.monotonic() - killed_at, 2)
            time.sleep(0.2)
        stream.join()
        # until every shard has answered for a whole second
        while time.monotonic() - killed_at < 180:
            last = max(prober.last_failure.values(), default=killed_at)
            if time.monotonic() - max(last, killed_at) > 1.0:
                break
            time.sleep(0.1)
        prober.stopping.set()
        prober.thread.join()
        recovered = {i: round(t - killed_at, 2) for i, t in prober.last_failure.items()}
        after = [node_of(h) for h in handles]
        killed_wall = time.time() - (time.monotonic() - killed_at)
        restarted = {}
        for i in on_victim:  # the new processes: when they started, what their start cost
            t = ray.get(handles[i].__ray_call__.remote(process_times), timeout=30)
            restarted[i] = {
                "process_started_s": round(t["started_at"] - killed_wall, 2),
                "cpu_s": round(t["cpu_s"], 2),
            }
        answering = [
            deployed.client.get(f"/v1/customers/{probe}/balance").status_code == 200
            for probe in deployed.probes.values()
        ]
        totals_match, mismatches = compare_totals(deployed.client, stream)
        label = deployed.label
        head_restart = None
        if gcs is not None:
            import head_restart_child

            harness = sys.modules[__name__]
            head_restart = head_restart_child.gcs_restart(
                harness, deployed, gcs[2], per_producer // 3, earlier=(stream,)
            )
        return {
            "head_restart": head_restart,
            "nodes": 3,
            "shards": SHARDS,
            "shards_by_node_before": {label(n): before.count(n) for n in sorted(set(before))},
            "shards_by_node_after": {label(n): after.count(n) for n in sorted(set(after))},
            "killed": label(victim.node_id),
            "shards_on_killed_node": on_victim,
            "events": PRODUCERS * per_producer,
            "acknowledged": stream.acknowledged,
            "acknowledged_at_kill": acknowledged_at_kill,
            "totals_match": totals_match,
            "mismatches": mismatches,
            "retried_batches": stream.retries,
            "every_shard_answers": all(answering),
            "killed_node_still_used": victim.node_id in after,
            # seconds from the kill to each probe's last failed answer (absent: never failed)
            "shard_last_failure_s": recovered,
            "node_declared_dead_s": declared_dead,  # when the GCS marked the node dead
            # each restarted shard: its process's start after the kill, and its CPU time
            # since (imports, recovery, and serving the rest of the stream)
            "restarted_shards": restarted,
            "recovery_s": max(recovered.values(), default=0.0),
            "stream_last_failure_s": (
                round(max(stream.failures) - killed_at, 2) if stream.failures else None
            ),
            "database": database_url.split(":", 1)[0],
        }
    finally:
        deployed.stop()


if __name__ == "__main__":
    per = int(sys.argv[2]) if len(sys.argv) > 2 else 500
    gcs = (sys.argv[3], sys.argv[4], float(sys.argv[5])) if len(sys.argv) > 5 else None
    print(json.dumps(main(sys.argv[1], per, gcs)), flush=True)
