"""When to try again: exponential backoff with jitter, at least what ``Retry-After`` says,
and which failures are worth another try."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx

from tallyray_client.errors import (
    REQUEST_IN_PROGRESS,
    Conflict,
    RateLimited,
    TallyrayError,
    Unavailable,
    Unreachable,
)

__all__ = ["Backoff", "retryable"]


@dataclass(frozen=True)
class Backoff:
    """``delay(n)`` before the n-th retry (0-based): ``min(cap, base · 2ⁿ)``, of which a
    random half is taken off ("equal jitter": never zero, and a fleet of gateways that lost
    the server at the same moment does not come back at the same moment)."""

    base: float = 0.2
    cap: float = 30.0
    random: Callable[[], float] = field(default=random.random, compare=False)

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        ceiling = min(self.cap, self.base * 2.0 ** min(attempt, 32))
        wait: float = ceiling / 2 + self.random() * ceiling / 2
        if retry_after is not None:  # the server knows best when it will be back
            wait = max(wait, retry_after)
        return wait


def retryable(error: BaseException) -> bool:
    """May the same request (same Idempotency-Key) be sent again?

    Yes for no answer, a ``5xx`` and a ``429``, and for the ``409`` the API answers while a
    request with the same Idempotency-Key is still being answered (the first attempt, whose
    answer was lost, is still running)."""
    if isinstance(error, Unreachable | Unavailable | RateLimited | httpx.TransportError):
        return True
    return isinstance(error, Conflict) and error.type == REQUEST_IN_PROGRESS


def wait_hint(error: BaseException) -> float | None:
    """The server's ``Retry-After``, where it gave one."""
    return getattr(error, "retry_after", None) if isinstance(error, TallyrayError) else None
