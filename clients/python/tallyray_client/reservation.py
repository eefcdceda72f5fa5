"""A reservation in hand: the hold, the actual usage recorded on it, and its end.

As a context manager the block runs only when the reservation was allowed (else
:class:`~tallyray_client.errors.Denied` is raised on entering), and on leaving:

- without an exception → settled with the events recorded in the block
  (:meth:`Reservation.record`). Should the settlement get no answer after its retries, the
  events go through the buffered ingest instead (same event ids: counted once, whether or
  not the settlement went through) and the hold expires at its TTL;
- with an exception → released (and the exception goes on).

A degraded reservation (allowed by the ``on_unreachable`` policy, nothing held) sends its
recorded events through the buffered ingest, so the usage is still billed.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from decimal import Decimal
from types import TracebackType
from typing import TYPE_CHECKING, Any

from tallyray_client.buffer import with_ids
from tallyray_client.errors import Denied, TallyrayError
from tallyray_client.results import Hold, Release, Settlement

if TYPE_CHECKING:
    from tallyray_client.aio import AsyncTallyray
    from tallyray_client.client import Tallyray

__all__ = ["AsyncReservation", "Reservation"]

log = logging.getLogger("tallyray_client")


class _Recorded:
    def __init__(self, hold: Hold) -> None:
        self.hold = hold
        self.events: list[dict[str, Any]] = []
        self.outcome: Settlement | Release | None = None
        self._ended = False

    @property
    def id(self) -> str | None:
        return self.hold.id

    @property
    def allowed(self) -> bool:
        return self.hold.allowed

    @property
    def amount(self) -> Decimal:
        return self.hold.amount

    @property
    def degraded(self) -> bool:
        return self.hold.degraded

    def record(
        self,
        event: Mapping[str, Any] | None = None,
        *,
        type: str | None = None,  # noqa: A002 — the event's field
        properties: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Note an actual usage event, to settle with: ``record({"type": …, "properties":
        …})`` or ``record(type=…, properties=…)``. Its customer is the reservation's and its
        id is fixed now, so every retry of the settlement sends the same event."""
        if event is None:
            if type is None:
                raise TypeError("record() needs an event or a type")
            event = {"type": type, "properties": dict(properties or {})}
        (stamped,) = with_ids([{"customer_id": self.hold.customer_id, **event}])
        self.events.append(stamped)
        return stamped

    def _events(self, events: Sequence[Mapping[str, Any]] | None) -> list[dict[str, Any]]:
        if events is None:
            return list(self.events)
        return with_ids({"customer_id": self.hold.customer_id, **e} for e in events)

    def _start(self) -> None:
        if self._ended:
            raise RuntimeError(f"reservation {self.id} is settled or released already")
        self._ended = True


class Reservation(_Recorded):
    """A reservation of :class:`~tallyray_client.Tallyray`."""

    def __init__(self, client: Tallyray, hold: Hold) -> None:
        super().__init__(hold)
        self._client = client

    def settle(self, events: Sequence[Mapping[str, Any]] | None = None) -> Settlement | None:
        """Settle with ``events`` (default: those recorded). ``None`` for a reservation that
        holds nothing (degraded: its events go to the buffered ingest)."""
        self._start()
        actual = self._events(events)
        if self.hold.id is None:
            if actual:
                self._client.ingest(actual)
            return None
        settlement = self._client.settle(self.hold.id, actual)
        self.outcome = settlement
        return settlement

    def release(self) -> Release | None:
        self._start()
        if self.hold.id is None:
            return None
        release = self._client.release(self.hold.id)
        self.outcome = release
        return release

    def __enter__(self) -> Reservation:
        if not self.hold.allowed:
            raise Denied(self.hold)
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._ended:  # settled or released inside the block
            return
        if error is None:
            try:
                self.settle()
            except TallyrayError as failure:
                log.warning("settling %s failed (%s); events go to the ingest", self.id, failure)
                if self.events:
                    self._client.ingest(self.events)
                if not _retry_is_futile(failure):
                    return
                raise
            return
        try:
            self.release()
        except TallyrayError as failure:  # the caller's exception matters more
            log.warning("releasing %s failed (%s); it expires at its TTL", self.id, failure)


class AsyncReservation(_Recorded):
    """A reservation of :class:`~tallyray_client.AsyncTallyray`."""

    def __init__(self, client: AsyncTallyray, hold: Hold) -> None:
        super().__init__(hold)
        self._client = client

    async def settle(self, events: Sequence[Mapping[str, Any]] | None = None) -> Settlement | None:
        self._start()
        actual = self._events(events)
        if self.hold.id is None:
            if actual:
                await self._client.ingest(actual)
            return None
        settlement = await self._client.settle(self.hold.id, actual)
        self.outcome = settlement
        return settlement

    async def release(self) -> Release | None:
        self._start()
        if self.hold.id is None:
            return None
        release = await self._client.release(self.hold.id)
        self.outcome = release
        return release

    async def __aenter__(self) -> AsyncReservation:
        if not self.hold.allowed:
            raise Denied(self.hold)
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._ended:
            return
        if error is None:
            try:
                await self.settle()
            except TallyrayError as failure:
                log.warning("settling %s failed (%s); events go to the ingest", self.id, failure)
                if self.events:
                    await self._client.ingest(self.events)
                if not _retry_is_futile(failure):
                    return
                raise
            return
        try:
            await self.release()
        except TallyrayError as failure:
            log.warning("releasing %s failed (%s); it expires at its TTL", self.id, failure)


def _retry_is_futile(failure: TallyrayError) -> bool:
    """A settlement refused for what it is (a 4xx other than 429: bad events, an unknown
    hold) is raised; one that got no answer was handed to the ingest and is not."""
    return failure.status is not None and 400 <= failure.status < 500 and failure.status != 429
