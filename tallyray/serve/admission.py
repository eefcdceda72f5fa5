"""Sending a request's events to their shards: refused whole, or written.

A shard refuses events it cannot take before it writes anything: for an account set aside
(503), or for one that an event would take past a cap (422, see :mod:`tallyray.actors.limits`).
A request whose events live on one shard is therefore refused whole by that shard. A request
that spans shards is first put to each of its shards (``admit``, on the shard's line like
ingest): every shard says which of its customers are near a cap, from the count of their
events alone, and only those customers' events are sent for a closer look. Only when every
shard has admitted its part is the request written. Far from the caps this costs one small
call per shard.

Events are named by their index in the request, whichever shard refused them.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from tallyray.errors import EventError, Problem
from tallyray.pricing.events import Event
from tallyray.serve.shards import ShardRouter

__all__ = ["send_events"]


async def send_events(
    router: ShardRouter,
    env: str,
    events: Sequence[Event],
    by_shard: Mapping[int, list[Any]],
    rebook: bool,
) -> list[dict[str, int]]:
    """Ingest ``by_shard`` (``events`` split by shard, as the shards take them); each
    shard's answer. Refused whole when a shard refuses its part before any is written."""
    if len(by_shard) > 1:
        await _admit(router, env, events, by_shard)
    return list(
        await asyncio.gather(
            *(_ingest(router, i, env, events, batch, rebook) for i, batch in by_shard.items())
        )
    )


async def _ingest(
    router: ShardRouter,
    index: int,
    env: str,
    events: Sequence[Event],
    batch: list[Any],
    rebook: bool,
) -> dict[str, int]:
    try:
        answer: dict[str, int] = await router.call(index, "ingest", env, batch, rebook)
    except EventError as error:
        spots = [n for n, e in enumerate(events) if router.index(env, e[1]) == index]
        raise EventError.of(_renumbered(error.problems, spots)) from None
    return answer


async def _admit(
    router: ShardRouter, env: str, events: Sequence[Event], by_shard: Mapping[int, list[Any]]
) -> None:
    counts = {i: dict(Counter(e[0] for e in batch)) for i, batch in by_shard.items()}
    near = await asyncio.gather(*(router.call(i, "admit", env, c) for i, c in counts.items()))
    looks = {i: set(found) for i, found in zip(counts, near, strict=True) if found}
    if not looks:
        return
    calls = []
    spots: list[list[int]] = []
    for i, customers in looks.items():
        mine = [n for n, e in enumerate(events) if e[1] in customers]
        subset = [
            (events[n][1], events[n][0], events[n][2], events[n][3], events[n][4]) for n in mine
        ]
        calls.append(router.call(i, "admit", env, {c: counts[i][c] for c in customers}, subset))
        spots.append(mine)
    problems: list[Problem] = []
    for answer, mine in zip(
        await asyncio.gather(*calls, return_exceptions=True), spots, strict=True
    ):
        if isinstance(answer, EventError):
            problems += _renumbered(answer.problems, mine)
        elif isinstance(answer, BaseException):
            raise answer
    if problems:
        problems.sort(key=lambda p: int(p.where.strip("[]")))
        raise EventError.of(problems)


def _renumbered(problems: Sequence[Problem], spots: Sequence[int]) -> list[Problem]:
    """Problems named by an index into a shard's part, named by the index in the request."""
    out = []
    for p in problems:
        inner = p.where.strip("[]")
        where = f"[{spots[int(inner)]}]" if inner.isdigit() and int(inner) < len(spots) else p.where
        out.append(Problem(where, p.message))
    return out
