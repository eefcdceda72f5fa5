"""Time, in one home: microseconds since the Unix epoch (UTC), as all of Tallyray counts it.

The pure core (:mod:`tallyray.pricing`, the account logic) never reads a clock: the shells
pass ``now`` in. The shells take a :data:`Clock`, a callable that answers the time now.

A deployment may run on a *shifted* clock (``TALLYRAY_CLOCK_START``): the server's time
starts at a chosen instant and moves forward at the real rate from there. It exists so that
tests and demos do not depend on the day they run on. The shift is worked out once, by the
process that starts the server, and every process it starts (replicas, shards, the webhook
deliverer) gets the same offset, so all of them agree on the time, across restarts too.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["Clock", "ManualClock", "ShiftedClock", "clock_for", "offset_to", "system_clock"]

Clock = Callable[[], int]
"""Answers the time now, in microseconds since the epoch."""


def system_clock() -> int:
    """The machine's time."""
    return time.time_ns() // 1000


@dataclass(frozen=True, slots=True)
class ShiftedClock:
    """The machine's time moved by a fixed offset: it runs at the real rate."""

    offset_us: int

    def __call__(self) -> int:
        return time.time_ns() // 1000 + self.offset_us


@dataclass(slots=True)
class ManualClock:
    """A clock that moves only when told to (unit tests)."""

    now_us: int

    def __call__(self) -> int:
        return self.now_us

    def advance(self, seconds: float) -> None:
        self.now_us += int(seconds * 1_000_000)


def clock_for(offset_us: int) -> Clock:
    """The machine's clock, shifted by ``offset_us`` (``0``: the machine's own)."""
    return ShiftedClock(offset_us) if offset_us else system_clock


def offset_to(start_us: int) -> int:
    """The offset that makes a shifted clock read ``start_us`` now."""
    return start_us - system_clock()
