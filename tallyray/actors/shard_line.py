"""The shard line: the ingress's hot calls to a shard over a plain socket instead of Ray.

A Ray actor call costs both sides far more CPU than answering a quota check does (on the
shard, ~3 % of the samples were our code; the rest was Ray's worker), so the hot calls —
quota checks and ingest, both safe to repeat — take a shorter way. Each shard listens on a
Unix socket of its own node (in a directory only its user may enter; loopback TCP where
there are no Unix sockets) and, for replicas on other nodes, on TCP at the address Ray
reports for its node (:class:`LineOptions`; TLS with :class:`LineTLS`). An ingress replica
asks the shard for ``(node, path, host and port, token)`` once, over Ray, and from then on
writes calls to the socket — the Unix one on the same node, TCP from another — and reads
the replies back.

The server runs on the shard actor's own event loop, where a Ray call to the same method
would run: a quota check is answered inline, between other requests, and sees the account as
the last group commit left it; an ingest is a task that answers once its group commit is
durable, exactly like the actor method. Anything unusual — a shard on another node without
a TCP line, a refused connection, a closed socket (the shard restarted) — and the ingress
makes the Ray call
instead, which knows how to wait for a restarting shard. Repeating a call whose reply was
lost is safe: checks are reads, and the event log counts each event id once.

Frames are a 4-byte big-endian length and a payload. The first frame a client sends is the
token (its bytes), compared in constant time; only then are payloads read from it: a call is
the pickle of ``(request id, method, args)``, a reply the pickle of ``(request id, ok,
value)`` — ``value`` what the method returned, or the error it raised (pickles carry
Decimals, answers and Tallyray's errors as they are). Replies may come in any order (an
ingest answers after its commit; checks answer at once); the id matches them to calls.

Both ends are :class:`asyncio.Protocol` s with a buffer of their own: each read hands every
complete frame in it to its handler there and then (no stream reads, no task per frame), and
the shard writes the replies of the calls it answered inline in that read as one write. The
replica's end takes a callback per call (:meth:`ShardLine.send`; the router's batches of
checks use it) or an awaitable (:meth:`ShardLine.call`). Between nodes the token crosses the
network: in the clear unless TLS is on, like Ray's own traffic, which trusts its network
(docs/deploy.md, "The shard line between nodes").
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
import ssl
import struct
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["Endpoint", "LineDown", "LineOptions", "LineTLS", "ShardLine", "ShardLineServer"]

log = logging.getLogger("tallyray.shard_line")

_LENGTH = struct.Struct(">I")
MAX_FRAME = 64 * 1024 * 1024
HOST = "127.0.0.1"

_dumps = pickle.dumps
_loads = pickle.loads


@dataclass(frozen=True, slots=True)
class LineTLS:
    """TLS for the lines between nodes: every shard serves ``cert`` (with ``key``), and every
    replica accepts a shard's certificate only if ``ca`` (default: ``cert`` itself, a
    self-signed one shared by the cluster) signed it. Host names are not checked: shards
    move between nodes, so one certificate serves them all; the token still authenticates
    the replica. The files must be at these paths on every node."""

    cert: str
    key: str
    ca: str | None = None

    def server_context(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(self.cert, self.key)
        return context

    def client_context(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.check_hostname = False
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(self.ca or self.cert)
        return context


@dataclass(frozen=True, slots=True)
class LineOptions:
    """How shards offer their lines and replicas use them (``TALLYRAY_SHARD_LINE_*``)."""

    remote: bool = True
    """Shards also listen on TCP at their node's address, for replicas on other nodes."""
    tls: LineTLS | None = None
    """TLS on those TCP lines; a replica with TLS set uses no line without it."""


@dataclass(frozen=True, slots=True)
class Endpoint:
    node: str
    """The Ray node the shard runs on: a replica on it uses ``path``, others ``host:port``."""
    host: str
    port: int
    """0: no TCP line (a replica on another node calls over Ray)."""
    token: bytes
    path: str | None = None
    """A Unix socket for replicas on the same node: on one machine it costs both ends far
    less per call than loopback TCP (no TCP/IP stack), and only this user can reach it."""
    tls: bool = False
    """The TCP line wants TLS (:class:`LineTLS`)."""


class LineDown(ConnectionError):
    """The line broke (or never opened): make this call the other way."""


def _frame(payload: bytes) -> bytes:
    return _LENGTH.pack(len(payload)) + payload


def _reply(request_id: int, ok: bool, value: Any) -> bytes:
    try:
        payload = _dumps((request_id, ok, value), 5)
    except Exception as error:  # noqa: BLE001 — an error that does not pickle still answers
        payload = _dumps((request_id, False, RuntimeError(f"{value!r} ({error})")), 5)
    return _LENGTH.pack(len(payload)) + payload


class _Frames(asyncio.Protocol):
    """A connection that reads frames out of its own buffer: every complete frame that
    ``data_received`` brings is handled there and then (:meth:`frame`), however many came
    in one read, with no task, stream or future between the socket and the handler."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        if buffer:
            buffer += data
            data = buffer  # type: ignore[assignment]
        size, unpack, end, at = len(data), _LENGTH.unpack_from, 0, 0
        try:
            while size - at >= 4:
                (length,) = unpack(data, at)
                if length > MAX_FRAME:
                    raise ValueError(f"a frame of {length} bytes is over the limit")
                end = at + 4 + length
                if end > size:
                    break
                self.frame(data[at + 4 : end])
                at = end
                if self.transport is None:
                    return  # closed by the handler
        except Exception as error:  # noqa: BLE001 — garbage, or a handler's bug: drop the line
            self.broken(error)
            return
        if buffer:
            del buffer[:at]
        elif at < size:
            buffer += data[at:]

    def frame(self, payload: bytes) -> None:
        raise NotImplementedError

    def broken(self, error: BaseException) -> None:
        """The bytes made no sense: close the connection."""
        self.close()

    def close(self) -> None:
        transport, self.transport = self.transport, None
        if transport is not None:
            transport.close()


class _ServerSide(_Frames):
    """One replica's connection to the shard: the token first, then calls."""

    def __init__(self, server: ShardLineServer) -> None:
        super().__init__()
        self._server = server
        self._authenticated = False
        self._replies: list[bytes] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._server._connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self._server._connections.discard(self)

    def data_received(self, data: bytes) -> None:
        # Replies to the calls answered inline go out in one write per read.
        replies: list[bytes] = []
        self._replies = replies
        try:
            super().data_received(data)
        finally:
            self._replies = None
            if replies and self.transport is not None:
                self.transport.write(b"".join(replies))

    def frame(self, payload: bytes) -> None:
        server = self._server
        if not self._authenticated:
            if not hmac.compare_digest(bytes(payload), server._token):
                log.warning("shard line: a connection with a wrong token was refused")
                self.close()
                return
            self._authenticated = True
            return
        request_id, method, args = _loads(payload)
        function = server._methods.get(method)
        if function is None:
            reply = _reply(request_id, False, LookupError(f"no method {method!r}"))
        elif method in server._coroutines:
            task = asyncio.get_running_loop().create_task(
                self._answer_later(request_id, function(*args))
            )
            server._tasks.add(task)
            task.add_done_callback(server._tasks.discard)
            return
        else:
            try:
                reply = _reply(request_id, True, function(*args))
            except Exception as error:  # noqa: BLE001 — the caller gets its error
                reply = _reply(request_id, False, error)
        if self._replies is not None:
            self._replies.append(reply)
        elif self.transport is not None:
            self.transport.write(reply)

    async def _answer_later(self, request_id: int, call: Any) -> None:
        try:
            reply = _reply(request_id, True, await call)
        except Exception as error:  # noqa: BLE001 — the caller gets its error
            reply = _reply(request_id, False, error)
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(reply)

    def broken(self, error: BaseException) -> None:
        log.error("shard line: %s", error)  # a broken line must not take the shard down
        self.close()


class ShardLineServer:
    """The shard's end: serves ``methods`` (plain functions answer inline, coroutine functions
    run as tasks and answer when done)."""

    def __init__(
        self,
        node: str,
        methods: Mapping[str, Callable[..., Any]],
        unix: bool = True,
        host: str | None = None,
        tls: LineTLS | None = None,
    ) -> None:
        self.node = node
        self.unix = unix
        """Listen on a Unix socket (else on loopback TCP)."""
        self.host = host
        """Also listen on TCP at this address (the node's), for other nodes' replicas."""
        self.tls = tls
        self._dir: str | None = None
        self._path: str | None = None
        self._methods = dict(methods)
        self._coroutines = frozenset(
            name
            for name, function in self._methods.items()
            if inspect.iscoroutinefunction(function)
        )
        self._token = secrets.token_bytes(32)
        self._servers: list[asyncio.Server] = []
        self._port = 0
        self._tcp_host = HOST
        self._tasks: set[asyncio.Task[None]] = set()
        self._connections: set[_ServerSide] = set()

    async def endpoint(self) -> Endpoint:
        """Start listening (once) and say where: a Unix socket in a directory of its own that
        only this user may enter (loopback TCP where there are no Unix sockets), and TCP at
        ``host`` when given."""
        if not self._servers:
            loop = asyncio.get_running_loop()
            tcp_host = self.host
            if self.unix and hasattr(socket, "AF_UNIX"):
                self._dir = tempfile.mkdtemp(prefix="tallyray-line-")  # mode 0700
                self._path = os.path.join(self._dir, "line.sock")
                self._servers.append(await loop.create_unix_server(self._connection, self._path))
            elif tcp_host is None:
                tcp_host = HOST
            if tcp_host is not None:
                context = None if self.tls is None else self.tls.server_context()
                server = await loop.create_server(self._connection, tcp_host, 0, ssl=context)
                self._servers.append(server)
                self._tcp_host = tcp_host
                self._port = server.sockets[0].getsockname()[1]
        return Endpoint(
            self.node, self._tcp_host, self._port, self._token, self._path, self.tls is not None
        )

    def _connection(self) -> _ServerSide:
        return _ServerSide(self)

    def drop_connections(self) -> None:
        """Close every replica's connection (as the shard's death would): their calls in
        flight are told to go the other way."""
        for connection in list(self._connections):
            connection.close()

    async def close(self) -> None:
        """Stop listening and close every connection."""
        for server in self._servers:
            server.close()
        self.drop_connections()
        self._servers = []
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = self._path = None


class ShardLine(_Frames):
    """The ingress's end of one shard's line: many calls in flight, each answered by id."""

    def __init__(self) -> None:
        super().__init__()
        self._waiting: dict[int, Callable[[bool, Any], None]] = {}
        self._next = 0
        self._down: BaseException | None = None
        self._loop = asyncio.get_running_loop()
        self._closed: asyncio.Future[None] = self._loop.create_future()
        self._guard = self._loop.create_task(self._close_with_the_loop())

    async def _close_with_the_loop(self) -> None:
        """Wait for the line to close, or for its event loop to shut down (which cancels
        every task): a line left behind by a loop that is gone would leak its socket."""
        try:
            await self._closed
        finally:
            self._fail(ConnectionError("the shard line was closed"))

    @classmethod
    async def open(
        cls,
        endpoint: Endpoint,
        timeout: float = 1.0,
        *,
        local: bool = True,
        tls: LineTLS | None = None,
    ) -> ShardLine:
        """Connect: to the Unix socket when ``local`` (the shard is on this node) and it has
        one, else over TCP — with TLS when the shard wants it or this end has it set (the
        token is not sent in the clear to a shard that does not speak TLS then)."""
        loop = asyncio.get_running_loop()
        unix = local and endpoint.path is not None
        if not unix and endpoint.port == 0:
            raise LineDown("the shard has no line for other nodes")
        if not unix and (endpoint.tls or tls is not None) and (tls is None or not endpoint.tls):
            raise LineDown("TLS is set on one end of the shard line only")
        line = cls()
        if unix:
            assert endpoint.path is not None
            connect: Any = loop.create_unix_connection(lambda: line, endpoint.path)
        elif tls is not None:
            connect = loop.create_connection(
                lambda: line, endpoint.host, endpoint.port, ssl=tls.client_context()
            )
        else:
            connect = loop.create_connection(lambda: line, endpoint.host, endpoint.port)
        try:
            await asyncio.wait_for(connect, timeout)
        except (TimeoutError, OSError) as error:  # ssl.SSLError is an OSError
            line._fail(error)
            raise LineDown(f"cannot reach the shard's line: {error}") from None
        assert line.transport is not None
        line.transport.write(_frame(endpoint.token))
        return line

    @property
    def up(self) -> bool:
        """Open, and usable from here: a line belongs to the event loop that opened it."""
        try:
            here = asyncio.get_running_loop()
        except RuntimeError:
            here = None
        return self._down is None and here is self._loop

    def send(self, method: str, args: tuple[Any, ...], answer: Callable[[bool, Any], None]) -> None:
        """Write a call; ``answer(ok, value)`` is called with the shard's reply — ``(True,
        what it returned)`` or ``(False, the error it raised)`` — or with ``(False,``
        :class:`LineDown` ``)`` if the line breaks first. Called from the event loop's
        reading, so it must not block."""
        if self._down is not None:
            answer(False, LineDown(str(self._down)))
            return
        request_id = self._next
        self._next = request_id + 1
        self._waiting[request_id] = answer
        payload = _dumps((request_id, method, args), 5)
        try:
            assert self.transport is not None
            self.transport.write(_LENGTH.pack(len(payload)) + payload)
        except (OSError, RuntimeError, AssertionError) as error:
            self._fail(error)

    async def call(self, method: str, *args: Any) -> Any:
        """What the shard's ``method`` returns, or the error it raised; :class:`LineDown` if
        the line broke before the reply came back."""
        future: asyncio.Future[Any] = self._loop.create_future()

        def answer(ok: bool, value: Any) -> None:
            if future.done():
                return
            if ok:
                future.set_result(value)
            else:
                future.set_exception(value)

        self.send(method, args, answer)
        return await future

    def frame(self, payload: bytes) -> None:
        request_id, ok, value = _loads(payload)
        answer = self._waiting.pop(request_id, None)
        if answer is not None:
            answer(ok, value)

    def broken(self, error: BaseException) -> None:
        self._fail(error)  # garbage from the shard: all calls go the other way

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(exc or ConnectionError("the shard closed the line"))

    def _fail(self, error: BaseException) -> None:
        if self._down is None:
            self._down = error
        if not self._closed.done():
            self._closed.set_result(None)
        waiting, self._waiting = self._waiting, {}
        for answer in waiting.values():
            answer(False, LineDown(f"the shard line broke: {error}"))
        super().close()

    def close(self) -> None:
        self._fail(ConnectionError("the shard line was closed"))
