"""`tallyray serve` in a subprocess, for the end-to-end tests: on a free port, on its own
SQLite file, with the example config and an admin key; stopped with SIGINT (as Ctrl-C)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def tallyray_serve(workdir: Path, admin_key: str) -> Iterator[str]:
    """Start the server, wait until it answers, yield its base URL; then stop it and
    require a clean exit."""
    port = free_port()
    env = {
        **os.environ,
        "TALLYRAY_ADMIN_KEY": admin_key,
        "TALLYRAY_DATABASE_URL": f"sqlite:///{workdir}/tallyray.db",
        "TALLYRAY_SHARDS": "2",
        "TALLYRAY_CHECKPOINT_SECONDS": "1",
    }
    log = (workdir / "serve.log").open("w")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tallyray.cli",
            "serve",
            "--port",
            str(port),
            "--config",
            str(ROOT / "examples/llm-api/tallyray.json"),
        ],
        cwd=workdir,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                break
        except httpx.TransportError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            process.wait()
            log.close()
            raise AssertionError((workdir / "serve.log").read_text()[-3000:])
        time.sleep(0.5)
    try:
        yield base
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()
    assert process.returncode == 0, (workdir / "serve.log").read_text()[-3000:]
