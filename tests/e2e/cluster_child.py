"""Run by :mod:`cluster_support` in a process of its own: a multi-node Ray cluster
(``ray.cluster_utils.Cluster``), every node on 127.0.0.1, driven over stdin/stdout.

``python cluster_child.py <nodes JSON>``, where each node is ``{"num_cpus": n,
"resources": {...}}`` (the first is the head). Prints ``READY <GCS address>`` once every node
is up, then answers one JSON command a line with one line ``ANSWER <JSON>``:

- ``{"op": "nodes"}``: ``[{"index", "node_id", "alive", "resources"}]``, in the order added;
- ``{"op": "actors"}``: the live actors: ``[{"name", "class", "node_id", "state"}]``;
- ``{"op": "remove", "index": i}``: kill worker node ``i`` (not the head) at once;
- ``{"op": "add", "node": {...}}``: add a node, answers its index;
- ``{"op": "stop"}`` (or end of input): shut the cluster down and exit.

The cluster's own GCS port is one Ray picks (never Redis's 6379).
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # before Ray reads it: stay on loopback

from ray._private import ray_constants  # noqa: E402
from ray.cluster_utils import Cluster  # noqa: E402

ray_constants.ENABLE_RAY_CLUSTER = False


def _node_args(spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "node_ip_address": "127.0.0.1",
        "num_cpus": spec.get("num_cpus", 1),
        "resources": spec.get("resources", {}),
        "object_store_memory": 80 * 1024 * 1024,
        "include_dashboard": False,
    }


def main(specs: list[dict[str, Any]]) -> None:
    head, *workers = specs
    cluster = Cluster(initialize_head=True, head_node_args=_node_args(head))
    nodes = [cluster.head_node]
    for spec in workers:
        nodes.append(cluster.add_node(**_node_args(spec)))
    cluster.wait_for_nodes()
    print("READY", cluster.address, flush=True)
    state = cluster.global_state
    try:
        for line in sys.stdin:
            command = json.loads(line)
            op = command["op"]
            answer: Any = None
            if op == "stop":
                break
            if op == "nodes":
                alive = {n["NodeID"]: n for n in state.node_table()}
                answer = [
                    {
                        "index": i,
                        "node_id": node.node_id,
                        "alive": bool(alive.get(node.node_id, {}).get("Alive")),
                        "resources": alive.get(node.node_id, {}).get("Resources", {}),
                    }
                    for i, node in enumerate(nodes)
                ]
            elif op == "actors":
                answer = [
                    {
                        "name": actor["Name"],
                        "class": actor["ActorClassName"],
                        "node_id": actor["Address"]["NodeID"],
                        "state": actor["State"],
                    }
                    for actor in state.actor_table(None).values()
                    if actor["State"] != "DEAD"
                ]
            elif op == "remove":
                index = command["index"]
                if index == 0:
                    raise ValueError("the head node is not removed this way")
                cluster.remove_node(nodes[index], allow_graceful=False)
                answer = index
            elif op == "add":
                nodes.append(cluster.add_node(**_node_args(command["node"])))
                answer = len(nodes) - 1
            else:
                raise ValueError(f"unknown command {op!r}")
            print("ANSWER", json.dumps(answer), flush=True)
    finally:
        cluster.shutdown()


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
