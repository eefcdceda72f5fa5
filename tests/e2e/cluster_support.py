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
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from integration.support import POSTGRES_URL, create_postgres_database, drop_postgres_database

CHILD = Path(__file__).with_name("cluster_child.py")
SHARD_CLASS = "ShardActor"
REPLICA_CLASS = "ServeReplica:tallyray:Ingress"

REDIS = os.environ.get("TALLYRAY_TEST_REDIS", "127.0.0.1:6379")
"""The Redis a test cluster's GCS may keep its tables in (GCS fault tolerance)."""

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


def redis_command(*words: str) -> bytes:
    """One command to the Redis at :data:`REDIS`, its raw answer (RESP)."""
    host, _, port = REDIS.rpartition(":")
    request = f"*{len(words)}\r\n" + "".join(f"${len(w)}\r\n{w}\r\n" for w in words)
    with socket.create_connection((host, int(port)), timeout=5) as conn:
        conn.sendall(request.encode())
        answer = b""
        while not answer.endswith(b"\r\n"):
            chunk = conn.recv(65536)
            if not chunk:
                break
            answer += chunk
    return answer


def keys_of(namespace: str) -> int:
    """How many keys of Redis name ``namespace`` (``KEYS``' answer is ``*<count>``...)."""
    return int(redis_command("KEYS", f"*{namespace}*").split(b"\r\n", 1)[0][1:])


def redis_here() -> bool:
    try:
        return redis_command("PING") == b"+PONG\r\n"
    except OSError:
        return False


FAILURES_CHILD = Path(__file__).with_name("node_failure_child.py")
EVENTS_PER_PRODUCER = 300
"""Of the stream the node is lost in; the GCS is restarted in one a third as long."""
GCS_DOWN_SECONDS = 3
"""How long the head's GCS is left down."""


def _run_failures_child(database_url: str, cwd: Path, gcs: list[str]) -> dict[str, object]:
    argv = [database_url, str(EVENTS_PER_PRODUCER), *gcs]
    result: dict[str, object] = run_json_child(FAILURES_CHILD, argv, cwd)
    return result


_FAILURES: dict[str, object] = {}


def cluster_failures(tmp_path_factory: Any) -> dict[str, object]:
    """node_failure_child.py's JSON, run once a session (whichever of the two test modules
    asks first starts it); with a Redis, its ``head_restart`` holds the GCS restart's outcome
    and ``redis_keys_left`` what was left of its tables.

    One Ray cluster for the two tests of failures on a cluster: a worker node lost
    (test_node_failure.py), then the head's GCS killed and restarted (test_head_restart.py), one
    after the other in the same 3-node ``ray.cluster_utils.Cluster``, run by
    ``node_failure_child.py`` in a process of its own. A cluster's start and Tallyray's
    deployment on it are what these tests cost most; the second failure meets a cluster that
    recovered from the first, as a production cluster would.

    The GCS keeps its tables in Redis (``RAY_REDIS_ADDRESS``, 127.0.0.1:6379 unless
    ``TALLYRAY_TEST_REDIS`` says otherwise) under a key namespace of the run's own, removed
    afterwards: nothing else in that Redis is touched. Without a Redis there, the node's loss is
    tested alone and test_head_restart.py is skipped. The database is the suite's PostgreSQL when
    ``TALLYRAY_TEST_POSTGRES_URL`` is set (CI), a temporary SQLite file otherwise.
    """
    if not _FAILURES:
        _FAILURES.update(_cluster_failures(tmp_path_factory))
    return _FAILURES


def _cluster_failures(tmp_path_factory: Any) -> dict[str, object]:
    workdir = tmp_path_factory.mktemp("cluster-failures")
    namespace = "tallyray_test_" + uuid.uuid4().hex[:12]
    with_redis = redis_here()
    gcs = [REDIS, namespace, str(GCS_DOWN_SECONDS)] if with_redis else []
    try:
        if POSTGRES_URL:
            url = create_postgres_database(POSTGRES_URL)
            try:
                result = _run_failures_child(url, workdir, gcs)
            finally:
                drop_postgres_database(POSTGRES_URL, url)
        else:
            result = _run_failures_child(f"sqlite:///{workdir}/tallyray.db", workdir, gcs)
    finally:
        left = keys_of(namespace) if with_redis else 0
        if left:  # the child did not get to remove them
            from ray._private.gcs_utils import cleanup_redis_storage

            host, _, port = REDIS.rpartition(":")
            cleanup_redis_storage(host, int(port), "", False, namespace)
    result["redis_keys_left"] = left
    return result
