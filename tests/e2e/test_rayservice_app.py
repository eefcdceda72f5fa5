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

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import yaml
from deploy_files import rayservice
from served import free_port

pytestmark = pytest.mark.e2e

ADMIN_KEY = "trk_admin_" + uuid.uuid4().hex


@pytest.fixture
def pod_environment(tmp_path: Path) -> dict[str, str]:
    """The pod spec's environment, its Secrets filled in: what every Ray process of the pod
    has (the child process that starts Ray passes it on to them)."""
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
    # loopback, not every interface, on this machine; a free port; 2 shards
    env.update({"TALLYRAY_HOST": "127.0.0.1", "TALLYRAY_PORT": str(free_port())})
    env["TALLYRAY_SHARDS"] = "2"
    return env


def test_the_rayservice_app_deploys_from_its_serve_config_and_answers(
    pod_environment: dict[str, str], tmp_path: Path
) -> None:
    config = yaml.safe_load(rayservice()["spec"]["serveConfigV2"])
    for deployment in config["applications"][0]["deployments"]:
        deployment["num_replicas"] = 1  # one node here, at most one replica a node
    config["http_options"] = {"host": "127.0.0.1", "port": free_port()}
    # A process of its own: the suite's Ray (integration tests) must not be the one used,
    # nor be shut down by this test.
    env = {k: v for k, v in os.environ.items() if not k.startswith("TALLYRAY_")}
    env.update(pod_environment)
    child = subprocess.run(
        [sys.executable, str(Path(__file__).with_name("rayservice_child.py")),
         json.dumps(config), ADMIN_KEY],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert child.returncode == 0, child.stderr[-3000:]
    answered = json.loads(child.stdout.strip().splitlines()[-1])
    assert answered == {
        "health": 200,
        "health_shards": 2,
        "keys": 200,  # the admin key the builder seeded
        "shard_actors": 2,
    }
