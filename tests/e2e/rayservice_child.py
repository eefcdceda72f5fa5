"""Run by test_rayservice_app.py in a process of its own (so that its Ray is not the test
session's): deploy a RayService's ``serveConfigV2`` through Serve's controller the way
KubeRay has it deployed, ask the API, print what it answered as one JSON line, stop.

``python rayservice_child.py <serve config JSON> <admin key>``, with the pod's environment.
"""

from __future__ import annotations

import json
import os
import sys

import httpx
import ray
from ray import serve
from ray.serve.context import _get_global_client
from ray.serve.schema import ServeDeploySchema

from tallyray.cluster import Settings, start_ray


def main(config: dict[str, object], admin_key: str) -> dict[str, object]:
    schema = ServeDeploySchema.model_validate(config)
    start_ray(Settings.load())
    try:
        serve.start(
            http_options=schema.http_options.model_dump(), proxy_location=schema.proxy_location
        )
        _get_global_client().deploy_apps(schema, _blocking=True)
        base = f"http://127.0.0.1:{os.environ['TALLYRAY_PORT']}"
        health = httpx.get(f"{base}/healthz", timeout=10)
        keys = httpx.get(
            f"{base}/v1/admin/keys", headers={"Authorization": f"Bearer {admin_key}"}, timeout=10
        )
        shards = int(os.environ["TALLYRAY_SHARDS"])
        found = [ray.get_actor(f"shard-{i}", namespace="tallyray") for i in range(shards)]
        return {
            "health": health.status_code,
            "health_shards": health.json().get("shards"),
            "keys": keys.status_code,
            "shard_actors": len(found),
        }
    finally:
        serve.shutdown()
        ray.shutdown()


if __name__ == "__main__":
    print(json.dumps(main(json.loads(sys.argv[1]), sys.argv[2])))
