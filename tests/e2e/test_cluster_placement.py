"""Tallyray on a 3-node Ray cluster (every node on 127.0.0.1): the shards spread over the
nodes, an ingress replica on each node that serves HTTP, the shard line used between nodes
(with TLS), totals exact, and a node that dies: its shards come back on the others.

One cluster and one `tallyray serve` for the module (cluster_support.py); the nodes:

    node 0 (head)   shards
    node 1          shards, serves HTTP
    node 2          shards, serves HTTP
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import httpx
import pytest
from cluster_support import RayCluster, ray_cluster, serve_env
from line_certs import self_signed
from served import tallyray_serve_process

pytestmark = pytest.mark.e2e

ADMIN_KEY = "trk_admin_" + uuid.uuid4().hex
SHARDS = 3
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
def deployed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RayCluster, str, str]]:
    """The cluster, the server's base URL and a test-environment key."""
    workdir = tmp_path_factory.mktemp("cluster")
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


def shard_calls(base: str, tries: int = 12) -> list[dict[str, int]]:
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


def customers(deployed: tuple[RayCluster, str, str]) -> list[str]:
    _, base, key = deployed
    names = [f"c{n}" for n in range(CUSTOMERS)]
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


def test_a_worker_node_dies_and_its_shards_come_back_on_the_others(
    deployed: tuple[RayCluster, str, str],
) -> None:
    cluster, base, key = deployed
    names = [f"c{n}" for n in range(CUSTOMERS)]
    held = set(cluster.shard_nodes().values())
    index, dying = next(
        (n["index"], n["node_id"]) for n in cluster.nodes()[1:] if n["node_id"] in held
    )
    cluster.remove_node(index)
    deadline = time.monotonic() + 120
    while True:
        after = cluster.shard_nodes()
        if len(after) == SHARDS and dying not in after.values():
            break
        assert time.monotonic() < deadline, after
        time.sleep(0.5)
    for name in names:  # a second round, through the replica that is left
        assert ingest(base, key, name, 1) == {"ingested": EVENTS, "duplicates": 0}
    for name in names:
        found = usage(base, key, name)
        assert (found["requests"], found["input_tokens"]) == (2 * EVENTS, 2000 * EVENTS)
        assert check(base, key, name) == ("0.0025", "7.98")
