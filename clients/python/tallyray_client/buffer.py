"""The buffered ingest: events queued by the caller, sent in batches by a background thread
(:class:`IngestBuffer`) or task (:class:`AsyncIngestBuffer`).

- A batch goes when it holds ``batch_size`` events or its first event has waited
  ``flush_interval`` seconds, whichever comes first (or at once on ``flush()``).
- Every event has an id (the client makes one when it has none), so a batch sent twice is
  counted once; each batch also carries an Idempotency-Key, kept across its retries.
- No answer, a ``5xx``, a ``429`` (after at least its ``Retry-After``), a ``401`` or ``403``
  (a key to fix: the events wait for it) → the same batch again after an exponential
  backoff with jitter, for as long as the client is open.
- A ``422`` naming events by index → those events go to ``on_rejected`` and are dropped;
  the rest of the batch is sent again. Any other ``4xx`` rejects the whole batch the same
  way (a ``413`` first splits it in two). Nothing is retried forever for being wrong.
- The queue is bounded (``max_queue`` events). When it is full, ``ingest()`` waits up to
  ``put_timeout`` seconds for room (``on_full="block"``, the default) and then raises
  :class:`~tallyray_client.errors.BufferFull`, or raises at once (``on_full="raise"``).
  Either way the events of that call were not taken.
- With a spool directory, ``ingest()`` returns only once its events are fsynced there, and an
  event leaves the spool once the server acknowledged it (:mod:`tallyray_client.spool`).
  Without one, events still queued when the process dies are lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import httpx

from tallyray_client.backoff import Backoff
from tallyray_client.errors import (
    REQUEST_IN_PROGRESS,
    BufferFull,
    TallyrayError,
    error_from_response,
    retry_after,
)
from tallyray_client.results import Rejected
from tallyray_client.spool import Spool

__all__ = ["AsyncIngestBuffer", "IngestBuffer", "OnFull", "with_ids"]

log = logging.getLogger("tallyray_client")

OnFull = Literal["block", "raise"]
OnRejected = Callable[[Rejected], None]


def with_ids(events: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Copies of ``events``, each with an ``id`` (made here when it has none): the id is what
    makes a retry safe, so it must be fixed before the first attempt."""
    out = []
    for event in events:
        if not isinstance(event, Mapping):
            raise TypeError(f"an event is a mapping, not {type(event).__name__}")
        copy = dict(event)
        if not copy.get("id"):
            copy["id"] = f"evt_{uuid.uuid4().hex}"
        out.append(copy)
    return out


def new_key() -> str:
    return f"trc_{uuid.uuid4().hex}"


def log_rejected(rejected: Rejected) -> None:
    log.warning(
        "tallyray refused event %r, dropped: %s", rejected.event.get("id"), rejected.message
    )


@dataclass(slots=True)
class _Item:
    event: dict[str, Any]
    segment: int | None  # in the spool, or None


@dataclass(frozen=True, slots=True)
class _Verdict:
    """What to do after one attempt at a batch."""

    done: list[_Item]  # acknowledged: ack in the spool
    rejected: list[tuple[_Item, str]]  # refused for good: report, drop
    again: list[list[_Item]]  # send these batches (each under a new key)
    wait: float | None  # retry the same batch (same key) after at least this long


_RETRY = -1.0  # wait: "after the backoff"


def judge(batch: list[_Item], answer: httpx.Response | BaseException) -> _Verdict:
    """The decision table of the buffered ingest (the module's docstring)."""
    if isinstance(answer, BaseException):
        return _Verdict([], [], [], _RETRY)
    status = answer.status_code
    if 200 <= status < 300:
        return _Verdict(batch, [], [], None)
    if status >= 500 or status in (401, 403, 429):
        if status in (401, 403):
            log.error("tallyray refused the ingest key (%s); events wait", status)
        return _Verdict([], [], [], retry_after(answer) or _RETRY)
    error = error_from_response(answer)
    if error.type == REQUEST_IN_PROGRESS:
        return _Verdict([], [], [], _RETRY)
    if status == 413 and len(batch) > 1:
        half = len(batch) // 2
        return _Verdict([], [], [batch[:half], batch[half:]], None)
    named = _named(batch, error)
    if named is None:  # the batch as a whole is wrong
        return _Verdict([], [(item, str(error)) for item in batch], [], None)
    rest = [item for i, item in enumerate(batch) if i not in named]
    return _Verdict([], [(batch[i], named[i]) for i in sorted(named)], [rest] if rest else [], None)


def _named(batch: list[_Item], error: TallyrayError) -> dict[int, str] | None:
    """The events a ``422`` names by index (``"[3]"``), or ``None`` when it names none."""
    if error.status != 422 or not error.details:
        return None
    named: dict[int, str] = {}
    for detail in error.details:
        where = detail.where
        if not (where.startswith("[") and "]" in where):
            return None
        index = where[1 : where.index("]")]
        if not index.isdigit() or int(index) >= len(batch):
            return None
        named[int(index)] = detail.message
    return named


class _Core:
    """What the thread and the task share: the queue, the counts, the spool."""

    def __init__(
        self,
        *,
        batch_size: int,
        flush_interval: float,
        max_queue: int,
        on_full: OnFull,
        put_timeout: float,
        spool: Spool | None,
        on_rejected: OnRejected | None,
        backoff: Backoff,
    ) -> None:
        if not 1 <= batch_size <= 10_000:
            raise ValueError("batch_size must be 1 to 10,000 (the API's most per request)")
        if on_full not in ("block", "raise"):
            raise ValueError("on_full must be 'block' or 'raise'")
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.max_queue = max_queue
        self.on_full = on_full
        self.put_timeout = put_timeout
        self.spool = spool
        self.on_rejected = on_rejected or log_rejected
        self.backoff = backoff
        self.queue: deque[_Item] = deque()
        self.added = 0  # events ever queued
        self.finished = 0  # events acknowledged or rejected
        self.rejected = 0
        self.closing = False
        self.urgent = 0  # flush() callers waiting: send without waiting for a full batch
        if spool is not None:
            for event, segment in spool.recover():
                self.queue.append(_Item(event, segment))
            self.added = len(self.queue)
            if self.added:
                log.info("tallyray spool: %d events to send again", self.added)

    def enqueue(self, events: list[dict[str, Any]]) -> None:
        segment = self.spool.append(events) if self.spool is not None and events else None
        self.queue.extend(_Item(e, segment) for e in events)
        self.added += len(events)

    def take(self) -> list[_Item]:
        n = min(self.batch_size, len(self.queue))
        return [self.queue.popleft() for _ in range(n)]

    def settle(self, verdict: _Verdict) -> None:
        for item, message in verdict.rejected:
            try:
                self.on_rejected(Rejected(item.event, message))
            except Exception:  # the callback is the caller's; the sender must go on
                log.exception("on_rejected raised")
        finished = verdict.done + [item for item, _ in verdict.rejected]
        if self.spool is not None:
            by_segment: dict[int, list[str]] = {}
            for item in finished:
                if item.segment is not None:
                    by_segment.setdefault(item.segment, []).append(str(item.event["id"]))
            for segment, ids in by_segment.items():
                self.spool.ack(segment, ids)
        self.finished += len(finished)
        self.rejected += len(verdict.rejected)

    def room(self, n: int) -> bool:
        return len(self.queue) + n <= self.max_queue or not self.queue

    def full(self, n: int) -> BufferFull:
        return BufferFull(
            f"the ingest buffer holds {len(self.queue)} events (max_queue={self.max_queue}); "
            f"{n} more were not taken"
        )

    def unsent(self) -> int:
        return self.added - self.finished


class IngestBuffer:
    """The buffered ingest of :class:`~tallyray_client.Tallyray`: a daemon thread sends."""

    def __init__(
        self,
        post: Callable[[list[dict[str, Any]], str], httpx.Response],
        **settings: Any,
    ) -> None:
        self._post = post
        self._core = _Core(**settings)
        self._cond = threading.Condition()
        self._abandon = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tallyray-ingest", daemon=True)
        self._thread.start()

    def put(self, events: list[dict[str, Any]]) -> None:
        core = self._core
        with self._cond:
            if core.closing:
                raise RuntimeError("the client is closed")
            if not core.room(len(events)):
                if core.on_full == "raise":
                    raise core.full(len(events))
                deadline = time.monotonic() + core.put_timeout
                while not core.room(len(events)):
                    left = deadline - time.monotonic()
                    if left <= 0 or core.closing:
                        raise core.full(len(events))
                    self._cond.wait(left)
            core.enqueue(events)
            self._cond.notify_all()

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every event queued before this call is acknowledged or rejected."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            target = self._core.added
            self._core.urgent += 1
            self._cond.notify_all()
            try:
                while self._core.finished < target:
                    left = None if deadline is None else deadline - time.monotonic()
                    if left is not None and left <= 0:
                        return False
                    if not self._thread.is_alive():
                        return False
                    self._cond.wait(left)
                return True
            finally:
                self._core.urgent -= 1

    def close(self, timeout: float | None = None) -> bool:
        """Flush for up to ``timeout``, then stop. Answers whether everything was sent;
        what was not stays in the spool, if there is one (else it is lost, and logged)."""
        sent = self.flush(timeout)
        with self._cond:
            self._core.closing = True
            self._cond.notify_all()
        self._abandon.set()
        self._thread.join()
        unsent = self._core.unsent()
        if unsent:
            where = "left in the spool" if self._core.spool is not None else "lost"
            log.warning("tallyray client closed with %d events unsent (%s)", unsent, where)
        if self._core.spool is not None:
            self._core.spool.close()
        return sent

    @property
    def unsent(self) -> int:
        return self._core.unsent()

    def _next_batch(self) -> list[_Item] | None:
        core = self._core
        with self._cond:
            while not core.queue:
                if core.closing:
                    return None
                self._cond.wait()
            first = time.monotonic()
            while len(core.queue) < core.batch_size and not core.closing and not core.urgent:
                left = core.flush_interval - (time.monotonic() - first)
                if left <= 0:
                    break
                self._cond.wait(left)
            batch = core.take()
            self._cond.notify_all()  # room for blocked producers
            return batch

    def _run(self) -> None:
        while not self._abandon.is_set():
            batch = self._next_batch()
            if batch is None:
                return
            self._send([batch])

    def _send(self, batches: list[list[_Item]]) -> None:
        todo = deque(batches)
        while todo:
            batch = todo.popleft()
            key = new_key()
            attempt = 0
            while True:
                try:
                    answer: httpx.Response | BaseException = self._post(
                        [i.event for i in batch], key
                    )
                except httpx.TransportError as error:
                    answer = error
                except Exception as error:  # never let the sender thread die
                    log.exception("tallyray ingest: sending a batch failed")
                    answer = error
                verdict = judge(batch, answer)
                if verdict.wait is None:
                    break
                delay = self._core.backoff.delay(attempt, max(verdict.wait, 0) or None)
                attempt += 1
                if self._abandon.wait(delay):
                    self._requeue([batch, *todo])
                    return
            with self._cond:
                self._core.settle(verdict)
                self._cond.notify_all()
            todo.extendleft(reversed(verdict.again))

    def _requeue(self, batches: list[list[_Item]]) -> None:
        with self._cond:
            for batch in reversed(batches):
                self._core.queue.extendleft(reversed(batch))


class AsyncIngestBuffer:
    """The buffered ingest of :class:`~tallyray_client.AsyncTallyray`: a task sends. Made
    (and its task started) inside the event loop that uses it."""

    def __init__(
        self,
        post: Callable[[list[dict[str, Any]], str], Awaitable[httpx.Response]],
        **settings: Any,
    ) -> None:
        self._post = post
        self._core = _Core(**settings)
        self._cond = asyncio.Condition()
        self._abandon = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="tallyray-ingest")

    async def put(self, events: list[dict[str, Any]]) -> None:
        core = self._core
        async with self._cond:
            if core.closing:
                raise RuntimeError("the client is closed")
            if not core.room(len(events)):
                if core.on_full == "raise":
                    raise core.full(len(events))
                try:
                    await asyncio.wait_for(
                        self._cond.wait_for(lambda: core.room(len(events)) or core.closing),
                        core.put_timeout,
                    )
                except TimeoutError:
                    raise core.full(len(events)) from None
                if core.closing:
                    raise core.full(len(events))
            if core.spool is not None:  # the fsync must not stall the event loop
                segment = await asyncio.to_thread(core.spool.append, events)
                core.queue.extend(_Item(e, segment) for e in events)
                core.added += len(events)
            else:
                core.enqueue(events)
            self._cond.notify_all()

    async def flush(self, timeout: float | None = None) -> bool:
        core = self._core
        async with self._cond:
            target = core.added
            core.urgent += 1
            self._cond.notify_all()
            try:
                await asyncio.wait_for(
                    self._cond.wait_for(lambda: core.finished >= target or self._task.done()),
                    timeout,
                )
            except TimeoutError:
                return False
            finally:
                core.urgent -= 1
            return core.finished >= target

    async def close(self, timeout: float | None = None) -> bool:
        sent = await self.flush(timeout)
        async with self._cond:
            self._core.closing = True
            self._cond.notify_all()
        self._abandon.set()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        unsent = self._core.unsent()
        if unsent:
            where = "left in the spool" if self._core.spool is not None else "lost"
            log.warning("tallyray client closed with %d events unsent (%s)", unsent, where)
        if self._core.spool is not None:
            self._core.spool.close()
        return sent

    @property
    def unsent(self) -> int:
        return self._core.unsent()

    async def _next_batch(self) -> list[_Item] | None:
        core = self._core
        async with self._cond:
            await self._cond.wait_for(lambda: bool(core.queue) or core.closing)
            if not core.queue:
                return None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self._cond.wait_for(
                        lambda: len(core.queue) >= core.batch_size or core.closing or core.urgent
                    ),
                    core.flush_interval,
                )
            batch = core.take()
            self._cond.notify_all()
            return batch

    async def _run(self) -> None:
        while not self._abandon.is_set():
            batch = await self._next_batch()
            if batch is None:
                return
            await self._send([batch])

    async def _send(self, batches: list[list[_Item]]) -> None:
        todo = deque(batches)
        while todo:
            batch = todo.popleft()
            key = new_key()
            attempt = 0
            while True:
                try:
                    answer: httpx.Response | BaseException = await self._post(
                        [i.event for i in batch], key
                    )
                except httpx.TransportError as error:
                    answer = error
                except Exception as error:  # never let the sender task die
                    log.exception("tallyray ingest: sending a batch failed")
                    answer = error
                verdict = judge(batch, answer)
                if verdict.wait is None:
                    break
                delay = self._core.backoff.delay(attempt, max(verdict.wait, 0) or None)
                attempt += 1
                try:
                    await asyncio.wait_for(self._abandon.wait(), delay)
                except TimeoutError:
                    continue
                async with self._cond:
                    for b in reversed([batch, *todo]):
                        self._core.queue.extendleft(reversed(b))
                return
            async with self._cond:
                self._core.settle(verdict)
                self._cond.notify_all()
            todo.extendleft(reversed(verdict.again))
