"""The CronJob's command line (deploy/kuberay/events-maintain.yaml), run here: the image's
ENTRYPOINT with the container's ``args``, the container's environment with its Secret filled
in. Differences from the pod: the database is a temporary SQLite file instead of the Secret's
PostgreSQL (so no partitions are created: SQLite keeps one table), and the console script is
the virtualenv's rather than the image's."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from deploy_files import cronjob_argv, cronjob_container

pytestmark = pytest.mark.e2e


def test_the_cronjobs_command_runs_one_maintenance_round(tmp_path: Path) -> None:
    secrets = {("tallyray", "database-url"): f"sqlite:///{tmp_path}/tallyray.db"}
    container_env = {}
    for entry in cronjob_container()["env"]:
        if "value" in entry:
            container_env[entry["name"]] = entry["value"]
        else:
            ref = entry["valueFrom"]["secretKeyRef"]
            container_env[entry["name"]] = secrets[(ref["name"], ref["key"])]
    env = {k: v for k, v in os.environ.items() if not k.startswith("TALLYRAY_")}
    env.update(container_env)
    argv = cronjob_argv()
    executable = Path(sys.executable).parent / argv[0]  # the venv's console script
    assert executable.is_file(), executable
    done = subprocess.run(
        [str(executable), *argv[1:]], env=env, cwd=tmp_path, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout) == {"partitions_created": [], "retention": None}
