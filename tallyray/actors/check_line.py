"""The check line: quota checks from the ingress to a shard over a plain socket.

A Ray actor call costs both sides far more CPU than answering a quota check does (on the
shard, ~3 % of the samples were our code; the rest was Ray's worker), so checks — reads, safe
to repeat — take a shorter way. Each shard listens on a loopback port of its own node; an
ingress replica on the same node asks the shard for ``(node, host, port, token)`` once, over
Ray, and from then on writes batches of checks to the socket and reads the answers back.

The server runs on the shard actor's own event loop, between its other requests, exactly
like a Ray call to ``check_many`` would: a check still sees the account as the group commit
left it. Anything unusual — another node, a refused connection, a closed socket (the shard
restarted) — and the ingress uses the Ray call instead, which knows how to wait for a
restarting shard.

Frames are a 4-byte big-endian length and a payload. The first frame a client sends is the
token, compared in constant time; only then are payloads (pickles, which carry Decimals,
answers and Tallyray's errors as they are) read from it.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import pickle
import secrets
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["CheckLine", "CheckLineServer", "Endpoint", "LineDown"]

log = logging.getLogger("tallyray.check_line")

_LENGTH = struct.Struct(">I")
MAX_FRAME = 64 * 1024 * 1024
HOST = "127.0.0.1"

Checks = Sequence[tuple[str, str, list[Any]]]
"""(env, customer_id, events) per check."""


@dataclass(frozen=True, slots=True)
class Endpoint:
    node: str
    """The Ray node the shard runs on: only a replica on the same node may use the line."""
    host: str
    port: int
    token: bytes


class LineDown(ConnectionError):
    """The line broke (or never opened): send these checks the other way."""


def _frame(payload: bytes) -> bytes:
    return _LENGTH.pack(len(payload)) + payload


async def _read_frame(reader: asyncio.StreamReader) -> bytes:
    (length,) = _LENGTH.unpack(await reader.readexactly(_LENGTH.size))
    if length > MAX_FRAME:
        raise ValueError(f"a frame of {length} bytes is over the limit")
    return await reader.readexactly(length)


class CheckLineServer:
    """The shard's end: answers each batch with ``answer(checks)``."""

    def __init__(self, node: str, answer: Callable[[Checks], list[Any]]) -> None:
        self.node = node
        self._answer = answer
        self._token = secrets.token_bytes(32)
        self._server: asyncio.Server | None = None

    async def endpoint(self) -> Endpoint:
        """Start listening (once) and say where."""
        if self._server is None:
            self._server = await asyncio.start_server(self._serve, HOST, 0)
        port = self._server.sockets[0].getsockname()[1]
        return Endpoint(self.node, HOST, port, self._token)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            if not hmac.compare_digest(await _read_frame(reader), self._token):
                log.warning("check line: a connection with a wrong token was refused")
                return
            while True:
                request_id, checks = pickle.loads(await _read_frame(reader))
                answers = self._answer(checks)
                writer.write(_frame(pickle.dumps((request_id, answers), protocol=5)))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the ingress went away
        except Exception as error:  # noqa: BLE001 — a broken line must not take the shard down
            log.error("check line: %s", error)
        finally:
            writer.close()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None


class CheckLine:
    """The ingress's end of one shard's line: many batches in flight, answered in order."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self._waiting: dict[int, asyncio.Future[list[Any]]] = {}
        self._next = 0
        self._down: BaseException | None = None
        self._listener = asyncio.get_running_loop().create_task(self._listen())

    @classmethod
    async def open(cls, endpoint: Endpoint, timeout: float = 1.0) -> CheckLine:
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(endpoint.host, endpoint.port), timeout
            )
        except (TimeoutError, OSError) as error:
            raise LineDown(f"cannot reach the shard's check line: {error}") from None
        writer.write(_frame(endpoint.token))
        return cls(reader, writer)

    @property
    def up(self) -> bool:
        return self._down is None

    async def check_many(self, checks: Checks) -> list[Any]:
        """The answers (or errors) of ``checks``, in order; :class:`LineDown` if the line
        broke before they came back."""
        if self._down is not None:
            raise LineDown(str(self._down))
        request_id, self._next = self._next, self._next + 1
        future: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        self._waiting[request_id] = future
        try:
            self._writer.write(_frame(pickle.dumps((request_id, list(checks)), protocol=5)))
        except (OSError, RuntimeError) as error:
            self._fail(error)
        return await future

    async def _listen(self) -> None:
        try:
            while True:
                request_id, answers = pickle.loads(await _read_frame(self._reader))
                future = self._waiting.pop(request_id, None)
                if future is not None and not future.done():
                    future.set_result(answers)
        except asyncio.CancelledError:
            self._fail(ConnectionError("the check line was closed"))
            raise
        except Exception as error:  # noqa: BLE001 — EOF, reset, garbage: all mean "down"
            self._fail(error)

    def _fail(self, error: BaseException) -> None:
        if self._down is None:
            self._down = error
        for future in self._waiting.values():
            if not future.done():
                future.set_exception(LineDown(f"the check line broke: {error}"))
        self._waiting.clear()
        self._writer.close()

    def close(self) -> None:
        self._listener.cancel()
        self._fail(ConnectionError("the check line was closed"))
