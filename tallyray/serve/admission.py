"""Sending a request's events to their shards: refused whole, or written.

A shard refuses events it cannot take before it writes anything: for an account set aside
(503), or for one that an event would take past a cap (422, see :mod:`tallyray.actors.limits`).
A request whose events live on one shard is therefore refused whole by that shard.

A request that spans shards must not be refused by one shard after another wrote its part.
Asking every shard first costs a round trip per request (measured: ~8 % of ingest
throughput), so the ingress asks only when it cannot tell that the request fits. Every
shard's answer carries its *room*: how many events any one of its accounts can still take
before a cap may refuse one, less every event waiting to be applied (none while an account
is set aside). The ingress keeps each shard's latest room and, while it is at most
:data:`ROOM_SECONDS` old and covers this request's events for the shard plus the events this
ingress has in flight to it, sends the request straight away. Otherwise it puts the request
to its shards first (``admit``, on the shard's line like ingest): each says, from the count of
events per customer alone, which customers are near a cap, and only those customers' events
are sent for a closer look. Only when every shard has admitted its part is it written.

With one ingress replica that is exact. Several replicas do not see each other's requests in
flight, so in a race towards a cap a shard may still refuse its part of a request that others
have written: the answer then says which events were refused and that the request's other
events were stored (send it again without the refused ones; repeats count once).

Events are named by their index in the request, whichever shard refused them.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

from tallyray.errors import EventError, Problem
from tallyray.pricing.events import Event
from tallyray.serve.shards import ShardRouter

__all__ = ["ROOM_SECONDS", "Rooms", "send_events"]

ROOM_SECONDS = 1.0
"""A shard's room is trusted this long after it was reported."""


class Rooms:
    """What this ingress knows of each shard's room, and the events it has in flight."""

    def __init__(self) -> None:
        self.known: dict[int, tuple[int, int, float]] = {}
        """shard → (log position, room, when it came)."""
        self.in_flight: dict[int, int] = defaultdict(int)

    def fits(self, shard: int, events: int, now: float) -> bool:
        found = self.known.get(shard)
        if found is None or now - found[2] > ROOM_SECONDS:
            return False
        return events + self.in_flight[shard] <= found[1]

    def note(self, shard: int, room: Any, now: float) -> None:
        """Keep a shard's report of its room (``(position, room)``) if it is the latest."""
        if room is None:
            return
        position, left = room
        found = self.known.get(shard)
        if found is None or position >= found[0]:
            self.known[shard] = (position, left, now)


_ROOMS: weakref.WeakKeyDictionary[ShardRouter, Rooms] = weakref.WeakKeyDictionary()


def rooms_of(router: ShardRouter) -> Rooms:
    found = _ROOMS.get(router)
    if found is None:
        found = _ROOMS[router] = Rooms()
    return found


async def send_events(
    router: ShardRouter,
    env: str,
    events: Sequence[Event],
    by_shard: Mapping[int, list[Any]],
    rebook: bool,
) -> list[dict[str, int]]:
    """Ingest ``by_shard`` (``events`` split by shard, as the shards take them); each
    shard's ``{"ingested", "duplicates"}``."""
    rooms = rooms_of(router)
    if len(by_shard) > 1:
        now = time.monotonic()
        if not all(rooms.fits(i, len(batch), now) for i, batch in by_shard.items()):
            await _admit(router, rooms, env, events, by_shard)
    for i, batch in by_shard.items():
        rooms.in_flight[i] += len(batch)
    try:
        answers = await asyncio.gather(
            *(router.call(i, "ingest", env, batch, rebook) for i, batch in by_shard.items()),
            return_exceptions=True,
        )
    finally:
        for i, batch in by_shard.items():
            rooms.in_flight[i] -= len(batch)
    results: list[dict[str, int]] = []
    failed: list[tuple[int, BaseException]] = []
    now = time.monotonic()
    for i, answer in zip(by_shard, answers, strict=True):
        if isinstance(answer, BaseException):
            failed.append((i, answer))
            continue
        rooms.note(i, answer.pop("room", None), now)
        results.append(answer)
    if failed:
        index, error = failed[0]
        if not isinstance(error, EventError):
            raise error
        spots = [n for n, e in enumerate(events) if router.index(env, e[1]) == index]
        problems = _renumbered(error.problems, spots)
        if not results:
            raise EventError.of(problems)
        what = "event is invalid and was" if len(problems) == 1 else "events are invalid and were"
        raise EventError(
            f"{len(problems)} {what} not stored; the request's other events were stored: "
            "send it again without these (repeats count once)",
            problems,
        )
    return results


async def _admit(
    router: ShardRouter,
    rooms: Rooms,
    env: str,
    events: Sequence[Event],
    by_shard: Mapping[int, list[Any]],
) -> None:
    counts = {i: dict(Counter(e[0] for e in batch)) for i, batch in by_shard.items()}
    answers = await asyncio.gather(*(router.call(i, "admit", env, c) for i, c in counts.items()))
    now = time.monotonic()
    looks: dict[int, set[str]] = {}
    for i, answer in zip(counts, answers, strict=True):
        rooms.note(i, answer["room"], now)
        if answer["near"]:
            looks[i] = set(answer["near"])
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
