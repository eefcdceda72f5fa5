"""Two ingress replicas serve one port; a replica that dies is replaced, and the port keeps
answering meanwhile."""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections.abc import Iterator

import httpx
import pytest
from served import descendants, tallyray_serve_process

ADMIN_KEY = "trk_admin_" + uuid.uuid4().hex
REPLICA = "ServeReplica:tallyray:Ingress"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    with tallyray_serve_process(
        tmp_path_factory.mktemp("replicas"), ADMIN_KEY, {"TALLYRAY_REPLICAS": "2"}
    ) as (base, process):
        yield base, process.pid


def _replicas(server_pid: int) -> set[int]:
    return {pid for pid, command in descendants(server_pid).items() if REPLICA in command}


def _wait_for_replicas(server_pid: int, count: int, seconds: float = 120) -> set[int]:
    deadline = time.monotonic() + seconds
    while True:
        found = _replicas(server_pid)
        if len(found) == count:
            return found
        assert time.monotonic() < deadline, f"{len(found)} replicas, not {count}"
        time.sleep(0.5)


def _wait_gone(pid: int, seconds: float = 10) -> None:
    """Until the process has exited (its sockets closed): gone, or a zombie."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as stat:
                if stat.read().rsplit(")", 1)[1].split()[0] == "Z":
                    return
        except FileNotFoundError:
            return
        time.sleep(0.05)
    raise AssertionError(f"process {pid} did not exit")


def _healthy(base: str, attempts: int = 2) -> bool:
    """A fresh connection (so the kernel picks a replica anew) answers /healthz, as a client
    that retries a reset once sees it.

    A connection the kernel has already queued on a replica that stops before accepting it
    (Serve may stop a replacement that missed its start-up health check on a loaded box) is
    reset unless ``net.ipv4.tcp_migrate_req=1`` moves it to a surviving listener; docs/deploy.md
    recommends that setting. The retry takes a new connection, so it proves the port serves."""
    for _ in range(attempts):
        try:
            with httpx.Client(base_url=base, timeout=5) as client:
                return client.get("/healthz").status_code == 200
        except httpx.TransportError:
            continue
    return False


def test_a_killed_replica_is_replaced_and_the_port_stays_up(served: tuple[str, int]) -> None:
    base, server_pid = served
    first = _wait_for_replicas(server_pid, 2)
    victim = min(first)
    os.kill(victim, signal.SIGKILL)
    _wait_gone(victim)

    # The survivor holds the port alone until Serve has started a replacement.
    answered = sum(_healthy(base) for _ in range(50))
    assert answered == 50

    second = _wait_for_replicas(server_pid, 2)
    assert victim not in second
    replacement = (second - first).pop()
    # Prove the replacement serves: kill the survivor, so only the replacement is left.
    os.kill((first - {victim}).pop(), signal.SIGKILL)
    deadline = time.monotonic() + 30
    while replacement in _replicas(server_pid) and not _healthy(base):
        assert time.monotonic() < deadline, "the replacement replica does not answer"
        time.sleep(0.2)
    assert _healthy(base)
    _wait_for_replicas(server_pid, 2)


def _status_on_fresh_connections(base: str, key: str, count: int) -> list[int]:
    """``GET /v1/meters`` with ``key`` over ``count`` new connections: the kernel spreads
    them over the replicas that share the port."""
    codes = []
    for _ in range(count):
        with httpx.Client(base_url=base, timeout=10) as client:
            r = client.get("/v1/meters", headers={"Authorization": f"Bearer {key}"})
            codes.append(r.status_code)
    return codes


def test_a_revoked_key_is_refused_by_every_replica_within_five_seconds(
    served: tuple[str, int],
) -> None:
    base, server_pid = served
    _wait_for_replicas(server_pid, 2)
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    made = httpx.post(
        f"{base}/v1/admin/keys", json={"env": "test", "name": "leaked"}, headers=admin
    )
    assert made.status_code == 201, made.text
    key = made.json()
    # Many connections: both replicas now have the key in their caches.
    assert set(_status_on_fresh_connections(base, key["key"], 40)) == {200}

    revoked = httpx.post(f"{base}/v1/admin/keys/{key['id']}/revoke", headers=admin)
    assert revoked.status_code == 200
    # A replica trusts what it knows of a key for TALLYRAY_KEY_CACHE_SECONDS (2 s): by then
    # every replica has looked the key up again and found it revoked — inside the 5 s the
    # operator is promised. The replica that revoked it forgets it at once.
    time.sleep(2.5)
    assert set(_status_on_fresh_connections(base, key["key"], 40)) == {401}
    listed = httpx.get(f"{base}/v1/admin/keys", headers=admin).json()["keys"]
    assert next(k for k in listed if k["id"] == key["id"])["revoked_at"] is not None
