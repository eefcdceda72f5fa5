"""Events survive the server going down and the gateway dying: a gateway process keeps sending
through the client's buffered ingest with a spool while `tallyray serve` is stopped, then
the gateway is killed (SIGKILL) with events unacknowledged; the server comes back on the
same SQLite file and port, a new client on the same spool sends what was left, and every
event the dead gateway's `ingest()` had taken is counted exactly once."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from served import free_port, tallyray_serve
from tallyray_client import Tallyray

pytestmark = pytest.mark.e2e

ADMIN_KEY = "trk_admin_" + uuid.uuid4().hex

GATEWAY = textwrap.dedent(
    """
    import os, sys, time
    from pathlib import Path
    from tallyray_client import Backoff, Tallyray

    base, key, customer, spool, workdir = sys.argv[1:6]
    stop, progress = Path(workdir, "stop"), Path(workdir, "progress")
    client = Tallyray(base, key, spool_dir=spool, batch_size=50, flush_interval=0.1,
                      ingest_backoff=Backoff(base=0.1, cap=0.5))
    taken = 0
    while not stop.exists():
        client.ingest([{"customer_id": customer, "type": "llm.completion",
                        "properties": {"model": "gpt-4o", "input_tokens": 3,
                                       "output_tokens": 1}}] * 10)
        taken += 10  # ingest() returned: the 10 events are fsynced in the spool
        Path(workdir, "progress.tmp").write_text(str(taken))
        os.replace(Path(workdir, "progress.tmp"), progress)
        time.sleep(0.02)
    Path(workdir, "done.tmp").write_text(str(taken))
    os.replace(Path(workdir, "done.tmp"), Path(workdir, "done"))
    time.sleep(3600)  # never closes: it is killed
    """
)


def wait_for(what: str, check: Callable[[], bool], gateway: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 120
    while not check():
        if gateway.poll() is not None:
            raise AssertionError(f"the gateway died waiting for {what}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


@contextlib.contextmanager
def gateway_process(args: list[str], workdir: Path) -> Iterator[subprocess.Popen[bytes]]:
    """The gateway script in a process of its own; killed (SIGKILL) at the end whatever
    happened, its log shown when the test failed."""
    with (workdir / "gateway.log").open("w") as log:
        process = subprocess.Popen(
            [sys.executable, "-c", GATEWAY, *args, str(workdir)], stdout=log, stderr=log
        )
        try:
            yield process
        except BaseException:
            process.kill()
            process.wait(30)
            print((workdir / "gateway.log").read_text()[-3000:])
            raise
        finally:
            if process.poll() is None:
                process.kill()
            process.wait(30)


def progress(workdir: Path) -> int:
    try:
        return int((workdir / "progress").read_text())
    except (FileNotFoundError, ValueError):
        return 0


def test_every_event_counts_once_across_a_server_restart_and_a_gateway_crash(
    tmp_path: Path,
) -> None:
    serve_dir, spool, gateway_dir = tmp_path / "serve", tmp_path / "spool", tmp_path / "gateway"
    serve_dir.mkdir()
    gateway_dir.mkdir()
    port = free_port()
    customer = f"gw-{uuid.uuid4().hex[:10]}"

    with contextlib.ExitStack() as stack:
        with tallyray_serve(serve_dir, ADMIN_KEY, port=port) as base:
            admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
            r = httpx.post(f"{base}/v1/admin/keys", json={"env": "test"}, headers=admin)
            key = r.json()["key"]
            auth = {"Authorization": f"Bearer {key}"}
            with httpx.Client(base_url=base, headers=auth, timeout=30) as http:
                r = http.post("/v1/customers", json={"id": customer, "currency": "USD"})
                assert r.is_success, r.text
                r = http.post(
                    "/v1/subscriptions", json={"customer_id": customer, "plan": "starter"}
                )
                assert r.is_success, r.text

                gateway = stack.enter_context(
                    gateway_process([base, key, customer, str(spool)], gateway_dir)
                )

                def counted() -> int:
                    usage = http.get(f"/v1/customers/{customer}/balance").json()["usage"]
                    return int(usage.get("requests", {}).get("quantity", 0))

                wait_for("events to reach the server", lambda: counted() >= 100, gateway)
        # the server is down (stopped cleanly: SIGINT); the gateway goes on taking events
        down_at = progress(gateway_dir)
        wait_for(
            "the gateway to go on while the server is down",
            lambda: progress(gateway_dir) >= down_at + 200,
            gateway,
        )
        (gateway_dir / "stop").touch()
        wait_for("the gateway to stop taking events", (gateway_dir / "done").exists, gateway)
        taken = int((gateway_dir / "done").read_text())
        os.kill(gateway.pid, signal.SIGKILL)  # it dies with events unacknowledged
        gateway.wait(30)
    assert list(spool.glob("*.jsonl")), "nothing was left in the spool"

    with tallyray_serve(serve_dir, ADMIN_KEY, port=port) as again:
        assert again == base  # the same server, the same SQLite file
        with Tallyray(base, key, spool_dir=spool, flush_interval=0.1) as restarted:
            assert restarted.flush(timeout=120)
            balance = restarted.balance(customer)
    assert balance.quantity("requests") == taken
    assert balance.quantity("input_tokens") == 3 * taken
    assert not list(spool.glob("*.jsonl"))  # all acknowledged, the spool is empty
