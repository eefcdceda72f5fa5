"""The shard line's socket protocol, without Ray: token, calls in flight, errors, breakage."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from decimal import Decimal
from typing import Any

import pytest
from line_certs import self_signed

from tallyray.actors.account import QuotaAnswer
from tallyray.actors.shard_line import LineDown, LineTLS, ShardLine, ShardLineServer
from tallyray.errors import EventError, NotFound, Problem, StoreUnavailable


def check_many(checks: Any) -> list[Any]:
    """Allowed when the events are fewer than 3; customer "ghost" does not exist."""
    out: list[Any] = []
    for _env, customer, events in checks:
        if customer == "ghost":
            out.append(NotFound("no customer 'ghost'"))
        else:
            out.append(QuotaAnswer(len(events) < 3, Decimal(len(events)), Decimal(2), None, "EUR"))
    return out


async def ingest(env: str, events: list[Any], rebook: bool = False) -> dict[str, int]:
    """Answers after a "commit"; refuses what the shard would refuse."""
    await asyncio.sleep(0.01 * len(events))  # later requests may be answered first
    if env == "down":
        raise StoreUnavailable("the event store is unavailable; retry shortly")
    if any(e == "late" for e in events):
        raise EventError.of([Problem("[0]", "falls in a closed billing period")])
    return {"ingested": len(events), "duplicates": 0}


METHODS = {"check_many": check_many, "ingest": ingest}


def test_calls_go_and_replies_come_back_each_to_its_caller() -> None:
    async def main() -> None:
        server = ShardLineServer("node-a", METHODS)
        line = await ShardLine.open(await server.endpoint())
        checks = [("test", "acme", [1]), ("test", "ghost", [])]
        slow, fast, answers = await asyncio.gather(
            line.call("ingest", "test", ["a"] * 5),
            line.call("ingest", "test", ["b"]),
            line.call("check_many", checks),
        )
        assert slow == {"ingested": 5, "duplicates": 0}
        assert fast == {"ingested": 1, "duplicates": 0}
        assert answers[0] == QuotaAnswer(True, Decimal(1), Decimal(2), None, "EUR")
        assert isinstance(answers[1], NotFound) and "ghost" in str(answers[1])
        many = await asyncio.gather(*(line.call("check_many", [checks[0]] * n) for n in range(40)))
        assert [len(m) for m in many] == list(range(40))
        line.close()
        await server.close()

    asyncio.run(main())


@pytest.mark.parametrize(
    ("args", "error", "message"),
    [
        (("down", ["a"]), StoreUnavailable, "retry shortly"),
        (("test", ["late"]), EventError, "closed billing period"),
    ],
)
def test_the_shards_errors_reach_the_caller_as_themselves(
    args: tuple[Any, ...], error: type[Exception], message: str
) -> None:
    async def main() -> None:
        server = ShardLineServer("node-a", METHODS)
        line = await ShardLine.open(await server.endpoint())
        with pytest.raises(error) as raised:
            await line.call("ingest", *args)
        assert message in str(raised.value) or any(
            message in p.message for p in getattr(raised.value, "problems", ())
        )
        assert line.up  # an error is an answer, not a broken line
        with pytest.raises(LookupError, match="no method 'drop_tables'"):
            await line.call("drop_tables")
        await server.close()

    asyncio.run(main())


def test_a_wrong_token_gets_no_answers() -> None:
    async def main() -> None:
        server = ShardLineServer("node-a", METHODS)
        endpoint = await server.endpoint()
        line = await ShardLine.open(replace(endpoint, token=b"x" * 32))
        with pytest.raises(LineDown):
            await asyncio.wait_for(line.call("check_many", [("test", "acme", [])]), 5)
        assert not line.up
        await server.close()

    asyncio.run(main())


def test_a_line_to_nowhere_is_down_at_once() -> None:
    async def main() -> None:
        server = ShardLineServer("node-a", METHODS)
        endpoint = await server.endpoint()
        await server.close()
        await asyncio.sleep(0.05)
        with pytest.raises(LineDown):
            line = await ShardLine.open(endpoint)
            await asyncio.wait_for(line.call("check_many", [("test", "acme", [])]), 5)

    asyncio.run(main())


def test_calls_in_flight_when_the_shard_goes_away_are_told_to_go_another_way() -> None:
    async def main() -> None:
        server = ShardLineServer("node-a", METHODS)
        line = await ShardLine.open(await server.endpoint())
        assert await line.call("check_many", [("test", "acme", [])])  # the line works
        waiting = asyncio.ensure_future(line.call("ingest", "test", ["a"] * 50))
        await asyncio.sleep(0.05)
        server.drop_connections()  # the shard's side of every connection closes (it died)
        with pytest.raises(LineDown):
            await asyncio.wait_for(waiting, 5)
        assert not line.up
        with pytest.raises(LineDown):  # and it stays down: the router opens a new one
            await line.call("check_many", [("test", "acme", [])])
        await server.close()

    asyncio.run(main())


def test_a_line_over_tcp_answers_the_same_as_over_the_unix_socket() -> None:
    async def main() -> None:
        server = ShardLineServer("node-a", METHODS, host="127.0.0.1")
        endpoint = await server.endpoint()
        assert endpoint.path is not None and endpoint.port > 0 and not endpoint.tls
        over_tcp = await ShardLine.open(endpoint, local=False)  # from another node
        over_unix = await ShardLine.open(endpoint, local=True)
        for line in (over_tcp, over_unix):
            assert await line.call("ingest", "test", ["a"]) == {"ingested": 1, "duplicates": 0}
            line.close()
        await server.close()

    asyncio.run(main())


def test_without_a_tcp_line_another_node_gets_none() -> None:
    async def main() -> None:
        server = ShardLineServer("node-a", METHODS)  # a Unix socket only
        with pytest.raises(LineDown, match="no line for other nodes"):
            await ShardLine.open(await server.endpoint(), local=False)
        await server.close()

    asyncio.run(main())


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, LineTLS]:
    """The cluster's certificate, and another one no shard serves."""
    workdir = tmp_path_factory.mktemp("certs")
    cert, key = self_signed(workdir, "cluster")
    other, other_key = self_signed(workdir, "other")
    return {"cluster": LineTLS(str(cert), str(key)), "other": LineTLS(str(other), str(other_key))}


@pytest.mark.parametrize(
    ("server_tls", "client_tls", "answered"),
    [
        ("cluster", "cluster", True),
        ("cluster", None, False),  # a shard that wants TLS gets no plain connection
        (None, "cluster", False),  # nor does a replica with TLS send its token in the clear
        ("cluster", "other", False),  # a certificate the replica's CA did not sign
    ],
)
def test_tls_on_the_line_between_nodes(
    certs: dict[str, LineTLS], server_tls: str | None, client_tls: str | None, answered: bool
) -> None:
    async def main() -> None:
        server = ShardLineServer(
            "node-a", METHODS, host="127.0.0.1", tls=certs[server_tls] if server_tls else None
        )
        endpoint = await server.endpoint()
        tls = certs[client_tls] if client_tls else None
        if answered:
            line = await ShardLine.open(endpoint, local=False, tls=tls)
            assert await line.call("ingest", "test", ["a"]) == {"ingested": 1, "duplicates": 0}
            line.close()
        else:
            with pytest.raises(LineDown):
                await ShardLine.open(endpoint, local=False, tls=tls)
        await server.close()

    asyncio.run(main())
