"""Usage events: the one internal shape, and turning JSON objects into it.

An event on the hot path is a plain tuple (a :class:`Event` named tuple) rather than an object
with validation per field: it pickles small across the Ray boundary and unpacks fast in the
meter folds. Timestamps are integer microseconds since the Unix epoch (UTC).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple, TypeGuard

from tallyray.pricing.money import shown

__all__ = [
    "MAX_ID_LENGTH",
    "Event",
    "EventShapeError",
    "format_timestamp",
    "is_identifier",
    "parse_event",
    "parse_timestamp",
]

MAX_ID_LENGTH = 255

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class Event(NamedTuple):
    id: str
    customer_id: str
    type: str
    ts: int
    """Microseconds since the Unix epoch, UTC."""
    properties: Mapping[str, Any]


class EventShapeError(ValueError):
    """The event object itself is malformed; the message says which field and why."""


def parse_timestamp(value: object) -> int:
    """RFC 3339 text (``2026-11-28T10:00:00Z``) to microseconds since the epoch.

    An offset is required: a timestamp without one is ambiguous for billing.
    """
    if not isinstance(value, str):
        raise EventShapeError(f"'timestamp' must be an RFC 3339 string, not {shown(value)}")
    try:
        if len(value) > 40:
            raise ValueError(value)
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise EventShapeError(
            f"'timestamp' {shown(value)} is not RFC 3339, e.g. '2026-11-28T10:00:00Z'"
        ) from None
    if moment.tzinfo is None:
        raise EventShapeError(f"'timestamp' {shown(value)} has no UTC offset; add 'Z' or '+01:00'")
    delta = moment - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def format_timestamp(ts: int) -> str:
    """Microseconds since the epoch to RFC 3339 text in UTC."""
    text = (_EPOCH + timedelta(microseconds=ts)).isoformat()
    return text.replace("+00:00", "Z")


def _text_field(obj: Mapping[str, Any], name: str) -> str:
    value = obj.get(name)
    if not isinstance(value, str) or not value:
        raise EventShapeError(f"'{name}' must be a non-empty string, not {shown(value)}")
    if len(value) > MAX_ID_LENGTH:
        raise EventShapeError(f"'{name}' is longer than {MAX_ID_LENGTH} characters")
    if not value.isprintable():
        raise EventShapeError(
            f"'{name}' {shown(value)} holds a control or other unprintable character"
        )
    return value


def is_identifier(value: object) -> TypeGuard[str]:
    """Is ``value`` fit to be an id (an event's, a customer's, an event type)? A string of 1 to
    :data:`MAX_ID_LENGTH` printable characters: no control characters (NUL, newlines, …),
    which the store or a log line could not hold or would misread."""
    return isinstance(value, str) and 0 < len(value) <= MAX_ID_LENGTH and value.isprintable()


def parse_event(
    obj: object,
    *,
    default_ts: int,
    default_id: str | None = None,
    default_customer: str | None = None,
) -> Event:
    """Check one decoded JSON event and return it as an :class:`Event`.

    ``default_*`` fill fields the caller may omit (the offline ``tallyray price`` needs no
    customer or id; the server defaults the timestamp to the receipt time).
    """
    if not isinstance(obj, dict):
        raise EventShapeError(f"an event must be a JSON object, not {type(obj).__name__}")
    event_type = _text_field(obj, "type")
    event_id = _text_field(obj, "id") if "id" in obj or default_id is None else default_id
    if "customer_id" in obj or default_customer is None:
        customer = _text_field(obj, "customer_id")
    else:
        customer = default_customer
    raw_ts = obj.get("timestamp")
    ts = default_ts if raw_ts is None else parse_timestamp(raw_ts)
    properties = obj.get("properties", {})
    if not isinstance(properties, dict):
        raise EventShapeError(f"'properties' must be a JSON object, not {shown(properties)}")
    return Event(event_id, customer, event_type, ts, properties)
