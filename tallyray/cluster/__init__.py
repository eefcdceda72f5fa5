"""Composition: the one place that starts Ray, creates the shard actors and deploys the Serve
app. Nothing else in Tallyray calls ``ray.init`` or ``serve.run``."""

from tallyray.cluster.settings import Settings
from tallyray.cluster.wiring import (
    prepare_store,
    share_secrets,
    start_ingress,
    start_ray,
    start_shards,
    stop,
)

__all__ = [
    "Settings",
    "prepare_store",
    "share_secrets",
    "start_ingress",
    "start_ray",
    "start_shards",
    "stop",
]
