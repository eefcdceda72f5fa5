"""Webhook endpoints and delivery, on each store: signed messages (checked by the independent
``standardwebhooks`` verifier in the receiver), fan-out by environment and event type,
retries on the schedule with a stable ``webhook-id``, 410 disabling the endpoint, a slow
endpoint that delays no one else, claiming, the delivery log, the test event, and the Ray
actor that runs it all.

The receiver is a real HTTP server on 127.0.0.1, which the destination policy refuses: the
tests of delivery allow private destinations explicitly (``allow_private=True``), and the
tests of the policy (the last sections) resolve made-up names with a fake DNS. The deliverer
is driven with an injected ``now``: no test sleeps through a backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import socket
import ssl
import threading
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import ray
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from sqlalchemy import delete, insert, select
from standardwebhooks.webhooks import Webhook, WebhookVerificationError
from starlette.concurrency import run_in_threadpool
from suite_clock import CLOCK
from support import Server, unique

from tallyray.alerts.deliverer import ACTOR_NAME, CURSOR, Attempt, Deliverer, start_webhooks
from tallyray.alerts.egress import Resolve, system_resolve
from tallyray.errors import TallyrayError, Unauthorized
from tallyray.serve.app import build_app
from tallyray.serve.routes import webhooks
from tallyray.serve.shards import NAMESPACE
from tallyray.storage import tables as t
from tallyray.storage.alerts import write_messages
from tallyray.storage.keys import KeyStore
from tallyray.storage.webhooks import WebhookStore

pytestmark = pytest.mark.anyio

SECOND = 1_000_000
ALERT = {
    "customer_id": "acme",
    "currency": "EUR",
    "rule": {"id": "alr_1", "kind": "balance_below", "threshold": "2.00"},
    "value": "1.50",
}
INVOICE = {"invoice_id": "inv_1", "number": "INV-0001", "customer_id": "acme", "total": "9.00"}
BODY_OF_AN_ERROR = b"boom: redis_version:7.2.4 (what an internal service might answer)"
"""The receiver's body for every status of 300 and up: it must never reach the delivery log."""


def now_us() -> int:
    return CLOCK()


# -- a real receiver on loopback -------------------------------------------------------------


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float
    verified: Any
    """The body as the Standard Webhooks verifier parsed it, or ``"invalid: ..."``."""

    @property
    def webhook_id(self) -> str:
        return self.headers["webhook-id"]


@dataclass
class Receiver:
    """Answers each path with its scripted statuses (the last one repeats), after an optional
    delay, and verifies every request with the path's endpoint secret. With ``tls`` (a server
    context) it speaks https."""

    answers: dict[str, list[int]] = field(default_factory=dict)
    delays: dict[str, float] = field(default_factory=dict)
    secrets: dict[str, str] = field(default_factory=dict)
    requests: list[Received] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    tls: ssl.SSLContext | None = None

    def __post_init__(self) -> None:
        self.server = _Server(("127.0.0.1", 0), _handler(self))
        if self.tls is not None:
            self.server.socket = self.tls.wrap_socket(self.server.socket, server_side=True)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        scheme = "http" if self.tls is None else "https"
        return f"{scheme}://{host}:{self.port}{path}"

    def got(self, path: str) -> list[Received]:
        with self.lock:
            return [r for r in self.requests if r.path == path]

    def answer(self, path: str) -> int:
        with self.lock:
            script = self.answers.setdefault(path, [200])
            return script.pop(0) if len(script) > 1 else script[0]

    def close(self) -> None:
        self.release.set()  # wake slow handlers
        self.server.shutdown()
        self.server.server_close()  # joins the handler threads
        self.thread.join()


class _Server(ThreadingHTTPServer):
    daemon_threads = False
    block_on_close = True


def _handler(receiver: Receiver) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        # Keep-alive, as most receivers: a client that reused a connection would be seen.
        protocol_version = "HTTP/1.1"
        timeout = 10  # an idle kept connection does not hold close() for longer

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", 0)))
            headers = {k.lower(): v for k, v in self.headers.items()}
            try:
                verified = Webhook(receiver.secrets[self.path]).verify(body, headers)
            except (KeyError, WebhookVerificationError) as error:
                verified = f"invalid: {error!r}"
            with receiver.lock:
                receiver.requests.append(
                    Received(self.path, headers, body, time.monotonic(), verified)
                )
            receiver.release.wait(receiver.delays.get(self.path, 0))
            status = receiver.answer(self.path)
            try:
                self.send_response(status)
                self.send_header(
                    "content-length", str(4 if status < 300 else len(BODY_OF_AN_ERROR))
                )
                if 300 <= status < 400:
                    self.send_header("location", "/redirected")
                self.end_headers()
                self.wfile.write(b"ok\n\n" if status < 300 else BODY_OF_AN_ERROR)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the deliverer gave up waiting

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


# -- the harness -----------------------------------------------------------------------------


@dataclass
class Hooks:
    server: Server
    store: WebhookStore
    receiver: Receiver
    client: httpx.AsyncClient
    deliverers: list[Deliverer] = field(default_factory=list)

    async def endpoint(
        self, path: str, event_types: list[str], key: str | None = None
    ) -> dict[str, Any]:
        async with self._client(key) as client:
            r = await client.post(
                "/v1/webhook-endpoints",
                json={"url": self.receiver.url(path), "event_types": event_types},
            )
        assert r.status_code == 201, r.text
        self.receiver.secrets[path] = r.json()["secret"]
        return dict(r.json())

    def _client(self, key: str | None) -> httpx.AsyncClient:
        return webhook_client(self.client._transport, key or self.server.test_key)

    def announce(self, event_type: str, payload: dict[str, Any], env: str = "test") -> str:
        """Write an outbox message, as a shard or an invoice run does."""
        message_id = unique(event_type)
        with self.server.catalog.engine.begin() as conn:
            write_messages(
                conn,
                [
                    {
                        "id": message_id,
                        "env": env,
                        "type": event_type,
                        "payload": payload,
                        "created_at": now_us(),
                    }
                ],
            )
        return message_id

    def deliverer(self, **options: Any) -> Deliverer:
        """A deliverer that may send to the loopback receiver, unless ``options`` say
        otherwise."""
        made = Deliverer(self.store, **{"allow_private": True, **options})
        self.deliverers.append(made)
        return made

    async def log(self, endpoint_id: str, query: str = "") -> list[dict[str, Any]]:
        r = await self.client.get(f"/v1/webhook-endpoints/{endpoint_id}/deliveries{query}")
        assert r.status_code == 200, r.text
        return list(r.json()["deliveries"])


def webhook_app(
    server: Server,
    store: WebhookStore,
    deliverer: Deliverer | None = None,
    *,
    allow_private: bool = True,
    resolve: Resolve = system_resolve,
) -> Any:
    """The webhook routes alone, with a small key check in place of the server's; by
    default they accept the loopback receiver's URLs."""
    app = FastAPI()

    @app.exception_handler(TallyrayError)
    async def _error(request: Request, error: TallyrayError) -> Response:
        return JSONResponse(error.to_json(), status_code=error.http_status)

    async def authenticate(request: Request) -> str:
        key = request.headers.get("authorization", "").removeprefix("Bearer ")
        found = await run_in_threadpool(KeyStore(server.catalog.engine).find, key)
        if found is None:
            raise Unauthorized("unknown API key")
        return found.env

    webhooks.include(
        app,
        webhooks.WebhookRoutes(
            store=store,
            authenticate=authenticate,
            clock=now_us,
            deliverer=deliverer,
            allow_private=allow_private,
            resolve=resolve,
        ),
    )
    return app


def webhook_client(transport: Any, key: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=transport,
        base_url="http://tallyray.test",
        headers={"Authorization": f"Bearer {key}"},
    )


@pytest.fixture(scope="module", autouse=True)
def _no_other_deliverer(server: Server) -> None:
    """These tests drive the deliverer by hand: no actor may deliver beside them."""
    with contextlib.suppress(ValueError):
        ray.kill(ray.get_actor(ACTOR_NAME, namespace=NAMESPACE), no_restart=True)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    made = Receiver()
    yield made
    made.close()


@pytest.fixture
async def hooks(server: Server, receiver: Receiver) -> AsyncIterator[Hooks]:
    store = WebhookStore(server.catalog.engine)
    store.move_cursor(CURSOR, store.outbox_end())  # other tests' messages are not ours
    transport = httpx.ASGITransport(app=webhook_app(server, store))
    async with webhook_client(transport, server.test_key) as client:
        made = Hooks(server, store, receiver, client)
        yield made
        for deliverer in made.deliverers:
            await deliverer.aclose()
    for env in ("test", "live"):
        for endpoint in store.endpoints(env):
            store.delete_endpoint(env, endpoint.id)


def outcomes(attempts: list[Attempt]) -> list[str]:
    return sorted(a.outcome for a in attempts)


# -- endpoints over the API ------------------------------------------------------------------


async def test_the_secret_is_shown_once_and_every_endpoint_belongs_to_its_environment(
    hooks: Hooks,
) -> None:
    created = await hooks.endpoint("/a", ["alert.triggered", "invoice.paid", "alert.triggered"])
    assert created["secret"].startswith("whsec_")
    assert created["event_types"] == ["alert.triggered", "invoice.paid"]  # once each
    assert created["status"] == "enabled"
    shown = (await hooks.client.get(f"/v1/webhook-endpoints/{created['id']}")).json()
    assert "secret" not in shown
    assert shown == {k: v for k, v in created.items() if k != "secret"}
    listed = (await hooks.client.get("/v1/webhook-endpoints")).json()["endpoints"]
    assert [e["id"] for e in listed] == [created["id"]]
    assert "secret" not in listed[0]
    assert hooks.store.endpoint("test", created["id"]).secret == created["secret"]

    async with hooks._client(hooks.server.live_key) as live:
        assert (await live.get("/v1/webhook-endpoints")).json() == {
            "endpoints": [],
            "has_more": False,
        }
        r = await live.get(f"/v1/webhook-endpoints/{created['id']}")
        assert r.status_code == 404, r.text
        assert r.json()["error"]["type"] == "not_found"


@pytest.mark.parametrize(
    ("body", "where"),
    [
        ({"url": "ftp://127.0.0.1/x", "event_types": ["alert.triggered"]}, ["url"]),
        ({"url": "http://", "event_types": ["alert.triggered"]}, ["url"]),
        ({"url": "127.0.0.1/hook", "event_types": ["alert.triggered"]}, ["url"]),
        ({"url": 42, "event_types": ["alert.triggered"]}, ["url"]),
        ({"url": "https://127.0.0.1/x", "event_types": []}, ["event_types"]),
        ({"url": "https://127.0.0.1/x", "event_types": "alert.triggered"}, ["event_types"]),
        (
            {"url": "https://127.0.0.1/x", "event_types": ["alert.triggered", "alert.fired"]},
            ["event_types[1]"],
        ),
        ({"url": "https://127.0.0.1/x", "event_types": ["webhook.test"]}, ["event_types[0]"]),
        (
            {"url": "https://127.0.0.1/x", "event_types": ["invoice.paid"], "secret": "mine"},
            ["secret"],
        ),
        (
            {"url": "https://127.0.0.1/x", "event_types": ["invoice.paid"], "description": 7},
            ["description"],
        ),
        ({}, ["url", "event_types"]),
        ([], []),  # not an object
    ],
)
async def test_a_bad_endpoint_is_a_422_naming_the_field(
    hooks: Hooks, body: Any, where: list[str]
) -> None:
    r = await hooks.client.post("/v1/webhook-endpoints", json=body)
    assert r.status_code == 422, r.text
    assert [d["where"] for d in r.json()["error"]["details"]] == where
    assert hooks.store.endpoints("test") == []


@pytest.mark.parametrize(
    ("method", "suffix"),
    [
        ("GET", ""),
        ("DELETE", ""),
        ("POST", "/disable"),
        ("POST", "/enable"),
        ("GET", "/deliveries"),
        ("POST", "/test"),
    ],
)
async def test_an_unknown_endpoint_is_a_404(hooks: Hooks, method: str, suffix: str) -> None:
    r = await hooks.client.request(method, f"/v1/webhook-endpoints/we_nope{suffix}")
    assert r.status_code == 404, r.text
    assert r.json()["error"]["type"] == "not_found"


async def test_disable_enable_and_delete(hooks: Hooks) -> None:
    endpoint = await hooks.endpoint("/a", ["invoice.paid"])
    url = f"/v1/webhook-endpoints/{endpoint['id']}"
    r = await hooks.client.post(f"{url}/disable", json={"reason": "maintenance"})
    assert r.status_code == 200, r.text
    assert (r.json()["status"], r.json()["disabled_reason"]) == ("disabled", "maintenance")
    r = await hooks.client.post(f"{url}/test")
    assert r.status_code == 409, r.text  # a disabled endpoint receives nothing
    r = await hooks.client.post(f"{url}/enable")
    assert (r.json()["status"], r.json()["disabled_reason"]) == ("enabled", None)
    assert (await hooks.client.delete(url)).json() == {"deleted": endpoint["id"]}
    assert (await hooks.client.get(url)).status_code == 404


# -- fan-out and delivery --------------------------------------------------------------------


async def test_a_message_goes_to_the_subscribed_endpoints_of_its_environment_only(
    hooks: Hooks,
) -> None:
    alerts = await hooks.endpoint("/alerts", ["alert.triggered", "alert.recovered"])
    invoices = await hooks.endpoint("/invoices", ["invoice.paid"])
    live = await hooks.endpoint("/live", ["alert.triggered"], key=hooks.server.live_key)
    off = await hooks.endpoint("/off", ["alert.triggered"])
    await hooks.client.post(f"/v1/webhook-endpoints/{off['id']}/disable")
    deliverer = hooks.deliverer()
    now = now_us()

    message_id = hooks.announce("alert.triggered", ALERT)
    assert await deliverer.fan_out(now) == 1  # /alerts only
    assert await deliverer.fan_out(now) == 0  # the cursor moved on
    hooks.store.move_cursor(CURSOR, 0)
    hooks.store.move_cursor(CURSOR, -1)  # a cursor never moves back ...
    assert await deliverer.fan_out(now) == 0  # ... and a message is stored once per endpoint

    assert outcomes(await deliverer.deliver_due(now)) == ["succeeded"]
    [got] = hooks.receiver.got("/alerts")
    assert got.webhook_id == message_id
    assert got.headers["content-type"] == "application/json"
    assert got.verified == {
        "type": "alert.triggered",
        "timestamp": got.verified["timestamp"],
        "data": ALERT,
    }
    for path in ("/invoices", "/live", "/off"):
        assert hooks.receiver.got(path) == []

    [entry] = await hooks.log(alerts["id"])
    assert {k: entry[k] for k in ("message_id", "event_type", "status", "attempts")} == {
        "message_id": message_id,
        "event_type": "alert.triggered",
        "status": "succeeded",
        "attempts": 1,
    }
    assert (entry["last_status_code"], entry["last_error"], entry["next_attempt_at"]) == (
        200,
        None,
        None,
    )
    for other in (invoices, off):
        assert await hooks.log(other["id"]) == []
    async with hooks._client(hooks.server.live_key) as client:
        r = await client.get(f"/v1/webhook-endpoints/{live['id']}/deliveries")
        assert r.json() == {"deliveries": [], "has_more": False}


@pytest.mark.parametrize(
    ("answer", "outcome", "error"),
    [
        (200, "succeeded", None),
        (204, "succeeded", None),
        (301, "retry", "HTTP 301 Moved Permanently"),  # redirects are not followed
        (429, "retry", "HTTP 429 Too Many Requests"),
        (500, "retry", "HTTP 500 Internal Server Error"),  # its phrase, never the body
        (410, "gone", "the endpoint answered 410 Gone at "),
        (None, "retry", "connection refused"),  # nothing listens there
    ],
)
async def test_what_an_answer_comes_to(
    hooks: Hooks, answer: int | None, outcome: str, error: str | None
) -> None:
    deliverer = hooks.deliverer()
    now = now_us()
    with closed_port() as port:
        if answer is None:
            r = await hooks.client.post(
                "/v1/webhook-endpoints",
                json={"url": f"http://127.0.0.1:{port}/hook", "event_types": ["invoice.paid"]},
            )
            endpoint = r.json()
        else:
            endpoint = await hooks.endpoint("/hook", ["invoice.paid"])
            hooks.receiver.answers["/hook"] = [answer]
        hooks.announce("invoice.paid", INVOICE)
        await deliverer.fan_out(now)
        [attempt] = await deliverer.deliver_due(now)
    assert attempt.outcome == outcome
    assert attempt.status_code == answer
    assert (attempt.error or "").startswith(error or "")
    [entry] = await hooks.log(endpoint["id"])
    status = {"succeeded": "succeeded", "retry": "pending", "gone": "failed"}[outcome]
    assert (entry["status"], entry["attempts"], entry["last_status_code"]) == (status, 1, answer)
    assert entry["last_error"] == attempt.error
    assert BODY_OF_AN_ERROR.decode() not in str(entry)
    assert hooks.receiver.got("/redirected") == []


@contextlib.contextmanager
def closed_port() -> Iterator[int]:
    """A loopback port that refuses connections (bound, never listening)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield int(sock.getsockname()[1])


async def test_the_cursor_waits_at_a_gap_in_the_outbox(hooks: Hooks) -> None:
    """On Postgres an outbox row can become visible after a row numbered later (its
    transaction commits later), or never (its number was used up by a rollback or a
    conflict). Rows past a gap are fanned out at once; the cursor waits at the gap for a
    minute, then moves on."""
    await hooks.endpoint("/gaps", ["invoice.paid"])
    deliverer = hooks.deliverer(gap_seconds=60)
    outbox, engine = t.outbox, hooks.store.engine
    now = now_us()
    a, b, c = (hooks.announce("invoice.paid", INVOICE) for _ in range(3))
    with engine.begin() as conn:  # b is still being committed
        late = conn.execute(select(outbox).where(outbox.c.id == b)).one()._asdict()
        conn.execute(delete(outbox).where(outbox.c.id == b))
    seq_a = late["seq"] - 1
    assert await deliverer.fan_out(now) == 2  # a and c
    assert hooks.store.cursor(CURSOR) == seq_a
    assert await deliverer.fan_out(now + 30 * SECOND) == 0
    assert hooks.store.cursor(CURSOR) == seq_a
    with engine.begin() as conn:  # ... and now it is in
        conn.execute(insert(outbox).values(late))
    assert await deliverer.fan_out(now + 31 * SECOND) == 1
    assert hooks.store.cursor(CURSOR) == seq_a + 2  # past c

    d, e = (hooks.announce("invoice.paid", INVOICE) for _ in range(2))
    with engine.begin() as conn:  # d never commits
        conn.execute(delete(outbox).where(outbox.c.id == d))
    assert await deliverer.fan_out(now + 40 * SECOND) == 1  # e
    assert await deliverer.fan_out(now + 99 * SECOND) == 0
    assert hooks.store.cursor(CURSOR) == seq_a + 2
    assert await deliverer.fan_out(now + 100 * SECOND) == 0
    assert hooks.store.cursor(CURSOR) == seq_a + 4  # past the gap, at e
    assert outcomes(await deliverer.deliver_due(now + 100 * SECOND)) == ["succeeded"] * 4
    assert {r.webhook_id for r in hooks.receiver.got("/gaps")} == {a, b, c, e}


async def test_a_failed_delivery_is_retried_with_the_same_webhook_id(hooks: Hooks) -> None:
    endpoint = await hooks.endpoint("/flaky", ["invoice.paid"])
    hooks.receiver.answers["/flaky"] = [500, 200]
    deliverer = hooks.deliverer(random=lambda: 0.5)  # no jitter: 5 s after the first failure
    t0 = now_us()
    message_id = hooks.announce("invoice.paid", INVOICE)
    await deliverer.fan_out(t0)

    [first] = await deliverer.deliver_due(t0)
    assert (first.outcome, first.status_code, first.next_attempt_at) == (
        "retry",
        500,
        t0 + 5 * SECOND,
    )
    [entry] = await hooks.log(endpoint["id"])
    assert (entry["status"], entry["attempts"], entry["last_error"]) == (
        "pending",
        1,
        "HTTP 500 Internal Server Error",
    )
    assert entry["next_attempt_at"] is not None

    assert await deliverer.deliver_due(t0 + 4 * SECOND) == []  # not due yet
    assert outcomes(await deliverer.deliver_due(t0 + 5 * SECOND)) == ["succeeded"]
    got = hooks.receiver.got("/flaky")
    assert [r.webhook_id for r in got] == [message_id, message_id]
    assert got[0].body == got[1].body  # the same bytes, signed afresh each time
    assert all(isinstance(r.verified, dict) for r in got), [r.verified for r in got]
    [entry] = await hooks.log(endpoint["id"])
    assert (entry["status"], entry["attempts"], entry["last_status_code"]) == ("succeeded", 2, 200)


async def test_a_dead_endpoint_gets_eight_attempts_over_more_than_a_day(hooks: Hooks) -> None:
    endpoint = await hooks.endpoint("/dead", ["credits.depleted"])
    hooks.receiver.answers["/dead"] = [503]
    deliverer = hooks.deliverer(random=lambda: 0.0)  # every wait 20% short: the shortest run
    t0 = now = now_us()
    hooks.announce("credits.depleted", {**ALERT, "credits_remaining": "0"})
    await deliverer.fan_out(now)
    waits = []
    for _ in range(7):
        [attempt] = await deliverer.deliver_due(now)
        assert attempt.outcome == "retry" and attempt.next_attempt_at is not None
        waits.append((attempt.next_attempt_at - now) / SECOND)
        now = attempt.next_attempt_at
    [last] = await deliverer.deliver_due(now)
    # 0.8 × (5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 14 h)
    assert waits == [4.0, 240.0, 1440.0, 5760.0, 14400.0, 28800.0, 40320.0]
    assert (last.outcome, last.next_attempt_at) == ("failed", None)
    assert (now - t0) / SECOND == 90_964.0 >= 24 * 3600
    assert len(hooks.receiver.got("/dead")) == 8
    [entry] = await hooks.log(endpoint["id"])
    assert (entry["status"], entry["attempts"], entry["next_attempt_at"]) == ("failed", 8, None)
    assert await deliverer.deliver_due(now + 100 * 3600 * SECOND) == []


async def test_410_disables_the_endpoint_and_stops_its_deliveries(hooks: Hooks) -> None:
    endpoint = await hooks.endpoint("/gone", ["alert.triggered"])
    hooks.receiver.answers["/gone"] = [410, 200]
    deliverer = hooks.deliverer(per_endpoint=1)  # one at a time: the 410 comes first
    now = now_us()
    messages = {hooks.announce("alert.triggered", ALERT) for _ in range(2)}
    await deliverer.fan_out(now)
    assert outcomes(await deliverer.deliver_due(now)) == ["gone"]
    assert await deliverer.deliver_due(now) == []
    [first] = [r.webhook_id for r in hooks.receiver.got("/gone")]
    [second] = messages - {first}

    shown = (await hooks.client.get(f"/v1/webhook-endpoints/{endpoint['id']}")).json()
    assert shown["status"] == "disabled"
    assert shown["disabled_reason"].startswith("the endpoint answered 410 Gone")
    log = {e["message_id"]: e for e in await hooks.log(endpoint["id"])}
    assert (log[first]["status"], log[first]["attempts"], log[first]["last_status_code"]) == (
        "failed",
        1,
        410,
    )
    assert (log[second]["status"], log[second]["attempts"]) == ("stopped", 0)
    assert log[second]["last_error"].startswith("endpoint disabled: the endpoint answered 410")

    hooks.announce("alert.triggered", ALERT)  # while disabled: not fanned out to it
    assert await deliverer.fan_out(now) == 0
    await hooks.client.post(f"/v1/webhook-endpoints/{endpoint['id']}/enable")
    third = hooks.announce("alert.triggered", ALERT)
    assert await deliverer.fan_out(now) == 1
    assert outcomes(await deliverer.deliver_due(now)) == ["succeeded"]
    assert [r.webhook_id for r in hooks.receiver.got("/gone")] == [first, third]


async def test_a_slow_endpoint_delays_no_one_else(hooks: Hooks) -> None:
    await hooks.endpoint("/slow", ["alert.triggered"])
    await hooks.endpoint("/fast", ["invoice.paid"])
    hooks.receiver.delays["/slow"] = 5.0
    # The slow endpoint's 3 alerts are older than the invoice, but it may hold only 2 of
    # the 3 sends in flight: the fast endpoint always gets its turn.
    deliverer = hooks.deliverer(timeout=1.5, per_endpoint=2, max_in_flight=3)
    now = now_us()
    for _ in range(3):
        hooks.announce("alert.triggered", ALERT)
    hooks.announce("invoice.paid", INVOICE)
    await deliverer.fan_out(now)

    started = time.monotonic()
    attempts = await deliverer.deliver_due(now)
    took = time.monotonic() - started
    [fast] = hooks.receiver.got("/fast")
    assert fast.at - started < 1.0  # sent at once, not after the slow ones
    assert 1.5 <= took < 4.0  # the slow sends were cut off at the timeout, not waited out
    assert sorted((a.outcome, a.error) for a in attempts) == [
        ("retry", "timed out after 1.5 s"),
        ("retry", "timed out after 1.5 s"),
        ("succeeded", None),
    ]
    assert len(hooks.receiver.got("/slow")) == 2  # the third waits for the next round


async def test_two_deliverers_never_send_the_same_attempt(hooks: Hooks) -> None:
    endpoint = await hooks.endpoint("/once", ["invoice.paid"])
    first, second = hooks.deliverer(per_endpoint=10), hooks.deliverer(per_endpoint=10)
    now = now_us()
    sent = {hooks.announce("invoice.paid", INVOICE) for _ in range(6)}
    await asyncio.gather(first.fan_out(now), second.fan_out(now))

    ones, twos = await asyncio.gather(first.deliver_due(now), second.deliver_due(now))
    assert len(ones) + len(twos) == 6
    assert sorted(r.webhook_id for r in hooks.receiver.got("/once")) == sorted(sent)

    # A claim holds a delivery for its lease; once the lease runs out (its deliverer died
    # mid-send) the delivery is sent again.
    late = hooks.announce("invoice.paid", INVOICE)
    await first.fan_out(now)
    [(delivery_id, _)] = hooks.store.due(now, 10, 10)
    [claimed] = hooks.store.claim([delivery_id], now, now + 60 * SECOND)
    assert claimed.message_id == late
    assert await second.deliver_due(now) == []
    assert await second.deliver_due(now + 59 * SECOND) == []
    assert outcomes(await second.deliver_due(now + 60 * SECOND)) == ["succeeded"]
    assert hooks.store.record(claimed, now, "succeeded", 200, None) is False  # lease lost
    log = {e["message_id"]: e for e in await hooks.log(endpoint["id"], "?status=succeeded")}
    assert set(log) == sent | {late}
    assert {e["attempts"] for e in log.values()} == {1}


async def test_the_delivery_log_filters(hooks: Hooks) -> None:
    endpoint = await hooks.endpoint("/log", ["invoice.paid"])
    hooks.receiver.answers["/log"] = [200, 500]
    deliverer = hooks.deliverer(per_endpoint=1)
    now = now_us()
    ok = hooks.announce("invoice.paid", INVOICE)
    await deliverer.fan_out(now)
    await deliverer.deliver_due(now)
    failing = hooks.announce("invoice.paid", INVOICE)
    await deliverer.fan_out(now + 1)
    await deliverer.deliver_due(now + 1)
    assert [e["message_id"] for e in await hooks.log(endpoint["id"])] == [failing, ok]
    assert [e["message_id"] for e in await hooks.log(endpoint["id"], "?status=pending")] == [
        failing
    ]
    assert len(await hooks.log(endpoint["id"], "?limit=1")) == 1
    for query in ("?status=lost", "?limit=0", "?limit=5000"):
        r = await hooks.client.get(f"/v1/webhook-endpoints/{endpoint['id']}/deliveries{query}")
        assert r.status_code == 422, r.text


async def test_the_test_event_goes_to_one_endpoint(hooks: Hooks) -> None:
    everything = ["alert.triggered", "invoice.paid", "payment.failed"]
    target = await hooks.endpoint("/target", everything)
    await hooks.endpoint("/bystander", everything)
    deliverer = hooks.deliverer()
    r = await hooks.client.post(f"/v1/webhook-endpoints/{target['id']}/test")
    assert r.status_code == 202, r.text
    assert r.json()["type"] == "webhook.test"
    now = now_us()
    assert await deliverer.fan_out(now) == 0  # nobody subscribes to webhook.test
    assert outcomes(await deliverer.deliver_due(now)) == ["succeeded"]
    [got] = hooks.receiver.got("/target")
    assert got.webhook_id == r.json()["message_id"]
    assert got.verified["type"] == "webhook.test"
    assert got.verified["data"]["endpoint_id"] == target["id"]
    assert hooks.receiver.got("/bystander") == []
    [entry] = await hooks.log(target["id"])
    assert (entry["id"], entry["status"]) == (r.json()["delivery_id"], "succeeded")


async def test_with_a_deliverer_the_test_event_is_sent_at_once(hooks: Hooks) -> None:
    target = await hooks.endpoint("/now", ["invoice.paid"])
    deliverer = hooks.deliverer()
    app = webhook_app(hooks.server, hooks.store, deliverer)
    async with webhook_client(httpx.ASGITransport(app=app), hooks.server.test_key) as client:
        r = await client.post(f"/v1/webhook-endpoints/{target['id']}/test")
        assert r.status_code == 202, r.text
        for _ in range(100):
            if hooks.receiver.got("/now"):
                break
            await asyncio.sleep(0.05)
    [got] = hooks.receiver.got("/now")
    assert got.verified["type"] == "webhook.test"
    for _ in range(100):
        [entry] = await hooks.log(target["id"])
        if entry["status"] == "succeeded":
            break
        await asyncio.sleep(0.05)
    assert entry["status"] == "succeeded"


# -- the actor ----------------------------------------------------------------------------


async def test_the_webhook_actor_delivers(hooks: Hooks) -> None:
    await hooks.endpoint("/actor", ["alert.recovered"])
    handle = start_webhooks(
        hooks.server.settings.database_url,
        interval=0.2,
        clock_offset_us=CLOCK.offset_us,
        allow_private=True,  # the receiver is on loopback
    )
    try:
        assert ray.get_actor(ACTOR_NAME, namespace=NAMESPACE) is not None
        message_id = hooks.announce("alert.recovered", ALERT)
        for _ in range(300):
            if hooks.receiver.got("/actor"):
                break
            await asyncio.sleep(0.05)
        [got] = hooks.receiver.got("/actor")
        assert got.webhook_id == message_id
        assert got.verified["data"] == ALERT
        status = await handle.status.remote()
        assert status["rounds"] >= 1 and status["last_error"] is None
    finally:
        ray.kill(handle, no_restart=True)


# -- egress: where webhooks may go -----------------------------------------------------------


class FakeDNS:
    """Made-up names for the egress tests, each resolving to what ``answers`` says (a list can
    be changed between lookups); numeric spellings (``2130706433``) go to the system
    resolver, which reads them without asking anyone; any other name does not resolve."""

    def __init__(self, answers: dict[str, Sequence[str]]) -> None:
        self.answers = answers

    async def __call__(self, host: str, port: int) -> list[str]:
        if host in self.answers:
            return list(self.answers[host])
        if host[:1].isdigit():
            return await system_resolve(host, port)
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")


PUBLIC = "93.184.215.14"  # never connected to: each test refuses or pins before that
DNS = {
    "hooks.example.test": [PUBLIC],
    "internal.example.test": ["10.0.0.5"],
    "mixed.example.test": [PUBLIC, "192.168.1.20"],
    "metadata.example.test": ["::ffff:169.254.169.254"],
    "localhost": ["127.0.0.1"],  # asked only when the policy is off
}


async def create_endpoint(
    hooks: Hooks, url: str, resolve: Resolve, *, allow_private: bool, key: str | None = None
) -> httpx.Response:
    """``POST /v1/webhook-endpoints`` through routes with the given policy and resolver."""
    app = webhook_app(hooks.server, hooks.store, allow_private=allow_private, resolve=resolve)
    async with webhook_client(httpx.ASGITransport(app=app), key or hooks.server.test_key) as c:
        return await c.post(
            "/v1/webhook-endpoints", json={"url": url, "event_types": ["invoice.paid"]}
        )


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("http://127.0.0.1:{port}/hook", "127.0.0.1 is a loopback address"),
        ("http://[::1]:{port}/hook", "::1 is a loopback address"),
        ("http://localhost:{port}/hook", "localhost is a loopback name"),
        ("https://api.localhost/hook", "api.localhost is a loopback name"),
        ("http://2130706433:{port}/hook", "2130706433 resolves to 127.0.0.1, a loopback address"),
        ("http://0x7f.1:{port}/hook", "0x7f.1 resolves to 127.0.0.1, a loopback address"),
        (
            "http://[::ffff:127.0.0.1]:{port}/hook",
            "::ffff:7f00:1 is an IPv4-mapped form of 127.0.0.1, a loopback address",
        ),
        (
            "http://169.254.169.254/latest/meta-data/",
            "169.254.169.254 is a link-local address (the cloud metadata service)",
        ),
        ("http://10.0.0.5:6379/", "10.0.0.5 is a private address"),
        ("https://100.64.0.1/hook", "100.64.0.1 is a shared (CGNAT) address"),
        ("https://0.0.0.0/hook", "0.0.0.0 is an unspecified address"),
        (
            "https://internal.example.test/hook",
            "internal.example.test resolves to 10.0.0.5, a private address",
        ),
        (  # one private address among public ones refuses the name
            "https://mixed.example.test/hook",
            "mixed.example.test resolves to 192.168.1.20, a private address",
        ),
        (
            "https://metadata.example.test/hook",
            "metadata.example.test resolves to ::ffff:a9fe:a9fe, an IPv4-mapped form of "
            "169.254.169.254, a link-local address (the cloud metadata service)",
        ),
        ("https://nowhere.example.test/hook", "nowhere.example.test does not resolve"),
    ],
)
async def test_a_url_that_is_not_public_is_refused_at_creation(
    hooks: Hooks, url: str, problem: str
) -> None:
    r = await create_endpoint(
        hooks, url.format(port=hooks.receiver.port), FakeDNS(DNS), allow_private=False
    )
    assert r.status_code == 422, r.text
    assert r.json()["error"]["details"] == [{"where": "url", "message": problem}]
    assert hooks.store.endpoints("test") == []


@pytest.mark.parametrize(
    ("url", "allow_private", "problem"),
    [
        ("https://hooks.example.test/hook", False, None),  # public: always
        ("http://127.0.0.1:{port}/hook", True, None),
        ("http://localhost:{port}/hook", True, None),  # resolved, like any name
        ("https://internal.example.test/hook", True, None),
        ("https://nowhere.example.test/hook", True, "nowhere.example.test does not resolve"),
    ],
)
async def test_allow_private_accepts_any_address_but_not_a_name_that_does_not_resolve(
    hooks: Hooks, url: str, allow_private: bool, problem: str | None
) -> None:
    r = await create_endpoint(
        hooks, url.format(port=hooks.receiver.port), FakeDNS(DNS), allow_private=allow_private
    )
    if problem is None:
        assert r.status_code == 201, r.text
    else:
        assert r.status_code == 422, r.text
        assert r.json()["error"]["details"] == [{"where": "url", "message": problem}]


async def test_the_server_refuses_private_urls_unless_the_setting_allows_them(
    hooks: Hooks,
) -> None:
    """The real app: ``Services.webhook_allow_private`` (``TALLYRAY_WEBHOOK_ALLOW_PRIVATE``)
    reaches the routes."""
    url = hooks.receiver.url("/served")
    body = {"url": url, "event_types": ["invoice.paid"]}
    async with hooks.server.client() as client:
        r = await client.post("/v1/webhook-endpoints", json=body)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["details"] == [
        {"where": "url", "message": "127.0.0.1 is a loopback address"}
    ]
    allowing = build_app(replace(hooks.server.services, webhook_allow_private=True))
    async with webhook_client(httpx.ASGITransport(app=allowing), hooks.server.test_key) as client:
        r = await client.post("/v1/webhook-endpoints", json=body)
    assert r.status_code == 201, r.text


@pytest.mark.parametrize(
    ("answers", "error"),
    [
        (
            ["127.0.0.1"],
            "refused destination: hooks.example.test resolves to 127.0.0.1, a loopback address",
        ),
        (
            [PUBLIC, "10.0.0.5"],
            "refused destination: hooks.example.test resolves to 10.0.0.5, a private address",
        ),
        (
            ["::ffff:169.254.169.254"],
            "refused destination: hooks.example.test resolves to ::ffff:a9fe:a9fe, an "
            "IPv4-mapped form of 169.254.169.254, a link-local address (the cloud metadata "
            "service)",
        ),
        ([], "hooks.example.test does not resolve"),
    ],
)
async def test_a_name_checked_at_creation_is_checked_again_at_every_attempt(
    hooks: Hooks, answers: list[str], error: str
) -> None:
    """DNS rebinding: the name was public when the endpoint was created and points inside
    when the deliverer sends. The attempt fails without a connection, and is retried."""
    dns = FakeDNS({"hooks.example.test": [PUBLIC]})
    url = hooks.receiver.url("/rebind", host="hooks.example.test")
    r = await create_endpoint(hooks, url, dns, allow_private=False)
    assert r.status_code == 201, r.text
    endpoint = r.json()
    hooks.receiver.secrets["/rebind"] = endpoint["secret"]
    dns.answers["hooks.example.test"] = answers
    deliverer = hooks.deliverer(allow_private=False, resolve=dns)
    now = now_us()
    hooks.announce("invoice.paid", INVOICE)
    await deliverer.fan_out(now)

    [attempt] = await deliverer.deliver_due(now)
    assert (attempt.outcome, attempt.status_code, attempt.error) == ("retry", None, error)
    assert attempt.next_attempt_at is not None
    assert hooks.receiver.got("/rebind") == []
    [entry] = await hooks.log(endpoint["id"])
    assert (entry["status"], entry["attempts"], entry["last_status_code"], entry["last_error"]) == (
        "pending",
        1,
        None,
        error,
    )

    # Once allowed (and resolving), the same delivery goes to the address the deliverer
    # checked, under the name of the URL: the HTTP client never looked the name up itself.
    dns.answers["hooks.example.test"] = ["127.0.0.1"]
    allowed = hooks.deliverer(resolve=dns)
    [retried] = await allowed.deliver_due(attempt.next_attempt_at)
    assert retried.outcome == "succeeded", retried
    [got] = hooks.receiver.got("/rebind")
    assert got.headers["host"] == f"hooks.example.test:{hooks.receiver.port}"
    assert isinstance(got.verified, dict), got.verified


async def test_a_send_tries_the_next_checked_address_when_one_does_not_connect(
    hooks: Hooks,
) -> None:
    """Nothing listens on 127.0.0.2 (the receiver is bound to 127.0.0.1 only)."""
    dns = FakeDNS({"two.example.test": ["127.0.0.2", "127.0.0.1"]})
    r = await create_endpoint(
        hooks, hooks.receiver.url("/two", host="two.example.test"), dns, allow_private=True
    )
    hooks.receiver.secrets["/two"] = r.json()["secret"]
    deliverer = hooks.deliverer(resolve=dns)
    now = now_us()
    hooks.announce("invoice.paid", INVOICE)
    await deliverer.fan_out(now)
    assert outcomes(await deliverer.deliver_due(now)) == ["succeeded"]
    assert len(hooks.receiver.got("/two")) == 1

    dns.answers["two.example.test"] = ["127.0.0.2", "127.0.0.3"]
    hooks.announce("invoice.paid", INVOICE)
    await deliverer.fan_out(now)
    [attempt] = await deliverer.deliver_due(now)
    assert (attempt.outcome, attempt.error) == ("retry", "connection refused")


def tls_files(directory: Path, name: str) -> tuple[Path, ssl.SSLContext]:
    """A throwaway CA (its certificate written to a file, for ``SSL_CERT_FILE``) and a server
    context whose certificate, signed by that CA, is valid for ``name`` only."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    # TLS checks validity against the machine's real clock, not the suite's.
    now = datetime.datetime.now(datetime.UTC)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Tallyray test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    ca_file, cert_file, key_file = (directory / n for n in ("ca.pem", "cert.pem", "key.pem"))
    ca_file.write_bytes(ca.public_bytes(pem))
    cert_file.write_bytes(leaf.public_bytes(pem))
    key_file.write_bytes(
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_file, key_file)
    return ca_file, context


async def test_https_to_a_pinned_address_checks_the_certificate_for_the_real_name(
    hooks: Hooks, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The request goes to 127.0.0.1, but the TLS handshake names ``hooks.example.test``
    (SNI) and the certificate is checked against it. A second name on the same address gets
    a connection of its own, so a certificate checked for one name never vouches for
    another."""
    pytest.importorskip("cryptography")
    ca_file, context = tls_files(tmp_path, "hooks.example.test")
    names: list[str | None] = []
    context.sni_callback = lambda sock, name, ctx: names.append(name)  # type: ignore[assignment,misc,return-value]
    monkeypatch.setenv("SSL_CERT_FILE", str(ca_file))  # the deliverer's own client trusts the CA
    receiver = Receiver(tls=context)
    try:
        dns = FakeDNS({"hooks.example.test": ["127.0.0.1"], "other.example.test": ["127.0.0.1"]})
        good = await create_endpoint(
            hooks, receiver.url("/tls", host="hooks.example.test"), dns, allow_private=True
        )
        receiver.secrets["/tls"] = good.json()["secret"]
        deliverer = hooks.deliverer(resolve=dns)
        now = now_us()
        hooks.announce("invoice.paid", INVOICE)
        await deliverer.fan_out(now)
        assert outcomes(await deliverer.deliver_due(now)) == ["succeeded"]
        [got] = receiver.got("/tls")
        assert got.headers["host"] == f"hooks.example.test:{receiver.port}"
        assert isinstance(got.verified, dict), got.verified

        other = await create_endpoint(
            hooks, receiver.url("/other", host="other.example.test"), dns, allow_private=True
        )
        await hooks.client.post(f"/v1/webhook-endpoints/{good.json()['id']}/disable")
        hooks.announce("invoice.paid", INVOICE)
        await deliverer.fan_out(now)
        [attempt] = await deliverer.deliver_due(now)
        assert (attempt.outcome, attempt.error) == ("retry", "TLS certificate did not verify")
        assert receiver.got("/other") == []
        assert names == ["hooks.example.test", "other.example.test"]
        [entry] = await hooks.log(other.json()["id"])
        assert entry["last_error"] == "TLS certificate did not verify"
    finally:
        receiver.close()
