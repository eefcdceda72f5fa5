"""What a webhook endpoint can subscribe to, and when a failed delivery is tried again. Pure.

The default schedule follows the common practice of webhook senders (Svix, Stripe): a quick
retry for a blip, then ever longer waits, so an endpoint that is down for a day still gets
every message once it is back. The waits after each failed attempt are

=======  =====  ======  ====  ====  =====  =====
5 s      5 min  30 min  2 h   5 h   10 h   14 h
=======  =====  ======  ====  ====  =====  =====

8 attempts over 31.6 h; each wait is jittered by ±20% (so many endpoints failing at once do
not come back in lockstep). The last wait is 14 h rather than the usual 10 h so that even the
shortest jittered schedule spans more than 24 h (0.8 × 31.6 h = 25.3 h).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from tallyray.errors import ConfigError, Problem

__all__ = [
    "DEFAULT_DELAYS",
    "EVENT_TYPES",
    "JITTER",
    "SUBSCRIBABLE_TYPES",
    "TEST_EVENT",
    "RetrySchedule",
]

EVENT_TYPES = (
    "alert.triggered",
    "alert.recovered",
    "credits.depleted",
    "invoice.finalized",
    "invoice.paid",
    "payment.failed",
    "recharge.succeeded",
    "recharge.failed",
    "recharge.capped",
    "recharge.disabled",
    "usage.unpriced",
    "webhook.test",
)
TEST_EVENT = "webhook.test"
"""Sent to one endpoint on request (``POST /v1/webhook-endpoints/{id}/test``), never fanned
out, so it is not subscribed to."""
SUBSCRIBABLE_TYPES = tuple(t for t in EVENT_TYPES if t != TEST_EVENT)

MINUTE, HOUR = 60.0, 3600.0
DEFAULT_DELAYS: tuple[float, ...] = (
    5.0,
    5 * MINUTE,
    30 * MINUTE,
    2 * HOUR,
    5 * HOUR,
    10 * HOUR,
    14 * HOUR,
)
JITTER = 0.2

_UNITS = {"ms": 0.001, "s": 1.0, "m": MINUTE, "h": HOUR, "d": 24 * HOUR}
_DELAY = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*$")


@dataclass(frozen=True, slots=True)
class RetrySchedule:
    """Waits (seconds) after each failed attempt: ``len(delays) + 1`` attempts in all."""

    delays: tuple[float, ...] = DEFAULT_DELAYS
    jitter: float = JITTER
    """Each wait is multiplied by a factor drawn from ``[1 - jitter, 1 + jitter)``."""

    def __post_init__(self) -> None:
        if any(d <= 0 for d in self.delays):
            raise ConfigError("every webhook retry delay must be more than zero")
        if not 0 <= self.jitter < 1:
            raise ConfigError("webhook retry jitter is a fraction from 0 to below 1")

    @property
    def attempts(self) -> int:
        return len(self.delays) + 1

    def delay(self, failed: int, random: Callable[[], float]) -> float | None:
        """Seconds to wait after the ``failed``-th failed attempt (1 for the first), or
        ``None`` once every attempt is spent. ``random`` returns a float in ``[0, 1)``."""
        if failed < 1:
            raise ValueError("attempts are counted from 1")
        if failed > len(self.delays):
            return None
        return self.delays[failed - 1] * (1 + self.jitter * (2 * random() - 1))

    def next_attempt_at(self, now: int, failed: int, random: Callable[[], float]) -> int | None:
        """When (microseconds) to try again after the ``failed``-th failed attempt at
        ``now``, or ``None`` when that was the last."""
        wait = self.delay(failed, random)
        return None if wait is None else now + round(wait * 1_000_000)

    def span(self) -> tuple[float, float]:
        """The shortest and longest time (seconds) from the first attempt to the last."""
        total = sum(self.delays)
        return total * (1 - self.jitter), total * (1 + self.jitter)

    @classmethod
    def parse(cls, text: str | Sequence[float], jitter: float = JITTER) -> RetrySchedule:
        """A schedule from settings text such as ``"5s,5m,30m,2h,5h,10h,14h"`` (units ms, s,
        m, h, d; a bare number is seconds), or from a sequence of seconds."""
        if not isinstance(text, str):
            return cls(tuple(float(d) for d in text), jitter)
        delays, problems = [], []
        for index, part in enumerate(p for p in text.split(",") if p.strip()):
            bare = part.strip()
            match = _DELAY.match(bare if not _is_number(bare) else bare + "s")
            if match is None:
                problems.append(Problem(f"delays[{index}]", f"{bare!r} is not a delay like 30s"))
                continue
            delays.append(float(match[1]) * _UNITS[match[2]])
        if problems:
            raise ConfigError.of(problems)
        return cls(tuple(delays), jitter)


def _is_number(text: str) -> bool:
    return re.fullmatch(r"\d+(?:\.\d+)?", text) is not None
