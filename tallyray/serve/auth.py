"""Authentication, scopes and rate limits: the door every API call passes.

``Authorization: Bearer trk_…`` names a key. In order, and cheap first:

1. A bearer that is not shaped like a Tallyray key is a 401 at once, with no look-up.
2. The key is looked up in a bounded cache (:class:`KeyCache`: an LRU of known keys kept
   ``ttl`` seconds, a small negative cache of unknown ones); a miss reads the store, at
   most ``lookups_per_second`` a second per replica, so a stream of made-up keys cannot
   turn into a stream of queries. A revoked key is refused within ``ttl`` on every replica.
3. A revoked or expired key is a 401; a key without the scope the route needs
   (:func:`tallyray.access.required_scope`) a 403 naming the scope.
4. Each key has a token bucket (:class:`RateLimiter`); an empty bucket is a 429 with
   ``Retry-After``. Limits are per replica.

The key that passed is kept on ``request.state.principal``: the audit log names it.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from fastapi import Request
from starlette.concurrency import run_in_threadpool

from tallyray.access import ADMIN, looks_like_key, required_scope
from tallyray.clock import Clock
from tallyray.errors import Forbidden, RateLimited, Unauthorized
from tallyray.storage.audit import Actor, AuditEntry
from tallyray.storage.keys import ApiKey

__all__ = ["Authenticator", "KeyCache", "RateLimit", "RateLimiter", "actor_of", "audit_entry"]

#: Routes the admin key may call besides ``/v1/admin/…`` (method, path template).
ADMIN_ALSO = frozenset({("GET", "/v1/audit-events")})


@dataclass(frozen=True, slots=True)
class RateLimit:
    """``per_second`` sustained, up to ``burst`` at once; ``per_second <= 0``: no limit."""

    per_second: float
    burst: float

    @property
    def off(self) -> bool:
        return self.per_second <= 0


class RateLimiter:
    """Token buckets by name (a key's id, a portal link's customer): each holds up to
    ``burst`` tokens and refills at ``per_second``; a call takes one."""

    MAX_BUCKETS = 100_000

    def __init__(self, limit: RateLimit, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit
        self.clock = clock
        self._buckets: dict[str, list[float]] = {}

    def take(self, name: str) -> float | None:
        """Take a token for ``name``: ``None`` when there was one, else the seconds until
        there will be."""
        limit = self.limit
        if limit.off:
            return None
        now = self.clock()
        bucket = self._buckets.get(name)
        if bucket is None:
            if len(self._buckets) >= self.MAX_BUCKETS:
                self._forget_full(now)
            bucket = self._buckets[name] = [limit.burst, now]
        tokens = min(limit.burst, bucket[0] + (now - bucket[1]) * limit.per_second)
        bucket[1] = now
        if tokens >= 1:
            bucket[0] = tokens - 1
            return None
        bucket[0] = tokens
        return (1 - tokens) / limit.per_second

    def _forget_full(self, now: float) -> None:
        """Drop the buckets that have refilled: forgetting them changes nothing."""
        limit = self.limit
        full = [
            name
            for name, (tokens, at) in self._buckets.items()
            if tokens + (now - at) * limit.per_second >= limit.burst
        ]
        for name in full:
            del self._buckets[name]
        if len(self._buckets) >= self.MAX_BUCKETS:  # all busy: make room anyway
            for name in list(self._buckets)[: self.MAX_BUCKETS // 10]:
                del self._buckets[name]


class KeyCache:
    """Keys by the hash of their secret: an LRU of at most ``size`` known keys, each kept
    ``ttl`` seconds, and ``negative_size`` unknown ones, kept ``negative_ttl`` seconds.

    Loads are shared (requests that miss together wait on one load) and limited to
    ``lookups`` a second: beyond that, a key not in the cache is answered 429.
    """

    def __init__(
        self,
        load: Callable[[str], ApiKey | None],
        *,
        size: int = 10_000,
        ttl: float = 2.0,
        negative_size: int = 1_000,
        negative_ttl: float = 2.0,
        lookups: RateLimit = RateLimit(100, 200),  # noqa: B008 — frozen
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._load_key = load
        self.size, self.ttl = size, ttl
        self.negative_size, self.negative_ttl = negative_size, negative_ttl
        self.clock = clock
        self._known: OrderedDict[str, tuple[ApiKey, float]] = OrderedDict()
        self._unknown: OrderedDict[str, float] = OrderedDict()
        self._loading: dict[str, asyncio.Future[ApiKey | None]] = {}
        self._lookups = RateLimiter(lookups, clock)
        self.used: dict[str, int] = {}
        """Key id → when it was last used, since :meth:`take_used` was last called."""

    @staticmethod
    def digest(secret: str) -> str:
        return hashlib.sha256(secret.encode()).hexdigest()

    async def get(self, secret: str) -> ApiKey | None:
        digest = self.digest(secret)
        now = self.clock()
        hit = self._known.get(digest)
        if hit is not None and now - hit[1] < self.ttl:
            self._known.move_to_end(digest)
            return hit[0]
        miss = self._unknown.get(digest)
        if miss is not None and now - miss < self.negative_ttl:
            return None
        running = self._loading.get(digest)
        if running is None:
            wait = self._lookups.take("lookups")
            if wait is not None:
                raise RateLimited(
                    "too many requests with keys this server has not seen lately; retry shortly",
                    retry_after=wait,
                )
            running = self._loading[digest] = asyncio.ensure_future(
                run_in_threadpool(self._load_key, secret)
            )
            running.add_done_callback(lambda _: self._loading.pop(digest, None))
        key = await asyncio.shield(running)
        self._remember(digest, key)
        return key

    def _remember(self, digest: str, key: ApiKey | None) -> None:
        now = self.clock()
        if key is None:
            self._unknown[digest] = now
            self._unknown.move_to_end(digest)
            while len(self._unknown) > self.negative_size:
                self._unknown.popitem(last=False)
            return
        self._known[digest] = (key, now)
        self._known.move_to_end(digest)
        while len(self._known) > self.size:
            self._known.popitem(last=False)

    def forget(self, key_id: str) -> None:
        """Drop a key from this replica's cache at once (it was revoked through it)."""
        for digest, (key, _) in list(self._known.items()):
            if key.id == key_id:
                del self._known[digest]

    def take_used(self) -> dict[str, int]:
        used, self.used = self.used, {}
        return used

    def __len__(self) -> int:
        return len(self._known) + len(self._unknown)


def actor_of(request: Request) -> Actor:
    """Who is making this request, for the audit log."""
    key: ApiKey | None = getattr(request.state, "principal", None)
    if key is None:
        return Actor("server", "server")
    return Actor("admin" if key.env == ADMIN else "key", key.id, key.name)


def audit_entry(
    request: Request,
    env: str,
    action: str,
    object_type: str,
    object_id: str,
    at: int,
    summary: Mapping[str, Any] | None = None,
) -> AuditEntry:
    """The audit entry of a change this request makes."""
    return AuditEntry(
        env=env,
        actor=actor_of(request),
        action=action,
        object_type=object_type,
        object_id=object_id,
        at=at,
        request_id=getattr(request.state, "request_id", None),
        summary=summary or {},
    )


class Authenticator:
    """``await authenticate(request)`` → the environment of the request's key (``live``,
    ``test`` or ``admin``), or the error the request deserves."""

    def __init__(self, keys: KeyCache, limiter: RateLimiter, clock: Clock) -> None:
        self.keys = keys
        self.limiter = limiter
        self.clock = clock

    async def __call__(self, request: Request) -> str:
        route: Any = request.scope.get("route")
        path = getattr(route, "path", None) or request.url.path
        key = await self.admit(request.headers.get("authorization", ""), request.method, path)
        request.state.principal = key
        return key.env

    async def admit(self, authorization: str, method: str, path: str) -> ApiKey:
        """The key an ``Authorization`` header names, if it may call ``method path`` (the
        route's path template) now; else the error the request deserves. The one rule for
        the app's routes and for the hot routes answered by :mod:`tallyray.serve.fastpath`."""
        scheme, _, secret = authorization.partition(" ")
        secret = secret.strip()
        if scheme.lower() != "bearer" or not secret:
            raise Unauthorized("send your API key as 'Authorization: Bearer trk_…'")
        if not looks_like_key(secret):
            raise Unauthorized(
                "that is not a Tallyray API key: keys look like trk_live_… or trk_test_… "
                "followed by 32 or more letters, digits, '-' or '_'"
            )
        key = await self.keys.get(secret)
        now = self.clock()
        if key is None:
            raise Unauthorized("unknown API key")
        if key.revoked_at is not None:
            raise Unauthorized("this API key was revoked")
        if key.expires_at is not None and now >= key.expires_at:
            raise Unauthorized("this API key has expired")
        self._check_scope(method, path, key)
        wait = self.limiter.take(key.id)
        if wait is not None:
            raise RateLimited(
                f"this key is over its rate limit ({self.limiter.limit.per_second:g} "
                "requests a second); retry shortly",
                retry_after=wait,
            )
        self.keys.used[key.id] = now
        return key

    @staticmethod
    def _check_scope(method: str, path: str, key: ApiKey) -> None:
        needed = required_scope(method, path)
        if key.env == ADMIN:
            if needed != ADMIN and (method, path) not in ADMIN_ALSO:
                raise Forbidden(
                    "the admin key only manages API keys (and reads the audit log); use a "
                    "trk_live_ or trk_test_ key"
                )
            return
        if needed == ADMIN:
            raise Forbidden.needs("admin", "this call needs the admin key")
        if needed not in key.scopes:
            raise Forbidden.needs(
                needed,
                f"this key lacks the '{needed}' scope that this call needs (it has "
                f"{', '.join(sorted(key.scopes))}); use a key with '{needed}'",
            )
