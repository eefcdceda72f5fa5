"""The synchronous client, :class:`Tallyray`."""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

from tallyray_client import calls
from tallyray_client.backoff import Backoff, retryable, wait_hint
from tallyray_client.buffer import IngestBuffer, OnFull, OnRejected, with_ids
from tallyray_client.calls import Call, Options
from tallyray_client.errors import TallyrayError, Unavailable, Unreachable, error_from_response
from tallyray_client.policy import OnUnreachable, check_policy, degraded_check, degraded_hold
from tallyray_client.reservation import Reservation
from tallyray_client.results import Balance, Hold, QuotaCheck, Release, Settlement
from tallyray_client.spool import Spool

__all__ = ["Tallyray"]

Event = Mapping[str, Any]


class Tallyray:
    """A gateway's client of the Tallyray API.

    ``base_url`` and ``api_key`` default to ``TALLYRAY_URL`` and ``TALLYRAY_API_KEY``. A
    gateway's key needs the ``ingest`` scope; :meth:`balance` needs ``read`` too.

    Checks and reservations are retried ``retries`` times (they sit on the request path:
    keep it short), settlements and releases ``settle_retries`` times, each with the same
    Idempotency-Key. When Tallyray cannot be reached, checks and reservations answer the
    ``on_unreachable`` policy (:mod:`tallyray_client.policy`). The buffered ingest's
    settings are those of :mod:`tallyray_client.buffer`; its thread starts with the first
    :meth:`ingest`, or at once when ``spool_dir`` holds events of an earlier run.
    """

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float = 5.0,
        retries: int = 2,
        settle_retries: int = 8,
        backoff: Backoff | None = None,
        on_unreachable: OnUnreachable = "deny",
        batch_size: int = 500,
        flush_interval: float = 1.0,
        max_queue: int = 100_000,
        on_full: OnFull = "block",
        put_timeout: float = 10.0,
        spool_dir: str | Path | None = None,
        on_rejected: OnRejected | None = None,
        ingest_backoff: Backoff | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        options = Options.resolve(base_url, api_key)
        self.on_unreachable = check_policy(on_unreachable)
        self.retries = retries
        self.settle_retries = settle_retries
        self.backoff = backoff or Backoff(base=0.1, cap=5.0)
        self._http = httpx.Client(
            base_url=options.base_url,
            headers=options.headers(),
            timeout=timeout,
            transport=transport,
        )
        self._buffer_settings: dict[str, Any] = {
            "batch_size": batch_size,
            "flush_interval": flush_interval,
            "max_queue": max_queue,
            "on_full": on_full,
            "put_timeout": put_timeout,
            "on_rejected": on_rejected,
            "backoff": ingest_backoff or Backoff(base=0.5, cap=30.0),
        }
        self._spool_dir = spool_dir
        self._buffer: IngestBuffer | None = None
        if spool_dir is not None and any(Path(spool_dir).glob("*.jsonl")):
            self._start_buffer()  # send what an earlier run left

    # -- the request path ----------------------------------------------------------------

    def _send(self, call: Call) -> httpx.Response:
        attempt = 0
        while True:
            try:
                response = self._http.request(
                    call.method, call.path, json=call.body, headers=call.headers
                )
                if response.is_success:
                    return response
                error: TallyrayError = error_from_response(response)
            except httpx.TransportError as failure:
                error = calls.unreachable(call, failure)
            if attempt >= call.retries or not retryable(error):
                raise error
            time.sleep(self.backoff.delay(attempt, wait_hint(error)))
            attempt += 1

    def check(self, customer_id: str, event: Event | Sequence[Event]) -> QuotaCheck:
        """May ``customer_id`` spend what ``event`` (``{"type", "properties"}``, or a list of
        them) would cost? Stores nothing."""
        try:
            body, _, rid = calls.read(self._send(calls.check(customer_id, event, self.retries)))
        except (Unreachable, Unavailable):
            return degraded_check(self.on_unreachable, customer_id)
        return QuotaCheck.from_json(body, rid)

    def reserve(
        self,
        customer_id: str,
        event: Event | Sequence[Event],
        ttl_seconds: float | None = None,
    ) -> Reservation:
        """Hold the estimated cost of ``event`` until settled, released or expired (the
        server's default TTL is 300 s). Use it as ``with client.reserve(...) as hold:``."""
        call = calls.reserve(customer_id, event, ttl_seconds, self.retries)
        try:
            body, _, rid = calls.read(self._send(call))
        except (Unreachable, Unavailable):
            return Reservation(self, degraded_hold(self.on_unreachable, customer_id))
        return Reservation(self, Hold.from_json(body, customer_id, rid))

    def settle(self, hold: str | Hold, events: Iterable[Event] = ()) -> Settlement:
        """Ingest the actual ``events`` of a reservation and free its hold, in one commit.
        Retried with the same Idempotency-Key: one settlement, however many tries."""
        hold_id = hold.id if isinstance(hold, Hold) else hold
        if hold_id is None:
            raise ValueError("this reservation holds nothing to settle")
        call = calls.settle(hold_id, list(events), self.settle_retries)
        body, replayed, rid = calls.read(self._send(call))
        return Settlement.from_json(body, replayed, rid)

    def release(self, hold: str | Hold) -> Release:
        """Free a hold without ingesting anything; retried like :meth:`settle`."""
        hold_id = hold.id if isinstance(hold, Hold) else hold
        if hold_id is None:
            raise ValueError("this reservation holds nothing to release")
        body, replayed, rid = calls.read(self._send(calls.release(hold_id, self.settle_retries)))
        return Release.from_json(body, replayed, rid)

    def balance(self, customer_id: str) -> Balance:
        """The customer's live balance (the key needs the ``read`` scope)."""
        body, _, _ = calls.read(self._send(calls.balance(customer_id, self.retries)))
        return Balance.from_json(body)

    # -- the buffered ingest -------------------------------------------------------------

    def _start_buffer(self) -> IngestBuffer:
        if self._buffer is None:
            spool = Spool(self._spool_dir) if self._spool_dir is not None else None
            self._buffer = IngestBuffer(self._post_events, spool=spool, **self._buffer_settings)
        return self._buffer

    def _post_events(self, events: list[dict[str, Any]], key: str) -> httpx.Response:
        return self._http.post(
            "/v1/events",
            json=events,
            headers={"Idempotency-Key": key, "X-Request-Id": key},
        )

    def ingest(self, events: Iterable[Event]) -> list[str]:
        """Queue usage events to be sent in batches; answers their ids (made here for events
        without one). With a spool, the events are on disk when this returns. Raises
        :class:`~tallyray_client.errors.BufferFull` when the queue stays full."""
        stamped = with_ids(events)
        if stamped:
            self._start_buffer().put(stamped)
        return [str(e["id"]) for e in stamped]

    def flush(self, timeout: float | None = None) -> bool:
        """Send everything queued so far; ``True`` once it is all acknowledged (or refused
        for good and reported), ``False`` if ``timeout`` ran out first."""
        return True if self._buffer is None else self._buffer.flush(timeout)

    @property
    def unsent(self) -> int:
        """Events queued and not yet acknowledged."""
        return 0 if self._buffer is None else self._buffer.unsent

    def close(self, timeout: float | None = 10.0) -> bool:
        """Flush for up to ``timeout`` seconds, stop the sender, close the connections.
        Answers whether everything was sent; what was not stays in the spool."""
        sent = True if self._buffer is None else self._buffer.close(timeout)
        self._http.close()
        return sent

    def __enter__(self) -> Tallyray:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
