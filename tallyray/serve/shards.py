"""How the ingress talks to the shard actors: one call per shard per request.

Ray's failures are translated at this one boundary: a shard that is dead or restarting is
:class:`StoreUnavailable` (503, retry), and a Tallyray error raised inside a shard comes out as
itself, problems and all.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable
from typing import Any, Literal

import ray
from ray.exceptions import ActorUnavailableError, RayActorError, RayTaskError

from tallyray.actors.routing import shard_of
from tallyray.actors.shard_line import LineDown, LineOptions, ShardLine
from tallyray.errors import NotOwner, Resharding, StoreUnavailable, TallyrayError

__all__ = ["NAMESPACE", "ShardRouter", "shard_name"]

log = logging.getLogger("tallyray.api")

#: Shard methods that may safely run twice.
RETRY_SAFE = frozenset(
    {
        "ready",
        "balance",
        "check",
        "check_many",
        "line_endpoint",
        "status",
        "checkpoint",
        "refresh",
        "ingest",
        "admit",
        "close_periods",
    }
)

NAMESPACE = "tallyray"

#: Calls of quota checks in flight to one shard at a time (see :meth:`ShardRouter.check`):
#: one, so that checks arriving while a call is out go together in the next (a call costs
#: both ends more than a check in it does; docs/benchmarks.md, issue 12).
CHECK_SENDERS = 1

#: After a shard line could not be opened, wait this long before trying again.
LINE_RETRY_SECONDS = 1.0

#: A shard on another node has no line for us; ask again this often (it may move).
OTHER_NODE_SECONDS = 60.0

Way = Literal["line-local", "line-remote", "ray"]
"""How a hot call went: over the line of a shard on this node, of one on another node, or
as a Ray call."""

#: Calls that go over a shard's line when there is one (see :mod:`tallyray.actors.shard_line`).
LINE_METHODS = frozenset({"check_many", "ingest", "admit"})


def shard_name(index: int) -> str:
    return f"shard-{index}"


def _lookup(index: int) -> Any:
    return ray.get_actor(shard_name(index), namespace=NAMESPACE)


def _this_node() -> str:
    return str(ray.get_runtime_context().get_node_id())


class ShardRouter:
    def __init__(
        self,
        count: int,
        lookup: Callable[[int], Any] = _lookup,
        node: Callable[[], str] = _this_node,
        lines: bool = True,
        line_options: LineOptions | None = None,
        layout: Callable[[], tuple[int, int]] | None = None,
    ) -> None:
        self.count = count
        self._layout = layout
        """Reads the stored (shard count, epoch): after a reshard the router learns the new
        count from it (:meth:`relayout`)."""
        self.epoch = 0
        """How many reshards the stored layout had seen when last read (0: none)."""
        self._lookup = lookup
        self._node = node
        self._handles: dict[int, Any] = {}
        self._checks: dict[int, list[tuple[str, str, list[Any], asyncio.Future[Any]]]] = {}
        self._sending: dict[int, int] = {}
        self.lines = lines
        """Make the hot calls over each shard's line when it is on this node."""
        self._lines: dict[int, ShardLine] = {}
        self._line_next_try: dict[int, float] = {}
        """After a failed try to open a shard's line, when to try again (monotonic)."""
        self.line_options = line_options or LineOptions()
        """Whether lines to shards on other nodes are used, and their TLS."""
        self._line_locks: dict[int, tuple[asyncio.AbstractEventLoop, asyncio.Lock]] = {}
        self._line_ways: dict[int, Way] = {}
        self.calls: Counter[str] = Counter()
        """Hot calls (:data:`LINE_METHODS`) answered, by way (``tallyray_shard_calls_total``)."""

    @property
    def line_calls(self) -> int:
        """Calls answered over a shard line (the rest went over Ray)."""
        return self.calls["line-local"] + self.calls["line-remote"]

    def index(self, env: str, customer_id: str) -> int:
        return shard_of(env, customer_id, self.count)

    def handle(self, index: int) -> Any:
        found = self._handles.get(index)
        if found is None:
            try:
                found = self._handles[index] = self._lookup(index)
            except ValueError:  # no such actor: the shard set is being changed
                self.relayout()
                raise StoreUnavailable(
                    f"shard {index} is not running (the shard count may be changing); retry shortly"
                ) from None
        return found

    def relayout(self) -> None:
        """Read the shard count afresh (a reshard happened) and forget every shard handle,
        and every line once the layout has changed: the shards behind the names are new.
        While it has not (a reshard starting, a shard not found for a moment), the lines
        stay: closing one with a call in flight would make that call's answer a guess."""
        if self._layout is not None:
            before = (self.count, self.epoch)
            self.count, self.epoch = self._layout()
            if (self.count, self.epoch) == before:
                self._handles.clear()
                return
        self._handles.clear()
        for line in self._lines.values():
            line.close()
        self._lines.clear()
        self._line_next_try.clear()

    async def call(self, index: int, method: str, *args: Any, idempotent: bool = False) -> Any:
        try:
            return await self._call(index, method, *args, idempotent=idempotent)
        except NotOwner:
            self.relayout()
            raise

    async def _call(self, index: int, method: str, *args: Any, idempotent: bool = False) -> Any:
        if method not in LINE_METHODS:
            return await self._ray_call(index, method, *args, idempotent=idempotent)
        sent = False
        if self.lines:
            line = await self._line(index)
            if line is not None:
                try:
                    answer = await line.call(method, *args)
                    self.calls[self._line_ways[index]] += 1
                    return answer
                except LineDown as error:
                    log.info("shard %d line down, calling over Ray: %s", index, error)
                    self._lines.pop(index, None)
                    sent = True
        try:
            answer = await self._ray_call(index, method, *args, idempotent=idempotent)
        except Resharding:
            if not sent:
                raise
            # the call that went over the line may have been applied before the shard began
            # to drain: "nothing was stored" would not be known to be true
            raise StoreUnavailable(
                "the shard count is being changed, and the connection to the shard broke "
                "with this request sent: it may have been stored. Retry with the same event "
                "ids: what was stored counts once."
            ) from None
        self.calls["ray"] += 1
        return answer

    async def _ray_call(self, index: int, method: str, *args: Any, idempotent: bool = False) -> Any:
        # A call that meets a shard Ray has just restarted fails with "may or may not have
        # been executed". Methods that are safe to repeat (reads, and ingest: the event log
        # deduplicates), and calls the caller knows to be (``idempotent``: a grant with an
        # idempotency key), are tried again a few times; anything else becomes a 503.
        attempts = 4 if idempotent or method in RETRY_SAFE else 1
        for attempt in range(attempts):
            try:
                return await getattr(self.handle(index), method).remote(*args)
            except RayTaskError as error:
                cause = error.cause
                if isinstance(cause, TallyrayError):
                    raise cause from None
                raise
            except RayActorError as error:
                log.warning("shard %d unavailable (%s): %s", index, type(error).__name__, error)
                self._handles.pop(index, None)  # look it up afresh next time
                if not isinstance(error, ActorUnavailableError) and self._layout is not None:
                    self.relayout()  # the actor is gone for good: a reshard may have run
                if attempt + 1 < attempts and isinstance(error, ActorUnavailableError):
                    await asyncio.sleep(0.05 * (attempt + 1))
                    continue
                raise StoreUnavailable(
                    f"shard {index} is restarting; nothing from this request was acknowledged "
                    "by it; retry shortly"
                ) from None
        raise AssertionError("unreachable")

    async def check(self, index: int, env: str, customer_id: str, events: list[Any]) -> Any:
        """A quota check, sent with the others waiting for the same shard.

        Like the shard's group commit: while a call to the shard is in flight, new checks
        wait, then go together in one call. At low load a check goes alone at once (in the
        event loop's next turn, with whatever else arrived in this one); under load the
        calls carry more checks each, so the cost of the hop per check falls instead of
        queueing up. Over an open line a batch is written, and its answers handed out, by
        plain callbacks (:meth:`ShardLine.send`): no task per call.
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        waiting = self._checks.get(index)
        if waiting is None:
            waiting = self._checks[index] = []
        waiting.append((env, customer_id, events, future))
        if self._sending.get(index, 0) < CHECK_SENDERS:
            self._sending[index] = self._sending.get(index, 0) + 1
            loop.call_soon(self._send_checks, index)
        return await future

    def _send_checks(self, index: int) -> None:
        """Send what waits for shard ``index`` (this sender's turn), or retire the sender."""
        batch = self._checks.pop(index, None)
        if not batch:
            self._sending[index] -= 1
            return
        line = self._lines.get(index) if self.lines else None
        if line is None or not line.up:
            # No line open now: the awaiting way (opens one, or calls over Ray).
            asyncio.get_running_loop().create_task(self._send_checks_slowly(index, batch))
            return
        way = self._line_ways[index]

        def answered(ok: bool, value: Any) -> None:
            if not ok and isinstance(value, LineDown):
                log.info("shard %d line down, calling over Ray: %s", index, value)
                if self._lines.get(index) is line:
                    self._lines.pop(index, None)
                asyncio.get_running_loop().create_task(self._send_checks_slowly(index, batch))
                return
            try:
                if ok:
                    self.calls[way] += 1
                elif isinstance(value, NotOwner):
                    self.relayout()
                self._answer_checks(batch, ok, value)
            except Exception as error:  # noqa: BLE001 — the sender must go on
                log.exception("shard %d: answering checks failed: %s", index, error)
                self._answer_checks(batch, False, error)
            self._send_checks(index)

        line.send("check_many", ([(e, c, ev) for e, c, ev, _ in batch],), answered)

    async def _send_checks_slowly(
        self, index: int, batch: list[tuple[str, str, list[Any], asyncio.Future[Any]]]
    ) -> None:
        try:
            answers = await self.call(index, "check_many", [(e, c, ev) for e, c, ev, _ in batch])
        except Exception as error:  # noqa: BLE001 — every waiter hears about it
            self._answer_checks(batch, False, error)
        else:
            self._answer_checks(batch, True, answers)
        self._send_checks(index)

    def _answer_checks(
        self, batch: list[tuple[str, str, list[Any], asyncio.Future[Any]]], ok: bool, value: Any
    ) -> None:
        """Hand each waiting check its answer (``ok``: ``value`` is the list of answers, one
        per check, each an answer or that check's error), or every one the error ``value``."""
        if not ok:
            for *_, future in batch:
                if not future.done():
                    future.set_exception(value)
            return
        if any(isinstance(answer, NotOwner) for answer in value):
            self.relayout()
        for (*_, future), answer in zip(batch, value, strict=True):
            if future.done():
                continue
            if isinstance(answer, BaseException):
                future.set_exception(answer)
            else:
                future.set_result(answer)

    async def _line(self, index: int) -> ShardLine | None:
        line = self._lines.get(index)
        if line is not None and line.up:
            return line
        loop = asyncio.get_running_loop()
        found = self._line_locks.get(index)
        if found is None or found[0] is not loop:  # a lock belongs to one event loop
            found = self._line_locks[index] = (loop, asyncio.Lock())
        async with found[1]:
            line = self._lines.get(index)
            if line is not None and line.up:
                return line
            if time.monotonic() < self._line_next_try.get(index, 0.0):
                return None
            try:
                endpoint = await self._ray_call(index, "line_endpoint")
                local = endpoint.node == self._node()
                if not local and not (self.line_options.remote and endpoint.port):
                    # no line between our nodes: ask again later (the shard may move)
                    self._line_next_try[index] = time.monotonic() + OTHER_NODE_SECONDS
                    return None
                line = await ShardLine.open(endpoint, local=local, tls=self.line_options.tls)
                self._lines[index] = line
                self._line_ways[index] = "line-local" if local else "line-remote"
            except Exception as error:  # noqa: BLE001 — no line is no loss: calls go over Ray
                log.info("shard %d has no line now: %s", index, error)
                self._line_next_try[index] = time.monotonic() + LINE_RETRY_SECONDS
                return None
            return line

    async def call_all(self, method: str, *args: Any) -> list[Any]:
        return list(await asyncio.gather(*(self.call(i, method, *args) for i in range(self.count))))
