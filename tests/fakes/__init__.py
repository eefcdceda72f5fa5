"""Local stand-ins for outside services, speaking their real wire formats over real HTTP.

Each fake is a :class:`LocalServer`: a ``ThreadingHTTPServer`` on 127.0.0.1 with a free port,
served from a background thread, used as a context manager. It records every request it
receives, can simulate an outage (:meth:`LocalServer.fail_next`), and can deliver webhooks to a
URL from its own thread, as the real provider would (:meth:`LocalServer.wait_for_webhooks`).

- ``fakes.stripe_server.FakeStripe``: customers and PaymentIntents, signed events.
- ``fakes.adyen_server.FakeAdyen``: Checkout ``/payments``, HMAC-signed notifications.
- :class:`WebhookInbox`: a tiny receiver that records what was posted to it.

``python -m fakes stripe|adyen`` (from ``tests/``) serves one on a port of your choosing, for an
operator trying the money path against a running server without real cards
(``docs/payments.md``, "Test mode end to end").

Nothing here imports a provider SDK: signatures are computed from the providers' documented
schemes, so a test that passes proves the adapter and the fake agree on the documentation.
"""

from __future__ import annotations

import json
import queue
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self
from urllib.parse import urlsplit

__all__ = ["Delivery", "LocalServer", "Received", "Reply", "WebhookInbox"]


@dataclass(frozen=True)
class Received:
    """One request as the server saw it. Header names are lower case."""

    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass(frozen=True)
class Reply:
    status: int
    body: bytes = b""
    headers: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def of_json(cls, status: int, payload: object, **headers: str) -> Reply:
        return cls(
            status, json.dumps(payload).encode(), {"Content-Type": "application/json", **headers}
        )


@dataclass(frozen=True)
class Delivery:
    """One webhook the fake posted: what it sent and what came back."""

    url: str
    headers: dict[str, str]
    body: bytes
    status: int | None
    error: str | None = None


class LocalServer:
    """A real HTTP server on 127.0.0.1; subclasses answer in :meth:`respond`."""

    def __init__(self, port: int = 0) -> None:
        self._lock = threading.Lock()
        self._received: list[Received] = []
        self._outages: list[int] = []
        self._deliveries: list[Delivery] = []
        self._changed = threading.Condition(self._lock)
        self._outbox: queue.Queue[tuple[str, dict[str, str], bytes] | None] = queue.Queue()
        self._held: list[tuple[str, dict[str, str], bytes]] | None = None
        self._httpd = ThreadingHTTPServer(("127.0.0.1", port), _handler_for(self._dispatch))
        self._httpd.daemon_threads = True
        self._serving: threading.Thread | None = None
        self._sending: threading.Thread | None = None

    # -- life cycle ------------------------------------------------------------------------

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> Self:
        name = type(self).__name__
        self._serving = threading.Thread(
            # A short poll keeps stop() quick: shutdown() waits for the loop to notice.
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.01},
            name=name,
            daemon=True,
        )
        self._sending = threading.Thread(target=self._send_loop, name=f"{name}-hooks", daemon=True)
        self._serving.start()
        self._sending.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket: later requests get "connection refused"."""
        if self._serving is not None:
            self._httpd.shutdown()
            self._serving.join()
            self._serving = None
        if self._sending is not None:
            self._outbox.put(None)
            self._sending.join()
            self._sending = None
        self._httpd.server_close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- what tests look at ----------------------------------------------------------------

    @property
    def received(self) -> list[Received]:
        """Every request so far, oldest first."""
        with self._lock:
            return list(self._received)

    @property
    def webhooks(self) -> list[Delivery]:
        """Every webhook delivered so far, oldest first."""
        with self._lock:
            return list(self._deliveries)

    def fail_next(self, status: int = 500, times: int = 1) -> None:
        """Answer the next ``times`` requests with ``status`` and the provider's error body."""
        with self._lock:
            self._outages.extend([status] * times)

    def wait_for_requests(self, count: int, timeout: float = 5.0) -> list[Received]:
        """The first ``count`` requests received, waiting for them if needed."""
        with self._changed:
            if not self._changed.wait_for(lambda: len(self._received) >= count, timeout):
                raise TimeoutError(f"{len(self._received)} of {count} requests received")
            return self._received[:count]

    def wait_for_webhooks(self, count: int, timeout: float = 5.0) -> list[Delivery]:
        """The first ``count`` webhook deliveries, waiting for them to finish if needed."""
        with self._changed:
            if not self._changed.wait_for(lambda: len(self._deliveries) >= count, timeout):
                raise TimeoutError(f"{len(self._deliveries)} of {count} webhooks delivered")
            return self._deliveries[:count]

    def wait_for_matching(
        self, match: Callable[[Delivery], bool], count: int, timeout: float = 5.0
    ) -> list[Delivery]:
        """The webhook deliveries ``match`` accepts, once there are at least ``count``."""
        with self._changed:
            if not self._changed.wait_for(
                lambda: sum(1 for d in self._deliveries if match(d)) >= count, timeout
            ):
                raise TimeoutError(f"fewer than {count} matching webhooks delivered")
            return [d for d in self._deliveries if match(d)]

    # -- for subclasses --------------------------------------------------------------------

    def respond(self, request: Received) -> Reply:
        raise NotImplementedError

    def outage(self, status: int) -> Reply:
        """The body the provider sends with ``status`` when it is having a bad day."""
        return Reply.of_json(status, {"error": "outage"})

    def send_webhook(self, url: str, headers: dict[str, str], body: bytes) -> None:
        """Post ``body`` to ``url`` soon, from the sender thread (never inside a request);
        held back while :meth:`hold_webhooks` is in force."""
        with self._lock:
            if self._held is not None:
                self._held.append((url, headers, body))
                return
        self._outbox.put((url, headers, body))

    def hold_webhooks(self) -> None:
        """Keep webhooks back until :meth:`release_webhooks` (a provider that is slow to
        notify): what a customer sees between coming back and the confirmation."""
        with self._lock:
            self._held = [] if self._held is None else self._held

    def release_webhooks(self) -> None:
        """Send the webhooks held back, in order, and stop holding them."""
        with self._lock:
            held, self._held = self._held or [], None
        for job in held:
            self._outbox.put(job)

    # -- plumbing --------------------------------------------------------------------------

    def _dispatch(self, request: Received) -> Reply:
        with self._changed:
            self._received.append(request)
            status = self._outages.pop(0) if self._outages else None
            self._changed.notify_all()
        return self.outage(status) if status is not None else self.respond(request)

    def _send_loop(self) -> None:
        while (job := self._outbox.get()) is not None:
            url, headers, body = job
            delivery = _post(url, headers, body)
            with self._changed:
                self._deliveries.append(delivery)
                self._changed.notify_all()


def _post(url: str, headers: dict[str, str], body: bytes) -> Delivery:
    if urlsplit(url).hostname not in {"127.0.0.1", "localhost"}:
        return Delivery(url, headers, body, None, "fakes only post to 127.0.0.1")
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            response.read()
            return Delivery(url, headers, body, response.status)
    except urllib.error.HTTPError as e:
        with e:
            return Delivery(url, headers, body, e.code)
    except OSError as e:
        return Delivery(url, headers, body, None, str(e))


def _handler_for(dispatch: Callable[[Received], Reply]) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        # HTTP/1.0: one request per connection, so no handler thread outlives a test.
        protocol_version = "HTTP/1.0"

        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            parts = urlsplit(self.path)
            request = Received(
                method=self.command,
                path=parts.path,
                query=parts.query,
                headers={k.lower(): v for k, v in self.headers.items()},
                body=self.rfile.read(length) if length else b"",
            )
            reply = dispatch(request)
            self.send_response(reply.status)
            for name, value in reply.headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(reply.body)))
            self.end_headers()
            self.wfile.write(reply.body)

        do_GET = do_POST = do_DELETE = _serve

        def log_message(self, format: str, *args: Any) -> None:
            pass  # quiet: tests read .received instead

    return Handler


class WebhookInbox(LocalServer):
    """Receives webhooks: records each POST and answers ``status`` (200 by default)."""

    def __init__(self, status: int = 200, body: bytes = b"") -> None:
        super().__init__()
        self._reply = Reply(status, body)

    def respond(self, request: Received) -> Reply:
        return self._reply
