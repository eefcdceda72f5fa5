"""Structured logs: one JSON object a line on stderr (``TALLYRAY_LOG_FORMAT=text`` for plain).

Nothing secret goes in: API keys are never logged, and database URLs are logged only through
:func:`redact`.
"""

from __future__ import annotations

import contextvars
import json
import logging
import os
import re
import sys
from datetime import UTC, datetime
from typing import Any

__all__ = [
    "JsonFormatter",
    "RedactPortalTokens",
    "configure_logging",
    "redact",
    "request_id",
    "route_uvicorn_logs",
]

request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "tallyray_request_id", default=None
)
"""The id of the HTTP request being served (set by
:class:`~tallyray.serve.request_context.RequestContext`); every log line carries it."""

_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, tz=UTC).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        rid = request_id.get()
        if rid is not None:
            entry["request_id"] = rid
        # Extras passed by the caller; underscored attributes are other libraries' (Ray adds
        # ``_ray_timestamp_ns`` to every record).
        entry.update(
            {k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")}
        )
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def _handler() -> logging.Handler:
    handler = logging.StreamHandler(sys.stderr)
    if os.environ.get("TALLYRAY_LOG_FORMAT", "json") == "text":
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    else:
        handler.setFormatter(JsonFormatter())
    return handler


def configure_logging(level: int = logging.INFO) -> None:
    """Send Tallyray's logs to stderr, as JSON unless ``TALLYRAY_LOG_FORMAT=text``."""
    logger = logging.getLogger("tallyray")
    logger.handlers[:] = [_handler()]
    logger.setLevel(level)
    logger.propagate = False


_PORTAL_TOKEN = re.compile(r"/portal/(?!static/)[^/?#\s]+")


class RedactPortalTokens(logging.Filter):
    """A portal link is its own credential (``/portal/{token}``): an access-log line keeps
    the path with the token replaced."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(
                _PORTAL_TOKEN.sub("/portal/***", a) if isinstance(a, str) else a
                for a in record.args
            )
        return True


def route_uvicorn_logs(access_log: bool) -> None:
    """uvicorn's own logs (listener errors; with ``access_log``, a line per request) through
    the same handler and format as Tallyray's."""
    errors = logging.getLogger("uvicorn.error")
    errors.handlers[:] = [_handler()]
    errors.setLevel(logging.WARNING)
    errors.propagate = False
    access = logging.getLogger("uvicorn.access")
    handler = _handler()
    handler.addFilter(RedactPortalTokens())
    access.handlers[:] = [handler]
    access.setLevel(logging.INFO if access_log else logging.WARNING)
    access.propagate = False


def redact(url: str) -> str:
    """A database URL without its password (in the authority or the query string)."""
    url = re.sub(r"(?i)([?&]password=)[^&]*", r"\1***", url)
    head, at, tail = url.rpartition("@")
    if not at:
        return url
    scheme, _, credentials = head.partition("://")
    user = credentials.split(":", 1)[0]
    return f"{scheme}://{user}:***@{tail}"
