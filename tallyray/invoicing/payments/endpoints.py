"""Where a provider's calls may go: its own host for the mode of its credentials, or a local
fake.

The ``api_base`` overrides exist so that tests (and developers) can point an adapter at a
wire-format fake on this machine. Anything else would let one setting quietly move live
traffic somewhere that is not the provider's live service (a live key sent to a mock that
"succeeds" every payment marks real invoices paid with no money behind them), or test traffic
to live endpoints. So an override must name either a loopback host (``127.0.0.1``, any
``127.x.y.z``, ``::1``, ``localhost``) or the provider's own HTTPS origin for that mode:
nothing in between. A live provider on a loopback fake is allowed (the test suite needs it)
and logged as a warning where the server is composed.
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

__all__ = ["is_local", "is_under", "override_problem"]


def is_local(url: str) -> bool:
    """Whether ``url`` points at this machine's loopback interface."""
    host = urlsplit(url).hostname
    if host is None:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def is_under(url: str, base: str) -> bool:
    """Whether ``url`` is ``base`` or below it: same scheme and host, and its path inside
    ``base``'s (host names compared as DNS does, without case)."""
    inner, outer = urlsplit(url), urlsplit(base)
    return (inner.scheme, inner.hostname, inner.port) == (
        outer.scheme,
        outer.hostname,
        outer.port,
    ) and (inner.path + "/").startswith(outer.path.rstrip("/") + "/")


def override_problem(api_base: str, official: str, mode: str) -> str | None:
    """Why ``api_base`` may not stand in for ``official`` (the provider's origin for ``mode``,
    ``"live"`` or ``"test"``), or ``None`` when it may."""
    parts = urlsplit(api_base)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return f"must be an http:// or https:// URL, not {api_base[:40]!r}"
    if is_local(api_base):
        return None
    if parts.scheme == "https" and parts.hostname == urlsplit(official).hostname:
        return None
    return (
        f"points at {parts.hostname}: {mode}-mode calls go to {official}, and an override may "
        "only point there or at a local fake (127.0.0.1, ::1 or localhost)"
    )
