"""Carrying outbox messages to webhook endpoints: signed, retried, never in anyone's way.

:class:`Deliverer` holds the logic and no Ray; every step is safe to run in several processes
at once:

- :meth:`~Deliverer.fan_out` reads the outbox after the ``webhooks`` cursor and makes one
  delivery per message and subscribed, enabled endpoint of the message's environment (a
  unique (endpoint, message) pair, so doing it twice changes nothing);
- :meth:`~Deliverer.deliver_due` claims the deliveries that are due and sends them at once,
  each signed (:mod:`tallyray.alerts.signing`) with the message id as ``webhook-id``. A 2xx is
  success; 410 Gone disables the endpoint and stops its open deliveries; anything else (an
  error status, a timeout, a refused connection) is tried again on the
  :class:`~tallyray.alerts.schedule.RetrySchedule` until the attempts are spent.

Every attempt first resolves the endpoint's host and checks each address against the
destination policy (:mod:`tallyray.alerts.egress`), then connects to a checked address only;
a refused destination is a failed attempt, retried like the others. Redirects are not
followed (a 3xx is a failed attempt), the answer's body is never read, and the delivery log
keeps the status code and a short reason in fixed words (:mod:`tallyray.alerts.reasons`).

Nothing here touches ingestion: the shards only write outbox rows in their own commits. One
endpoint can hold at most ``per_endpoint`` sends in flight, and a send takes at most
``timeout`` seconds, so a slow or dead endpoint costs its own retries and nothing else.

:class:`WebhookActor` runs both steps every ``interval`` seconds; :func:`start_webhooks`
creates it (detached, named ``webhooks`` in namespace ``tallyray``).
"""

from __future__ import annotations

import asyncio
import logging
import random as _random
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, cast

import httpx
import orjson

from tallyray import __version__
from tallyray.alerts import signing
from tallyray.alerts.egress import (
    IPAddress,
    RefusedDestination,
    Resolve,
    Unresolvable,
    checked_addresses,
    host_and_port,
    pinned,
    system_resolve,
)
from tallyray.alerts.reasons import clip, error_reason, status_reason, timed_out
from tallyray.alerts.schedule import RetrySchedule
from tallyray.clock import clock_for
from tallyray.credentials import database_url as resolve_database_url
from tallyray.logs import configure_logging
from tallyray.pricing.events import format_timestamp
from tallyray.storage.db import make_engine
from tallyray.storage.webhooks import FAILED, PENDING, SUCCEEDED, Claimed, WebhookStore

__all__ = [
    "ACTOR_NAME",
    "CURSOR",
    "Attempt",
    "Deliverer",
    "WebhookActor",
    "message_body",
    "start_webhooks",
]

log = logging.getLogger("tallyray.webhooks")

ACTOR_NAME = "webhooks"
CURSOR = "webhooks"
"""The ``outbox_cursors`` row the deliverer keeps its place in."""


@dataclass(frozen=True, slots=True)
class Attempt:
    """What one send came to."""

    delivery_id: str
    endpoint_id: str
    message_id: str
    outcome: str
    """``succeeded``, ``retry``, ``failed`` (attempts spent, or the message is gone),
    ``gone`` (410: endpoint disabled) or ``lost`` (the claim was taken from us or could not be
    recorded; the delivery is tried again when its lease runs out)."""
    status_code: int | None
    error: str | None
    next_attempt_at: int | None = None


def message_body(event_type: str, created_at: int, payload: dict[str, Any]) -> bytes:
    """The JSON body sent for a message: the same bytes on every attempt."""
    return orjson.dumps(
        {"type": event_type, "timestamp": format_timestamp(created_at), "data": payload}
    )


class Deliverer:
    """Fans the outbox out to endpoints and sends what is due. Times (``now``) are integer
    microseconds, passed in; the ``webhook-timestamp`` of a send is read from ``wall_clock``
    (seconds), because receivers check it against their own clock.

    ``allow_private`` turns the destination policy off (tests, on-premise receivers);
    ``resolve`` looks host names up (the system resolver unless a test injects one)."""

    def __init__(
        self,
        store: WebhookStore,
        schedule: RetrySchedule | None = None,
        *,
        timeout: float = 10.0,
        per_endpoint: int = 4,
        max_in_flight: int = 100,
        lease_seconds: float | None = None,
        batch: int = 500,
        gap_seconds: float = 60.0,
        cursor: str = CURSOR,
        random: Callable[[], float] = _random.random,
        wall_clock: Callable[[], float] = time.time,
        transport: httpx.AsyncBaseTransport | None = None,
        allow_private: bool = False,
        resolve: Resolve = system_resolve,
    ) -> None:
        if per_endpoint < 1 or max_in_flight < 1:
            raise ValueError("per_endpoint and max_in_flight must be at least 1")
        self.store = store
        self.schedule = schedule or RetrySchedule()
        self.timeout = timeout
        self.per_endpoint = per_endpoint
        self.max_in_flight = max_in_flight
        lease = lease_seconds if lease_seconds is not None else max(60.0, 3 * timeout)
        if lease <= timeout:
            raise ValueError("the claim lease must outlast a send (lease_seconds > timeout)")
        self.lease_us = round(lease * 1_000_000)
        self.batch = batch
        self.gap_us = round(gap_seconds * 1_000_000)
        self.cursor = cursor
        self.random = random
        self.wall_clock = wall_clock
        self._transport = transport
        self.allow_private = allow_private
        self.resolve = resolve
        self._client: httpx.AsyncClient | None = None
        self._in_flight: Counter[str] = Counter()
        self._gaps: dict[int, int] = {}

    async def __aenter__(self) -> Deliverer:
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    @property
    def in_flight(self) -> int:
        return sum(self._in_flight.values())

    # -- fan-out -------------------------------------------------------------------------

    async def fan_out(self, now: int) -> int:
        """Turn the outbox messages after the cursor into deliveries; returns how many
        deliveries were new."""
        return await asyncio.to_thread(self._fan_out, now)

    def _fan_out(self, now: int) -> int:
        created = 0
        while True:
            start = self.store.cursor(self.cursor)
            messages = self.store.messages_after(start, self.batch)
            if not messages:
                return created
            created += self.store.fan_out(messages, now)
            end = self._settled(start, [m.seq for m in messages], now)
            if end > start:
                self.store.move_cursor(self.cursor, end)
            if end == start or len(messages) < self.batch:
                return created

    def _settled(self, start: int, seqs: Sequence[int], now: int) -> int:
        """How far the cursor may move over ``seqs`` (ascending, all after ``start``).

        Outbox rows are numbered when inserted but seen when committed, so on Postgres a
        row may appear after one numbered later: a gap can be a commit still in flight (or a
        number a rolled-back or conflicting insert used up). The cursor stops before a gap
        until it has been open ``gap_seconds``; rows after it are fanned out meanwhile (again
        each pass, which stores nothing new), so no delivery waits for the gap.
        """
        previous = start
        for seq in seqs:
            if seq > previous + 1:
                self._gaps.setdefault(previous + 1, now)
            previous = seq
        end = start
        for seq in seqs:
            if seq > end + 1 and now - self._gaps[end + 1] < self.gap_us:
                break
            end = seq
        self._gaps = {gap: seen for gap, seen in self._gaps.items() if gap > end}
        return end

    # -- sending -------------------------------------------------------------------------

    async def deliver_due(self, now: int) -> list[Attempt]:
        """Claim the deliveries due at ``now`` (within the concurrency limits) and send them
        all at once; returns when every send has ended, each outcome recorded as it ends."""
        room = self.max_in_flight - self.in_flight
        if room <= 0:
            return []
        candidates = await asyncio.to_thread(self.store.due, now, self.per_endpoint, room)
        return await self._send(candidates, now)

    async def deliver_now(self, delivery_id: str, endpoint_id: str, now: int) -> list[Attempt]:
        """Send one delivery now if it is due and its endpoint has room (the test event);
        otherwise leave it to the next :meth:`deliver_due`."""
        return await self._send([(delivery_id, endpoint_id)], now)

    async def _send(self, candidates: Sequence[tuple[str, str]], now: int) -> list[Attempt]:
        # Room is taken before the claim is awaited, so concurrent rounds share the limits.
        chosen: list[str] = []
        taken: Counter[str] = Counter()
        for delivery_id, endpoint_id in candidates:
            if (
                self._in_flight[endpoint_id] < self.per_endpoint
                and self.in_flight < self.max_in_flight
            ):
                chosen.append(delivery_id)
                taken[endpoint_id] += 1
                self._in_flight[endpoint_id] += 1
        try:
            claimed = await asyncio.to_thread(self.store.claim, chosen, now, now + self.lease_us)
        finally:
            self._release(taken)
        for item in claimed:
            self._in_flight[item.endpoint_id] += 1
        return list(await asyncio.gather(*(self._deliver(item, now) for item in claimed)))

    def _release(self, counts: Counter[str]) -> None:
        for endpoint_id, count in counts.items():
            self._in_flight[endpoint_id] -= count
            if self._in_flight[endpoint_id] <= 0:
                del self._in_flight[endpoint_id]

    async def _deliver(self, claimed: Claimed, now: int) -> Attempt:
        try:
            attempt = await self._attempt(claimed, now)
            if not await self._record(claimed, attempt, now):
                attempt = Attempt(
                    claimed.id,
                    claimed.endpoint_id,
                    claimed.message_id,
                    "lost",
                    attempt.status_code,
                    attempt.error,
                )
            return attempt
        except Exception as error:  # noqa: BLE001 — the lease brings it back
            log.warning("webhook delivery %s: %s", claimed.id, error)
            return Attempt(
                claimed.id, claimed.endpoint_id, claimed.message_id, "lost", None, str(error)
            )
        finally:
            self._release(Counter({claimed.endpoint_id: 1}))

    async def _attempt(self, claimed: Claimed, now: int) -> Attempt:
        """Send once and classify the answer (nothing recorded yet)."""

        def ended(outcome: str, code: int | None, error: str | None) -> Attempt:
            next_at = None
            if outcome == "retry":
                next_at = self.schedule.next_attempt_at(now, claimed.attempts + 1, self.random)
                if next_at is None:
                    outcome = "failed"
            return Attempt(
                claimed.id, claimed.endpoint_id, claimed.message_id, outcome, code, error, next_at
            )

        if claimed.payload is None:
            return ended("failed", None, "the outbox message is gone")
        try:
            body = message_body(claimed.event_type, claimed.message_created_at, claimed.payload)
            timestamp = int(self.wall_clock())
            headers = {
                **signing.headers(claimed.secret, claimed.message_id, timestamp, body),
                "content-type": "application/json",
                "user-agent": f"Tallyray-Webhooks/{__version__}",
            }
            async with asyncio.timeout(self.timeout):
                code = await self._post(httpx.URL(claimed.url), body, headers)
        except (TimeoutError, httpx.TimeoutException):
            return ended("retry", None, timed_out(self.timeout))
        except Unresolvable as error:  # DNS may answer again: an attempt like any other
            return ended("retry", None, clip(str(error)))
        except RefusedDestination as error:  # ... and a name may point elsewhere later
            return ended("retry", None, clip(f"refused destination: {error}"))
        except Exception as error:  # noqa: BLE001 — refused, reset, bad URL...: an attempt
            return ended("retry", None, error_reason(error))
        if 200 <= code < 300:
            return ended("succeeded", code, None)
        if code == 410:
            reason = f"the endpoint answered 410 Gone at {format_timestamp(now)}"
            return ended("gone", code, reason)
        return ended("retry", code, status_reason(code))

    async def _post(self, url: httpx.URL, body: bytes, headers: dict[str, str]) -> int:
        """POST to the first checked address of ``url``'s host that takes the connection
        (the next one only when connecting failed); returns the status code. The body of the
        answer is never read: leaving the ``stream`` block closes the connection."""
        host, port = host_and_port(url)
        addresses = await checked_addresses(
            host, port, self.resolve, allow_private=self.allow_private
        )
        for address in addresses[:-1]:
            try:
                return await self._post_to(url, address, body, headers)
            except httpx.ConnectError as error:
                log.debug("webhook to %s: %s unreachable: %s", host, address, error)
        return await self._post_to(url, addresses[-1], body, headers)

    async def _post_to(
        self, url: httpx.URL, address: IPAddress, body: bytes, headers: dict[str, str]
    ) -> int:
        target, host_header, extensions = pinned(url, address)
        async with self._http().stream(
            "POST",
            target,
            content=body,
            headers={**headers, **host_header},
            extensions=extensions,
        ) as response:
            return response.status_code

    async def _record(self, claimed: Claimed, attempt: Attempt, now: int) -> bool:
        if attempt.outcome == "gone":
            assert attempt.status_code is not None and attempt.error is not None
            return await asyncio.to_thread(
                self.store.gone, claimed, now, attempt.status_code, attempt.error
            )
        status = {"succeeded": SUCCEEDED, "retry": PENDING, "failed": FAILED}[attempt.outcome]
        return await asyncio.to_thread(
            self.store.record,
            claimed,
            now,
            status,
            attempt.status_code,
            attempt.error,
            attempt.next_attempt_at,
        )

    def _http(self) -> httpx.AsyncClient:
        """The client every send goes through.

        - ``follow_redirects=False``: a redirect would lead to an unchecked address.
        - Connections are not kept alive. The pool keys a connection by scheme, IP and port,
          so a kept one could carry a request for another host name that resolves to the
          same IP, over a TLS session whose certificate was checked for the first name.
          (Leaving an answer's body unread closes its connection anyway; this says so
          outright, should the body ever be read.)
        - Its own transport, and ``trust_env=False``: no proxy from ``HTTP(S)_PROXY`` (a
          proxy would connect to a name of its own choosing, and an https tunnel would not
          carry the pinned host's SNI) and no ``.netrc`` credentials. The transport still
          reads ``SSL_CERT_FILE`` / ``SSL_CERT_DIR``, for receivers behind a private CA.
        """
        if self._client is None:
            transport = self._transport or httpx.AsyncHTTPTransport(
                limits=httpx.Limits(
                    max_connections=self.max_in_flight, max_keepalive_connections=0
                ),
            )
            self._client = httpx.AsyncClient(
                timeout=self.timeout,
                follow_redirects=False,
                transport=transport,
                trust_env=False,
            )
        return self._client


class WebhookActor:
    """The Ray actor that runs a :class:`Deliverer`: every ``interval`` seconds it fans the
    outbox out and starts sending what is due, without waiting for the sends of earlier
    rounds (a slow endpoint holds only its own claimed deliveries). Ray restarts it
    (``max_restarts=-1``); the store holds all its state."""

    def __init__(
        self,
        database_url: str | None,
        interval: float = 1.0,
        delays: Sequence[float] | None = None,
        timeout: float = 10.0,
        per_endpoint: int = 4,
        clock_offset_us: int = 0,
        allow_private: bool = False,
        secrets_file: str | None = None,
    ) -> None:
        configure_logging()
        self.interval = interval
        self.clock = clock_for(clock_offset_us)
        self.engine = make_engine(resolve_database_url(database_url, secrets_file))
        schedule = RetrySchedule.parse(delays) if delays is not None else RetrySchedule()
        self.deliverer = Deliverer(
            WebhookStore(self.engine),
            schedule,
            timeout=timeout,
            per_endpoint=per_endpoint,
            allow_private=allow_private,
        )
        self.counts: Counter[str] = Counter()
        self.last_error: str | None = None
        self._loop: asyncio.Task[None] | None = None
        self._sends: set[asyncio.Task[None]] = set()
        # Ray runs an async actor's constructor on its event loop: start at once, so a
        # restarted actor delivers without anyone calling it.
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return
        self._ensure_running()

    def _ensure_running(self) -> None:
        if self._loop is None or self._loop.done():
            self._loop = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            started = time.monotonic()
            await self.tick()
            await asyncio.sleep(max(0.0, self.interval - (time.monotonic() - started)))

    async def tick(self) -> None:
        """One round: fan out, then start sending what is due (in the background)."""
        now = self.clock()
        self.counts["rounds"] += 1
        try:
            await self.deliverer.fan_out(now)
        except Exception as error:  # noqa: BLE001 — the next round tries again
            self._failed("fan-out", error)
        task = asyncio.create_task(self._send(now))
        self._sends.add(task)
        task.add_done_callback(self._sends.discard)

    async def _send(self, now: int) -> None:
        try:
            for attempt in await self.deliverer.deliver_due(now):
                self.counts[attempt.outcome] += 1
        except Exception as error:  # noqa: BLE001 — the next round tries again
            self._failed("delivery", error)

    def _failed(self, step: str, error: Exception) -> None:
        self.last_error = f"{step}: {error}"
        log.warning("webhooks %s failed: %s", step, error)

    async def ready(self) -> bool:
        self._ensure_running()
        return True

    async def status(self) -> dict[str, Any]:
        """Counts of rounds and of send outcomes since the actor started."""
        self._ensure_running()
        return {
            **self.counts,
            "in_flight": self.deliverer.in_flight,
            "last_error": self.last_error,
        }


def start_webhooks(
    database_url: str | None,
    interval: float = 1.0,
    *,
    delays: Sequence[float] | str | None = None,
    timeout: float = 10.0,
    per_endpoint: int = 4,
    clock_offset_us: int = 0,
    allow_private: bool = False,
    secrets_file: str | None = None,
) -> Any:
    """Create (or find) the detached ``webhooks`` actor in namespace ``tallyray`` and wait
    until it runs; returns its handle. ``delays`` overrides the retry schedule (seconds, or
    text such as ``"5s,5m,30m,2h,5h,10h,14h"``). The options apply when the actor is created;
    an actor that exists already keeps its own. ``clock_offset_us`` shifts its clock
    (:mod:`tallyray.clock`); ``allow_private`` turns the destination policy off
    (:mod:`tallyray.alerts.egress`)."""
    import ray

    from tallyray.serve.shards import NAMESPACE

    waits = None if delays is None else RetrySchedule.parse(delays).delays
    remote = cast(Any, ray.remote(WebhookActor))
    handle = remote.options(
        name=ACTOR_NAME,
        namespace=NAMESPACE,
        lifetime="detached",
        max_restarts=-1,
        num_cpus=0,
        get_if_exists=True,
    ).remote(
        database_url,
        interval,
        waits,
        timeout,
        per_endpoint,
        clock_offset_us,
        allow_private,
        secrets_file,
    )
    ray.get(handle.ready.remote())
    return handle
