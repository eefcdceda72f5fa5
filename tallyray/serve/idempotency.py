"""``Idempotency-Key`` on every ``POST``, with Stripe's semantics (an ASGI middleware).

A request carrying the header claims the key in its environment (the environment of its API
key): the first is answered as usual and its answer kept for 24 hours; a retry with the same
key and the same request (method, path, query and body) gets that answer again — replayed,
with ``Idempotent-Replayed: true`` — and nothing runs twice; the same key with another
request is a ``409``, and so is a retry that arrives while the first is still being
answered. Answers that a retry could change are not kept: a ``401``, ``403`` or ``429``, and
every ``5xx`` (the key is released, and a retry runs again).

Requests without the header pay one header look-up. Events and quota checks need no key
(an event's ``id`` makes it idempotent), but may send one.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from starlette.concurrency import run_in_threadpool

from tallyray.access import looks_like_key
from tallyray.clock import Clock
from tallyray.errors import Conflict, InvalidInput, RequestInProgress, TallyrayError
from tallyray.serve.auth import KeyCache
from tallyray.serve.http import send_error
from tallyray.storage.idempotency import IdempotencyStore

__all__ = ["HEADER", "Idempotency"]

log = logging.getLogger("tallyray.api")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

HEADER = b"idempotency-key"
MAX_KEY = 255
NOT_KEPT = frozenset({401, 403, 429})


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return bytes(value)
    return None


class Idempotency:
    def __init__(self, app: ASGIApp, keys: KeyCache, store: IdempotencyStore, clock: Clock) -> None:
        self.app = app
        self.keys = keys
        self.store = store
        self.clock = clock

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        raw_key = _header(scope, HEADER)
        if raw_key is None:
            await self.app(scope, receive, send)
            return
        try:
            key = raw_key.decode("ascii")
        except UnicodeDecodeError:
            key = ""
        if not 0 < len(key) <= MAX_KEY or not key.isprintable():
            await send_error(
                send,
                InvalidInput(
                    f"the Idempotency-Key header must be 1 to {MAX_KEY} printable ASCII characters"
                ),
            )
            return
        env = await self._env(scope)
        if env is None:  # no usable API key: the route answers that, and nothing is kept
            await self.app(scope, receive, send)
            return
        body, more = await _read_body(receive)
        fingerprint = _fingerprint(scope, body)
        try:
            found = await run_in_threadpool(
                self.store.claim,
                env,
                key,
                "POST",
                str(scope.get("path", "")),
                fingerprint,
                self.clock(),
            )
        except TallyrayError as error:
            await send_error(send, error)
            return
        if found is not None:
            await self._answer_again(send, found, fingerprint)
            return
        await self._run(scope, _replay(body, more, receive), send, env, key)

    async def _env(self, scope: Scope) -> str | None:
        authorization = _header(scope, b"authorization") or b""
        scheme, _, secret = authorization.decode("latin-1").partition(" ")
        secret = secret.strip()
        if scheme.lower() != "bearer" or not looks_like_key(secret):
            return None
        try:
            found = await self.keys.get(secret)
        except TallyrayError:
            return None
        return None if found is None or found.revoked_at is not None else found.env

    async def _answer_again(self, send: Send, found: Any, fingerprint: str) -> None:
        if found.fingerprint != fingerprint:
            await send_error(
                send,
                Conflict(
                    "this Idempotency-Key was used for another request (another path or body) "
                    "in the last 24 hours; use a new key for a new request"
                ),
            )
            return
        if found.status is None:
            await send_error(
                send,
                RequestInProgress(
                    "a request with this Idempotency-Key is still being answered; retry shortly"
                ),
            )
            return
        headers = [(b"idempotent-replayed", b"true")]
        if found.content_type:
            headers.append((b"content-type", found.content_type.encode("latin-1")))
        body = found.body or b""
        headers.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": found.status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def _run(self, scope: Scope, receive: Receive, send: Send, env: str, key: str) -> None:
        status = 500
        content_type: str | None = None
        chunks: list[bytes] = []

        async def captured(message: Message) -> None:
            nonlocal status, content_type
            if message["type"] == "http.response.start":
                status = int(message["status"])
                raw = _header(message, b"content-type")
                content_type = None if raw is None else raw.decode("latin-1")
            elif message["type"] == "http.response.body":
                chunks.append(bytes(message.get("body", b"")))
            await send(message)

        try:
            await self.app(scope, receive, captured)
        finally:
            keep = status < 500 and status not in NOT_KEPT
            try:
                if keep:
                    body = b"".join(chunks)
                    await run_in_threadpool(self.store.answer, env, key, status, content_type, body)
                else:
                    await run_in_threadpool(self.store.release, env, key)
            except Exception as error:  # noqa: BLE001 — the answer has gone out already
                log.warning("keeping the answer of Idempotency-Key %r: %s", key[:40], error)
                with contextlib.suppress(Exception):  # else the key ages out in 24 h
                    await run_in_threadpool(self.store.release, env, key)


async def _read_body(receive: Receive) -> tuple[bytes, bool]:
    """The whole request body (the body limit, outside this middleware, bounds it)."""
    parts: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return b"".join(parts), False
        parts.append(bytes(message.get("body", b"")))
        if not message.get("more_body", False):
            return b"".join(parts), False


def _replay(body: bytes, _more: bool, receive: Receive) -> Receive:
    """``receive`` for the app: the body read already, then whatever comes next (a
    disconnect)."""
    sent = False

    async def again() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return again


def _fingerprint(scope: Scope, body: bytes) -> str:
    digest = hashlib.sha256()
    for part in (str(scope.get("path", "")).encode(), bytes(scope.get("query_string", b"")), body):
        digest.update(part)
        digest.update(b"\x00")
    return digest.hexdigest()
