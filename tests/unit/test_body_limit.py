"""The body limit answers 413 from a declared length at once, and stops a chunked body as
soon as it passes the limit."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from tallyray.errors import PayloadTooLarge
from tallyray.serve.body_limit import BodyLimit

pytestmark = pytest.mark.anyio

LIMIT = 1000


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _echo_size(calls: list[str]) -> Any:
    """Reads the whole body and answers its size; maps PayloadTooLarge to 413 as the API's
    error handler does."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        calls.append(scope["path"])
        size, more = 0, True
        try:
            while more:
                message = await receive()
                size += len(message.get("body", b""))
                more = message.get("more_body", False)
        except PayloadTooLarge as error:
            status, body = 413, error.message.encode()
        else:
            status, body = 200, str(size).encode()
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": body})

    return app


@pytest.fixture
def calls() -> list[str]:
    return []


@pytest.fixture
def client(calls: list[str]) -> httpx.AsyncClient:
    app = BodyLimit(_echo_size(calls), LIMIT)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")


@pytest.mark.parametrize(
    ("size", "status"),
    [(0, 200), (LIMIT - 1, 200), (LIMIT, 200), (LIMIT + 1, 413), (50 * LIMIT, 413)],
)
async def test_a_declared_length_over_the_limit_never_reaches_the_app(
    client: httpx.AsyncClient, calls: list[str], size: int, status: int
) -> None:
    r = await client.post("/v1/events", content=b"x" * size)
    assert r.status_code == status
    if status == 413:
        assert calls == []
        error = r.json()["error"]
        assert error["type"] == "payload_too_large"
        assert f"the body is {size:,} bytes; the limit is 1,000" in error["message"]
    else:
        assert r.text == str(size)


@pytest.mark.parametrize(("chunks", "status"), [(9, 200), (10, 200), (11, 413), (500, 413)])
async def test_a_chunked_body_is_stopped_once_past_the_limit(
    client: httpx.AsyncClient, chunks: int, status: int
) -> None:
    sent = 0

    async def body() -> AsyncIterator[bytes]:
        nonlocal sent
        for _ in range(chunks):
            sent += 1
            yield b"x" * 100

    r = await client.post("/v1/events", content=body())
    assert r.status_code == status
    if status == 413:
        assert "the limit is 1,000" in r.text
        assert sent == 11  # the chunk that passed the limit was the last one read
