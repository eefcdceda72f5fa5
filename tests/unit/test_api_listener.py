"""The API listener each ingress replica runs: uvicorn on a port shared with ``SO_REUSEPORT``."""

from __future__ import annotations

import errno
import json
import socket
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tallyray.errors import InvalidInput
from tallyray.serve.listener import ApiListener, bind_api_socket, ensure_port_free


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _app(name: str, lifecycle: list[str]) -> Any:
    """A bare ASGI app that answers its name, and records its lifespan."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    lifecycle.append(f"{name} started")
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    lifecycle.append(f"{name} stopped")
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": name.encode()})

    return app


@pytest.fixture
def port() -> int:
    return _free_port()


@pytest.fixture
def lifecycle() -> list[str]:
    return []


@pytest.fixture
def two_listeners(port: int, lifecycle: list[str]) -> Iterator[list[ApiListener]]:
    listeners = [ApiListener(_app(name, lifecycle), "127.0.0.1", port) for name in ("a", "b")]
    for listener in listeners:
        listener.start()
        listener.wait_started()
    yield listeners
    for listener in listeners:
        listener.stop()


def _answers(port: int, connections: int) -> set[str]:
    """Who answers each of ``connections`` new connections."""
    seen = set()
    for _ in range(connections):
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5) as client:
            seen.add(client.get("/").text)
    return seen


def test_replicas_on_one_machine_share_the_port(
    two_listeners: list[ApiListener], port: int, lifecycle: list[str]
) -> None:
    # The kernel spreads new connections over the sockets bound with SO_REUSEPORT; the
    # chance that 100 connections all land on one of two is 2 ** -99.
    assert _answers(port, 100) == {"a", "b"}
    assert sorted(lifecycle) == ["a started", "b started"]  # the app's lifespan runs


def test_when_one_stops_the_other_takes_every_connection(
    two_listeners: list[ApiListener], port: int, lifecycle: list[str]
) -> None:
    first, second = two_listeners
    first.stop()
    assert not first.alive() and second.alive()
    assert "a stopped" in lifecycle
    assert _answers(port, 20) == {"b"}
    second.stop()
    with pytest.raises(httpx.ConnectError):
        _answers(port, 1)


def test_a_port_held_by_another_program_is_an_error_at_start(port: int) -> None:
    with socket.socket() as squatter:  # bound without SO_REUSEPORT: nobody may share it
        squatter.bind(("127.0.0.1", port))
        squatter.listen()
        with pytest.raises(OSError) as raised:
            bind_api_socket("127.0.0.1", port)
        assert raised.value.errno == errno.EADDRINUSE


def test_the_server_refuses_a_port_in_use_even_by_another_tallyray(
    two_listeners: list[ApiListener], port: int
) -> None:
    with pytest.raises(InvalidInput, match=f"cannot listen on 127.0.0.1:{port}.*--port"):
        ensure_port_free("127.0.0.1", port)


def test_a_free_port_passes(port: int) -> None:
    ensure_port_free("127.0.0.1", port)
    bind_api_socket("127.0.0.1", port).close()  # and is still free afterwards


@pytest.mark.parametrize("access_log", [True, False])
def test_the_access_log_is_a_json_line_per_request_when_asked_for(
    port: int, lifecycle: list[str], capsys: pytest.CaptureFixture[str], access_log: bool
) -> None:
    listener = ApiListener(_app("a", lifecycle), "127.0.0.1", port, access_log=access_log)
    listener.start()
    listener.wait_started()
    try:
        _answers(port, 1)
    finally:
        listener.stop()
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    access = [line for line in lines if line["logger"] == "uvicorn.access"]
    if access_log:
        assert len(access) == 1
        assert '"GET / HTTP/1.1" 200' in access[0]["message"]
    else:
        assert access == []
