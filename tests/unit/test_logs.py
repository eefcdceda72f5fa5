"""Structured logs and URL redaction (tallyray/logs.py)."""

from __future__ import annotations

import json
import logging
import sys
from datetime import datetime
from decimal import Decimal
from typing import Any

import pytest

from tallyray.logs import JsonFormatter, RedactPortalTokens, redact


def record(
    message: str = "ingested %d events",
    args: tuple[Any, ...] = (3,),
    *,
    level: int = logging.INFO,
    name: str = "tallyray.serve",
    extra: dict[str, Any] | None = None,
    exc_info: Any = None,
) -> logging.LogRecord:
    """A log record as ``logger.info(message, *args, extra=extra)`` makes it, built without
    the global record factory (importing Ray replaces that factory; see the last test)."""
    rec = logging.LogRecord(name, level, __file__, 42, message, args, exc_info)
    for key, value in (extra or {}).items():
        setattr(rec, key, value)  # what Logger.makeRecord does with ``extra``
    return rec


def formatted(rec: logging.LogRecord) -> dict[str, Any]:
    text = JsonFormatter().format(rec)
    assert "\n" not in text  # one JSON object a line
    entry = json.loads(text)
    assert isinstance(entry, dict)
    return entry


# --- JsonFormatter -------------------------------------------------------------------------


def test_json_line_has_the_standard_fields() -> None:
    rec = record(extra={"customer_count": 2, "shard": "s-1"})
    entry = formatted(rec)
    assert entry == {
        "ts": entry["ts"],
        "level": "info",
        "logger": "tallyray.serve",
        "message": "ingested 3 events",  # args are interpolated
        "customer_count": 2,
        "shard": "s-1",
    }
    moment = datetime.fromisoformat(entry["ts"])
    assert moment.utcoffset() is not None and moment.utcoffset().total_seconds() == 0
    assert moment.timestamp() == pytest.approx(rec.created, abs=1e-3)


@pytest.mark.parametrize(
    ("level", "name"),
    [
        (logging.DEBUG, "debug"),
        (logging.INFO, "info"),
        (logging.WARNING, "warning"),
        (logging.ERROR, "error"),
        (logging.CRITICAL, "critical"),
    ],
)
def test_level_is_lower_case(level: int, name: str) -> None:
    assert formatted(record(level=level))["level"] == name


def test_no_log_record_internals_leak_into_the_line() -> None:
    entry = formatted(record())
    for internal in ("msg", "args", "levelno", "pathname", "lineno", "exc_info", "created"):
        assert internal not in entry
    assert set(entry) == {"ts", "level", "logger", "message"}


def test_extra_values_that_are_not_json_are_written_as_text() -> None:
    entry = formatted(record(extra={"amount": Decimal("1.50"), "ids": ("a", "b")}))
    assert entry["amount"] == "1.50"  # json.dumps(default=str)
    assert entry["ids"] == ["a", "b"]


def test_exception_is_included_as_text_on_the_same_line() -> None:
    try:
        raise RuntimeError("shard 3 is gone")
    except RuntimeError:
        rec = record("checkpoint failed", (), level=logging.ERROR, exc_info=sys.exc_info())
    entry = formatted(rec)
    assert entry["message"] == "checkpoint failed"
    assert "Traceback" in entry["exception"]
    assert "RuntimeError: shard 3 is gone" in entry["exception"]


def test_formatter_works_through_a_real_handler(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("tallyray.test_logs")
    with caplog.at_level(logging.INFO, logger="tallyray.test_logs"):
        logger.info("hello %s", "world", extra={"request_id": "r-1"})
    (rec,) = caplog.records
    entry = formatted(rec)
    assert entry["level"] == "info"
    assert entry["message"] == "hello world"
    assert entry["logger"] == "tallyray.test_logs"
    assert entry["request_id"] == "r-1"


def test_attributes_added_by_a_record_factory_are_not_extra_fields() -> None:
    base = logging.getLogRecordFactory()

    def ray_like_factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        rec = base(*args, **kwargs)
        rec.__dict__["_ray_timestamp_ns"] = 1  # what ray._private.log does
        return rec

    logger = logging.getLogger("tallyray.test_logs")
    logging.setLogRecordFactory(ray_like_factory)
    try:
        rec = logger.makeRecord(logger.name, logging.INFO, "f", 1, "hi", (), None, extra={"a": 1})
    finally:
        logging.setLogRecordFactory(base)
    assert set(formatted(rec)) == {"ts", "level", "logger", "message", "a"}


# --- redact --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgresql://user:pw@host/db", "postgresql://user:***@host/db"),
        (
            "postgresql+psycopg://billing:s3cr3t@db.internal:5432/tallyray?sslmode=require",
            "postgresql+psycopg://billing:***@db.internal:5432/tallyray?sslmode=require",
        ),
        # an '@' or ':' inside the password does not let part of it through
        ("postgresql://user:p@ss@host/db", "postgresql://user:***@host/db"),
        ("postgresql://user:pa:ss@host/db", "postgresql://user:***@host/db"),
    ],
)
def test_redact_hides_the_password(url: str, expected: str) -> None:
    assert redact(url) == expected


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://host/db",
        "postgresql://db.internal:5432/tallyray?sslmode=require",
        "sqlite:///var/lib/tallyray/tallyray.db",
        "sqlite:///:memory:",
        "",
    ],
)
def test_redact_leaves_urls_without_credentials_alone(url: str) -> None:
    assert redact(url) == url


def test_redact_hides_a_password_in_the_query_string() -> None:
    assert "s3cr3t" not in redact("postgresql://db.internal/tallyray?user=billing&password=s3cr3t")


@pytest.mark.parametrize(
    ("path", "logged"),
    [
        ("/portal/eyJhbGciOi.secret", "/portal/***"),
        ("/portal/eyJhbGciOi.secret/invoices?page=2", "/portal/***/invoices?page=2"),
        ("/portal/static/portal.css", "/portal/static/portal.css"),
        ("/v1/events", "/v1/events"),
    ],
)
def test_access_log_lines_never_carry_a_portal_token(path: str, logged: str) -> None:
    rec = record('%s - "%s %s HTTP/%s" %d', ("127.0.0.1:5000", "GET", path, "1.1", 200))
    assert RedactPortalTokens().filter(rec)
    assert formatted(rec)["message"] == f'127.0.0.1:5000 - "GET {logged} HTTP/1.1" 200'
