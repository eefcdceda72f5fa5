"""Where Tallyray's actors run on a Ray cluster: shards spread over the nodes, ingress replicas
on the nodes that serve HTTP (docs/deploy.md, "Placement").

Shards ask for no CPU (they wait on the database and the network far more than they compute)
and use Ray's ``SPREAD`` scheduling strategy, so that N shards on M nodes go round the nodes
instead of all onto the first one. ``SPREAD`` is a preference, not a pin: when a node dies,
Ray restarts its shards (``max_restarts=-1``) on the nodes that are left, which a placement
group's bundle (fixed to its node until Ray reschedules the group) would hold up. A custom
resource narrows the nodes (``TALLYRAY_SHARD_RESOURCE``, ``TALLYRAY_INGRESS_RESOURCE``): a
node offers it with ``ray start --resources='{"tallyray_shard": 1}'``, and each actor takes
:data:`RESOURCE_SHARE` of it, so one unit holds a thousand.
"""

from __future__ import annotations

from typing import Any

import ray

from tallyray.cluster.settings import Settings

__all__ = ["RESOURCE_SHARE", "ingress_options", "serving_nodes", "shard_options"]

RESOURCE_SHARE = 0.001
"""How much of a placement resource one shard or replica takes (a node declaring 1 holds
1,000)."""


def _resources(name: str | None) -> dict[str, float]:
    return {} if name is None else {name: RESOURCE_SHARE}


def shard_options(settings: Settings) -> dict[str, Any]:
    """Ray actor options that place the shards."""
    return {
        "num_cpus": 0,
        "scheduling_strategy": "SPREAD",
        "resources": _resources(settings.shard_resource),
    }


def serving_nodes(settings: Settings) -> list[str]:
    """The ids of the live nodes that may serve HTTP (all, without an ingress resource)."""
    wanted = settings.ingress_resource
    return [
        node["NodeID"]
        for node in ray.nodes()  # type: ignore[no-untyped-call]
        if node["Alive"] and (wanted is None or node["Resources"].get(wanted, 0) > 0)
    ]


def ingress_options(settings: Settings) -> dict[str, Any]:
    """Serve deployment options that place the ingress replicas: ``replicas_per_node`` on
    every node that may serve (counted now, at start), else ``replicas`` wherever Serve puts
    them (it spreads them too). Replicas on one node share the API port (``SO_REUSEPORT``)."""
    options: dict[str, Any] = {"num_replicas": settings.replicas}
    if settings.replicas_per_node:
        nodes = serving_nodes(settings)
        if not nodes:
            raise ValueError(
                f"no live Ray node offers the resource {settings.ingress_resource!r} "
                "(TALLYRAY_INGRESS_RESOURCE): no node could serve HTTP"
            )
        options["num_replicas"] = settings.replicas_per_node * len(nodes)
        options["max_replicas_per_node"] = settings.replicas_per_node
    if settings.ingress_resource:
        options["ray_actor_options"] = {"resources": _resources(settings.ingress_resource)}
    return options
