"""How the ingress's router picks a shard's line or Ray, with a fake actor handle (no Ray)."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

from tallyray.actors.shard_line import LineOptions, ShardLineServer
from tallyray.serve.shards import ShardRouter


async def ingest(env: str, events: list[Any], rebook: bool = False) -> dict[str, int]:
    return {"ingested": len(events), "duplicates": 0}


class FakeShard:
    """Stands in for a Ray actor handle: ``handle.method.remote(*args)`` is awaitable, and
    every Ray call is counted."""

    def __init__(self, node: str, host: str | None = None) -> None:
        self.server = ShardLineServer(node, {"ingest": ingest}, host=host)
        self.ray_calls: Counter[str] = Counter()

    def __getattr__(self, method: str) -> Any:
        shard = self

        class Method:
            @staticmethod
            def remote(*args: Any) -> Any:
                shard.ray_calls[method] += 1
                if method == "line_endpoint":
                    return shard.server.endpoint()
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
        for task in asyncio.all_tasks():
            if task is not asyncio.current_task() and "_serve" in repr(task.get_coro()):
                task.cancel()
        await asyncio.sleep(0.05)
        shard.server = ShardLineServer("node-a", {"ingest": ingest})  # ... and came back
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
