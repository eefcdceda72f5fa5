"""Signing webhook messages the Standard Webhooks way (https://www.standardwebhooks.com).

Each endpoint has a secret ``whsec_<base64 of 32 random bytes>``. A message is sent with three
headers::

    webhook-id:        the message id (the same on every retry: receivers dedupe on it)
    webhook-timestamp: when this attempt was signed, in whole seconds since the epoch
    webhook-signature: v1,<base64 of HMAC-SHA256(key, "<id>.<timestamp>.<body>")>

where *key* is the base64-decoded part of the secret. Any Standard Webhooks library verifies
them (``standardwebhooks.Webhook(secret).verify(body, headers)``).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
from collections.abc import Callable

__all__ = ["SECRET_BYTES", "SECRET_PREFIX", "headers", "new_secret", "secret_key", "sign"]

SECRET_PREFIX = "whsec_"
SECRET_BYTES = 32
"""Random bytes in a new secret (the spec asks for 24 to 64)."""


def new_secret(random_bytes: Callable[[int], bytes] = secrets.token_bytes) -> str:
    """A fresh endpoint secret: ``whsec_`` and the base64 of :data:`SECRET_BYTES` bytes."""
    return SECRET_PREFIX + base64.b64encode(random_bytes(SECRET_BYTES)).decode("ascii")


def secret_key(secret: str) -> bytes:
    """The HMAC key inside a ``whsec_`` secret; :class:`ValueError` when it is not one."""
    if not secret.startswith(SECRET_PREFIX):
        raise ValueError(f"a webhook secret starts with {SECRET_PREFIX!r}")
    try:
        key = base64.b64decode(secret[len(SECRET_PREFIX) :], validate=True)
    except binascii.Error:
        raise ValueError("a webhook secret is 'whsec_' and base64") from None
    if not key:
        raise ValueError("a webhook secret may not be empty")
    return key


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """``v1,<base64 signature>`` of one message attempt."""
    content = b"%s.%d.%s" % (msg_id.encode(), timestamp, body)
    digest = hmac.new(secret_key(secret), content, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode("ascii")


def headers(secret: str, msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The three Standard Webhooks headers for sending ``body`` as message ``msg_id``."""
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(secret, msg_id, timestamp, body),
    }
