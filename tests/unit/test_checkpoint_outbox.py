"""A checkpoint stores the outbox messages its states say fired (`ShardCore.checkpoint`), also
those of the commit being written at that moment: if that commit then fails, the stored state
would otherwise say "fired" (an auto-recharge crossing, an alert) with nothing written, and a
restarted shard's replay, starting from that state, would not fire it again. Driven on a
stand-in: no Ray, no database."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from tallyray.actors.shard import ShardCore
from tallyray.actors.unapplied import Accounts


def message(ident: str) -> dict[str, Any]:
    return {"id": ident, "env": "test", "type": "alert", "payload": {}, "created_at": 1}


def test_a_checkpoint_during_a_commit_also_writes_that_commits_messages() -> None:
    saved: list[tuple[Any, ...]] = []

    async def nothing() -> None:
        return None

    sending, queued = message("recharge:test:c:1"), message("alert:test:c:r:0:1:triggered")
    accounts = Accounts(lambda key, commits: None)
    accounts[("test", "c")] = SimpleNamespace(snapshot=lambda: {"fired": 1})  # type: ignore[assignment]
    core = SimpleNamespace(
        _settle=nothing,  # nothing waits to be applied
        _write_unpriced=nothing,
        applying=asyncio.Lock,  # no commit being applied
        dirty={("test", "c")},
        accounts=accounts,
        quarantined={},
        stats=SimpleNamespace(checkpoint_at=0),
        clock=lambda: 7,
        position=3,
        shard_count=1,
        _saved_head=0,
        _sending=[sending],  # the committer is writing these now
        outbox=[queued],  # fired since
        _db=None,
        store=SimpleNamespace(save_checkpoint=lambda *args: saved.append(args)),
    )
    assert asyncio.run(ShardCore.checkpoint(core)) == 1  # type: ignore[arg-type]
    ((position, _count, states, _now, messages, _head),) = saved
    assert (position, states) == (3, {("test", "c"): {"fired": 1}})
    assert messages == [sending, queued]
