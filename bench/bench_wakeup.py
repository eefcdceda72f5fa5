"""What one message between two processes costs on this machine: the floor under every hop.

    .venv/bin/python bench/bench_wakeup.py [--messages 10000] [--rates 0,1000] [--size 200]

A quota check crosses processes four times (gateway → replica → shard → replica → gateway),
and each crossing wakes a process that was waiting in ``epoll``. This bench measures that
alone, with no Tallyray code: a caller and an echo process, both on uvloop (as the replica's
listener and the shard's loop are), a Unix socket pair between them (as the shard line on one
node), ``--size`` bytes each way. For each rate in ``--rates``:

- ``0``: back to back — the next message is sent the moment the echo comes back, so neither
  process is idle for long;
- ``N``: open loop at N messages/s — each message is sent at its scheduled time, and between
  them both processes go idle, as the replica and a shard do between quota checks at 1,000/s.

Printed: CPU time per round trip of each process (``time.process_time``, kernel time
included) and the round trip's latency. The difference between the two modes is what being
woken from idle costs, on top of the message itself.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import time

import uvloop


def echo(sock: socket.socket, messages: int, report: int) -> None:
    """Answer every message with itself; write the CPU spent doing it to the pipe
    ``report``."""

    async def run() -> None:
        loop = asyncio.get_running_loop()
        done = loop.create_future()

        class Echo(asyncio.Protocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                self.transport: asyncio.Transport = transport  # type: ignore[assignment]
                self.seen = 0
                self.started = time.process_time()

            def data_received(self, data: bytes) -> None:
                self.transport.write(data)
                self.seen += 1
                if self.seen == messages:
                    done.set_result(time.process_time() - self.started)

        await loop.connect_accepted_socket(Echo, sock)
        os.write(report, repr(await done).encode())

    uvloop.run(run())


async def call(
    sock: socket.socket, messages: int, rate: float, size: int, report: int
) -> dict[str, float]:
    """Send ``messages`` messages, each after the echo of the one before and, with a
    ``rate``, not before its scheduled time; the caller's CPU and latencies."""
    loop = asyncio.get_running_loop()
    waiting: list[asyncio.Future[bytes]] = []

    class Caller(asyncio.Protocol):
        def data_received(self, data: bytes) -> None:
            waiting.pop().set_result(data)

    transport, _ = await loop.connect_accepted_socket(Caller, sock)
    payload = b"x" * size
    latencies: list[float] = []
    cpu = time.process_time()
    start = time.perf_counter()
    for i in range(messages):
        if rate:
            due = start + i / rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
        answer = loop.create_future()
        waiting.append(answer)
        sent = time.perf_counter()
        transport.write(payload)
        await answer
        latencies.append(time.perf_counter() - sent)
    caller_cpu = time.process_time() - cpu
    wall = time.perf_counter() - start
    echo_cpu = float(await loop.run_in_executor(None, os.read, report, 100))
    transport.close()
    latencies.sort()
    return {
        "caller": caller_cpu / messages,
        "echo": echo_cpu / messages,
        "p50": latencies[len(latencies) // 2],
        "p99": latencies[int(len(latencies) * 0.99)],
        "rate": messages / wall,
    }


def run_one(messages: int, rate: float, size: int) -> dict[str, float]:
    ours, theirs = socket.socketpair()
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:
        ours.close()
        os.close(read_end)
        try:
            echo(theirs, messages, write_end)
        finally:
            os._exit(0)
    theirs.close()
    os.close(write_end)
    try:
        return uvloop.run(call(ours, messages, rate, size, read_end))
    finally:
        os.close(read_end)
        os.waitpid(child, 0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument(
        "--rates", default="0,1000", help="messages/s, comma-separated; 0: back to back"
    )
    parser.add_argument("--size", type=int, default=200, help="bytes each way")
    args = parser.parse_args()
    print(
        f"{args.messages} round trips of {args.size} B over a Unix socket pair, uvloop at both "
        f"ends; {os.cpu_count()} cores"
    )
    for rate in (float(r) for r in args.rates.split(",")):
        got = run_one(args.messages, rate, args.size)
        mode = "back to back" if not rate else f"{rate:,.0f}/s open loop"
        mode += f" ({got['rate']:,.0f}/s)"
        print(
            f"  {mode:<34} CPU per round trip: caller {got['caller'] * 1e6:6.1f} µs, "
            f"echo {got['echo'] * 1e6:6.1f} µs; latency p50 {got['p50'] * 1e6:6.1f} µs, "
            f"p99 {got['p99'] * 1e6:7.1f} µs"
        )


if __name__ == "__main__":
    main()
