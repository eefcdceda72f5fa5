"""Portal session tokens: who may see which customer's portal, and until when.

A token is two URL-safe base64 parts (no padding) joined by a dot::

    <payload>.<signature>
    payload   = base64url(JSON ["v1", env, customer_id, expires_at])   expires_at: epoch µs
    signature = base64url(HMAC-SHA256(key, "tallyray-portal." + payload))

The payload is signed, not encrypted: it names the customer but grants nothing without a valid
signature. Verification compares signatures in constant time, then checks the version, the
environment (``live`` or ``test``) and the expiry. Every failure is the same
:class:`InvalidToken` (a tampered token says nothing about which part was wrong), except an
expired one, :class:`ExpiredToken`, so the page can say "ask for a new link".

The signing key is a random 32-byte secret kept in the ``server_secrets`` table under the name
``portal``, made on first use; :meth:`PortalKeys.load` inserts it or, when another replica
got there first, reads that one, so every replica signs and checks with the same key.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy import Engine

from tallyray.access import ENVIRONMENTS
from tallyray.errors import Unauthorized
from tallyray.storage.secrets import shared_secret

__all__ = [
    "ExpiredToken",
    "InvalidToken",
    "PortalKeys",
    "PortalSession",
    "issue_token",
    "read_token",
]

VERSION = "v1"
SECRET_NAME = "portal"
_CONTEXT = b"tallyray-portal."
_MAX_TOKEN = 1024


class InvalidToken(Unauthorized):
    """A token that is malformed, tampered with, or signed with another key."""


class ExpiredToken(InvalidToken):
    """A genuine token whose time is up."""


@dataclass(frozen=True, slots=True)
class PortalSession:
    env: str
    customer_id: str
    expires_at: int
    """Microseconds since the epoch."""


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    if not text or not all(c.isalnum() or c in "-_" for c in text) or not text.isascii():
        raise InvalidToken("this portal link is not valid")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise InvalidToken("this portal link is not valid") from None


def _sign(key: bytes, payload: str) -> bytes:
    return hmac.new(key, _CONTEXT + payload.encode("ascii"), hashlib.sha256).digest()


def issue_token(key: bytes, env: str, customer_id: str, expires_at: int) -> str:
    """A token for ``customer_id`` of ``env``, good until ``expires_at`` (epoch µs)."""
    if env not in ENVIRONMENTS:
        raise ValueError(f"portal sessions are for {' or '.join(ENVIRONMENTS)}, not {env!r}")
    payload = _b64(orjson.dumps([VERSION, env, customer_id, expires_at]))
    return f"{payload}.{_b64(_sign(key, payload))}"


def read_token(key: bytes, token: str, now: int) -> PortalSession:
    """The session a token carries, or :class:`InvalidToken` / :class:`ExpiredToken`."""
    if len(token) > _MAX_TOKEN or token.count(".") != 1:
        raise InvalidToken("this portal link is not valid")
    payload, signature = token.split(".")
    given = _unb64(signature)
    _unb64(payload)  # the alphabet check, before anything is trusted
    if not hmac.compare_digest(given, _sign(key, payload)):
        raise InvalidToken("this portal link is not valid")
    try:
        doc: Any = orjson.loads(_unb64(payload))
    except orjson.JSONDecodeError:
        raise InvalidToken("this portal link is not valid") from None
    if (
        not isinstance(doc, list)
        or len(doc) != 4
        or doc[0] != VERSION
        or doc[1] not in ENVIRONMENTS
        or not isinstance(doc[2], str)
        or not doc[2]
        or not isinstance(doc[3], int)
        or isinstance(doc[3], bool)
    ):
        raise InvalidToken("this portal link is not valid")
    if doc[3] <= now:
        raise ExpiredToken("this portal link has expired")
    return PortalSession(env=doc[1], customer_id=doc[2], expires_at=doc[3])


class PortalKeys:
    """The portal's signing key, shared by every replica through the database."""

    def __init__(self, key: bytes) -> None:
        if len(key) < 32:
            raise ValueError("a portal signing key needs at least 32 bytes")
        self.key = key

    @classmethod
    def load(cls, engine: Engine, now: int | None = None) -> PortalKeys:
        """The stored key, made (32 random bytes) and stored on first use. Two replicas
        racing to make it both end up with the one that was inserted first."""
        stamp = time.time_ns() // 1000 if now is None else now
        value = shared_secret(engine, SECRET_NAME, lambda: _b64(secrets.token_bytes(32)), stamp)
        return cls(base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)))

    def issue(self, env: str, customer_id: str, expires_at: int) -> str:
        return issue_token(self.key, env, customer_id, expires_at)

    def read(self, token: str, now: int) -> PortalSession:
        return read_token(self.key, token, now)
