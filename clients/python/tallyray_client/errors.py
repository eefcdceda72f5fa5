"""Every error the client raises, in one tree, mirroring the API's statuses.

::

    TallyrayError               base; .message, .request_id, .status, .type, .details
    ├── BadRequest              400, 413, 422: the request is wrong; fix it, don't retry it
    ├── Unauthorized            401: no key, or an unknown, revoked or expired one
    ├── Forbidden               403: the key lacks the scope (a gateway's key has ``ingest``)
    ├── NotFound                404: no such customer or active reservation
    ├── Conflict                409: contradicts stored state, or a cap is reached
    ├── RateLimited             429: over the key's rate limit; .retry_after
    ├── Unavailable             5xx: the store or a shard is unavailable; .retry_after
    ├── Unreachable             no answer at all: refused connection, timeout, lost reply
    ├── Denied                  a reservation that was not allowed, entered as ``with``
    └── BufferFull              the ingest buffer stayed full for the whole timeout

Each carries the API's message and the request id (``X-Request-Id``) to quote to the operator.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httpx

if TYPE_CHECKING:
    from tallyray_client.results import Hold

__all__ = [
    "REQUEST_IN_PROGRESS",
    "BadRequest",
    "BufferFull",
    "Conflict",
    "Denied",
    "Detail",
    "Forbidden",
    "NotFound",
    "RateLimited",
    "TallyrayError",
    "Unauthorized",
    "Unavailable",
    "Unreachable",
    "error_from_response",
    "retry_after",
]


REQUEST_IN_PROGRESS = "request_in_progress"
"""The 409's type while a request with the same Idempotency-Key is still being answered: the
one conflict to retry with the same key."""


@dataclass(frozen=True, slots=True)
class Detail:
    """One problem the API named, and where (``"[2]"`` is the third event of a batch)."""

    where: str
    message: str


class TallyrayError(Exception):
    """Base of every error the client raises."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        type: str | None = None,  # noqa: A002 — the API's own name for it
        request_id: str | None = None,
        details: tuple[Detail, ...] = (),
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.type = type
        self.request_id = request_id
        self.details = details

    def __str__(self) -> str:
        text = self.message
        if self.status is not None:
            text = f"{self.status} {self.type or 'error'}: {text}"
        if self.details:
            shown = "; ".join(
                f"{d.where}: {d.message}" if d.where else d.message for d in self.details[:5]
            )
            more = f"; and {len(self.details) - 5} more" if len(self.details) > 5 else ""
            text += f" ({shown}{more})"
        if self.request_id:
            text += f" (request {self.request_id})"
        return text


class BadRequest(TallyrayError):
    pass


class Unauthorized(TallyrayError):
    pass


class Forbidden(TallyrayError):
    pass


class NotFound(TallyrayError):
    pass


class Conflict(TallyrayError):
    pass


class _RetryLater(TallyrayError):
    def __init__(self, message: str, *, retry_after: float | None = None, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.retry_after = retry_after


class RateLimited(_RetryLater):
    pass


class Unavailable(_RetryLater):
    pass


class Unreachable(TallyrayError):
    """No answer: the connection failed, timed out, or its answer was lost. The request may
    or may not have been applied — which is why every POST carries an Idempotency-Key."""


class Denied(TallyrayError):
    """Entering ``with client.reserve(...)`` when the reservation was not allowed: the block
    must not run. ``.hold`` says why (``hold.reason``) and whether the answer was degraded."""

    def __init__(self, hold: Hold) -> None:
        super().__init__(hold.reason or "not allowed", request_id=hold.request_id)
        self.hold = hold


class BufferFull(TallyrayError):
    """The ingest buffer stayed full: the events of this call were not taken."""


_BY_STATUS: dict[int, type[TallyrayError]] = {
    400: BadRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    413: BadRequest,
    422: BadRequest,
    429: RateLimited,
}


def retry_after(response: httpx.Response) -> float | None:
    """``Retry-After`` in seconds (the API sends seconds; an HTTP date is not expected)."""
    raw = response.headers.get("retry-after")
    if raw is None:
        return None
    try:
        return max(0.0, float(raw))
    except ValueError:
        return None


def error_from_response(response: httpx.Response) -> TallyrayError:
    """The exception for an answer that is not a 2xx, from the API's error shape
    ``{"error": {"type", "message", "details": [{"where", "message"}]}}``."""
    kind: str | None = None
    message = response.reason_phrase or f"HTTP {response.status_code}"
    details: tuple[Detail, ...] = ()
    try:
        body = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError, httpx.ResponseNotRead):
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        error = body["error"]
        kind = str(error.get("type")) if error.get("type") is not None else None
        message = str(error.get("message", message))
        details = tuple(
            Detail(str(d.get("where", "")), str(d.get("message", "")))
            for d in error.get("details") or ()
            if isinstance(d, dict)
        )
    common: dict[str, Any] = {
        "status": response.status_code,
        "type": kind,
        "request_id": response.headers.get("x-request-id"),
        "details": details,
    }
    status = response.status_code
    if status >= 500:
        return Unavailable(message, retry_after=retry_after(response), **common)
    cls = _BY_STATUS.get(status, BadRequest)
    if cls is RateLimited:
        return RateLimited(message, retry_after=retry_after(response), **common)
    return cls(message, **common)
