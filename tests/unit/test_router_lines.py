"""How the ingress's router picks a shard's line or Ray, with a fake actor handle (no Ray)."""

from __future__ import annotations

import asyncio
from collections import Counter
from decimal import Decimal
from typing import Any

import pytest

from tallyray.actors.account import QuotaAnswer
from tallyray.actors.shard_line import LineOptions, ShardLineServer
from tallyray.errors import NotFound, NotOwner, Resharding, StoreUnavailable
from tallyray.serve.shards import ShardRouter


async def ray_answer(value: Any) -> Any:
    return value


async def ingest(env: str, events: list[Any], rebook: bool = False) -> dict[str, int]:
    return {"ingested": len(events), "duplicates": 0}


def check_many(checks: list[tuple[str, str, list[Any]]]) -> list[Any]:
    """Allowed with fewer than 3 events; the customer "ghost" does not exist; "other" is
    not this shard's (a reshard moved it)."""
    answers: list[Any] = []
    for _env, customer, events in checks:
        if customer == "ghost":
            answers.append(NotFound("no customer 'ghost'"))
        elif customer == "other":
            answers.append(NotOwner("customer 'other' is not on this shard"))
        else:
            answers.append(QuotaAnswer(len(events) < 3, Decimal(len(events)), None, None, "EUR"))
    return answers


METHODS = {"ingest": ingest, "check_many": check_many}


class FakeShard:
    """Stands in for a Ray actor handle: ``handle.method.remote(*args)`` is awaitable, and
    every Ray call is counted."""

    def __init__(self, node: str, host: str | None = None) -> None:
        self.server = ShardLineServer(node, METHODS, host=host)
        self.ray_calls: Counter[str] = Counter()
        self.draining = False
        """Ray calls to ingest are refused as a draining shard refuses them."""

    def __getattr__(self, method: str) -> Any:
        shard = self

        class Method:
            @staticmethod
            def remote(*args: Any) -> Any:
                shard.ray_calls[method] += 1
                if method == "line_endpoint":
                    return shard.server.endpoint()
                if method == "check_many":
                    return ray_answer(check_many(*args))
                if shard.draining:
                    raise Resharding.now()
                return ingest(*args)

        return Method


def test_a_shard_on_this_node_is_called_over_its_line() -> None:
    async def main() -> None:
        shard = FakeShard("node-a")
        router = ShardRouter(1, lookup=lambda i: shard, node=lambda: "node-a")
        for _ in range(5):
            assert await router.call(0, "ingest", "test", [1, 2]) == {
                "ingested": 2,
                "duplicates": 0,
            }
        assert router.line_calls == 5
        assert shard.ray_calls == {"line_endpoint": 1}  # asked once where the line is
        await shard.server.close()

    asyncio.run(main())


def test_a_shard_on_another_node_without_a_tcp_line_is_called_over_ray_not_asked_often() -> None:
    async def main() -> None:
        shard = FakeShard("node-a")
        router = ShardRouter(1, lookup=lambda i: shard, node=lambda: "node-b")
        for _ in range(5):
            await router.call(0, "ingest", "test", [1])
        assert router.line_calls == 0
        assert shard.ray_calls == {"line_endpoint": 1, "ingest": 5}
        await shard.server.close()

    asyncio.run(main())


def test_when_the_line_breaks_calls_go_over_ray_and_a_new_line_is_tried_later() -> None:
    async def main() -> None:
        shard = FakeShard("node-a")
        router = ShardRouter(1, lookup=lambda i: shard, node=lambda: "node-a")
        await router.call(0, "ingest", "test", [1])
        assert router.line_calls == 1
        await shard.server.close()  # the shard went away: its line is closed ...
        await asyncio.sleep(0.05)
        shard.server = ShardLineServer("node-a", METHODS)  # ... and came back
        assert await router.call(0, "ingest", "test", [1, 2, 3]) == {
            "ingested": 3,
            "duplicates": 0,
        }
        assert router.line_calls == 2  # over a new line at once: opening it did not fail
        assert shard.ray_calls["line_endpoint"] == 2
        await shard.server.close()

    asyncio.run(main())


def test_other_calls_always_go_over_ray() -> None:
    async def main() -> None:
        shard = FakeShard("node-a")
        router = ShardRouter(1, lookup=lambda i: shard, node=lambda: "node-a")
        await router.call(0, "balance", "test", [])
        assert shard.ray_calls == {"balance": 1}
        assert router.line_calls == 0

    asyncio.run(main())


def test_a_shard_on_another_node_is_called_over_its_tcp_line() -> None:
    async def main() -> None:
        shard = FakeShard("node-a", host="127.0.0.1")
        router = ShardRouter(1, lookup=lambda i: shard, node=lambda: "node-b")
        for _ in range(5):
            await router.call(0, "ingest", "test", [1])
        assert router.calls == {"line-remote": 5}
        assert shard.ray_calls == {"line_endpoint": 1}
        await shard.server.close()

    asyncio.run(main())


def test_with_remote_lines_off_other_nodes_are_called_over_ray() -> None:
    async def main() -> None:
        shard = FakeShard("node-a", host="127.0.0.1")
        router = ShardRouter(
            1, lookup=lambda i: shard, node=lambda: "node-b", line_options=LineOptions(False)
        )
        for _ in range(3):
            await router.call(0, "ingest", "test", [1])
        assert router.calls == {"ray": 3}
        assert shard.ray_calls == {"line_endpoint": 1, "ingest": 3}
        await shard.server.close()

    asyncio.run(main())


def test_checks_go_over_the_line_in_batches_each_answered_for_itself() -> None:
    async def main() -> None:
        shard = FakeShard("node-a")
        router = ShardRouter(1, lookup=lambda i: shard, node=lambda: "node-a")
        assert (await router.check(0, "test", "acme", [1])).allowed  # opens the line
        checks = [router.check(0, "test", "acme", [1] * (n % 4)) for n in range(20)]
        checks.append(router.check(0, "test", "ghost", [1]))
        answers = await asyncio.gather(*checks, return_exceptions=True)
        assert [a.allowed for a in answers[:20]] == [n % 4 < 3 for n in range(20)]
        assert isinstance(answers[20], NotFound)
        # the first check went alone; the 21 sent in one turn went together
        assert router.calls == {"line-local": 2}
        assert shard.ray_calls == {"line_endpoint": 1}
        await shard.server.close()

    asyncio.run(main())


def test_checks_in_flight_when_the_line_breaks_are_sent_again() -> None:
    async def main() -> None:
        shard = FakeShard("node-a")
        crashes = [1]

        def crashing(checks: list[tuple[str, str, list[Any]]]) -> list[Any]:
            if crashes:  # the first call: the shard dies before it answers
                crashes.pop()
                shard.server.drop_connections()
            return check_many(checks)

        router = ShardRouter(1, lookup=lambda i: shard, node=lambda: "node-a")
        assert (await router.check(0, "test", "acme", [])).allowed  # the line is open
        shard.server._methods["check_many"] = crashing
        answers = await asyncio.gather(
            router.check(0, "test", "acme", [1]), router.check(0, "test", "acme", [1, 2, 3])
        )
        assert [a.allowed for a in answers] == [True, False]
        assert router.calls == {"line-local": 2}  # the second time over a new line
        assert shard.ray_calls == {"line_endpoint": 2}
        router.lines = False  # and over Ray when there are no lines
        assert not (await router.check(0, "test", "acme", [1, 2, 3])).allowed
        assert router.calls["ray"] == 1
        await shard.server.close()

    asyncio.run(main())


def test_a_check_for_a_customer_another_shard_owns_relayouts_the_router() -> None:
    async def main() -> None:
        shard = FakeShard("node-a")
        layouts: list[int] = []

        def layout() -> tuple[int, int]:
            layouts.append(1)
            return 1, len(layouts)

        router = ShardRouter(1, lookup=lambda i: shard, node=lambda: "node-a", layout=layout)
        assert (await router.check(0, "test", "acme", [])).allowed
        with pytest.raises(NotOwner):
            await router.check(0, "test", "other", [])
        assert router.epoch == 1  # it read the layout afresh
        await shard.server.close()

    asyncio.run(main())


def test_a_relayout_that_finds_the_same_layout_keeps_the_lines() -> None:
    async def main() -> None:
        shard = FakeShard("node-a")
        stored = [(1, 0)]
        router = ShardRouter(
            1, lookup=lambda i: shard, node=lambda: "node-a", layout=lambda: stored[-1]
        )
        await router.call(0, "ingest", "test", [1])
        router.relayout()  # a reshard starting: the count and epoch are still the same
        await router.call(0, "ingest", "test", [1])
        assert shard.ray_calls == {"line_endpoint": 1}  # the same line
        stored.append((2, 1))  # the reshard done: the shards behind the names are new
        router.relayout()
        await router.call(0, "ingest", "test", [1])
        assert shard.ray_calls == {"line_endpoint": 2}
        await shard.server.close()

    asyncio.run(main())


def test_a_call_whose_line_broke_is_not_said_to_have_stored_nothing_by_a_draining_shard() -> None:
    async def main() -> None:
        arrived = asyncio.Event()

        async def ingest_then_drain(env: str, events: list[Any], rebook: bool = False) -> Any:
            arrived.set()  # stored, say; then the line breaks before the answer
            await asyncio.Event().wait()

        shard = FakeShard("node-a")
        await shard.server.close()
        shard.server = ShardLineServer("node-a", {**METHODS, "ingest": ingest_then_drain})
        shard.draining = True
        router = ShardRouter(1, lookup=lambda i: shard, node=lambda: "node-a")
        call = asyncio.create_task(router.call(0, "ingest", "test", [1]))
        await arrived.wait()
        await shard.server.close()
        with pytest.raises(StoreUnavailable) as refused:
            await call
        assert type(refused.value) is StoreUnavailable  # not Resharding's "nothing stored"
        assert "it may have been stored" in str(refused.value)
        # without a line, the draining shard's own answer stands
        with pytest.raises(Resharding):
            await ShardRouter(1, lookup=lambda i: shard, lines=False).call(0, "ingest", "t", [1])

    asyncio.run(main())
