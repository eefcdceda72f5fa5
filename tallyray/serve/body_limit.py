"""Refuse an oversized request body before holding it in memory.

The routes check the size of a body they have read (``413`` naming the limit); this ASGI
middleware makes sure one far over the limit is never read whole: a declared
``Content-Length`` over the limit is answered at once, and a chunked body fails as soon as
what has arrived passes the limit.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from tallyray.errors import PayloadTooLarge
from tallyray.serve.http import send_error

__all__ = ["BodyLimit", "too_large"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def too_large(limit: int, size: int | None = None) -> PayloadTooLarge:
    said = f"the body is {size:,} bytes" if size is not None else "the body is over the limit"
    return PayloadTooLarge(f"{said}; the limit is {limit:,}: send fewer events per request")


class BodyLimit:
    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.limit:
            await send_error(send, too_large(self.limit, declared), close=True)
            return
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise too_large(self.limit)  # the app's error handler answers 413
            return message

        await self.app(scope, counted, send)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None
