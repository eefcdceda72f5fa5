"""The test suite's clock: every server, shard and deliverer the tests start runs on it, so
the suite never depends on the day it runs on (:mod:`tallyray.clock`).

``TALLYRAY_TEST_NOW`` starts it at another moment (``TALLYRAY_TEST_NOW=2027-12-31T23:59:00Z
make test``); tests that must cross a month or year end start clocks of their own.
"""

from __future__ import annotations

import os

from tallyray.clock import ShiftedClock, offset_to
from tallyray.pricing.events import parse_timestamp

__all__ = ["CLOCK", "TEST_NOW"]

TEST_NOW = os.environ.get("TALLYRAY_TEST_NOW", "2026-11-20T10:00:00Z")
"""Where the suite's clock starts."""

CLOCK = ShiftedClock(offset_to(parse_timestamp(TEST_NOW)))
"""Reads ``TEST_NOW`` when the suite starts, and runs on at the real rate."""
