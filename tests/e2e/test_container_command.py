"""The container's command line, run here: the image's ENTRYPOINT + CMD (`tallyray serve`)
with the environment the Dockerfile and docker-compose.yml give it — secrets read from files,
as Docker mounts them under /run/secrets/ — the database a temporary SQLite file instead of
the compose file's PostgreSQL, a free port instead of 8000, and 127.0.0.1 instead of 0.0.0.0
(this machine is shared and serves nothing beyond itself). The Dockerfile's HEALTHCHECK
command must pass while it serves and fail once it has stopped; the stop signal (SIGTERM,
what `docker stop` sends) must end it cleanly. No Docker is involved: what the image adds
(the wheel, the user) is checked in tests/unit/test_deploy_files.py."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest
from deploy_files import compose_environment, container_argv, exec_form, runtime_stage, the
from served import free_port

pytestmark = pytest.mark.e2e

ADMIN_KEY = "trk_admin_" + uuid.uuid4().hex


def test_the_containers_command_serves_answers_its_healthcheck_and_stops_cleanly(
    tmp_path: Path,
) -> None:
    secrets = {
        "tallyray_database_url": f"sqlite:///{tmp_path}/tallyray.db",
        "tallyray_admin_key": ADMIN_KEY,
    }
    secret_files = {}
    for name, value in secrets.items():
        (tmp_path / name).write_text(value + "\n", encoding="utf-8")  # as `echo` would
        secret_files[name] = str(tmp_path / name)
    port = free_port()
    # Two differences from the container: a free port, and loopback rather than every
    # interface (this machine serves nothing beyond itself).
    container_env = {
        **compose_environment(secret_files, {}),
        "TALLYRAY_PORT": str(port),
        "TALLYRAY_HOST": "127.0.0.1",
    }
    # The host's environment without its Tallyray settings, as a container has its own.
    env = {k: v for k, v in os.environ.items() if not k.startswith("TALLYRAY_")}
    env.update(container_env)
    argv = container_argv()
    executable = Path(sys.executable).parent / argv[0]  # the venv's console script
    assert executable.is_file(), executable
    stop_signal = getattr(signal, the(runtime_stage(), "STOPSIGNAL"))
    healthcheck = exec_form(the(runtime_stage(), "HEALTHCHECK").partition(" CMD ")[2])
    healthcheck[0] = sys.executable if healthcheck[0] == "python" else healthcheck[0]

    log_path = tmp_path / "serve.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [str(executable), *argv[1:]],
            cwd=tmp_path,  # the image's WORKDIR: the home of the non-root user
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            base = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 120
            while "Tallyray is serving on" not in log_path.read_text(errors="replace"):
                assert process.poll() is None, log_path.read_text()[-3000:]
                assert time.monotonic() < deadline, log_path.read_text()[-3000:]
                time.sleep(0.5)
            assert f"serving on http://127.0.0.1:{port}" in log_path.read_text()
            health = httpx.get(f"{base}/healthz", timeout=10)
            assert health.status_code == 200 and health.json()["status"] == "ok"
            assert health.json()["shards"] == int(container_env["TALLYRAY_SHARDS"])
            # the admin key came from its secret file
            keys = httpx.get(
                f"{base}/v1/admin/keys",
                headers={"Authorization": f"Bearer {ADMIN_KEY}"},
                timeout=10,
            )
            assert keys.status_code == 200, keys.text
            checked = subprocess.run(healthcheck, env=env, capture_output=True, timeout=30)
            assert checked.returncode == 0, checked.stderr
        finally:
            process.send_signal(stop_signal)
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
    assert process.returncode == 0, log_path.read_text()[-3000:]
    assert "Tallyray stopped." in log_path.read_text()
    stopped = subprocess.run(healthcheck, env=env, capture_output=True, timeout=30)
    assert stopped.returncode != 0
