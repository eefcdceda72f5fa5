"""Two ingress replicas serve one port; a replica that dies is replaced, and the port keeps
answering meanwhile. Each replica runs the invoice schedule: of the two, exactly one starts
the slot's run, and replicas that replace them start none.

The server's clock starts :data:`LEAD_SECONDS` before October's slot
(``TALLYRAY_CLOCK_START``); the store is seeded before it starts (customers on "pro" since 1
October), so the slot does not depend on how long start-up takes: up before the slot, the
replicas wait for it; up after it (a slow machine), their first look starts the run. Either
way the run must be the slot's, started at or after it, and the only one.
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import httpx
import psutil
import pytest
from served import ROOT, descendants, tallyray_serve_process

from tallyray.cluster import Settings, prepare_store
from tallyray.pricing.events import format_timestamp, parse_timestamp
from tallyray.storage.catalog import customer_from_json

ADMIN_KEY = "trk_admin_" + uuid.uuid4().hex
REPLICA = "ServeReplica:tallyray:Ingress"
SLOT = "2026-11-04T02:00:00Z"
"""October's slot: its end plus the default 3 days of grace, at TALLYRAY_INVOICE_RUN_AT."""
LEAD_SECONDS = 30
"""The server's clock starts this long before the slot: start-up takes 15–25 s, so the
replicas usually wait for it, and the test does not wait out a longer lead (either way is
tested the same). The run's test comes first: the others kill replicas, which could be its
driver."""
CUSTOMERS = ("sched-a", "sched-b", "sched-c")
ENDED = ("succeeded", "completed_with_errors", "failed")
"""(``interrupted`` is not: another replica takes the run over.)"""


class Served(NamedTuple):
    base: str
    pid: int
    slot_at: float
    """When (``time.monotonic()``) the server's clock reads :data:`SLOT`."""


def _seed(workdir: Path) -> None:
    """The server's store, migrated, the example config loaded, and three customers on
    "pro" since 1 October (what the API would have stored in October)."""
    settings = Settings.load(
        database_url=f"sqlite:///{workdir}/tallyray.db",
        config_path=str(ROOT / "examples/llm-api/tallyray.json"),
        clock_start="2026-11-03T12:00:00Z",  # the config's own customer starts here: not due
    )
    catalog = prepare_store(settings)
    october, now = parse_timestamp("2026-10-01T00:00:00Z"), settings.clock()
    for customer in CUSTOMERS:
        doc = {"id": customer, "currency": "EUR", "name": customer.title(), "country": "DE"}
        catalog.upsert_customer(customer_from_json("test", doc), now)
        catalog.subscribe("test", customer, "pro", october, now)
    catalog.engine.dispose()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    workdir = tmp_path_factory.mktemp("replicas")
    _seed(workdir)
    start = time.monotonic()
    env = {
        "TALLYRAY_REPLICAS": "2",
        "TALLYRAY_CLOCK_START": format_timestamp(parse_timestamp(SLOT) - LEAD_SECONDS * 10**6),
        "TALLYRAY_INVOICE_SCHEDULE": "test",
        "TALLYRAY_INVOICE_RUN_AT": "02:00",
    }
    with tallyray_serve_process(workdir, ADMIN_KEY, env) as (base, process):
        yield Served(base, process.pid, start + LEAD_SECONDS)


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


def _wait_serving(server_pid: int, base: str, count: int, seconds: float = 120) -> set[int]:
    """Until ``count`` replicas listen on the API port (a replacement exists a while before
    it listens), so that the next test finds every replica serving."""
    port = int(base.rsplit(":", 1)[1])
    deadline = time.monotonic() + seconds
    while True:
        found = {pid for pid in _replicas(server_pid) if _listens(pid, port)}
        if len(found) == count:
            return found
        assert time.monotonic() < deadline, f"{len(found)} replicas serve, not {count}"
        time.sleep(0.5)


def _listens(pid: int, port: int) -> bool:
    try:
        sockets = psutil.Process(pid).net_connections(kind="tcp")
    except psutil.Error:
        return False
    return any(s.status == psutil.CONN_LISTEN and s.laddr.port == port for s in sockets)


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


def _runs(base: str, key: str) -> list[dict[str, Any]]:
    r = httpx.get(f"{base}/v1/invoice-runs", headers={"Authorization": f"Bearer {key}"})
    assert r.status_code == 200, r.text
    return list(r.json()["runs"])


def test_of_two_replicas_one_starts_the_slots_run_and_their_replacements_none(
    served: Served,
) -> None:
    base, server_pid, slot_at = served
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    made = httpx.post(f"{base}/v1/admin/keys", json={"env": "test", "name": "ops"}, headers=admin)
    assert made.status_code == 201, made.text
    key = made.json()["key"]
    if time.monotonic() < slot_at - 1:  # before the slot: nothing has started
        assert _runs(base, key) == []

    deadline = max(time.monotonic(), slot_at) + 90
    while not (ended := [r for r in _runs(base, key) if r["status"] in ENDED]):
        assert time.monotonic() < deadline, "no run ended within 90 s of the slot"
        time.sleep(0.5)
    (run,) = ended
    assert (run["status"], run["scheduled_for"], run["until"], run["invoices"]) == (
        "succeeded",
        SLOT,
        "2026-11-01T02:00:00Z",  # the slot less the grace window
        len(CUSTOMERS),
    )
    assert run["options"]["scheduled"] is True
    assert parse_timestamp(run["created_at"]) >= parse_timestamp(SLOT)
    for customer in CUSTOMERS:
        r = httpx.get(
            f"{base}/v1/invoices",
            params={"customer_id": customer},
            headers={"Authorization": f"Bearer {key}"},
        )
        assert [i["period"]["start"] for i in r.json()["invoices"]] == ["2026-10-01T00:00:00Z"]

    # Both replicas killed and replaced, as in a restart: the new ones' first looks (their
    # loops start with their apps) find the slot taken.
    first = _wait_serving(server_pid, base, 2)
    for pid in first:
        os.kill(pid, signal.SIGKILL)
    for pid in first:
        _wait_gone(pid)
    assert not _wait_serving(server_pid, base, 2) & first
    time.sleep(2)
    assert [r["id"] for r in _runs(base, key)] == [run["id"]]


def test_a_killed_replica_is_replaced_and_the_port_stays_up(served: Served) -> None:
    base, server_pid, _ = served
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
    served: Served,
) -> None:
    base, server_pid, _ = served
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
