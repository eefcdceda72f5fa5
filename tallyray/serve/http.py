"""The small helpers every route module shares: JSON in, JSON out, and the checks every body
gets before a route looks at it.

The hot routes (events, quota checks, reservations) decode their bodies themselves, with
orjson and hand-written checks (:mod:`tallyray.serve.intake`); everything else comes through
:func:`json_body`.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from typing import Any

import orjson
from fastapi import Request
from fastapi.responses import Response

from tallyray.errors import (
    InvalidInput,
    Problem,
    RateLimited,
    StoreUnavailable,
    TallyrayError,
    Unauthorized,
)
from tallyray.metrics import Metrics
from tallyray.pricing.events import MAX_ID_LENGTH, is_identifier, parse_timestamp
from tallyray.storage.db import DatabaseUnavailable

log = logging.getLogger("tallyray.api")

__all__ = [
    "error_answer",
    "error_headers",
    "json_body",
    "json_object",
    "json_response",
    "object_body",
    "parse_json",
    "send_error",
    "store_unavailable",
    "text_field",
    "timestamp_field",
]


def json_response(
    content: Any, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    return Response(
        orjson.dumps(content), status_code=status, media_type="application/json", headers=headers
    )


async def json_body(request: Request, *, required: bool = True) -> Any:
    """The request's JSON body (``None`` when empty and not ``required``).

    A NUL character (``\\u0000``) is refused wherever it stands: no store can keep it in
    text (PostgreSQL refuses it), so it could only ever fail later, half-way through a write.
    """
    return parse_json(await request.body(), required=required)


def parse_json(raw: bytes, *, required: bool = True) -> Any:
    """:func:`json_body` of a body already read."""
    if not raw.strip():
        if required:
            raise InvalidInput("the request needs a JSON body")
        return None
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as error:
        raise InvalidInput(f"the body is not valid JSON: {error}") from None
    if b"\\u0000" in raw and _holds_nul(doc):
        raise InvalidInput(
            "the body holds a NUL character (\\u0000); no field may contain one",
            [Problem("body", "NUL character")],
        )
    return doc


def _holds_nul(doc: Any) -> bool:
    if isinstance(doc, str):
        return "\x00" in doc
    if isinstance(doc, dict):
        return any("\x00" in key or _holds_nul(value) for key, value in doc.items())
    if isinstance(doc, list):
        return any(_holds_nul(item) for item in doc)
    return False


def json_object(
    doc: Any, allowed: frozenset[str], required: frozenset[str] = frozenset()
) -> dict[str, Any]:
    """``doc`` as a JSON object with only ``allowed`` fields and every ``required`` one, or
    :class:`InvalidInput` naming each unknown and each missing field."""
    if not isinstance(doc, dict):
        raise InvalidInput("the body must be a JSON object")
    problems = [Problem(_cut(name), "unknown field") for name in sorted(set(doc) - allowed)]
    problems += [Problem(name, "is required") for name in sorted(required - set(doc))]
    if problems:
        raise InvalidInput("the request body has problems", problems)
    return doc


def _cut(name: str, limit: int = 64) -> str:
    """A field name as an error names it: a huge one is cut."""
    return name if len(name) <= limit else name[: limit - 1] + "…"


async def object_body(
    request: Request,
    allowed: frozenset[str],
    required: frozenset[str] = frozenset(),
    *,
    empty_ok: bool = False,
) -> dict[str, Any]:
    """:func:`json_body` checked by :func:`json_object`; an empty body is ``{}`` when
    ``empty_ok``."""
    doc = await json_body(request, required=not empty_ok)
    if doc is None:
        doc = {}
    return json_object(doc, allowed, required)


def text_field(
    doc: dict[str, Any], name: str, *, required: bool = True, identifier: bool = True
) -> str | None:
    """A string field: an id (printable, 1 to 255 characters) unless ``identifier`` is off,
    then any non-empty string."""
    value = doc.get(name)
    if value is None and not required:
        return None
    if identifier and not is_identifier(value):
        message = f"must be a string of 1 to {MAX_ID_LENGTH} printable characters"
        raise InvalidInput(f"'{name}' {message}", [Problem(name, message)])
    if not isinstance(value, str) or not value:
        raise InvalidInput(f"'{name}' must be a non-empty string", [Problem(name, "not a string")])
    return value


def timestamp_field(value: Any, name: str) -> int:
    """An RFC 3339 moment from a body or the query, in microseconds; the error names it."""
    try:
        return parse_timestamp(value)
    except ValueError as error:
        message = str(error).replace("'timestamp'", f"'{name}'")
        raise InvalidInput(message, [Problem(name, message)]) from None


def error_headers(error: TallyrayError, metrics: Metrics | None = None) -> dict[str, str]:
    """The headers an error's answer carries (and the metric a 503 counts): the one rule for
    the app's error handler and for answers sent from middleware."""
    headers = {}
    if isinstance(error, StoreUnavailable):
        if metrics is not None:
            metrics.store_unavailable.inc()
        headers["Retry-After"] = str(error.retry_after_seconds)
    if isinstance(error, Unauthorized):
        headers["WWW-Authenticate"] = "Bearer"
    if isinstance(error, RateLimited):
        headers["Retry-After"] = error.retry_after_header
    return headers


def error_answer(
    error: TallyrayError, metrics: Metrics | None = None
) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """An error's answer as status, headers and body (``{"error": …}``), for those that
    answer below the app: ASGI middleware (:func:`send_error`) and the hot routes' fast
    path (:mod:`tallyray.serve.fastpath`)."""
    body = orjson.dumps(error.to_json())
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", b"%d" % len(body)),
        *((k.lower().encode(), v.encode()) for k, v in error_headers(error, metrics).items()),
    ]
    return error.http_status, headers, body


def store_unavailable(error: DatabaseUnavailable) -> StoreUnavailable:
    """What a request that met an unavailable database is answered (and the log line)."""
    log.error("database unavailable: %s", error.orig)
    return StoreUnavailable("the database is unavailable; retry shortly")


async def send_error(
    send: Callable[[MutableMapping[str, Any]], Awaitable[None]],
    error: TallyrayError,
    *,
    close: bool = False,
    extra: Sequence[tuple[bytes, bytes]] = (),
    metrics: Metrics | None = None,
) -> None:
    """Answer ``error`` from ASGI middleware, before any route runs (``close``: tell the
    client the connection ends, when the rest of its body will not be read), with the
    headers its type carries and any ``extra``."""
    status, headers, body = error_answer(error, metrics)
    headers += extra
    if close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
