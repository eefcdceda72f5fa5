"""The shard line: the ingress's hot calls to a shard over a plain socket instead of Ray.

A Ray actor call costs both sides far more CPU than answering a quota check does (on the
shard, ~3 % of the samples were our code; the rest was Ray's worker), so the hot calls —
quota checks and ingest, both safe to repeat — take a shorter way. Each shard listens on a
Unix socket of its own node (in a directory only its user may enter; loopback TCP where
there are no Unix sockets); an ingress replica on the same node asks the shard for
``(node, path or host and port, token)`` once, over Ray, and from then on writes calls to
the socket and reads the replies back.

The server runs on the shard actor's own event loop, where a Ray call to the same method
would run: a quota check is answered inline, between other requests, and sees the account as
the last group commit left it; an ingest is a task that answers once its group commit is
durable, exactly like the actor method. Anything unusual — another node, a refused
connection, a closed socket (the shard restarted) — and the ingress makes the Ray call
instead, which knows how to wait for a restarting shard. Repeating a call whose reply was
lost is safe: checks are reads, and the event log counts each event id once.

Frames are a 4-byte big-endian length and a payload. The first frame a client sends is the
token, compared in constant time; only then are payloads (pickles, which carry Decimals,
answers and Tallyray's errors as they are) read from it.
"""

from __future__ import annotations

import asyncio
import hmac
import inspect
import logging
import os
import pickle
import secrets
import shutil
import socket
import struct
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["Endpoint", "LineDown", "ShardLine", "ShardLineServer"]

log = logging.getLogger("tallyray.shard_line")

_LENGTH = struct.Struct(">I")
MAX_FRAME = 64 * 1024 * 1024
HOST = "127.0.0.1"


@dataclass(frozen=True, slots=True)
class Endpoint:
    node: str
    """The Ray node the shard runs on: only a replica on the same node may use the line."""
    host: str
    port: int
    token: bytes
    path: str | None = None
    """A Unix socket to use instead of ``host:port``: on one machine it costs both ends far
    less per call than loopback TCP (no TCP/IP stack), and only this user can reach it."""


class LineDown(ConnectionError):
    """The line broke (or never opened): make this call the other way."""


def _frame(payload: bytes) -> bytes:
    return _LENGTH.pack(len(payload)) + payload


async def _read_frame(reader: asyncio.StreamReader) -> bytes:
    (length,) = _LENGTH.unpack(await reader.readexactly(_LENGTH.size))
    if length > MAX_FRAME:
        raise ValueError(f"a frame of {length} bytes is over the limit")
    return await reader.readexactly(length)


def _reply(request_id: int, ok: bool, value: Any) -> bytes:
    try:
        payload = pickle.dumps((request_id, ok, value), protocol=5)
    except Exception as error:  # noqa: BLE001 — an error that does not pickle still answers
        payload = pickle.dumps((request_id, False, RuntimeError(f"{value!r} ({error})")))
    return _frame(payload)


class ShardLineServer:
    """The shard's end: serves ``methods`` (plain functions answer inline, coroutine functions
    run as tasks and answer when done)."""

    def __init__(
        self, node: str, methods: Mapping[str, Callable[..., Any]], unix: bool = True
    ) -> None:
        self.node = node
        self.unix = unix
        """Listen on a Unix socket (else on loopback TCP)."""
        self._dir: str | None = None
        self._path: str | None = None
        self._methods = dict(methods)
        self._token = secrets.token_bytes(32)
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def endpoint(self) -> Endpoint:
        """Start listening (once) and say where: a Unix socket in a directory of its own that
        only this user may enter, or loopback TCP where there are no Unix sockets."""
        if self._server is None:
            if self.unix and hasattr(socket, "AF_UNIX"):
                self._dir = tempfile.mkdtemp(prefix="tallyray-line-")  # mode 0700
                self._path = os.path.join(self._dir, "line.sock")
                self._server = await asyncio.start_unix_server(self._serve, self._path)
            else:
                self._server = await asyncio.start_server(self._serve, HOST, 0)
        if self._path is not None:
            return Endpoint(self.node, HOST, 0, self._token, self._path)
        port = self._server.sockets[0].getsockname()[1]
        return Endpoint(self.node, HOST, port, self._token)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            if not hmac.compare_digest(await _read_frame(reader), self._token):
                log.warning("shard line: a connection with a wrong token was refused")
                return
            while True:
                request_id, method, args = pickle.loads(await _read_frame(reader))
                function = self._methods.get(method)
                if function is None:
                    writer.write(_reply(request_id, False, LookupError(f"no method {method!r}")))
                elif inspect.iscoroutinefunction(function):
                    task = asyncio.get_running_loop().create_task(
                        self._answer_later(writer, request_id, function(*args))
                    )
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)
                else:
                    try:
                        writer.write(_reply(request_id, True, function(*args)))
                    except Exception as error:  # noqa: BLE001 — the caller gets its error
                        writer.write(_reply(request_id, False, error))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the ingress went away
        except Exception as error:  # noqa: BLE001 — a broken line must not take the shard down
            log.error("shard line: %s", error)
        finally:
            writer.close()

    @staticmethod
    async def _answer_later(writer: asyncio.StreamWriter, request_id: int, call: Any) -> None:
        try:
            reply = _reply(request_id, True, await call)
        except Exception as error:  # noqa: BLE001 — the caller gets its error
            reply = _reply(request_id, False, error)
        if not writer.is_closing():
            writer.write(reply)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = self._path = None


class ShardLine:
    """The ingress's end of one shard's line: many calls in flight, each answered by id."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self._waiting: dict[int, asyncio.Future[Any]] = {}
        self._next = 0
        self._down: BaseException | None = None
        self._loop = asyncio.get_running_loop()
        self._listener = self._loop.create_task(self._listen())

    @classmethod
    async def open(cls, endpoint: Endpoint, timeout: float = 1.0) -> ShardLine:
        try:
            if endpoint.path is not None:
                connect = asyncio.open_unix_connection(endpoint.path)
            else:
                connect = asyncio.open_connection(endpoint.host, endpoint.port)
            reader, writer = await asyncio.wait_for(connect, timeout)
        except (TimeoutError, OSError) as error:
            raise LineDown(f"cannot reach the shard's line: {error}") from None
        writer.write(_frame(endpoint.token))
        return cls(reader, writer)

    @property
    def up(self) -> bool:
        """Open, and usable from here: a line belongs to the event loop that opened it."""
        try:
            here = asyncio.get_running_loop()
        except RuntimeError:
            here = None
        return self._down is None and here is self._loop

    async def call(self, method: str, *args: Any) -> Any:
        """What the shard's ``method`` returns, or the error it raised; :class:`LineDown` if
        the line broke before the reply came back."""
        if self._down is not None:
            raise LineDown(str(self._down))
        request_id, self._next = self._next, self._next + 1
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiting[request_id] = future
        try:
            self._writer.write(_frame(pickle.dumps((request_id, method, args), protocol=5)))
        except (OSError, RuntimeError) as error:
            self._fail(error)
        return await future

    async def _listen(self) -> None:
        try:
            while True:
                request_id, ok, value = pickle.loads(await _read_frame(self._reader))
                future = self._waiting.pop(request_id, None)
                if future is None or future.done():
                    continue
                if ok:
                    future.set_result(value)
                else:
                    future.set_exception(value)
        except asyncio.CancelledError:
            self._fail(ConnectionError("the shard line was closed"))
            raise
        except Exception as error:  # noqa: BLE001 — EOF, reset, garbage: all mean "down"
            self._fail(error)

    def _fail(self, error: BaseException) -> None:
        if self._down is None:
            self._down = error
        for future in self._waiting.values():
            if not future.done():
                future.set_exception(LineDown(f"the shard line broke: {error}"))
        self._waiting.clear()
        self._writer.close()

    def close(self) -> None:
        self._listener.cancel()
        self._fail(ConnectionError("the shard line was closed"))
