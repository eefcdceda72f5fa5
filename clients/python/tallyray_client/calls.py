"""The requests of the API, shared by the sync and the async client: what to send, and how
to read the answer. No I/O here."""

from __future__ import annotations

import os
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import httpx

from tallyray_client.errors import TallyrayError, Unreachable, error_from_response

__all__ = ["Call", "Options", "read", "unreachable"]

Event = Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Call:
    """One logical call. Its ``key`` goes as ``Idempotency-Key`` (on a POST) and as
    ``X-Request-Id``, the same on every retry: a retry is the same request again."""

    method: str
    path: str
    body: Any = None
    retries: int = 0
    key: str = field(default_factory=lambda: f"trc_{uuid.uuid4().hex}")

    @property
    def headers(self) -> dict[str, str]:
        headers = {"X-Request-Id": self.key}
        if self.method == "POST":
            headers["Idempotency-Key"] = self.key
        return headers


@dataclass(frozen=True, slots=True)
class Options:
    """Settings both clients share."""

    base_url: str
    api_key: str

    @classmethod
    def resolve(cls, base_url: str | None, api_key: str | None) -> Options:
        url = base_url or os.environ.get("TALLYRAY_URL")
        key = api_key or os.environ.get("TALLYRAY_API_KEY")
        if not url:
            raise ValueError("no Tallyray URL: pass base_url or set TALLYRAY_URL")
        if not key:
            raise ValueError("no API key: pass api_key or set TALLYRAY_API_KEY")
        return cls(url.rstrip("/"), key)

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}", "User-Agent": "tallyray-client/0.1"}


def would_be(customer_id: str, event: Event | Sequence[Event]) -> dict[str, Any]:
    """The body of a check or a reservation: one would-be event, or several."""
    if isinstance(event, Mapping):
        return {"customer_id": customer_id, "event": dict(event)}
    return {"customer_id": customer_id, "events": [dict(e) for e in event]}


def check(customer_id: str, event: Event | Sequence[Event], retries: int) -> Call:
    return Call("POST", "/v1/quota/check", would_be(customer_id, event), retries)


def reserve(
    customer_id: str, event: Event | Sequence[Event], ttl_seconds: float | None, retries: int
) -> Call:
    body = would_be(customer_id, event)
    if ttl_seconds is not None:
        body["ttl_seconds"] = ttl_seconds
    return Call("POST", "/v1/reservations", body, retries)


def settle(hold_id: str, events: Sequence[Event], retries: int) -> Call:
    path = f"/v1/reservations/{quote(hold_id, safe='')}/settle"
    return Call("POST", path, {"events": [dict(e) for e in events]}, retries)


def release(hold_id: str, retries: int) -> Call:
    return Call("POST", f"/v1/reservations/{quote(hold_id, safe='')}/release", {}, retries)


def balance(customer_id: str, retries: int) -> Call:
    return Call("GET", f"/v1/customers/{quote(customer_id, safe='')}/balance", None, retries)


def read(response: httpx.Response) -> tuple[dict[str, Any], bool, str | None]:
    """The JSON of a 2xx answer, whether it was replayed (``Idempotent-Replayed``), and its
    request id; anything else raised as the error it is."""
    if not response.is_success:
        raise error_from_response(response)
    body = response.json()
    if not isinstance(body, dict):
        raise TallyrayError(f"unexpected answer: {body!r}", status=response.status_code)
    replayed = response.headers.get("idempotent-replayed") == "true"
    return body, replayed, response.headers.get("x-request-id")


def unreachable(call: Call, error: Exception) -> Unreachable:
    text = str(error) or type(error).__name__
    return Unreachable(
        f"no answer from Tallyray to {call.method} {call.path}: {text}", request_id=call.key
    )
