"""`tallyray serve` in a subprocess, for the end-to-end tests: on a free port, on its own
SQLite file, with the example config and an admin key; stopped with SIGINT (as Ctrl-C)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
from free_ports import free_port
from suite_clock import TEST_NOW

ROOT = Path(__file__).resolve().parents[2]


@contextlib.contextmanager
def tallyray_serve(
    workdir: Path, admin_key: str, extra_env: dict[str, str] | None = None, port: int | None = None
) -> Iterator[str]:
    """Start the server, wait until it answers, yield its base URL; then stop it and
    require a clean exit. ``port`` lets a restarted server come back where it was."""
    with tallyray_serve_process(workdir, admin_key, extra_env, port) as (base, _):
        yield base


@contextlib.contextmanager
def tallyray_serve_process(
    workdir: Path, admin_key: str, extra_env: dict[str, str] | None = None, port: int | None = None
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """:func:`tallyray_serve`, also yielding the server's process."""
    port = port or free_port()
    env = {
        **os.environ,
        "TALLYRAY_ADMIN_KEY": admin_key,
        "TALLYRAY_DATABASE_URL": f"sqlite:///{workdir}/tallyray.db",
        "TALLYRAY_SHARDS": "2",
        "TALLYRAY_CHECKPOINT_SECONDS": "1",
        "TALLYRAY_CLOCK_START": TEST_NOW,
        **(extra_env or {}),
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
        # Up means the server says so: the first replica answers /healthz while the others
        # may still be starting, and Serve is still deploying the app.
        if f"Tallyray is serving on {base}" in (workdir / "serve.log").read_text(errors="replace"):
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
        yield base, process
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()
    assert process.returncode == 0, (workdir / "serve.log").read_text()[-3000:]


def descendants(pid: int) -> dict[int, str]:
    """Every process below ``pid`` (Ray's raylet, its workers, …): pid → command line."""
    children: dict[int, list[int]] = {}
    commands: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            commands[int(entry.name)] = (
                (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            )
        except OSError:
            continue
        parent = int(stat[stat.rindex(")") + 2 :].split()[1])
        children.setdefault(parent, []).append(int(entry.name))
    found: dict[int, str] = {}
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found[child] = commands.get(child, "")
            todo.append(child)
    return found
