"""``POST /v1/quota/check`` answered in front of the FastAPI app (an ASGI middleware).

A gateway asks before every model call, so this one path runs a thousand times a second
while events stream in, and on it the framework cost more than the check: at 1,000 checks/s
with 20,000 events/s, a py-spy profile of the replica put the route's own work at ~13 % of
its samples and Starlette's and FastAPI's layers (middleware stack, routing, dependency
solving, the request and response objects) at about as much again
(docs/benchmarks.md, "Checks while events stream in"). Here the request takes the short way:
the same steps as the route — the request id, the body limit, authentication with the key's
scope and rate limit, :meth:`~tallyray.serve.api.Api.check_quota` — and the same answers and
error shapes, without the layers between.

Anything unusual goes the long way, through the app and its route: another path or method, a
query string, or an ``Idempotency-Key`` (whose middleware keeps and replays answers).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

import orjson
from starlette.requests import Request

from tallyray.errors import (
    StoreUnavailable,
    TallyrayError,
)
from tallyray.logs import request_id
from tallyray.serve.api import Api
from tallyray.serve.body_limit import too_large
from tallyray.serve.http import parse_json, send_error
from tallyray.serve.idempotency import HEADER as IDEMPOTENCY_HEADER
from tallyray.serve.request_context import REQUEST_ID_HEADER, given_request_id, new_request_id
from tallyray.serve.routes.quota import quota_json
from tallyray.storage.db import DatabaseUnavailable

__all__ = ["PATH", "QuotaFastPath"]

log = logging.getLogger("tallyray.api")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

PATH = "/v1/quota/check"
_JSON = (b"content-type", b"application/json")


@dataclass(frozen=True, slots=True)
class _Route:
    """What authentication asks of the matched route: its path (for the key's scope)."""

    path: str


_ROUTE = _Route(PATH)


class QuotaFastPath:
    def __init__(self, app: ASGIApp, api: Api) -> None:
        self.app = app
        self.api = api
        self.limit = api.rules.max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope["path"] != PATH
            or scope["method"] != "POST"
            or scope.get("query_string")
        ):
            await self.app(scope, receive, send)
            return
        declared = None
        for name, value in scope["headers"]:
            if name == IDEMPOTENCY_HEADER:
                await self.app(scope, receive, send)
                return
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = None
        started = time.perf_counter()
        rid = given_request_id(scope) or new_request_id()
        scope.setdefault("state", {})["request_id"] = rid
        rid_header = (REQUEST_ID_HEADER, rid.encode())
        token = request_id.set(rid)
        try:
            if declared is not None and declared > self.limit:
                error = too_large(self.limit, declared)
                await self._error(send, error, rid_header, close=True)
                return
            try:
                body = await self._answer(scope, receive, started)
            except DatabaseUnavailable as error:
                log.error("database unavailable: %s", error.orig)
                unavailable = StoreUnavailable("the database is unavailable; retry shortly")
                await self._error(send, unavailable, rid_header)
                return
            except TallyrayError as error:
                await self._error(send, error, rid_header)
                return
            if body is None:  # the client went away
                return
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [_JSON, (b"content-length", b"%d" % len(body)), rid_header],
                }
            )
            await send({"type": "http.response.body", "body": body})
        finally:
            request_id.reset(token)

    async def _answer(self, scope: Scope, receive: Receive, started: float) -> bytes | None:
        api = self.api
        scope["route"] = _ROUTE
        env = await api.authenticate(Request(scope, receive))
        chunks = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limit:
                raise too_large(self.limit)
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        raw = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        answer = await api.check_quota(env, parse_json(raw), started)
        return orjson.dumps(quota_json(answer))

    async def _error(
        self,
        send: Send,
        error: TallyrayError,
        rid_header: tuple[bytes, bytes],
        *,
        close: bool = False,
    ) -> None:
        await send_error(send, error, close=close, extra=[rid_header], metrics=self.api.metrics)
