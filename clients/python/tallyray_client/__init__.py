"""A Python client for Tallyray gateways.

::

    from tallyray_client import Tallyray

    client = Tallyray("http://127.0.0.1:8000", "trk_live_…")
    with client.reserve("acme", {"type": "llm.completion", "properties": {...}}) as hold:
        answer = call_the_model()
        hold.record(type="llm.completion", properties={...actual usage...})

See ``docs/gateway.md`` of Tallyray for the whole story.
"""

from tallyray_client.aio import AsyncTallyray, PendingReservation
from tallyray_client.backoff import Backoff
from tallyray_client.client import Tallyray
from tallyray_client.errors import (
    BadRequest,
    BufferFull,
    Conflict,
    Denied,
    Detail,
    Forbidden,
    NotFound,
    RateLimited,
    TallyrayError,
    Unauthorized,
    Unavailable,
    Unreachable,
)
from tallyray_client.policy import OnUnreachable
from tallyray_client.reservation import AsyncReservation, Reservation
from tallyray_client.results import (
    Balance,
    Hold,
    QuotaCheck,
    Rejected,
    Release,
    Settlement,
    UnitLimit,
)
from tallyray_client.spool import SpoolLocked

__all__ = [
    "AsyncReservation",
    "AsyncTallyray",
    "Backoff",
    "BadRequest",
    "Balance",
    "BufferFull",
    "Conflict",
    "Denied",
    "Detail",
    "Forbidden",
    "Hold",
    "NotFound",
    "OnUnreachable",
    "PendingReservation",
    "QuotaCheck",
    "RateLimited",
    "Rejected",
    "Release",
    "Reservation",
    "Settlement",
    "SpoolLocked",
    "Tallyray",
    "TallyrayError",
    "Unauthorized",
    "Unavailable",
    "UnitLimit",
    "Unreachable",
]
