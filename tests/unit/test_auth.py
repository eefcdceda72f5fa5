"""The door every API call passes (tallyray/access.py, tallyray/serve/auth.py): key shapes,
which scope a route needs, the key cache and the rate limits."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from tallyray.access import generate_key, looks_like_key, parse_scopes, required_scope
from tallyray.errors import RateLimited, TallyrayError
from tallyray.serve.auth import Authenticator, KeyCache, RateLimit, RateLimiter
from tallyray.storage.keys import ApiKey

# --- key shapes -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "shaped"),
    [
        ("trk_test_" + "a" * 32, True),
        ("trk_live_" + "A1-_" * 8, True),
        ("trk_admin_" + "z" * 40, True),
        ("trk_test_" + "a" * 31, False),  # too short to be random enough
        ("trk_prod_" + "a" * 32, False),  # no such environment
        ("admin", False),  # was accepted as an admin key
        ("trk_test_" + "a" * 31 + " ", False),
        ("trk_test_" + "a" * 31 + "\x00", False),
        ("trk_test_" + "é" * 32, False),
        ("trk_test_" + "a" * 129, False),
        ("", False),
    ],
)
def test_a_key_is_recognised_by_its_shape(text: str, shaped: bool) -> None:
    assert looks_like_key(text) is shaped


@pytest.mark.parametrize("env", ["live", "test", "admin"])
def test_generated_keys_have_the_shape(env: str) -> None:
    keys = {generate_key(env) for _ in range(100)}
    assert len(keys) == 100
    assert all(k.startswith(f"trk_{env}_") and looks_like_key(k) for k in keys)


# --- scopes -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "needed"),
    [
        ("POST", "/v1/events", "ingest"),
        ("POST", "/v1/quota/check", "ingest"),
        ("POST", "/v1/reservations", "ingest"),
        ("POST", "/v1/reservations/{hold_id}/settle", "ingest"),
        ("POST", "/v1/reservations/{hold_id}/release", "ingest"),
        ("GET", "/v1/customers/{customer_id}/balance", "read"),
        ("GET", "/v1/usage", "read"),
        ("GET", "/v1/invoices/{invoice_id}.pdf", "read"),
        ("GET", "/v1/audit-events", "manage"),  # who did what: for those who may do it
        ("POST", "/v1/customers", "manage"),
        ("POST", "/v1/customers/{customer_id}/credits", "manage"),
        ("POST", "/v1/plans", "manage"),
        ("DELETE", "/v1/webhook-endpoints/{endpoint_id}", "manage"),
        ("POST", "/v1/invoice-runs", "manage"),
        ("POST", "/v1/admin/keys", "admin"),
        ("GET", "/v1/admin/keys", "admin"),
        ("POST", "/v1/admin/keys/{key_id}/revoke", "admin"),
    ],
)
def test_each_route_needs_one_scope(method: str, path: str, needed: str) -> None:
    assert required_scope(method, path) == needed


@pytest.mark.parametrize(
    ("raw", "error"),
    [
        (["ingest"], None),
        (["read", "manage"], None),
        ([], "non-empty list"),
        ("ingest", "non-empty list"),
        (["ingest", "write"], "unknown scope 'write'"),
        ([1], "non-empty list"),
    ],
)
def test_scopes_from_the_api(raw: Any, error: str | None) -> None:
    if error is None:
        assert parse_scopes(raw) == frozenset(raw)
    else:
        with pytest.raises(ValueError, match=error):
            parse_scopes(raw)


# --- rate limits ----------------------------------------------------------------------------


class Ticks:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_bucket_allows_its_burst_then_its_rate() -> None:
    ticks = Ticks()
    limiter = RateLimiter(RateLimit(per_second=10, burst=5), ticks)
    assert [limiter.take("k") for _ in range(5)] == [None] * 5  # the burst
    wait = limiter.take("k")
    assert wait == pytest.approx(0.1)  # one token comes back every 1/10 s
    ticks.now += 0.1
    assert limiter.take("k") is None
    assert limiter.take("k") is not None
    assert limiter.take("other") is None  # every key has its own bucket
    ticks.now += 60
    assert [limiter.take("k") for _ in range(5)] == [None] * 5  # refilled, up to the burst
    assert limiter.take("k") is not None


def test_a_limit_of_zero_is_no_limit() -> None:
    limiter = RateLimiter(RateLimit(0, 0))
    assert all(limiter.take("k") is None for _ in range(10_000))


def test_buckets_are_bounded() -> None:
    ticks = Ticks()
    limiter = RateLimiter(RateLimit(10, 5), ticks)
    limiter.MAX_BUCKETS = 100
    for i in range(1000):
        limiter.take(f"k{i}")
        ticks.now += 1  # each older bucket has refilled by the time the next comes
    assert len(limiter._buckets) <= 100


def test_retry_after_is_whole_seconds_at_least_one() -> None:
    assert RateLimited("slow down", retry_after=0.01).retry_after_header == "1"
    assert RateLimited("slow down", retry_after=2.2).retry_after_header == "3"


# --- the key cache ----------------------------------------------------------------------------

KEY = ApiKey("key_1", "test", "ci", frozenset({"read"}), "trk_test_abc", 0)


class SlowKeys:
    def __init__(self) -> None:
        self.loads = 0
        self._lock = threading.Lock()

    def __call__(self, secret: str) -> ApiKey | None:
        with self._lock:
            self.loads += 1
        time.sleep(0.05)  # a database round trip
        return KEY if secret == "trk_test_known" else None


def test_concurrent_misses_share_one_load() -> None:
    keys = SlowKeys()
    cache = KeyCache(keys)

    async def main() -> None:
        found = await asyncio.gather(*(cache.get("trk_test_known") for _ in range(50)))
        assert set(found) == {KEY}

    asyncio.run(main())
    assert keys.loads == 1


def test_known_and_unknown_keys_are_kept_for_their_ttl() -> None:
    keys, ticks = SlowKeys(), Ticks()
    cache = KeyCache(keys, ttl=2.0, negative_ttl=1.0, clock=ticks)

    async def main() -> None:
        assert await cache.get("trk_test_known") == KEY
        assert await cache.get("trk_test_nobody") is None
        assert keys.loads == 2
        ticks.now += 0.5
        assert await cache.get("trk_test_known") == KEY
        assert await cache.get("trk_test_nobody") is None
        assert keys.loads == 2  # both answered from memory
        ticks.now += 1.0  # the unknown one is forgotten first
        assert await cache.get("trk_test_nobody") is None
        assert keys.loads == 3
        ticks.now += 1.0  # and the known one after its ttl: a revocation shows within it
        assert await cache.get("trk_test_known") == KEY
        assert keys.loads == 4

    asyncio.run(main())


def test_the_cache_is_bounded() -> None:
    cache = KeyCache(lambda s: None if "nobody" in s else KEY, size=10, negative_size=5)

    async def main() -> None:
        for i in range(100):
            await cache.get(f"trk_test_{i}")
            await cache.get(f"trk_test_nobody{i}")

    asyncio.run(main())
    assert len(cache) == 15


def test_look_ups_of_unseen_keys_are_limited() -> None:
    keys, ticks = SlowKeys(), Ticks()
    cache = KeyCache(keys, lookups=RateLimit(per_second=1, burst=3), clock=ticks)

    async def main() -> None:
        for i in range(3):
            assert await cache.get(f"trk_test_guess{i}") is None
        with pytest.raises(RateLimited) as caught:
            await cache.get("trk_test_guess4")
        assert caught.value.http_status == 429
        assert await cache.get("trk_test_guess0") is None  # remembered: no look-up needed

    asyncio.run(main())
    assert keys.loads == 3


# --- the authenticator, through a small app ----------------------------------------------------


def _app(keys: dict[str, ApiKey], loads: list[str], now: int, limit: RateLimit) -> Any:
    def load(secret: str) -> ApiKey | None:
        loads.append(secret)
        return keys.get(secret)

    authenticate = Authenticator(KeyCache(load), RateLimiter(limit), lambda: now)
    app = FastAPI()

    @app.exception_handler(TallyrayError)
    async def error(request: Request, e: TallyrayError) -> JSONResponse:
        headers = {"Retry-After": e.retry_after_header} if isinstance(e, RateLimited) else {}
        return JSONResponse(e.to_json(), status_code=e.http_status, headers=headers)

    @app.get("/v1/customers/{customer_id}")
    async def read(customer_id: str, request: Request) -> dict[str, str]:
        return {"env": await authenticate(request)}

    @app.post("/v1/events")
    async def ingest(request: Request) -> dict[str, str]:
        return {"env": await authenticate(request)}

    @app.post("/v1/admin/keys")
    async def admin(request: Request) -> dict[str, str]:
        return {"env": await authenticate(request)}

    return app


NOW = 1_700_000_000_000_000
SECRETS = {
    "reader": "trk_test_" + "r" * 32,
    "gateway": "trk_test_" + "g" * 32,
    "revoked": "trk_test_" + "x" * 32,
    "expired": "trk_test_" + "e" * 32,
    "admin": "trk_admin_" + "a" * 32,
}
KEYS = {
    SECRETS["reader"]: ApiKey("key_r", "test", "dashboard", frozenset({"read"}), "trk_test_rrr", 0),
    SECRETS["gateway"]: ApiKey("key_g", "test", "gw", frozenset({"ingest"}), "trk_test_ggg", 0),
    SECRETS["revoked"]: ApiKey(
        "key_x", "test", None, frozenset({"read"}), "trk_test_xxx", 0, revoked_at=NOW - 1
    ),
    SECRETS["expired"]: ApiKey(
        "key_e", "test", None, frozenset({"read"}), "trk_test_eee", 0, expires_at=NOW
    ),
    SECRETS["admin"]: ApiKey("key_a", "admin", "seeded", frozenset({"admin"}), "trk_admin_a", 0),
}


@pytest.mark.parametrize(
    ("bearer", "method", "path", "status", "fragment", "looked_up"),
    [
        (None, "GET", "/v1/customers/c", 401, "send your API key", False),
        ("admin", "GET", "/v1/customers/c", 401, "not a Tallyray API key", False),
        ("trk_test_short", "GET", "/v1/customers/c", 401, "not a Tallyray API key", False),
        ("trk_test_" + "n" * 32, "GET", "/v1/customers/c", 401, "unknown API key", True),
        ("revoked", "GET", "/v1/customers/c", 401, "was revoked", True),
        ("expired", "GET", "/v1/customers/c", 401, "has expired", True),
        ("reader", "GET", "/v1/customers/c", 200, "test", True),
        ("reader", "POST", "/v1/events", 403, "lacks the 'ingest' scope", True),
        ("gateway", "POST", "/v1/events", 200, "test", True),
        ("gateway", "GET", "/v1/customers/c", 403, "lacks the 'read' scope", True),
        ("reader", "POST", "/v1/admin/keys", 403, "needs the admin key", True),
        ("admin", "POST", "/v1/admin/keys", 200, "admin", True),
        ("admin", "GET", "/v1/customers/c", 403, "only manages API keys", True),
    ],
)
def test_the_door(
    bearer: str | None, method: str, path: str, status: int, fragment: str, looked_up: bool
) -> None:
    loads: list[str] = []
    secret = SECRETS.get(bearer or "", bearer) if bearer else None
    if bearer == "admin":  # the literal string "admin" and the admin key are two cases
        secret = SECRETS["admin"] if path == "/v1/admin/keys" or status == 403 else "admin"
    app = _app(KEYS, loads, NOW, RateLimit(100, 100))

    async def main() -> httpx.Response:
        headers = {"Authorization": f"Bearer {secret}"} if secret else {}
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://t"
        ) as c:
            return await c.request(method, path, headers=headers)

    r = asyncio.run(main())
    assert r.status_code == status, r.text
    assert fragment in r.text
    assert bool(loads) is looked_up  # a bearer that is not shaped like a key costs no query


def test_over_the_rate_limit_is_a_429_with_retry_after() -> None:
    app = _app(KEYS, [], NOW, RateLimit(per_second=1, burst=3))

    async def main() -> list[httpx.Response]:
        headers = {"Authorization": f"Bearer {SECRETS['reader']}"}
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://t", headers=headers
        ) as c:
            return [await c.get("/v1/customers/c") for _ in range(5)]

    answers = asyncio.run(main())
    assert [r.status_code for r in answers] == [200, 200, 200, 429, 429]
    assert answers[3].headers["retry-after"] == "1"
    assert answers[3].json()["error"]["type"] == "rate_limited"
