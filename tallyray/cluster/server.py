"""``tallyray serve``: start everything, serve until SIGINT/SIGTERM, stop cleanly."""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading
import time
import urllib.error
import urllib.request
from typing import Any

from tallyray.access import ADMIN, generate_key
from tallyray.cluster.providers import check_payment_settings
from tallyray.cluster.settings import Settings
from tallyray.cluster.wiring import (
    EVENT_LOG_MAINTENANCE_SECONDS,
    maintain_event_log,
    prepare_store,
    settle_shards,
    share_secrets,
    start_ingress,
    start_ray,
    start_shards,
    start_webhook_deliverer,
    stop,
)
from tallyray.credentials import remove_secrets_file
from tallyray.logs import configure_logging, redact
from tallyray.serve.listener import ensure_port_free
from tallyray.storage.keys import KeyStore

log = logging.getLogger("tallyray.server")


def _request(base: str, key: str, method: str, path: str, body: Any = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(
        base + path,
        data=data,
        method=method,
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=30) as response:
        return json.loads(response.read())


def _wait_until_up(base: str, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            with urllib.request.urlopen(base + "/healthz", timeout=2):
                return
        except (urllib.error.URLError, ConnectionError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.25)


def _demo(settings: Settings, base: str) -> None:
    """A test-environment customer with a plan and credits, and how to poke at it."""
    catalog = prepare_store(settings)
    _, key = KeyStore(catalog.engine).create("test", settings.clock(), "demo")
    plans = catalog.env_catalog("test").latest
    plan = "pro" if "pro" in plans else next(iter(plans), None)
    _request(
        base,
        key,
        "POST",
        "/v1/customers",
        {"id": "acme", "name": "Acme AI", "currency": "EUR", "country": "DE"},
    )
    if plan is not None:
        _request(base, key, "POST", "/v1/subscriptions", {"customer_id": "acme", "plan": plan})
    _request(base, key, "POST", "/v1/customers/acme/credits", {"amount": "100.00"})
    portal = _request(base, key, "POST", "/v1/portal-sessions", {"customer_id": "acme"})
    auth = f'-H "Authorization: Bearer {key}"'
    event = json.dumps(
        {
            "id": "evt_demo_1",
            "customer_id": "acme",
            "type": "llm.completion",
            "properties": {"model": "gpt-4o", "input_tokens": 1200, "output_tokens": 350},
        }
    )
    check = json.dumps(
        {
            "customer_id": "acme",
            "event": {
                "type": "llm.completion",
                "properties": {"model": "gpt-4o", "input_tokens": 50000, "output_tokens": 2000},
            },
        }
    )
    print(
        f"""
Tallyray is running at {base}  (API docs: {base}/docs, metrics: {base}/metrics)
Admin key (manages keys):      {settings.admin_key}
Test key (demo customer acme): {key}

Try it:
  curl -s {auth} -H 'Content-Type: application/json' -X POST {base}/v1/events -d '[{event}]'
  curl -s {auth} -H 'Content-Type: application/json' -X POST {base}/v1/quota/check -d '{check}'
  curl -s {auth} {base}/v1/customers/acme/balance

Acme's customer portal (for an hour): {base}{portal["url"]}
Invoices for the periods that have ended:  tallyray invoice run --key {key}

Press Ctrl-C to stop.""",
        flush=True,
    )


def run_server(settings: Settings, demo: bool = False) -> None:
    configure_logging()
    check_payment_settings(settings)  # before anything starts: a test key must not go live
    if demo and not settings.admin_key:
        settings = Settings(**{**settings.to_dict(), "admin_key": generate_key(ADMIN)})
    ensure_port_free(settings.host, settings.port)
    catalog = prepare_store(settings)
    settings = settle_shards(settings, catalog.engine)
    maintain_event_log(settings, catalog.engine)
    given_file = settings.secrets_file
    settings = share_secrets(settings)  # the processes started below read them from there
    start_ray(settings)
    stopping = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        log.info("signal %d: stopping", signum)
        stopping.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        start_shards(settings)
        start_webhook_deliverer(settings)
        start_ingress(settings)
        base = f"http://{settings.host}:{settings.port}"
        _wait_until_up(base)
        log.info(
            "serving on %s with %d shards",
            base,
            settings.shard_count,
            extra={"database": redact(settings.database_url)},
        )
        if demo:
            _demo(settings, base)
        else:
            print(f"Tallyray is serving on {base}", flush=True)
        last_maintenance = time.monotonic()
        while not stopping.wait(0.5):
            if time.monotonic() - last_maintenance >= EVENT_LOG_MAINTENANCE_SECONDS:
                last_maintenance = time.monotonic()
                try:
                    maintain_event_log(settings, catalog.engine)
                except Exception:  # the server keeps serving; the next round tries again
                    log.exception("event log maintenance failed")
    finally:
        stop(settings)
        if settings.secrets_file and settings.secrets_file != given_file:
            remove_secrets_file(settings.secrets_file)
        print("Tallyray stopped.", file=sys.stderr, flush=True)
