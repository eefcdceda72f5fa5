"""The check line's socket protocol, without Ray: token, batches in flight, errors, breakage."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from decimal import Decimal
from typing import Any

import pytest

from tallyray.actors.account import QuotaAnswer
from tallyray.actors.check_line import CheckLine, CheckLineServer, LineDown
from tallyray.errors import NotFound


def answer(checks: Any) -> list[Any]:
    """Allowed when the events are fewer than 3; customer "ghost" does not exist."""
    out: list[Any] = []
    for _env, customer, events in checks:
        if customer == "ghost":
            out.append(NotFound("no customer 'ghost'"))
        else:
            out.append(QuotaAnswer(len(events) < 3, Decimal(len(events)), Decimal(2), None, "EUR"))
    return out


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_checks_go_and_answers_come_back_in_order() -> None:
    async def main() -> None:
        server = CheckLineServer("node-a", answer)
        endpoint = await server.endpoint()
        line = await CheckLine.open(endpoint)
        batches = [
            [("test", "acme", [1]), ("test", "ghost", [])],
            [("test", "acme", [1, 2, 3])],
        ] * 20
        results = await asyncio.gather(*(line.check_many(b) for b in batches))
        first, second = results[0], results[1]
        assert first[0] == QuotaAnswer(True, Decimal(1), Decimal(2), None, "EUR")
        assert isinstance(first[1], NotFound) and "ghost" in str(first[1])
        assert second == [QuotaAnswer(False, Decimal(3), Decimal(2), None, "EUR")]
        assert results[1::2] == [second] * 20  # 40 batches in flight, each its own answers
        assert all(r[0] == first[0] and isinstance(r[1], NotFound) for r in results[0::2])
        line.close()
        await server.close()

    run(main())


def test_a_wrong_token_gets_no_answers() -> None:
    async def main() -> None:
        server = CheckLineServer("node-a", answer)
        endpoint = await server.endpoint()
        line = await CheckLine.open(replace(endpoint, token=b"x" * 32))
        with pytest.raises(LineDown):
            await asyncio.wait_for(line.check_many([("test", "acme", [])]), 5)
        assert not line.up
        await server.close()

    run(main())


def test_a_line_to_nowhere_is_down_at_once() -> None:
    async def main() -> None:
        server = CheckLineServer("node-a", answer)
        endpoint = await server.endpoint()
        await server.close()
        await asyncio.sleep(0.05)
        with pytest.raises(LineDown):
            line = await CheckLine.open(endpoint)
            await asyncio.wait_for(line.check_many([("test", "acme", [])]), 5)

    run(main())


def test_checks_in_flight_when_the_shard_goes_away_are_told_to_go_another_way() -> None:
    async def main() -> None:
        server = CheckLineServer("node-a", answer)
        endpoint = await server.endpoint()
        line = await CheckLine.open(endpoint)
        assert await line.check_many([("test", "acme", [])])  # the line works
        # The shard's side of every connection closes, as when its process dies.
        for task in asyncio.all_tasks():
            if task is not asyncio.current_task() and "_serve" in repr(task.get_coro()):
                task.cancel()
        with pytest.raises(LineDown):
            await asyncio.wait_for(line.check_many([("test", "acme", [])]), 5)
        assert not line.up
        with pytest.raises(LineDown):  # and it stays down: the router opens a new one
            await line.check_many([("test", "acme", [])])
        await server.close()

    run(main())
