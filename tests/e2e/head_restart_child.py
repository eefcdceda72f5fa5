"""Run by test_head_restart.py (and bench/bench_head_restart.py) in a process of its own: the
head's GCS killed and restarted under a stream of events, with GCS fault tolerance on an
external Redis (issue 13, item 4; docs/deploy.md, "Node failures").

    python head_restart_child.py <database URL> <events per producer> <seconds down>
        <Redis host:port> <key namespace>

A 3-node ``ray.cluster_utils.Cluster`` on 127.0.0.1 whose GCS keeps its tables in Redis
(``RAY_REDIS_ADDRESS``) under the key namespace given (``RAY_external_storage_namespace``,
removed from Redis at the end: nothing else in that Redis is touched); Tallyray on it as in
node_failure_child.py, its shards on the two worker nodes. When a third of the stream is
acknowledged, the GCS process of the head is killed (SIGKILL), left down for the seconds
given, and started again on the same port; the raylets, the workers, the shards, the replicas
and the driver stay. Prints one JSON line: what answered while the GCS was down, what works
after, and whether every acknowledged event is counted once.

The suite runs the same phase (:func:`gcs_restart`) in node_failure_child.py's cluster, after
its worker node is lost: one cluster for both tests.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any


class Echo:
    """An actor created after the restart: creating actors works again."""

    def ping(self) -> str:
        return "pong"


def use_redis(redis: str, ns: str) -> None:
    """The GCS of every cluster this process starts from now on keeps its tables in Redis at
    ``redis`` (host:port), under the key namespace ``ns``."""
    os.environ["RAY_REDIS_ADDRESS"] = redis
    os.environ["RAY_external_storage_namespace"] = ns  # noqa: SIM112 — Ray's name


def remove_tables(redis: str, ns: str) -> None:
    """The GCS's keys of namespace ``ns`` removed from Redis; nothing else there is touched."""
    from ray._private.gcs_utils import cleanup_redis_storage

    host, _, port = redis.rpartition(":")
    cleanup_redis_storage(host, int(port), "", False, ns)


def main(database_url: str, per_producer: int, down: float, redis: str, ns: str) -> dict[str, Any]:
    use_redis(redis, ns)  # read by the GCS (and every Ray process) this process starts
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import node_failure_child as harness  # sets RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0

    try:
        deployed = harness.deploy(database_url)
        try:
            return gcs_restart(harness, deployed, down, per_producer)
        finally:
            deployed.stop()
    finally:
        remove_tables(redis, ns)


def gcs_restart(
    harness: Any, deployed: Any, down: float, per_producer: int, earlier: tuple[Any, ...] = ()
) -> dict[str, Any]:
    """On ``deployed`` (node_failure_child.py's deployment, its GCS on Redis), a stream of
    events of ids of its own, the GCS killed a third of the way through and restarted after
    ``down`` seconds; what answered meanwhile and what works after. ``earlier`` are streams
    the same customers had before (node_failure_child.py's): the totals count them too."""
    import ray

    cluster, client, key, base = deployed.cluster, deployed.client, deployed.key, deployed.base
    before_nodes = [
        harness.node_of(ray.get_actor(harness.shard_name(i), namespace=harness.NAMESPACE))
        for i in range(harness.SHARDS)
    ]
    stream = harness.Stream(base, key, deployed.customers, per_producer, prefix="gcs")
    prober = harness.Prober(base, key, deployed.probes)
    stream.start()
    prober.thread.start()
    while stream.acknowledged < harness.PRODUCERS * per_producer // 3:
        time.sleep(0.05)
    at_kill = stream.acknowledged
    killed_at = time.monotonic()
    cluster.head_node.kill_gcs_server()
    health_while_down = []
    while time.monotonic() - killed_at < down:
        try:
            health_while_down.append(client.get("/healthz").status_code)
        except Exception:  # noqa: BLE001 — a refused connection is an answer here
            health_while_down.append(0)
        time.sleep(0.5)
    acknowledged_while_down = stream.acknowledged - at_kill
    failures_before_restart = len([t for t in stream.failures if t >= killed_at])
    cluster.head_node.start_gcs_server()
    restarted_at = time.monotonic()
    stream.join()
    time.sleep(2)
    prober.stopping.set()
    prober.thread.join()

    # after the restart: the named shards are found again, a new actor can be created
    found = [
        ray.get_actor(harness.shard_name(i), namespace=harness.NAMESPACE)
        for i in range(harness.SHARDS)
    ]
    after_nodes = [harness.node_of(h) for h in found]
    probe_actor = ray.remote(num_cpus=0)(Echo).remote()
    created = ray.get(probe_actor.ping.remote(), timeout=60) == "pong"
    totals_match, mismatches = harness.compare_totals(client, *earlier, stream)
    return {
        "gcs_down_s": down,
        "acknowledged_before_kill": at_kill,
        "acknowledged_while_gcs_down": acknowledged_while_down,
        "unacknowledged_attempts_while_down": failures_before_restart,
        "healthz_while_down": sorted(set(health_while_down)),
        "events": harness.PRODUCERS * per_producer,
        "acknowledged": stream.acknowledged,
        "totals_match": totals_match,
        "mismatches": mismatches,
        "stream_last_failure_after_restart_s": (
            round(max(stream.failures) - restarted_at, 2) if stream.failures else None
        ),
        "shard_last_failure_s": {
            i: round(t - killed_at, 2) for i, t in prober.last_failure.items()
        },
        "named_shards_found_after_restart": len(found),
        "shard_nodes_unchanged": after_nodes == before_nodes,
        "new_actor_after_restart": created,
    }


if __name__ == "__main__":
    url, per, down, redis, ns = sys.argv[1:6]
    print(json.dumps(main(url, int(per), float(down), redis, ns)), flush=True)
