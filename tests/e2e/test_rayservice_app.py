"""The application deploy/kuberay/rayservice.yaml names, deployed the way KubeRay deploys it:
its ``serveConfigV2`` handed to Serve's controller (``deploy_apps``, what the dashboard's
``PUT /api/serve/applications/`` does for KubeRay), which builds the app in a Ray task from
the import path; the settings and secrets in the environment of every Ray process, as the pod
spec sets them. Then the API answers on its own port beside Serve's proxy.

The differences from a Kubernetes cluster: one local Ray node on loopback instead of a head
and two workers (so one API replica, not two), a temporary SQLite file for the database,
2 shards, free ports for the API and the proxy, and no Redis (GCS fault tolerance is
KubeRay's to set up, not Tallyray's)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from deploy_files import rayservice
from served import free_port

pytestmark = pytest.mark.e2e

ADMIN_KEY = "trk_admin_" + uuid.uuid4().hex


@pytest.fixture
def pod_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    """The pod spec's environment, its Secrets filled in, set in this process before Ray
    starts so that every Ray process has it (as every container of the pod does)."""
    [container] = rayservice()["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"][
        "containers"
    ]
    secrets = {
        ("tallyray", "database-url"): f"sqlite:///{tmp_path}/tallyray.db",
        ("tallyray", "admin-key"): ADMIN_KEY,
    }
    env = {}
    for entry in container["env"]:
        if "value" in entry:
            env[entry["name"]] = entry["value"]
        else:
            ref = entry["valueFrom"]["secretKeyRef"]
            env[entry["name"]] = secrets[(ref["name"], ref["key"])]
    env.update({"TALLYRAY_PORT": str(free_port()), "TALLYRAY_SHARDS": "2"})
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    yield env


def test_the_rayservice_app_deploys_from_its_serve_config_and_answers(
    pod_environment: dict[str, str],
) -> None:
    import ray
    from ray import serve
    from ray.serve.context import _get_global_client
    from ray.serve.schema import ServeDeploySchema

    from tallyray.cluster import Settings, start_ray

    config = yaml.safe_load(rayservice()["spec"]["serveConfigV2"])
    for deployment in config["applications"][0]["deployments"]:
        deployment["num_replicas"] = 1  # one node here, at most one replica a node
    config["http_options"] = {"host": "127.0.0.1", "port": free_port()}
    schema = ServeDeploySchema.model_validate(config)
    start_ray(Settings.load())
    try:
        serve.start(
            http_options=schema.http_options.model_dump(), proxy_location=schema.proxy_location
        )
        _get_global_client().deploy_apps(schema, _blocking=True)
        base = f"http://127.0.0.1:{pod_environment['TALLYRAY_PORT']}"
        health = httpx.get(f"{base}/healthz", timeout=10)
        assert health.status_code == 200, health.text
        assert health.json()["shards"] == 2
        keys = httpx.get(
            f"{base}/v1/admin/keys", headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=10
        )
        assert keys.status_code == 200, keys.text  # the admin key the builder seeded
        shards = [ray.get_actor(f"shard-{i}", namespace="tallyray") for i in range(2)]
        assert len(shards) == 2
    finally:
        serve.shutdown()
        ray.shutdown()
