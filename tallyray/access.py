"""Who may do what: API keys, their environments and scopes. Pure definitions, no I/O.

An API key belongs to one environment: ``live`` or ``test`` (the key's environment scopes
every object it touches), or ``admin`` (manages keys, nothing else). A live or test key holds
one or more *scopes*:

==========  ==================================================================
scope       what it allows
==========  ==================================================================
``ingest``  send events, check quotas, place, settle and release reservations
``read``    every ``GET``
``manage``  everything else: meters, plans, customers, subscriptions, credits,
            invoices, webhooks, alert rules, exchange rates, the audit log
==========  ==================================================================

A gateway holds an ``ingest`` key; a dashboard a ``read`` key; the billing back office all
three. Which scope a route needs is decided in one place, by the route's method and path
(:func:`required_scope`), never route by route.
"""

from __future__ import annotations

import re
import secrets
from typing import Literal

__all__ = [
    "ADMIN",
    "ALL_SCOPES",
    "ENVIRONMENTS",
    "INGEST_ROUTES",
    "KEY_ENVIRONMENTS",
    "SCOPES",
    "Needed",
    "Scope",
    "generate_key",
    "looks_like_key",
    "parse_scopes",
    "required_scope",
]

Scope = Literal["ingest", "read", "manage"]
SCOPES: tuple[Scope, ...] = ("ingest", "read", "manage")
ALL_SCOPES: frozenset[str] = frozenset(SCOPES)

ADMIN = "admin"
"""The environment, and the only scope, of an admin key."""

ENVIRONMENTS = ("live", "test")
KEY_ENVIRONMENTS = (*ENVIRONMENTS, ADMIN)

Needed = Literal["ingest", "read", "manage", "admin"]

KEY_SECRET_CHARS = 32
"""Random characters after the ``trk_<env>_`` prefix of a generated key (~192 bits)."""

_KEY = re.compile(r"trk_(live|test|admin)_[A-Za-z0-9_-]{32,128}")

#: The routes a gateway's ``ingest`` key calls (method, path template).
INGEST_ROUTES = frozenset(
    {
        ("POST", "/v1/events"),
        ("POST", "/v1/quota/check"),
        ("POST", "/v1/reservations"),
        ("POST", "/v1/reservations/{hold_id}/settle"),
        ("POST", "/v1/reservations/{hold_id}/release"),
    }
)


#: Reads that need ``manage``: who did what is for those who may do it.
MANAGE_READS = frozenset({("GET", "/v1/audit-events")})


def required_scope(method: str, path: str) -> Needed:
    """What a call needs: ``admin`` for ``/v1/admin/…``, ``ingest`` for the gateway's routes,
    ``read`` for any other ``GET`` (but the audit log), and ``manage`` for everything else."""
    if path.startswith("/v1/admin/"):
        return "admin"
    if (method, path) in INGEST_ROUTES:
        return "ingest"
    if (method, path) in MANAGE_READS:
        return "manage"
    if method in ("GET", "HEAD"):
        return "read"
    return "manage"


def generate_key(env: str) -> str:
    """A new secret key for ``env``: ``trk_<env>_`` and 32 URL-safe random characters."""
    if env not in KEY_ENVIRONMENTS:
        raise ValueError(f"no environment {env!r}")
    return f"trk_{env}_{secrets.token_urlsafe(24)}"


def looks_like_key(text: str) -> bool:
    """Is ``text`` shaped like a key Tallyray makes? Anything else is refused without a
    look-up (a stranger's guesses cost no database query)."""
    return _KEY.fullmatch(text) is not None


def parse_scopes(raw: object) -> frozenset[str]:
    """Scopes from the API (a non-empty list of scope names), or :class:`ValueError` saying
    what is wrong."""
    if not isinstance(raw, list) or not raw or not all(isinstance(s, str) for s in raw):
        raise ValueError(f"must be a non-empty list of scopes: {', '.join(SCOPES)}")
    unknown = sorted(set(raw) - ALL_SCOPES)
    if unknown:
        raise ValueError(f"unknown scope {unknown[0]!r}; the scopes are {', '.join(SCOPES)}")
    return frozenset(raw)
