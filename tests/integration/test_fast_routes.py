"""``POST /v1/quota/check`` and ``POST /v1/events`` are answered by the HTTP protocol itself
(:mod:`tallyray.serve.fastpath`); a request with an ``Idempotency-Key`` takes the app's route.
Both must answer alike: the same bodies, statuses, error shapes and headers — and on one
connection, these and other requests keep HTTP/1.1's order.

These tests run the app under uvicorn with the replica's own settings
(:func:`tallyray.serve.listener.server_config`), on the test's event loop, over real TCP.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import socket
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest
import uvicorn
from support import Server, make_customer, unique

from tallyray.serve.app import build_app
from tallyray.serve.auth import RateLimit
from tallyray.serve.listener import server_config
from tallyray.storage.keys import KeyStore

pytestmark = pytest.mark.anyio

PATH = "/v1/quota/check"
EVENTS = "/v1/events"
EVENT = {
    "type": "llm.completion",
    "properties": {"model": "gpt-4o", "input_tokens": 100_000, "output_tokens": 0},
}


@contextlib.asynccontextmanager
async def serving(app: Any) -> AsyncIterator[tuple[str, int]]:
    """``app`` served by uvicorn as a replica serves it, on a free loopback port."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    server = uvicorn.Server(server_config(app, lifespan="off"))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            assert not task.done(), task.exception()
            await asyncio.sleep(0.01)
        yield sock.getsockname()[:2]
    finally:
        server.should_exit = True
        await task
        sock.close()


@contextlib.asynccontextmanager
async def live_client(app: Any, key: str | None) -> AsyncIterator[httpx.AsyncClient]:
    async with serving(app) as (host, port):
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        async with httpx.AsyncClient(
            base_url=f"http://{host}:{port}", headers=headers, timeout=60
        ) as c:
            yield c


@pytest.fixture
async def address(server: Server) -> AsyncIterator[tuple[str, int]]:
    async with serving(server.app) as where:
        yield where


@pytest.fixture
async def live(server: Server, address: tuple[str, int]) -> AsyncIterator[httpx.AsyncClient]:
    host, port = address
    async with httpx.AsyncClient(
        base_url=f"http://{host}:{port}",
        headers={"Authorization": f"Bearer {server.test_key}"},
        timeout=60,
    ) as c:
        yield c


async def both(
    client: httpx.AsyncClient,
    content: bytes,
    headers: dict[str, str] | None = None,
    path: str = PATH,
    routed_content: bytes | None = None,
) -> tuple[httpx.Response, httpx.Response]:
    """The same request the short way and through the route (``routed_content``: another
    body for the route, where the same one would be a repeat)."""
    headers = {"Content-Type": "application/json", **(headers or {})}
    fast = await client.post(path, content=content, headers=headers)
    routed = await client.post(
        path,
        content=content if routed_content is None else routed_content,
        headers={**headers, "Idempotency-Key": uuid.uuid4().hex},
    )
    return fast, routed


def same(fast: httpx.Response, routed: httpx.Response) -> dict[str, Any]:
    assert fast.status_code == routed.status_code, (fast.text, routed.text)
    assert fast.json() == routed.json()
    assert fast.headers["content-type"] == routed.headers["content-type"] == "application/json"
    assert fast.headers["x-request-id"].startswith("req_")
    assert "idempotent-replayed" not in fast.headers
    body: dict[str, Any] = fast.json()
    return body


async def test_a_check_answers_the_same_either_way(
    client: httpx.AsyncClient, live: httpx.AsyncClient
) -> None:
    customer = await make_customer(client, credits="100.00")
    doc = {"customer_id": customer, "event": EVENT}
    fast, routed = await both(live, orjson.dumps(doc))
    body = same(fast, routed)
    assert body["allowed"] is True, body
    # 0.25 for 100,000 gpt-4o input tokens (as in test_api_flow) + 2.00 for the first
    # package of requests (this customer has none yet)
    assert body["cost"] == "2.25"
    assert fast.headers["content-length"] == str(len(fast.content))
    assert "date" in fast.headers  # uvicorn's default header, as on every other answer


@pytest.mark.parametrize(
    ("path", "content", "status", "kind", "fragment"),
    [
        (PATH, b"", 422, "invalid_request", "needs a JSON body"),
        (PATH, b"{nope", 422, "invalid_request", "not valid JSON"),
        (PATH, b"[]", 422, "invalid_request", "must be a JSON object"),
        (
            PATH,
            b'{"customer_id": "x", "colour": 1, "event": {}}',
            422,
            "invalid_request",
            "problems",
        ),
        (PATH, b'{"customer_id": "x"}', 422, "invalid_request", "would-be usage"),
        (PATH, b'{"customer_id": "x\\u0000", "event": {}}', 422, "invalid_request", "NUL"),
        (PATH, orjson.dumps({"customer_id": "nobody-here", "event": EVENT}), 404, "not_found", ""),
        (EVENTS, b"", 422, "invalid_request", "not valid JSON"),
        (EVENTS, b"[{nope", 422, "invalid_request", "not valid JSON"),
        (EVENTS, b'{"customer_id": "x"}', 422, "invalid_request", "send a JSON array of events"),
        (EVENTS, b'[{"id": "e1", "customer_id": "x"}]', 422, "invalid_events", "[0]"),
        (
            EVENTS,
            orjson.dumps([{"id": "e1", "customer_id": "nobody-here", "type": "llm.completion"}]),
            422,
            "invalid_events",
            "unknown customer 'nobody-here'",
        ),
        (
            EVENTS,
            b'[{"id": "e\\u0000", "customer_id": "x", "type": "t"}]',
            422,
            "invalid_events",
            "[0]",
        ),
    ],
)
async def test_errors_answer_the_same_either_way(
    live: httpx.AsyncClient, path: str, content: bytes, status: int, kind: str, fragment: str
) -> None:
    fast, routed = await both(live, content, path=path)
    body = same(fast, routed)
    assert fast.status_code == status
    assert set(body) == {"error"}
    assert body["error"]["type"] == kind
    assert fragment in orjson.dumps(body["error"]).decode()  # the message or a problem


async def test_the_callers_request_id_comes_back(live: httpx.AsyncClient) -> None:
    r = await live.post(PATH, content=b"{}", headers={"X-Request-Id": "gw-42"})
    assert r.status_code == 422
    assert r.headers["x-request-id"] == "gw-42"
    r = await live.post(PATH, content=b"{}", headers={"X-Request-Id": "x" * 500})
    assert r.headers["x-request-id"].startswith("req_")  # too long: one of ours instead


@pytest.mark.parametrize(
    ("authorization", "fragment"),
    [
        (None, "send your API key"),
        ("Basic dXNlcjpwYXNz", "send your API key"),
        ("Bearer not-a-key", "not a Tallyray API key"),
        ("Bearer trk_test_" + "Z" * 32, "unknown API key"),
    ],
)
async def test_a_missing_or_bad_key_is_401_with_its_header(
    live: httpx.AsyncClient, authorization: str | None, fragment: str
) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    live.headers.pop("Authorization")
    fast, routed = await both(live, orjson.dumps({"customer_id": "x", "event": EVENT}), headers)
    body = same(fast, routed)
    assert fast.status_code == 401
    assert fast.headers["www-authenticate"] == routed.headers["www-authenticate"] == "Bearer"
    assert fragment in body["error"]["message"]


async def test_a_key_without_the_ingest_scope_is_403(
    server: Server, live: httpx.AsyncClient
) -> None:
    _, secret = KeyStore(server.catalog.engine).create(
        "test", server.clock(), name="reader", scopes=["read"]
    )
    live.headers["Authorization"] = f"Bearer {secret}"
    fast, routed = await both(live, orjson.dumps({"customer_id": "x", "event": EVENT}))
    body = same(fast, routed)
    assert fast.status_code == 403
    assert "'ingest' scope" in body["error"]["message"]


async def test_a_key_over_its_rate_limit_gets_429_with_retry_after(server: Server) -> None:
    # a token every 100 s: none comes back during the test, however slow the machine
    slow = RateLimit(per_second=0.01, burst=3)
    limited = dataclasses.replace(server.services, rate_limit=slow)
    async with live_client(build_app(limited), server.test_key) as c:
        content = orjson.dumps({"customer_id": "nobody-here", "event": EVENT})
        answers = [await c.post(PATH, content=content) for _ in range(5)]
        routed = await c.post(PATH, content=content, headers={"Idempotency-Key": "k-1"})
    assert [r.status_code for r in answers] == [404, 404, 404, 429, 429]
    assert 1 <= int(answers[3].headers["retry-after"]) <= 100
    assert answers[3].json()["error"]["type"] == "rate_limited"
    assert routed.status_code == 429 and routed.json()["error"]["type"] == "rate_limited"


# -- event batches ---------------------------------------------------------------------


def batch(customer: str, n: int = 2) -> list[dict[str, Any]]:
    """``n`` new events of ``customer``: 1,000 gpt-4o input tokens each."""
    call = {"model": "gpt-4o", "input_tokens": 1000, "output_tokens": 0}
    return [
        {"id": unique("ev"), "customer_id": customer, "type": "llm.completion", "properties": call}
        for _ in range(n)
    ]


async def test_a_batch_is_stored_and_repeated_the_same_either_way(
    client: httpx.AsyncClient, live: httpx.AsyncClient
) -> None:
    customer = await make_customer(client)
    first, second = batch(customer), batch(customer)
    fast, routed = await both(
        live, orjson.dumps(first), path=EVENTS, routed_content=orjson.dumps(second)
    )
    assert same(fast, routed) == {"ingested": 2, "duplicates": 0}
    # the first batch again, both ways: its events are stored, so both are duplicates
    fast, routed = await both(live, orjson.dumps({"events": first}), path=EVENTS)
    assert same(fast, routed) == {"ingested": 0, "duplicates": 2}
    balance = (await client.get(f"/v1/customers/{customer}/balance")).json()
    # 4 events stored once each: 4 × 1,000 × 0.0000025 + the first package of requests, 2.00
    assert balance["period_spend_precise"] == "2.01"


async def test_a_cloudevents_batch_takes_the_short_way_too(
    client: httpx.AsyncClient, live: httpx.AsyncClient
) -> None:
    customer = await make_customer(client)
    event = {
        "specversion": "1.0",
        "id": unique("ce"),
        "source": "/gateway",
        "type": "llm.completion",
        "subject": customer,
        "data": {"model": "gpt-4o", "input_tokens": 1000, "output_tokens": 0},
    }
    r = await live.post(
        EVENTS,
        content=orjson.dumps([event]),
        headers={"Content-Type": "application/cloudevents-batch+json"},
    )
    assert (r.status_code, r.json()) == (200, {"ingested": 1, "duplicates": 0})
    assert r.headers["x-request-id"].startswith("req_")


async def test_a_batch_needs_a_key_with_the_ingest_scope(
    server: Server, live: httpx.AsyncClient
) -> None:
    content = orjson.dumps(batch("nobody-here"))
    live.headers.pop("Authorization")
    fast, routed = await both(live, content, path=EVENTS)
    assert same(fast, routed)["error"]["type"] == "unauthorized"
    assert fast.headers["www-authenticate"] == "Bearer"
    _, secret = KeyStore(server.catalog.engine).create(
        "test", server.clock(), name="reader", scopes=["read"]
    )
    live.headers["Authorization"] = f"Bearer {secret}"
    fast, routed = await both(live, content, path=EVENTS)
    assert fast.status_code == 403
    assert "'ingest' scope" in same(fast, routed)["error"]["message"]


# -- on the wire: pipelining, chunked bodies, limits, clients that leave -------------------


class Wire:
    """One raw HTTP/1.1 connection, its answers read one by one (each has a length)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    @contextlib.asynccontextmanager
    async def open(cls, address: tuple[str, int]) -> AsyncIterator[Wire]:
        reader, writer = await asyncio.open_connection(*address)
        try:
            yield cls(reader, writer)
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def answer(self) -> tuple[int, dict[str, str], bytes]:
        """The next answer: status, headers (lower case), body."""
        head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), 60)
        status_line, *lines = head.decode("latin-1").split("\r\n")
        assert status_line.startswith("HTTP/1.1 "), status_line
        headers = {}
        for line in filter(None, lines):
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        body = await self.reader.readexactly(int(headers["content-length"]))
        return int(status_line.split()[1]), headers, body

    async def closed(self) -> bool:
        """Whether the server has closed its side (nothing more to read)."""
        return await asyncio.wait_for(self.reader.read(1), 30) == b""


def request(
    method: str, path: str, key: str, body: bytes = b"", *, headers: dict[str, str] | None = None
) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: tallyray.test", f"Authorization: Bearer {key}"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    if "Transfer-Encoding" not in (headers or {}):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def chunked(*parts: bytes) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts) + b"0\r\n\r\n"


async def test_pipelined_requests_are_answered_in_order(
    server: Server, client: httpx.AsyncClient, address: tuple[str, int]
) -> None:
    customer = await make_customer(client, credits="100.00")
    check = orjson.dumps({"customer_id": customer, "event": EVENT})
    key = server.test_key
    async with Wire.open(address) as wire:
        await wire.send(
            request("POST", PATH, key, check, headers={"X-Request-Id": "one"})
            + request("GET", "/v1/meters", key, headers={"X-Request-Id": "two"})
            + request("POST", PATH, key, b"[]", headers={"X-Request-Id": "three"})
            + request("POST", PATH, key, check, headers={"Idempotency-Key": uuid.uuid4().hex})
            + request("GET", f"/v1/customers/{customer}", key, headers={"X-Request-Id": "five"})
            + request("POST", PATH, key, check, headers={"X-Request-Id": "six"})
        )
        answers = [await wire.answer() for _ in range(6)]
    statuses = [status for status, _, _ in answers]
    assert statuses == [200, 200, 422, 200, 200, 200], answers
    ids = [headers["x-request-id"] for _, headers, _ in answers]
    assert ids[:3] == ["one", "two", "three"] and ids[4:] == ["five", "six"]
    assert orjson.loads(answers[0][2])["cost"] == "2.25"
    assert "meters" in orjson.loads(answers[1][2])  # the meters' list
    assert orjson.loads(answers[3][2]) == orjson.loads(answers[0][2])
    assert orjson.loads(answers[4][2])["id"] == customer
    assert orjson.loads(answers[5][2]) == orjson.loads(answers[0][2])


async def test_a_chunked_check_body_is_read_whole(
    server: Server, client: httpx.AsyncClient, address: tuple[str, int]
) -> None:
    customer = await make_customer(client, credits="100.00")
    check = orjson.dumps({"customer_id": customer, "event": EVENT})
    head = request("POST", PATH, server.test_key, headers={"Transfer-Encoding": "chunked"})
    body = chunked(check[:10], check[10:])
    async with Wire.open(address) as wire:
        await wire.send(head + body[:7])  # the head and a part of the first chunk
        await asyncio.sleep(0.05)
        await wire.send(body[7:])
        status, headers, answer = await wire.answer()
        assert status == 200, answer
        assert orjson.loads(answer)["cost"] == "2.25"
        # the connection stays usable
        await wire.send(request("POST", PATH, server.test_key, check))
        status, _, again = await wire.answer()
        assert status == 200 and orjson.loads(again) == orjson.loads(answer)


@pytest.mark.parametrize("path", [PATH, EVENTS])
async def test_an_oversized_body_is_413(server: Server, path: str) -> None:
    rules = dataclasses.replace(server.services.rules, max_body_bytes=1000)
    small = dataclasses.replace(server.services, rules=rules)
    key = server.test_key
    async with serving(build_app(small)) as address:
        # declared too large: answered at once, without the body, and the connection closed
        async with Wire.open(address) as wire:
            head = request("POST", path, key).replace(b"Content-Length: 0", b"Content-Length: 5000")
            await wire.send(head)
            status, headers, body = await wire.answer()
            assert status == 413
            assert (
                "the body is 5,000 bytes; the limit is 1,000"
                in orjson.loads(body)["error"]["message"]
            )
            assert headers["connection"] == "close"
            assert headers["x-request-id"].startswith("req_")
            assert await wire.closed()
        # chunked, passing the limit as it comes
        async with Wire.open(address) as wire:
            head = request("POST", path, key, headers={"Transfer-Encoding": "chunked"})
            await wire.send(head + b"200\r\n" + b" " * 512 + b"\r\n")
            await asyncio.sleep(0.05)
            await wire.send(b"200\r\n" + b" " * 512 + b"\r\n" + b"0\r\n\r\n")
            status, headers, body = await wire.answer()
            assert status == 413
            assert "over the limit; the limit is 1,000" in orjson.loads(body)["error"]["message"]
            assert headers["content-type"] == "application/json"


async def test_connection_close_and_http_1_0_end_the_connection(
    server: Server, address: tuple[str, int]
) -> None:
    content = orjson.dumps({"customer_id": "nobody-here", "event": EVENT})
    async with Wire.open(address) as wire:
        await wire.send(
            request("POST", PATH, server.test_key, content, headers={"Connection": "close"})
        )
        status, headers, _ = await wire.answer()
        assert status == 404 and headers["connection"] == "close"
        assert await wire.closed()
    async with Wire.open(address) as wire:
        await wire.send(
            request("POST", PATH, server.test_key, content).replace(b"HTTP/1.1", b"HTTP/1.0", 1)
        )
        data = await asyncio.wait_for(wire.reader.read(), 30)  # until the server closes
        assert data.startswith(b"HTTP/1.1 404 ") and b"connection: close\r\n" in data


async def test_a_client_that_leaves_mid_check_gets_nothing_and_harms_nothing(
    server: Server,
    client: httpx.AsyncClient,
    address: tuple[str, int],
    live: httpx.AsyncClient,
    caplog: pytest.LogCaptureFixture,
) -> None:
    customer = await make_customer(client, credits="100.00")
    check = orjson.dumps({"customer_id": customer, "event": EVENT})
    key = server.test_key
    caplog.set_level(logging.ERROR)
    for _ in range(5):
        # gone before the body is whole
        async with Wire.open(address) as wire:
            await wire.send(request("POST", PATH, key, check)[:-5])
        # gone while the shard answers (and with another request pipelined behind)
        async with Wire.open(address) as wire:
            await wire.send(request("POST", PATH, key, check) + request("GET", "/v1/meters", key))
    await asyncio.sleep(0.2)
    r = await live.post(PATH, content=check)
    assert r.status_code == 200 and r.json()["cost"] == "2.25"
    assert not [rec for rec in caplog.records if "quota check" in rec.getMessage()]


async def test_batches_and_checks_pipelined_are_answered_in_order(
    server: Server, client: httpx.AsyncClient, address: tuple[str, int]
) -> None:
    customer = await make_customer(client, credits="100.00")
    events = orjson.dumps(batch(customer, 3))
    check = orjson.dumps({"customer_id": customer, "event": EVENT})
    key = server.test_key
    async with Wire.open(address) as wire:
        await wire.send(
            request("POST", EVENTS, key, events, headers={"X-Request-Id": "one"})
            + request("POST", PATH, key, check, headers={"X-Request-Id": "two"})
            + request("POST", EVENTS, key, b"[{", headers={"X-Request-Id": "three"})
            + request("GET", "/v1/meters", key, headers={"X-Request-Id": "four"})
            + request("POST", EVENTS, key, events, headers={"X-Request-Id": "five"})
        )
        answers = [await wire.answer() for _ in range(5)]
    assert [status for status, _, _ in answers] == [200, 200, 422, 200, 200], answers
    assert [h["x-request-id"] for _, h, _ in answers] == ["one", "two", "three", "four", "five"]
    assert orjson.loads(answers[0][2]) == {"ingested": 3, "duplicates": 0}
    assert orjson.loads(answers[4][2]) == {"ingested": 0, "duplicates": 3}


async def test_a_batch_whose_client_left_once_it_was_sent_is_stored_and_its_retry_is_a_repeat(
    server: Server,
    client: httpx.AsyncClient,
    address: tuple[str, int],
    live: httpx.AsyncClient,
    caplog: pytest.LogCaptureFixture,
) -> None:
    customer = await make_customer(client)
    events = batch(customer, 2)
    caplog.set_level(logging.ERROR)
    spend = (await client.get(f"/v1/customers/{customer}/balance")).json()["period_spend_precise"]
    async with Wire.open(address) as wire:  # gone before the body is whole: nothing stored
        await wire.send(request("POST", EVENTS, server.test_key, orjson.dumps(events[:1]))[:-5])
    async with Wire.open(address) as wire:  # gone once the whole batch was sent
        await wire.send(request("POST", EVENTS, server.test_key, orjson.dumps(events)))
    # two events at 1,000 × 0.0000025 each + the first package of requests, 2.00
    for _ in range(200):  # the server stores the batch after its client left
        balance = (await client.get(f"/v1/customers/{customer}/balance")).json()
        if balance["period_spend_precise"] != spend:
            break
        await asyncio.sleep(0.05)
    assert balance["period_spend_precise"] == "2.005"
    r = await live.post(EVENTS, content=orjson.dumps(events))  # the client's retry
    assert (r.status_code, r.json()) == (200, {"ingested": 0, "duplicates": 2})
    after = (await client.get(f"/v1/customers/{customer}/balance")).json()
    assert after["period_spend_precise"] == "2.005"
    assert not [rec for rec in caplog.records if "event batch" in rec.getMessage()]
