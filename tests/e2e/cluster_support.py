"""A multi-node Ray cluster on 127.0.0.1 for the end-to-end tests, in a process of its own
(the test session may already run a Ray of its own; a driver joins one cluster only).

Every node is on loopback (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``), Ray picks the GCS port
(never Redis's 6379), and Ray's files are in a directory of the cluster's own
(``RAY_TMPDIR``), where a plain ``ray.init()`` elsewhere does not look for a cluster to
join. ``tallyray serve`` joins it through ``TALLYRAY_RAY_ADDRESS`` (:func:`serve_env`). The
test asks the cluster process where actors run and has it remove or add nodes
(:class:`RayCluster`); the protocol is in ``cluster_child.py``.

    with ray_cluster(tmp_path, [HEAD, WORKER, WORKER]) as cluster:
        with tallyray_serve_process(tmp_path, key, serve_env(cluster)) as (base, _):
            cluster.shard_nodes()       # {"shard-0": node id, ...}
            cluster.remove_node(2)      # a worker node dies
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CHILD = Path(__file__).with_name("cluster_child.py")
SHARD_CLASS = "ShardActor"
REPLICA_CLASS = "ServeReplica:tallyray:Ingress"

#: One node: the CPUs it offers (Serve's replicas take one each) and its custom resources.
Node = dict[str, Any]


@dataclass
class RayCluster:
    address: str
    """The GCS address: ``TALLYRAY_RAY_ADDRESS`` for a server joining this cluster."""
    process: subprocess.Popen[str]
    log: Path
    ray_tmp: str
    """The cluster's ``RAY_TMPDIR``."""
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _ask(self, command: dict[str, Any], timeout: float = 120) -> Any:
        assert self.process.stdin is not None and self.process.stdout is not None
        with self._lock:
            self.process.stdin.write(json.dumps(command) + "\n")
            self.process.stdin.flush()
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                line = self.process.stdout.readline()
                if not line:
                    raise AssertionError(f"the cluster process ended: {self._tail()}")
                if line.startswith("ANSWER "):
                    return json.loads(line[len("ANSWER ") :])
            raise AssertionError(f"no answer to {command}: {self._tail()}")

    def _tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]

    def nodes(self) -> list[dict[str, Any]]:
        """``[{"index", "node_id", "alive", "resources"}]`` in the order the nodes were added
        (0 is the head)."""
        return list(self._ask({"op": "nodes"}))

    def actors(self) -> list[dict[str, Any]]:
        """The actors that are not dead: ``[{"name", "class", "node_id", "state"}]``."""
        return list(self._ask({"op": "actors"}))

    def shard_nodes(self) -> dict[str, str]:
        """Each live shard actor's name → the node it runs on."""
        return {
            a["name"]: a["node_id"]
            for a in self.actors()
            if a["class"].endswith(SHARD_CLASS) and a["state"] == "ALIVE"
        }

    def replica_nodes(self) -> list[str]:
        """The node of each live ingress replica."""
        return sorted(
            a["node_id"]
            for a in self.actors()
            if REPLICA_CLASS in a["class"] and a["state"] == "ALIVE"
        )

    def remove_node(self, index: int) -> None:
        """Kill worker node ``index`` at once (its raylet and every process on it)."""
        self._ask({"op": "remove", "index": index})

    def add_node(self, node: Node) -> int:
        return int(self._ask({"op": "add", "node": node}))


@contextlib.contextmanager
def ray_cluster(workdir: Path, nodes: list[Node], timeout: float = 180) -> Iterator[RayCluster]:
    """Start the cluster (``nodes[0]`` is the head), yield it once every node is up, shut it
    down afterwards."""
    log = workdir / "cluster.log"
    errors = log.open("w")
    # Ray's files in a directory of the cluster's own (short: Unix socket paths are), so that
    # the address it records for ``ray.init()`` is not found by other processes on this box.
    ray_tmp = tempfile.mkdtemp(prefix="trc-", dir="/tmp")
    process = subprocess.Popen(
        [sys.executable, str(CHILD), json.dumps(nodes)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=errors,
        text=True,
        cwd=workdir,
        env={**os.environ, "RAY_TMPDIR": ray_tmp},
    )
    try:
        assert process.stdout is not None
        address = None
        deadline = time.monotonic() + timeout
        while address is None:
            line = process.stdout.readline()
            if not line or time.monotonic() > deadline:
                raise AssertionError(f"the cluster did not start: {log.read_text()[-3000:]}")
            if line.startswith("READY "):
                address = line.split()[1]
        yield RayCluster(address, process, log, ray_tmp)
    finally:
        with contextlib.suppress(OSError, ValueError):
            assert process.stdin is not None
            process.stdin.write(json.dumps({"op": "stop"}) + "\n")
            process.stdin.close()
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()
        errors.close()
        shutil.rmtree(ray_tmp, ignore_errors=True)


def serve_env(cluster: RayCluster) -> dict[str, str]:
    """The environment of a ``tallyray serve`` that joins ``cluster``."""
    return {
        "TALLYRAY_RAY_ADDRESS": cluster.address,
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
        "RAY_TMPDIR": cluster.ray_tmp,
    }


def run_json_child(child: Path, args: list[str], cwd: Path, timeout: float = 420) -> Any:
    """Run a ``*_child.py`` cluster script in a process of its own, without this session's
    ``TALLYRAY_*`` and ``RAY_*`` settings, and return the JSON its last output line holds."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TALLYRAY_", "RAY_"))}
    done = subprocess.run(
        [sys.executable, str(child), *args],
        env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])
