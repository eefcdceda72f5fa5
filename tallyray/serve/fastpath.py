"""The two hot routes, ``POST /v1/quota/check`` and ``POST /v1/events``, answered by the
HTTP protocol itself, below ASGI.

A gateway asks before every model call and reports usage in batches after, so these two
paths run thousands of times a second, and on them the layers cost more than the work. First
the framework went from the check (Starlette's and FastAPI's middleware stack, routing and
request objects: an ASGI middleware answered the check in front of the app); what remained in
the replica, ~0.37 ms of CPU per check, was mostly uvicorn's ASGI cycle — a scope, a
``RequestResponseCycle`` with its ``receive`` and ``send`` coroutines, header lists checked by
regular expression, two writes to the socket — and a Starlette ``Request`` for
authentication. For an event batch the same layers (eleven ASGI middlewares and routers deep)
took about a third of the replica's time (docs/benchmarks.md, "Checks while events stream
in").

:class:`FastRoutes` is uvicorn's ``HttpToolsProtocol`` (the same parser, keep-alive,
pipelining and flow control) that, when a request's head is ``POST`` to one of
:data:`ROUTES` with no query string and no ``Idempotency-Key``, runs that route's
:class:`FastCycle` in place of the ASGI cycle: the same steps as the app's route, through the
same rules —

- the request id: the caller's ``X-Request-Id`` or a new one
  (:mod:`tallyray.serve.request_context`);
- a declared ``Content-Length`` over the limit: 413 and the connection closed, a chunked body
  that passes it: 413 (:func:`~tallyray.serve.body_limit.too_large`);
- the key, its scope and its rate limit (:meth:`~tallyray.serve.auth.Authenticator.admit`:
  401 with ``WWW-Authenticate``, 403, 429 with ``Retry-After``), before the body is read;
- the route's own work, shared with the app's route: :meth:`~tallyray.serve.api.Api.check_quota`
  and :func:`~tallyray.serve.routes.quota.quota_json`, or
  :meth:`~tallyray.serve.api.Api.ingest_body`; the error shapes and headers of
  :func:`~tallyray.serve.http.error_answer`;

and writes the whole answer in one ``transport.write``. A cycle takes the place of uvicorn's
in the protocol's bookkeeping (``self.cycle``, the pipeline of requests waiting their turn,
``connection_lost``, ``shutdown``), so HTTP/1.1's order of answers holds on a connection that
mixes these and other requests, and a client that goes away gets nothing written (an event
batch whose body was whole is still stored: its client may retry, and the retry is answered
as duplicates).

Anything else, these paths with a query string or an ``Idempotency-Key`` (whose middleware
keeps and replays answers) included, takes the ordinary way through the app, whose routes
answer the same.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import orjson
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
from uvicorn.protocols.utils import get_client_addr

from tallyray.errors import TallyrayError
from tallyray.logs import request_id
from tallyray.serve.api import Api
from tallyray.serve.auth import Authenticator
from tallyray.serve.body_limit import too_large
from tallyray.serve.http import error_answer, parse_json, store_unavailable
from tallyray.serve.request_context import REQUEST_ID_HEADER, new_request_id, request_id_of
from tallyray.serve.routes.quota import quota_json
from tallyray.storage.db import DatabaseUnavailable

__all__ = ["ROUTES", "CheckCycle", "EventsCycle", "FastCycle", "FastRoutes", "fast_routes"]

log = logging.getLogger("tallyray.api")

_JSON = [(b"content-type", b"application/json")]
_INTERNAL_ERROR = (
    b"content-type: text/plain; charset=utf-8\r\ncontent-length: 21\r\n"
    b"connection: close\r\n\r\nInternal Server Error"
)

Headers = list[tuple[bytes, bytes]]


def fast_routes(api: Api) -> type[FastRoutes]:
    """The protocol class to give uvicorn (``Config(http=…)``) for a replica's ``api``."""
    if not isinstance(api.authenticate, Authenticator):
        raise TypeError("the hot routes' fast path needs the app's Authenticator")
    return type("FastRoutes", (FastRoutes,), {"api": api, "auth": api.authenticate})


class FastRoutes(HttpToolsProtocol):
    """uvicorn's httptools protocol, answering the hot routes itself (see the module)."""

    api: Api
    auth: Authenticator

    def on_headers_complete(self) -> None:
        route = ROUTES.get(self.url)
        if (
            route is None
            or self.parser.get_method() != b"POST"
            or self.limit_concurrency is not None
            or self.parser.should_upgrade()
        ):
            super().on_headers_complete()
            return
        declared: int | None = None
        authorization = given = content_type = None
        for name, value in self.headers:
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = None
            elif name == b"authorization":
                if authorization is None:
                    authorization = value
            elif name == REQUEST_ID_HEADER:
                if given is None:
                    given = value
            elif name == b"content-type":
                if content_type is None:
                    content_type = value
            elif name == b"idempotency-key":
                super().on_headers_complete()
                return
        http_version = self.parser.get_http_version()
        cycle = route(
            self,
            rid=(given is not None and request_id_of(given)) or new_request_id(),
            authorization=authorization.decode("latin-1") if authorization is not None else "",
            content_type=content_type.decode("latin-1") if content_type is not None else "",
            declared=declared,
            http_version=http_version,
            keep_alive=http_version != "1.0" and self.parser.should_keep_alive(),
            expect_100_continue=self.expect_100_continue,
        )
        existing = self.cycle
        self.cycle = cycle  # type: ignore[assignment]  # the protocol reads it as uvicorn's
        if existing is None or existing.response_complete:
            self._start_asgi_task(cycle, self.app)  # type: ignore[arg-type]
        else:  # pipelined: its turn comes when the answers before it are written
            self.flow.pause_reading()
            self.pipeline.appendleft((cycle, self.app))  # type: ignore[arg-type]


class FastCycle:
    """One request to a hot route on a connection: what uvicorn's ``RequestResponseCycle``
    is to the protocol (``body``, ``more_body`` and ``message_event`` filled by the parser's
    callbacks; ``disconnected``, ``response_complete`` and ``keep_alive`` read by it),
    without ASGI. A route's cycle says its ``path`` and what its answer's body is
    (:meth:`answer_body`); the rest is shared."""

    path: str
    """The route's path, for the key's scope and the access log."""
    what: str
    """What the route does, for the log line of an unexpected failure."""

    __slots__ = (
        "authorization",
        "body",
        "content_type",
        "declared",
        "disconnected",
        "http_version",
        "keep_alive",
        "message_event",
        "more_body",
        "protocol",
        "response_complete",
        "rid",
        "waiting_for_100_continue",
    )

    def __init__(
        self,
        protocol: FastRoutes,
        *,
        rid: str,
        authorization: str,
        content_type: str,
        declared: int | None,
        http_version: str,
        keep_alive: bool,
        expect_100_continue: bool,
    ) -> None:
        self.protocol = protocol
        self.rid = rid
        self.authorization = authorization
        self.content_type = content_type
        self.declared = declared
        self.http_version = http_version
        self.keep_alive = keep_alive
        self.waiting_for_100_continue = expect_100_continue
        self.body = bytearray()
        self.more_body = True
        self.message_event = asyncio.Event()
        self.disconnected = False
        self.response_complete = False

    async def run_asgi(self, _app: Any) -> None:
        """Answer the request (the name is the one uvicorn's protocol starts a cycle by)."""
        token = request_id.set(self.rid)
        try:
            answer = await self._answer()
        except BaseException as error:  # noqa: BLE001 — as uvicorn does for an app's failure
            log.error("Exception answering %s", self.what, exc_info=error)
            if not self.disconnected:
                self._finish(STATUS_LINE[500] + _INTERNAL_ERROR, keep_alive=False)
            return
        finally:
            request_id.reset(token)
        flow = self.protocol.flow
        if answer is None or self.disconnected or self.protocol.transport.is_closing():
            return  # gone (for an earlier request of a pipeline, only the transport says so)
        status, headers, body, close = answer
        if flow.write_paused:
            await flow.drain()
            if self.disconnected:
                return
        self._respond(status, headers, body, close)

    async def _answer(self) -> tuple[int, Headers, bytes, bool] | None:
        """Status, headers, body and whether to close; ``None`` when the client left."""
        started = time.perf_counter()
        protocol = self.protocol
        api = protocol.api
        limit = api.rules.max_body_bytes
        try:
            if self.declared is not None and self.declared > limit:
                return self._error(too_large(limit, self.declared), close=True)
            key = await protocol.auth.admit(self.authorization, "POST", self.path)
            raw = await self._read(limit)
            if raw is None:
                return None
            body = await self.answer_body(api, key.env, raw, started)
        except DatabaseUnavailable as error:
            return self._error(store_unavailable(error))
        except TallyrayError as error:
            return self._error(error)
        return 200, [*_JSON, (b"content-length", b"%d" % len(body))], body, False

    async def answer_body(self, api: Api, env: str, raw: bytes, started: float) -> bytes:
        """The body of the route's 200 for the request body ``raw`` of a key of ``env``; a
        :class:`~tallyray.errors.TallyrayError` for any other answer. ``started``: when the
        request began (``perf_counter``)."""
        raise NotImplementedError

    def _error(
        self, error: TallyrayError, *, close: bool = False
    ) -> tuple[int, Headers, bytes, bool]:
        status, headers, body = error_answer(error, self.protocol.api.metrics)
        return status, headers, body, close

    async def _read(self, limit: int) -> bytes | None:
        """The whole body (most often there already), or ``None`` if the client went away;
        :class:`~tallyray.errors.PayloadTooLarge` as soon as what came passes ``limit``."""
        protocol = self.protocol
        while self.more_body:
            if len(self.body) > limit:
                raise too_large(limit)
            if self.disconnected:
                return None
            if self.waiting_for_100_continue and not protocol.transport.is_closing():
                protocol.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                self.waiting_for_100_continue = False
            protocol.flow.resume_reading()  # the parser pauses it past its high-water mark
            await self.message_event.wait()
            self.message_event.clear()
        if self.disconnected:
            return None
        if len(self.body) > limit:
            raise too_large(limit)
        return bytes(self.body)

    def _respond(self, status: int, headers: Headers, body: bytes, close: bool) -> None:
        protocol = self.protocol
        keep_alive = self.keep_alive and not close
        lines = [STATUS_LINE[status]]
        lines += [b"%s: %s\r\n" % pair for pair in protocol.server_state.default_headers]
        lines += [b"%s: %s\r\n" % pair for pair in headers]
        lines.append(b"x-request-id: %s\r\n" % self.rid.encode())
        lines.append(b"\r\n" if keep_alive else b"connection: close\r\n\r\n")
        lines.append(body)
        if protocol.access_log:
            protocol.access_logger.info(
                '%s - "%s %s HTTP/%s" %d',
                get_client_addr({"client": protocol.client}),  # type: ignore[arg-type]
                "POST",
                self.path,
                self.http_version,
                status,
            )
        self._finish(b"".join(lines), keep_alive)

    def _finish(self, answer: bytes, keep_alive: bool) -> None:
        """Write the whole answer at once and end the cycle as uvicorn's does: the connection
        closed if it is not kept, else the next pipelined request started."""
        protocol = self.protocol
        protocol.transport.write(answer)
        self.response_complete = True
        self.message_event.set()
        if not keep_alive:
            self.keep_alive = False
            protocol.transport.close()
        protocol.on_response_complete()


class CheckCycle(FastCycle):
    """``POST /v1/quota/check``: the shard's answer for the would-be usage."""

    __slots__ = ()
    path = "/v1/quota/check"
    what = "a quota check"

    async def answer_body(self, api: Api, env: str, raw: bytes, started: float) -> bytes:
        answer = await api.check_quota(env, parse_json(raw), started)
        return orjson.dumps(quota_json(answer))


class EventsCycle(FastCycle):
    """``POST /v1/events``: the batch stored, or refused whole."""

    __slots__ = ()
    path = "/v1/events"
    what = "an event batch"

    async def answer_body(self, api: Api, env: str, raw: bytes, started: float) -> bytes:
        return orjson.dumps(await api.ingest_body(env, raw, self.content_type))


ROUTES: dict[bytes, type[FastCycle]] = {
    cycle.path.encode(): cycle for cycle in (CheckCycle, EventsCycle)
}
"""The routes answered below ASGI, by their exact path (a query string makes another URL)."""
