"""Keep Python's cyclic garbage collector off the latency path of long-lived processes.

A full (oldest-generation) collection walks every container object the process holds. In a
shard or an ingress replica that is Ray, Serve, FastAPI and SQLAlchemy's own objects plus our
state — ~100–200k objects, which one collection here took 50–120 ms to walk, stalling every
quota check waiting on that process. The objects built at start-up live as long as the
process, so after start-up they are collected once and then frozen (moved to the permanent
generation, which collections skip); later collections walk only what came after.
"""

from __future__ import annotations

import gc

__all__ = ["freeze_startup_heap"]


def freeze_startup_heap() -> None:
    """Collect what start-up left behind, then exempt everything still alive from future
    collections. Call once a process has finished starting (and again after a recovery that
    built much long-lived state)."""
    gc.collect()
    gc.freeze()
