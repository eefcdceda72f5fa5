"""Each ingress replica serves HTTP itself: uvicorn on the API port, in a thread of its own.

Serve's HTTP front (its Python proxy, or HAProxy in front of the replicas) costs more CPU per
request than a quota check does: measured at 1,000 checks/s, the replica (with Serve's request
machinery), HAProxy and Serve's HAProxy manager took ~0.7 ms of CPU per check between them,
against ~0.35 ms for the replica serving the port itself (docs/benchmarks.md). So Serve keeps
what it is good at — placing, health-checking and restarting the replicas — and each replica
binds the API port with ``SO_REUSEPORT``: the kernel spreads connections over the replicas of
a node, and a restarted replica takes its place without anyone reconfiguring a proxy.

uvicorn runs in a daemon thread with its own event loop, so it is independent of the loop
Serve gives the replica (which now handles only health checks). Its HTTP protocol answers
``POST /v1/quota/check`` and ``POST /v1/events`` itself, below ASGI
(:mod:`tallyray.serve.fastpath`).
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from typing import Any

import uvicorn

from tallyray.errors import InvalidInput
from tallyray.logs import route_uvicorn_logs
from tallyray.serve.fastpath import fast_routes

__all__ = ["ApiListener", "bind_api_socket", "ensure_port_free", "server_config"]

log = logging.getLogger("tallyray.listener")


def ensure_port_free(host: str, port: int) -> None:
    """Refuse to start on a port something already listens on — another Tallyray included,
    whose replicas would otherwise share it with ours (``SO_REUSEPORT`` lets the same user's
    sockets in together)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as error:
            raise InvalidInput(
                f"cannot listen on {host}:{port} ({error.strerror}): stop what listens there, "
                "or choose another port with --port or TALLYRAY_PORT"
            ) from None


def bind_api_socket(host: str, port: int, backlog: int = 2048) -> socket.socket:
    """A listening socket on ``host:port`` that other replicas on this machine may bind too.

    Not inherited by child processes: one would keep the port open, accepting connections
    nobody answers, after the replica that made it has died."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        sock.listen(backlog)
    except OSError:
        sock.close()
        raise
    return sock


def server_config(app: Any, *, access_log: bool = False, lifespan: str = "on") -> uvicorn.Config:
    """uvicorn's settings for serving the API ``app`` (built by
    :func:`tallyray.serve.app.build_app`): its protocol answers checks and event batches itself
    (:mod:`tallyray.serve.fastpath`). Another ASGI app gets uvicorn's own protocol."""
    api = getattr(getattr(app, "state", None), "api", None)
    return uvicorn.Config(
        app,
        http=fast_routes(api) if api is not None else "httptools",
        loop="uvloop",
        lifespan=lifespan,  # type: ignore[arg-type]
        access_log=access_log,
        log_config=None,
        timeout_keep_alive=30,
        server_header=False,
    )


class ApiListener:
    """uvicorn serving ``app`` on a shared ``host:port``, in a background thread."""

    def __init__(self, app: Any, host: str, port: int, access_log: bool = False) -> None:
        self.host = host
        self.port = port
        route_uvicorn_logs(access_log)
        self._socket = bind_api_socket(host, port)
        self._server = uvicorn.Server(server_config(app, access_log=access_log))
        self._thread = threading.Thread(target=self._run, name="tallyray-api", daemon=True)
        self.failure: BaseException | None = None

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        try:
            self._server.run(sockets=[self._socket])
        except BaseException as error:  # noqa: BLE001 — reported through alive()
            self.failure = error
            log.error("API listener on %s:%d stopped: %r", self.host, self.port, error)

    def wait_started(self, timeout: float = 30.0) -> None:
        """Block until uvicorn accepts connections (or raise why it could not)."""
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive():
                raise RuntimeError(f"the API listener did not start: {self.failure!r}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"the API listener did not start within {timeout:g} s")
            time.sleep(0.01)

    def alive(self) -> bool:
        """Serving, or still starting; ``False`` once the thread has ended."""
        return self._thread.is_alive() and not self._server.should_exit

    def stop(self, timeout: float = 5.0) -> None:
        self._server.should_exit = True
        self._thread.join(timeout)
        self._socket.close()
