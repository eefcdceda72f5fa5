"""The real thing: `tallyray serve` in a subprocess (Ray + Serve), spoken to over HTTP."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from served import tallyray_serve

ADMIN_KEY = "trk_admin_" + uuid.uuid4().hex
SECRETS = {
    "TALLYRAY_STRIPE_TEST_API_KEY": "sk_test_" + uuid.uuid4().hex,
    "TALLYRAY_STRIPE_TEST_WEBHOOK_SECRET": "whsec_" + uuid.uuid4().hex,
}
LOGS: list[Path] = []


@pytest.fixture(scope="module")
def base_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    # The webhook test's receiver is on loopback, which only this setting lets webhooks reach.
    env = {"TALLYRAY_WEBHOOK_ALLOW_PRIVATE": "1", **SECRETS}
    workdir = tmp_path_factory.mktemp("serve")
    LOGS.append(workdir / "serve.log")
    with tallyray_serve(workdir, ADMIN_KEY, env) as base:
        yield base


def test_a_customer_over_http(base_url: str) -> None:
    with httpx.Client(base_url=base_url, timeout=30) as http:
        r = http.post(
            "/v1/admin/keys", json={"env": "test"}, headers={"Authorization": f"Bearer {ADMIN_KEY}"}
        )
        assert r.status_code == 201, r.text
        key = r.json()["key"]
        http.headers["Authorization"] = f"Bearer {key}"

        assert http.post("/v1/customers", json={"id": "acme", "currency": "EUR"}).status_code == 201
        r = http.post("/v1/subscriptions", json={"customer_id": "acme", "plan": "pro"})
        assert r.status_code == 201, r.text
        assert http.post("/v1/customers/acme/credits", json={"amount": "10.00"}).status_code == 201

        events = [
            {
                "id": f"e{i}",
                "customer_id": "acme",
                "type": "llm.completion",
                "properties": {"model": "gpt-4o", "input_tokens": 1000, "output_tokens": 100},
            }
            for i in range(10)
        ]
        assert http.post("/v1/events", json=events).json() == {"ingested": 10, "duplicates": 0}
        assert http.post("/v1/events", json=events).json() == {"ingested": 0, "duplicates": 10}

        balance = http.get("/v1/customers/acme/balance").json()
        # 10 × (1,000 × 0.0000025 + 100 × 0.00001) = 0.035; + 1 package of requests 2.00
        assert balance["period_spend_precise"] == "2.035"
        assert balance["credits_remaining"] == "7.97"  # 10 − 2.035 = 7.965 → 7.97 (half up)

        r = http.post(
            "/v1/quota/check",
            json={
                "customer_id": "acme",
                "event": {
                    "type": "llm.completion",
                    "properties": {
                        "model": "gpt-4o",
                        "input_tokens": 10_000_000,
                        "output_tokens": 0,
                    },
                },
            },
        )
        assert r.json()["allowed"] is False  # 25.00 > 7.965
        assert r.json()["reason"].startswith("insufficient credit")

        r = http.post("/v1/events", json=[{"customer_id": "acme", "type": "llm.completion"}])
        assert r.status_code == 422


def test_operations_endpoints(base_url: str) -> None:
    assert httpx.get(f"{base_url}/healthz").json()["status"] == "ok"
    metrics = httpx.get(f"{base_url}/metrics").text
    for name in (
        "tallyray_events_ingested_total",
        "tallyray_commit_seconds_bucket",
        "tallyray_checkpoint_age_seconds",
        "tallyray_quota_check_seconds_bucket",
    ):
        assert name in metrics, name
    assert "acme" not in metrics  # never a customer label
    schema = httpx.get(f"{base_url}/openapi.json").json()
    assert "/v1/events" in schema["paths"] and "/v1/quota/check" in schema["paths"]


def test_an_invoice_run_from_the_command_line_and_its_pdf(base_url: str) -> None:
    """`tallyray invoice run` drives a run on the server (Ray tasks in the replica) with a
    progress bar; the invoice comes back as JSON and as a PDF."""
    with httpx.Client(base_url=base_url, timeout=30) as http:
        r = http.post("/v1/admin/keys", json={"env": "test"}, headers=_auth(ADMIN_KEY))
        key = r.json()["key"]
        http.headers.update(_auth(key))
        customer = f"e2e-{uuid.uuid4().hex[:8]}"
        r = http.post(
            "/v1/customers",
            json={"id": customer, "currency": "EUR", "name": "Beispiel AG", "country": "DE"},
        )
        assert r.status_code == 201, r.text
        r = http.post(
            "/v1/subscriptions",
            json={"customer_id": customer, "plan": "pro", "start": "2026-10-01T00:00:00Z"},
        )
        assert r.status_code == 201, r.text

        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "tallyray.cli",
                "invoice",
                "run",
                "--until",
                "2026-11-01",
                "--force",
                "--url",
                base_url,
                "--key",
                key,
            ],
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert done.returncode == 0, done.stderr
        assert '"status": "succeeded"' in done.stdout
        assert "customer" in done.stderr  # tqdm's progress bar

        (invoice,) = http.get("/v1/invoices", params={"customer_id": customer}).json()["invoices"]
        # no usage: base fee 49.00 + minimum true-up 51.00, 19% German VAT
        assert (invoice["subtotal"], invoice["tax"], invoice["total"]) == (
            "100.00",
            "19.00",
            "119.00",
        )
        r = http.get(f"/v1/invoices/{invoice['id']}.pdf")
        assert r.status_code == 200 and r.content.startswith(b"%PDF")


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_an_alert_reaches_a_webhook_endpoint_signed(base_url: str) -> None:
    """Crossing a threshold on ingest → the shard's outbox → the deliverer actor → a signed
    POST to the endpoint, verified with the independent `standardwebhooks` package."""
    import json
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from standardwebhooks.webhooks import Webhook

    received: list[tuple[dict[str, str], bytes]] = []

    class Receiver(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 — http.server's naming
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append(({k.lower(): v for k, v in self.headers.items()}, body))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    receiver = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    try:
        with httpx.Client(base_url=base_url, timeout=30) as http:
            key = http.post("/v1/admin/keys", json={"env": "test"}, headers=_auth(ADMIN_KEY))
            http.headers.update(_auth(key.json()["key"]))
            r = http.post(
                "/v1/webhook-endpoints",
                json={
                    "url": f"http://127.0.0.1:{receiver.server_address[1]}/hooks",
                    "event_types": ["alert.triggered"],
                },
            )
            assert r.status_code == 201, r.text
            secret = r.json()["secret"]
            customer = f"e2e-{uuid.uuid4().hex[:8]}"
            assert http.post("/v1/customers", json={"id": customer, "currency": "EUR"}).is_success
            r = http.post("/v1/subscriptions", json={"customer_id": customer, "plan": "pro"})
            assert r.status_code == 201, r.text
            rule = {"kind": "spend_above", "threshold": "1.00"}
            r = http.post(f"/v1/customers/{customer}/alert-rules", json=rule)
            assert r.status_code == 201, r.text
            event = {
                "id": "e-alert",
                "customer_id": customer,
                "type": "llm.completion",
                "properties": {"model": "gpt-4o", "input_tokens": 10, "output_tokens": 0},
            }
            assert http.post("/v1/events", json=[event]).status_code == 200  # 2.00 > 1.00

            deadline = time.monotonic() + 30
            while not received and time.monotonic() < deadline:
                time.sleep(0.2)
        assert received, "no webhook arrived within 30 s"
        headers, body = received[0]
        Webhook(secret).verify(body, headers)  # raises if the signature is wrong
        message = json.loads(body)
        assert message["type"] == "alert.triggered"
        assert message["data"]["customer_id"] == customer
        assert message["data"]["rule"]["description"] == "period spend above 1.00"
    finally:
        receiver.shutdown()
        receiver.server_close()


def test_no_secret_reaches_a_log_line(base_url: str) -> None:
    """The admin key and the payment secrets reach the replicas and shards through a secrets
    file, not as arguments, and no process logs them (Ray forwards every worker's log lines
    to the server's)."""
    r = httpx.get(f"{base_url}/v1/admin/keys", headers={"Authorization": f"Bearer {ADMIN_KEY}"})
    assert r.status_code == 200  # the server knows the admin key ...
    (log,) = LOGS
    text = log.read_text(errors="replace")
    assert "serving on" in text  # ... and this is its log
    for secret in [ADMIN_KEY, *SECRETS.values()]:
        assert secret not in text
