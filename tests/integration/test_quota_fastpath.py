"""``POST /v1/quota/check`` is answered in front of the app (:mod:`tallyray.serve.fastpath`);
a request with an ``Idempotency-Key`` takes the route. Both must answer alike: the same
bodies, statuses, error shapes and headers."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import orjson
import pytest
from support import Server, make_customer

pytestmark = pytest.mark.anyio

PATH = "/v1/quota/check"
EVENT = {
    "type": "llm.completion",
    "properties": {"model": "gpt-4o", "input_tokens": 100_000, "output_tokens": 0},
}


async def both(
    client: httpx.AsyncClient, content: bytes, headers: dict[str, str] | None = None
) -> tuple[httpx.Response, httpx.Response]:
    """The same request the short way and through the route."""
    headers = {"Content-Type": "application/json", **(headers or {})}
    fast = await client.post(PATH, content=content, headers=headers)
    routed = await client.post(
        PATH, content=content, headers={**headers, "Idempotency-Key": uuid.uuid4().hex}
    )
    return fast, routed


def same(fast: httpx.Response, routed: httpx.Response) -> dict[str, Any]:
    assert fast.status_code == routed.status_code, (fast.text, routed.text)
    assert fast.json() == routed.json()
    assert fast.headers["content-type"] == routed.headers["content-type"] == "application/json"
    assert fast.headers["x-request-id"].startswith("req_")
    body: dict[str, Any] = fast.json()
    return body


async def test_a_check_answers_the_same_either_way(client: httpx.AsyncClient) -> None:
    customer = await make_customer(client, credits="100.00")
    doc = {"customer_id": customer, "event": EVENT}
    fast, routed = await both(client, httpx.Request("POST", "/", json=doc).content)
    body = same(fast, routed)
    assert body["allowed"] is True, body
    # 0.25 for 100,000 gpt-4o input tokens (as in test_api_flow) + 2.00 for the first
    # package of requests (this customer has none yet)
    assert body["cost"] == "2.25"
    assert "idempotent-replayed" not in fast.headers


@pytest.mark.parametrize(
    ("content", "status", "kind", "fragment"),
    [
        (b"", 422, "invalid_request", "needs a JSON body"),
        (b"{nope", 422, "invalid_request", "not valid JSON"),
        (b"[]", 422, "invalid_request", "must be a JSON object"),
        (b'{"customer_id": "x", "colour": 1, "event": {}}', 422, "invalid_request", "problems"),
        (b'{"customer_id": "x"}', 422, "invalid_request", "would-be usage"),
        (b'{"customer_id": "x\\u0000", "event": {}}', 422, "invalid_request", "NUL"),
        (orjson.dumps({"customer_id": "nobody-here", "event": EVENT}), 404, "not_found", ""),
    ],
)
async def test_errors_answer_the_same_either_way(
    client: httpx.AsyncClient, content: bytes, status: int, kind: str, fragment: str
) -> None:
    fast, routed = await both(client, content)
    body = same(fast, routed)
    assert fast.status_code == status
    assert set(body) == {"error"}
    if kind:
        assert body["error"]["type"] == kind
    assert fragment in body["error"]["message"]


async def test_the_callers_request_id_comes_back(client: httpx.AsyncClient) -> None:
    r = await client.post(PATH, content=b"{}", headers={"X-Request-Id": "gw-42"})
    assert r.status_code == 422
    assert r.headers["x-request-id"] == "gw-42"


async def test_a_missing_key_is_401_with_its_header(server: Server) -> None:
    async with server.client() as c:
        c.headers.pop("Authorization")
        r = await c.post(PATH, json={"customer_id": "x", "event": EVENT})
    assert r.status_code == 401
    assert r.headers["www-authenticate"] == "Bearer"
    assert "send your API key" in r.json()["error"]["message"]


async def test_a_body_over_the_limit_is_413(client: httpx.AsyncClient) -> None:
    r = await client.post(PATH, content=b"{" + b" " * (17 * 1024 * 1024) + b"}")
    assert r.status_code == 413
    assert "the limit is 16,777,216" in r.json()["error"]["message"]
