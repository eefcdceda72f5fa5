"""Every request's id, and what no URL may hold.

An ASGI middleware (no per-request objects beyond a string): it takes the caller's
``X-Request-Id`` when it is a short printable string, or makes one, puts it in
``request.state.request_id`` and in :data:`tallyray.logs.request_id` (so every log line the
request causes carries it), and answers with it in ``X-Request-Id``. The audit log records it
beside every change.

A URL whose path or query holds a NUL character (``%00``) is refused here with a 422: no
store can hold one in text, and every route would otherwise have to guard each path
parameter itself.
"""

from __future__ import annotations

import itertools
import secrets
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from tallyray.errors import InvalidInput
from tallyray.logs import request_id
from tallyray.serve.http import send_error

__all__ = [
    "REQUEST_ID_HEADER",
    "RequestContext",
    "given_request_id",
    "new_request_id",
    "request_id_of",
]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

REQUEST_ID_HEADER = b"x-request-id"
MAX_REQUEST_ID = 128


_PREFIX = secrets.token_hex(6)
_ids = itertools.count()


def new_request_id() -> str:
    """``req_`` and 20 hex digits: a random prefix per process and a counter (unique, and
    without a trip to the kernel's random source per request)."""
    return f"req_{_PREFIX}{next(_ids) & 0xFFFFFFFF:08x}"


def given_request_id(scope: Scope) -> str | None:
    for name, value in scope.get("headers", ()):
        if name == REQUEST_ID_HEADER:
            return request_id_of(value)
    return None


def request_id_of(value: bytes) -> str | None:
    """The caller's ``X-Request-Id`` (the header's first value) when we take it: a short
    printable ASCII string; else ``None``, and the request gets one of ours."""
    try:
        text = value.decode("ascii")
    except UnicodeDecodeError:
        return None
    return text if 0 < len(text) <= MAX_REQUEST_ID and text.isprintable() else None


class RequestContext:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = given_request_id(scope) or new_request_id()
        scope.setdefault("state", {})["request_id"] = rid
        header = (REQUEST_ID_HEADER, rid.encode())
        token = request_id.set(rid)

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), header]
            await send(message)

        try:
            if b"%00" in scope.get("raw_path", b"").lower() or b"%00" in scope.get(
                "query_string", b""
            ):
                await send_error(
                    send_with_id,
                    InvalidInput("the URL holds a NUL character (%00); no id or parameter may"),
                )
                return
            await self.app(scope, receive, send_with_id)
        finally:
            request_id.reset(token)
