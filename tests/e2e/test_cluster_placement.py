"""Tallyray on a 3-node Ray cluster (every node on 127.0.0.1): the shards spread over the
nodes, an ingress replica on each node that serves HTTP, the shard line used between nodes
(with TLS), totals exact, the shard count changed 2 → 4 → 3 under a stream of events with
every balance exact and the new shards spread and reached over the line, and a node that
dies: its shards come back on the others.

One cluster and one `tallyray serve` for the module (cluster_support.py); the nodes:

    node 0 (head)   shards
    node 1          shards, serves HTTP
    node 2          shards, serves HTTP
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pyarrow.dataset as ds
import pytest
from cluster_support import RayCluster, ray_cluster, serve_env
from line_certs import self_signed
from served import tallyray_serve_process
from suite_clock import TEST_NOW

from tallyray.actors.routing import shard_of

pytestmark = pytest.mark.e2e

ADMIN_KEY = "trk_admin_" + uuid.uuid4().hex
SHARDS = 2
"""At the first start; the resharding test makes it 4, then 3."""
SHARD, INGRESS = "tallyray_shard", "tallyray_ingress"
NODES = [
    {"num_cpus": 1, "resources": {SHARD: 1}},
    {"num_cpus": 2, "resources": {SHARD: 1, INGRESS: 1}},
    {"num_cpus": 2, "resources": {SHARD: 1, INGRESS: 1}},
]
CUSTOMERS = 9
EVENTS = 4
"""Events per customer and per round: each 1,000 gpt-4o input tokens (0.0025 EUR)."""
ONE_MORE = {
    "type": "llm.completion",
    "properties": {"model": "gpt-4o", "input_tokens": 1000, "output_tokens": 0},
}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The cluster's and the server's files, the server's SQLite database among them."""
    return tmp_path_factory.mktemp("cluster")


@pytest.fixture(scope="module")
def deployed(workdir: Path) -> Iterator[tuple[RayCluster, str, str]]:
    """The cluster, the server's base URL and a test-environment key."""
    cert, key = self_signed(workdir)
    with ray_cluster(workdir, NODES) as cluster:
        env = {
            **serve_env(cluster),
            "TALLYRAY_SHARDS": str(SHARDS),
            "TALLYRAY_SHARD_RESOURCE": SHARD,
            "TALLYRAY_INGRESS_RESOURCE": INGRESS,
            "TALLYRAY_REPLICAS_PER_NODE": "1",
            "TALLYRAY_SHARD_LINE_TLS_CERT": str(cert),
            "TALLYRAY_SHARD_LINE_TLS_KEY": str(key),
        }
        with tallyray_serve_process(workdir, ADMIN_KEY, env) as (base, _):
            admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
            r = httpx.post(f"{base}/v1/admin/keys", json={"env": "test"}, headers=admin)
            assert r.status_code == 201, r.text
            yield cluster, base, r.json()["key"]


def fresh(base: str, key: str) -> httpx.Client:
    """A client on a new connection: the kernel hands it to either replica."""
    return httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=30)


def events(customer: str, round_: int) -> list[dict[str, Any]]:
    return [
        {
            "id": f"{customer}-{round_}-{n}",
            "customer_id": customer,
            "type": "llm.completion",
            "properties": {"model": "gpt-4o", "input_tokens": 1000, "output_tokens": 0},
        }
        for n in range(EVENTS)
    ]


def ingest(base: str, key: str, customer: str, round_: int) -> dict[str, Any]:
    """One round of a customer's events, retried while a shard restarts (503)."""
    for _ in range(600):
        with fresh(base, key) as http:
            r = http.post("/v1/events", json=events(customer, round_))
        if r.status_code == 200:
            return r.json()  # type: ignore[no-any-return]
        assert r.status_code == 503, r.text
        time.sleep(0.1)
    raise AssertionError("ingest never answered")


def usage(base: str, key: str, customer: str) -> dict[str, Decimal]:
    with fresh(base, key) as http:
        r = http.get(f"/v1/customers/{customer}/balance")
    assert r.status_code == 200, r.text
    return {meter: Decimal(u["quantity"]) for meter, u in r.json()["usage"].items()}


def check(base: str, key: str, customer: str) -> tuple[str, str]:
    """A quota check for one more event: (its cost, what is available), allowed."""
    with fresh(base, key) as http:
        r = http.post("/v1/quota/check", json={"customer_id": customer, "event": ONE_MORE})
    assert r.status_code == 200, r.text
    assert r.json()["allowed"], r.json()
    return r.json()["cost"], r.json()["available"]


def shard_calls(base: str, tries: int = 16) -> list[dict[str, int]]:
    """``tallyray_shard_calls_total`` by way, from several fresh connections (each answered by
    one replica: its own counts)."""
    found = []
    for _ in range(tries):
        with httpx.Client(base_url=base, timeout=30) as http:
            text = http.get("/metrics").text
        found.append(
            {
                m[1]: int(float(m[2]))
                for m in re.finditer(r'tallyray_shard_calls_total\{way="([^"]+)"\} (\S+)', text)
            }
        )
    return found


def remote_calls(base: str) -> int:
    """The hot calls over lines to shards on other nodes, summed over the replicas (each
    replica's counts once: the distinct answers of :func:`shard_calls`)."""
    seen = {tuple(sorted(c.items())) for c in shard_calls(base)}
    return sum(dict(c).get("line-remote", 0) for c in seen)


def spread_shards(cluster: RayCluster, count: int) -> dict[str, str]:
    """Each shard → its node, once ``count`` shards run (a reshard just started a new set)."""
    deadline = time.monotonic() + 120
    while True:
        found = cluster.shard_nodes()
        if sorted(found) == [f"shard-{i}" for i in range(count)]:
            return found
        assert time.monotonic() < deadline, found
        time.sleep(0.5)


def customers(deployed: tuple[RayCluster, str, str], prefix: str = "c") -> list[str]:
    _, base, key = deployed
    names = [f"{prefix}{n}" for n in range(CUSTOMERS)]
    with fresh(base, key) as http:
        for name in names:
            r = http.post("/v1/customers", json={"id": name, "currency": "EUR"})
            assert r.status_code in (200, 201), r.text
            r = http.post("/v1/subscriptions", json={"customer_id": name, "plan": "pro"})
            assert r.status_code in (200, 201), r.text
            r = http.post(f"/v1/customers/{name}/credits", json={"amount": "10.00"})
            assert r.status_code in (200, 201), r.text
    return names


def test_shards_spread_over_the_nodes_and_replicas_serve_where_asked(
    deployed: tuple[RayCluster, str, str],
) -> None:
    cluster, _, _ = deployed
    nodes = cluster.nodes()
    shards = cluster.shard_nodes()
    assert sorted(shards) == [f"shard-{i}" for i in range(SHARDS)]
    assert len(set(shards.values())) >= 2  # SPREAD: not all on one node
    assert set(shards.values()) <= {n["node_id"] for n in nodes}
    serving = sorted(n["node_id"] for n in nodes if INGRESS in n["resources"])
    assert cluster.replica_nodes() == serving  # one replica on each node that serves HTTP


def test_ingest_and_checks_go_over_the_line_between_nodes_exactly(
    deployed: tuple[RayCluster, str, str],
) -> None:
    cluster, base, key = deployed
    names = customers(deployed)
    shard_nodes = set(cluster.shard_nodes().values())
    assert any(s != r for r in cluster.replica_nodes() for s in shard_nodes)  # across nodes
    for name in names:
        assert ingest(base, key, name, 0) == {"ingested": EVENTS, "duplicates": 0}
        assert ingest(base, key, name, 0) == {"ingested": 0, "duplicates": EVENTS}  # again
    for name in names:
        found = usage(base, key, name)
        assert (found["requests"], found["input_tokens"]) == (EVENTS, 1000 * EVENTS)
        # 10.00 of credits, less 2.00 for the first 1,000 requests and 4 × 0.0025
        assert check(base, key, name) == ("0.0025", "7.99")
    calls = shard_calls(base)
    assert all(c.get("ray", 0) == 0 for c in calls), calls  # no hot call fell back to Ray
    assert max(c.get("line-remote", 0) for c in calls) > 0, calls  # lines crossed nodes


class Stream:
    """Producers posting rounds of :data:`EVENTS` events for the customers in turn, each
    round retried with the same ids until acknowledged (503 while the count changes)."""

    def __init__(self, base: str, key: str, names: list[str], producers: int = 2) -> None:
        self.base, self.key, self.names = base, key, names
        self.acknowledged: dict[str, int] = dict.fromkeys(names, 0)  # rounds a customer
        self.errors: list[BaseException] = []
        self.stored_before: list[tuple[str, int, list[str]]] = []
        """Rounds an attempt answered with a 503 had stored: (customer, round, the 503s)."""
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.threads = [
            threading.Thread(target=self.produce, args=(p, producers), daemon=True)
            for p in range(producers)
        ]
        for thread in self.threads:
            thread.start()

    def produce(self, producer: int, producers: int) -> None:
        n = producer
        while not self.stopping.is_set():
            name = self.names[n % len(self.names)]
            try:
                self.post(name, 100 + n)  # rounds 100+: ids of their own
            except BaseException as error:  # noqa: BLE001 — the test thread raises it
                self.errors.append(error)
                return
            with self.lock:
                self.acknowledged[name] += 1
            n += producers

    def post(self, name: str, round_: int) -> None:
        """One round, sent again after each 503 as a client does. The 200 may count some
        events as duplicates — an earlier attempt stored them, though its answer was a 503 —
        but only after a 503 that did not say nothing of the request was stored."""
        refused: list[str] = []
        for _ in range(600):
            with fresh(self.base, self.key) as http:
                r = http.post("/v1/events", json=events(name, round_))
            if r.status_code == 200:
                answer = r.json()
                assert answer["ingested"] + answer["duplicates"] == EVENTS, answer
                if answer["duplicates"]:
                    unsure = [m for m in refused if "nothing of this request was stored" not in m]
                    assert unsure, (name, round_, refused)
                if answer["duplicates"]:
                    with self.lock:
                        self.stored_before.append((name, round_, refused))
                return
            assert r.status_code == 503, r.text
            refused.append(f"{r.json()['error']['type']}: {r.json()['error']['message']}")
            time.sleep(0.1)
        raise AssertionError(f"ingest never answered: {refused}")

    def rounds(self) -> int:
        with self.lock:
            return sum(self.acknowledged.values())

    def until(self, rounds: int) -> None:
        """Wait until ``rounds`` more rounds are acknowledged."""
        target = self.rounds() + rounds
        deadline = time.monotonic() + 120
        while self.rounds() < target:
            if self.errors:
                raise self.errors[0]
            assert time.monotonic() < deadline, "the stream stalled"
            time.sleep(0.05)

    def stop(self) -> dict[str, int]:
        self.stopping.set()
        for thread in self.threads:
            thread.join(120)
        if self.errors:
            raise self.errors[0]
        return self.acknowledged


def test_resharding_2_4_3_under_a_stream_spreads_the_new_shards_and_keeps_balances_exact(
    deployed: tuple[RayCluster, str, str],
) -> None:
    cluster, base, key = deployed
    assert len(cluster.shard_nodes()) == SHARDS
    names = customers(deployed, prefix="r")
    # every shard of the final count has customers of this test, so that each is asked
    assert {shard_of("test", n, 3) for n in names} == {0, 1, 2}
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    stream = Stream(base, key, names)
    placed = {}
    placed_count = SHARDS
    try:
        for count in (4, 3):
            stream.until(3)  # the stream runs before and during each change
            r = httpx.post(
                f"{base}/v1/admin/reshard", json={"shards": count}, headers=admin, timeout=600
            )
            assert r.status_code == 200, r.text
            moved = r.json()
            assert (moved["from"], moved["to"]) == (placed_count, count), moved
            assert moved["accounts"] >= CUSTOMERS, moved  # this test's and the others'
            placed_count = count
            placed[count] = spread_shards(cluster, count)
        stream.until(3)  # and after it, on the new shards
    finally:
        acknowledged = stream.stop()
    print(f"\nrounds stored by an attempt answered 503: {stream.stored_before}")
    for count, nodes in placed.items():
        assert len(set(nodes.values())) >= 2, (count, nodes)  # SPREAD, again
    # nothing lost, nothing counted twice: each customer's usage is what was acknowledged
    before = remote_calls(base)
    for name in names:
        n = EVENTS * acknowledged[name]
        found = usage(base, key, name)
        assert (found["requests"], found["input_tokens"]) == (n, 1000 * n), name
        # 10.00 of credits, less 2.00 for the first 1,000 requests and n × 0.0025
        for _ in range(2):  # through either replica
            cost, available = check(base, key, name)
            assert (cost, Decimal(available)) == ("0.0025", Decimal("8.00") - n * Decimal("0.0025"))
    # the checks to the new shards went over lines between nodes
    assert remote_calls(base) > before


def test_the_log_written_across_the_reshard_exports_each_event_once(
    deployed: tuple[RayCluster, str, str], workdir: Path, tmp_path: Path
) -> None:
    """``tallyray events export`` on the cluster's database, after shards of 2, 4 and 3 wrote
    to it: each customer's events are in the Parquet files once, as many as its balance
    counts, readable as a hive-partitioned dataset."""
    _, base, key = deployed
    out = tmp_path / "export"
    command = [sys.executable, "-m", "tallyray.cli", "events", "export", "--from", TEST_NOW[:10]]
    command += ["--to", "2100-01-01", "--out", str(out)]
    command += ["--database-url", f"sqlite:///{workdir}/tallyray.db"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = ds.dataset(out, format="parquet", partitioning="hive").to_table().to_pylist()
    assert json.loads(done.stdout)["rows"] == len(rows)
    ids = [(r["customer_id"], r["event_id"]) for r in rows if r["env"] == "test"]
    assert len(ids) == len(set(ids))  # none twice
    names = [f"{p}{n}" for p in ("c", "r") for n in range(CUSTOMERS)]
    exported = {name: sum(1 for c, _ in ids if c == name) for name in names}
    assert exported == {name: int(usage(base, key, name)["requests"]) for name in names}
    assert exported["r0"] > 0


def test_a_worker_node_dies_and_its_shards_come_back_on_the_others(
    deployed: tuple[RayCluster, str, str],
) -> None:
    cluster, base, key = deployed
    names = [f"c{n}" for n in range(CUSTOMERS)]
    count = len(cluster.shard_nodes())
    held = set(cluster.shard_nodes().values())
    index, dying = next(
        (n["index"], n["node_id"]) for n in cluster.nodes()[1:] if n["node_id"] in held
    )
    cluster.remove_node(index)
    deadline = time.monotonic() + 120
    while True:
        after = cluster.shard_nodes()
        if len(after) == count and dying not in after.values():
            break
        assert time.monotonic() < deadline, after
        time.sleep(0.5)
    for name in names:  # a second round, through the replica that is left
        assert ingest(base, key, name, 1) == {"ingested": EVENTS, "duplicates": 0}
    for name in names:
        found = usage(base, key, name)
        assert (found["requests"], found["input_tokens"]) == (2 * EVENTS, 2000 * EVENTS)
        assert check(base, key, name) == ("0.0025", "7.98")
