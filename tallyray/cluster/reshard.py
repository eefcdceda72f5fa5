"""``tallyray reshard --shards N``: change the shard count on existing data.

Two ways, one hand-over (:func:`tallyray.storage.layout.move_ownership`), which needs every
account's stored state to hold every event of the log:

* **online** (:func:`reshard_live`, a running server, ``POST /v1/admin/reshard``): every shard
  *drains* — refuses writes with 503 ``resharding`` + ``Retry-After``, lets its queued commits
  land, checkpoints — then the store is handed over, the old shard actors stop and the new
  set starts and recovers from the checkpoints. Reads (quota checks, balances) keep being
  answered until the old shards stop; the pause is drain + hand-over + the new shards'
  recovery (docs/benchmarks.md). If a shard refuses to drain (an account set aside), the
  others take writes again and nothing changes.
* **offline** (:func:`reshard_offline`, the server stopped): each old shard is recovered in
  this process, one at a time (checkpoint + replay of its log, no Ray), and checkpointed;
  then the store is handed over. The next ``tallyray serve`` starts with the new count.

Requests that reach a shard with an older count (another ingress replica) meet
:class:`~tallyray.errors.NotOwner` (503): the sender reloads the count and the retry goes to
the right shard. Event ids are deduplicated per customer in the store, so a retried event is
a duplicate whichever shard it reaches.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from sqlalchemy import Engine

from tallyray.actors.routing import shard_of
from tallyray.actors.shard import ShardCore
from tallyray.clock import Clock, system_clock
from tallyray.errors import Conflict
from tallyray.storage.layout import ShardMove, move_ownership, read_layout

__all__ = ["reshard_live", "reshard_offline"]


def _owner(count: int) -> Callable[[str, str], int]:
    return lambda env, customer: shard_of(env, customer, count)


def _check_count(count: int) -> None:
    if count < 1:
        raise Conflict("--shards must be at least 1")


def reshard_offline(
    engine: Engine,
    database_url: str,
    new_count: int,
    clock: Clock = system_clock,
    secrets_file: str | None = None,
) -> dict[str, Any]:
    """Reshard a store no server is running on (see the module's docstring). ``clock``: the
    deployment's (holds expire and periods close by it while the old shards recover)."""
    _check_count(new_count)
    layout = read_layout(engine)
    if layout is None:
        raise Conflict("the database has no shard layout yet: start the server once first")
    started = time.perf_counter()
    for shard in range(layout.count):
        core = ShardCore(shard, layout.count, database_url, clock=clock, secrets_file=secrets_file)
        try:
            if core.quarantined:
                raise Conflict(
                    f"shard {shard} has {len(core.quarantined)} accounts set aside; repair "
                    "them before changing the shard count"
                )
            asyncio.run(core.checkpoint())
        finally:
            core._db.shutdown()
            core.engine.dispose()
    move = move_ownership(engine, new_count, _owner(new_count), clock())
    return {**move.to_json(), "mode": "offline", "seconds": time.perf_counter() - started}


async def reshard_live(
    engine: Engine,
    shards: Sequence[Any],
    new_count: int,
    restart: Callable[[int], Awaitable[Sequence[Any]]],
    now: int,
) -> dict[str, Any]:
    """Reshard under a running server: drain ``shards`` (the old set's actor handles), hand
    the store over, and ``restart`` (stops the old actors, starts ``new_count`` new ones,
    waits until they have recovered). Returns what moved and how long writes paused."""
    _check_count(new_count)
    started = time.perf_counter()
    drained = await asyncio.gather(*(h.drain.remote() for h in shards), return_exceptions=True)
    failed = [d for d in drained if isinstance(d, BaseException)]
    if failed:
        await asyncio.gather(*(h.resume.remote() for h in shards), return_exceptions=True)
        cause = failed[0]
        raise getattr(cause, "cause", None) or cause
    drain_seconds = time.perf_counter() - started
    try:
        move: ShardMove = await asyncio.get_running_loop().run_in_executor(
            None, move_ownership, engine, new_count, _owner(new_count), now
        )
    except BaseException:  # nothing was handed over (one transaction): go on as before
        await asyncio.gather(*(h.resume.remote() for h in shards), return_exceptions=True)
        raise
    moved_at = time.perf_counter()
    await restart(new_count)
    done = time.perf_counter()
    return {
        **move.to_json(),
        "mode": "online",
        "drain_seconds": round(drain_seconds, 3),
        "hand_over_seconds": round(moved_at - started - drain_seconds, 3),
        "restart_seconds": round(done - moved_at, 3),
        "pause_seconds": round(done - started, 3),
    }
