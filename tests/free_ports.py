"""A free TCP port for a server the tests start, chosen below the kernel's ephemeral range.

A port from ``bind(("127.0.0.1", 0))`` is an ephemeral one: while a test's server is down (a
restart, a replica replaced), any outgoing connection on the box may be given that same port
as its local end — a client retrying a connect to it can even connect to itself — and the
server coming back fails with "Address already in use" (seen in CI on the client-restart
test). Ports below the ephemeral range are only ever taken by someone binding them.
"""

from __future__ import annotations

import random
import socket
from pathlib import Path

_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")
_LOWEST = 20000


def _ephemeral_start() -> int:
    try:
        return int(_RANGE_FILE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


def free_port() -> int:
    """A port nobody listens on now, outside the ephemeral range when the range allows."""
    top = _ephemeral_start()
    if top - _LOWEST < 1000:  # an unusual range: fall back to the kernel's choice
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return int(s.getsockname()[1])
    for _ in range(200):
        port = random.randrange(_LOWEST, top)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {_LOWEST}-{top}")
