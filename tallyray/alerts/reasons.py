"""What the delivery log says about a failed attempt: short, fixed words, never the endpoint's.

The log (``last_error`` of ``GET /v1/webhook-endpoints/{id}/deliveries``) is read by the
tenant who created the endpoint. Were it to keep bytes of what the far end sent (a body, a
reason phrase, a protocol error quoting a banner such as ``SSH-2.0-OpenSSH``), a webhook URL
would be a way to read from whatever the server can reach. So a status is named by the
standard phrase for its code, and an error by its kind (``connection refused``, ``TLS
certificate did not verify``), found on the exception chain; nothing the endpoint wrote is
quoted. Every reason is printable and at most :data:`MAX_REASON` characters.
"""

from __future__ import annotations

import errno
import ssl
from collections.abc import Iterator
from http import HTTPStatus

import httpx

__all__ = ["MAX_REASON", "clip", "error_reason", "status_reason", "timed_out"]

MAX_REASON = 200


def clip(text: str) -> str:
    """``text`` made printable (anything else becomes ``?``) and at most
    :data:`MAX_REASON` characters."""
    printable = "".join(ch if ch.isprintable() else "?" for ch in text)
    return printable if len(printable) <= MAX_REASON else printable[: MAX_REASON - 1] + "…"


def status_reason(code: int) -> str:
    """``"HTTP 500 Internal Server Error"``: the code and its standard phrase, not the
    phrase the endpoint sent."""
    try:
        return f"HTTP {code} {HTTPStatus(code).phrase}"
    except ValueError:
        return f"HTTP {code}"


def timed_out(seconds: float) -> str:
    return f"timed out after {seconds:g} s"


_OS_ERRORS = {
    errno.ECONNREFUSED: "connection refused",
    errno.ECONNRESET: "connection reset",
    errno.ENETUNREACH: "network unreachable",
    errno.EHOSTUNREACH: "host unreachable",
    errno.ETIMEDOUT: "timed out connecting",
}

# httpx reports a failed TLS handshake as a ConnectError: the TLS error under it says more.
_TLS: tuple[tuple[type[BaseException], str], ...] = (
    (ssl.SSLCertVerificationError, "TLS certificate did not verify"),
    (ssl.SSLError, "TLS handshake failed"),
)
# The error itself, when nothing under it was named.
_KINDS: tuple[tuple[type[BaseException], str], ...] = (
    (httpx.ConnectError, "could not connect"),
    (httpx.RemoteProtocolError, "no valid HTTP answer"),
    (httpx.ReadError, "the connection failed while reading the answer"),
    (httpx.WriteError, "the connection failed while sending"),
    (httpx.NetworkError, "the connection failed"),
    (httpx.ProtocolError, "HTTP protocol error"),
    (httpx.UnsupportedProtocol, "not an http:// or https:// URL"),
    (httpx.InvalidURL, "not a valid URL"),
)


def _chain(error: BaseException) -> Iterator[BaseException]:
    """``error`` and what caused it (httpx wraps httpcore's errors, which wrap the socket's
    or the TLS library's)."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def error_reason(error: BaseException) -> str:
    """What went wrong on the wire, in a few fixed words; an error of a kind not known here
    is named by its class only (its message may quote the far end)."""
    chain = list(_chain(error))
    for kind, words in _TLS:
        if any(isinstance(e, kind) for e in chain):
            return words
    for cause in chain:
        if isinstance(cause, OSError) and not isinstance(cause, ssl.SSLError):
            named = _OS_ERRORS.get(cause.errno or 0)
            if named is not None:
                return named
    for kind, words in _KINDS:
        if isinstance(error, kind):
            return words
    return f"failed ({type(error).__name__})"
