"""Where a webhook may be sent: the destination policy, and connections pinned to it.

A webhook URL comes from whoever holds an API key, and the server POSTs to it from inside the
operator's network. Without a policy that makes the server a port scanner for its tenants:
``http://169.254.169.254/`` (the cloud metadata service), ``http://10.0.0.5:6379/``, or a
name that resolves to one of them. So a destination is permitted only when **every** address
its host resolves to is a public unicast address. Refused (:func:`address_refusal`):

- loopback (127/8, ::1), private (10/8, 172.16/12, 192.168/16, fc00::/7), link-local
  (169.254/16, with the metadata address 169.254.169.254; fe80::/10), shared address space
  (CGNAT, 100.64/10), multicast (224/4, ff00::/8), unspecified (0/8, ::) and broadcast;
- reserved and special-purpose ranges that are never a real receiver: 240/4, 192.0.0/24,
  documentation (192.0.2/24, 198.51.100/24, 203.0.113/24, 2001:db8::/32, 3fff::/20),
  benchmarking (198.18/15), the 6to4 relay anycast (192.88.99/24), discard-only (100::/64),
  the IETF protocol block 2001::/23 (Teredo among it), local-use NAT64 (64:ff9b:1::/48),
  site-local (fec0::/10), and whatever else :mod:`ipaddress` does not call global;
- IPv6 forms that carry an IPv4 address (IPv4-mapped ``::ffff:a.b.c.d``, IPv4-compatible
  ``::a.b.c.d``, NAT64 ``64:ff9b::a.b.c.d``, 6to4 ``2002:AABB:CCDD::``) are judged by the
  IPv4 address inside, so ``::ffff:127.0.0.1`` is loopback; the deprecated IPv4-compatible
  form is refused whatever it carries;
- the names ``localhost`` and ``*.localhost``, without resolving them (RFC 6761).

The policy is applied twice (:func:`checked_addresses`): when an endpoint is created (a
refused or unresolvable URL is a 422 naming ``url``) and on every delivery attempt, because a
name's addresses can change after it was checked. A delivery then connects only to an address
it has just checked (:func:`pinned`): the request goes to the IP, with the ``Host`` header
and, for https, the TLS server name (SNI and certificate check) of the real host, so the HTTP
client never looks the name up a second time (which would let DNS rebinding slip a private
address in between).

A refused destination at delivery is a failed attempt, retried on the schedule like any
other (a name may point back at a public address later); it never reaches the network.

``TALLYRAY_WEBHOOK_ALLOW_PRIVATE=1`` (``allow_private``) turns the address policy off, for
tests and on-premise receivers; names are still resolved and connections still pinned.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable, Sequence

import httpx

__all__ = [
    "IPAddress",
    "RefusedDestination",
    "Resolve",
    "Unresolvable",
    "address_refusal",
    "checked_addresses",
    "host_and_port",
    "name_refusal",
    "pinned",
    "system_resolve",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

Resolve = Callable[[str, int], Awaitable[Sequence[str]]]
"""Looks a host name up: ``(host, port) -> addresses`` as text, raising :class:`OSError`
when the name does not resolve. :func:`system_resolve` in production; tests pass their own."""


class RefusedDestination(Exception):
    """The host is not a permitted webhook destination; ``str()`` says why in words
    (``"hooks.example.com resolves to 10.0.0.5, a private address"``)."""


class Unresolvable(RefusedDestination):
    """The host name resolves to no address at all."""


def _networks(
    *pairs: tuple[str, str],
) -> tuple[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, str], ...]:
    return tuple((ipaddress.ip_network(network), kind) for network, kind in pairs)


# Checked in order, so a narrow range inside a wide one comes first.
_REFUSED = _networks(
    ("0.0.0.0/8", "an unspecified address"),
    ("10.0.0.0/8", "a private address"),
    ("100.64.0.0/10", "a shared (CGNAT) address"),
    ("127.0.0.0/8", "a loopback address"),
    ("169.254.169.254/32", "a link-local address (the cloud metadata service)"),
    ("169.254.0.0/16", "a link-local address"),
    ("172.16.0.0/12", "a private address"),
    ("192.0.0.0/24", "a reserved address (IETF protocol assignments)"),
    ("192.0.2.0/24", "a documentation address"),
    ("192.88.99.0/24", "a reserved address (6to4 relay anycast)"),
    ("192.168.0.0/16", "a private address"),
    ("198.18.0.0/15", "a benchmarking address"),
    ("198.51.100.0/24", "a documentation address"),
    ("203.0.113.0/24", "a documentation address"),
    ("224.0.0.0/4", "a multicast address"),
    ("255.255.255.255/32", "the broadcast address"),
    ("240.0.0.0/4", "a reserved address"),
    ("::/128", "an unspecified address"),
    ("::1/128", "a loopback address"),
    ("64:ff9b:1::/48", "a local-use NAT64 address"),
    ("100::/64", "a discard-only address"),
    ("2001:db8::/32", "a documentation address"),
    ("2001::/23", "a reserved address (IETF protocol assignments)"),
    ("3fff::/20", "a documentation address"),
    ("fc00::/7", "a private (unique local) address"),
    ("fe80::/10", "a link-local address"),
    ("fec0::/10", "a site-local address"),
    ("ff00::/8", "a multicast address"),
)

_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")


def _carried_ipv4(address: ipaddress.IPv6Address) -> tuple[str, ipaddress.IPv4Address] | None:
    """The IPv4 address an IPv6 address stands for, with the name of the form."""
    if address.ipv4_mapped is not None:
        return "an IPv4-mapped", address.ipv4_mapped
    if address in _NAT64:
        return "a NAT64", ipaddress.IPv4Address(int(address) & 0xFFFF_FFFF)
    if address.sixtofour is not None:
        return "a 6to4", address.sixtofour
    if address in _IPV4_COMPATIBLE and int(address) > 1:  # not :: or ::1
        return "an IPv4-compatible", ipaddress.IPv4Address(int(address) & 0xFFFF_FFFF)
    return None


def address_refusal(address: IPAddress) -> str | None:
    """Why ``address`` is not a permitted webhook destination, as a noun phrase
    (``"a loopback address"``), or ``None`` when it is a public unicast address."""
    if isinstance(address, ipaddress.IPv6Address):
        carried = _carried_ipv4(address)
        if carried is not None:
            form, inner = carried
            why = address_refusal(inner)
            if why is not None:
                return f"{form} form of {inner}, {why}"
            if form == "an IPv4-compatible":
                return "a deprecated IPv4-compatible address"
            return None
    for network, kind in _REFUSED:
        if address in network:
            return kind
    # What the table misses, ipaddress knows from the IANA special-purpose registries.
    if address.is_loopback:
        return "a loopback address"
    if address.is_link_local:
        return "a link-local address"
    if address.is_multicast:
        return "a multicast address"
    if address.is_unspecified:
        return "an unspecified address"
    if address.is_private:
        return "a private address"
    if address.is_reserved or not address.is_global:
        return "a reserved address"
    return None


def name_refusal(host: str) -> str | None:
    """Why a host *name* is refused before it is looked up: ``localhost`` and names under
    it are this machine (RFC 6761), whatever a resolver says."""
    name = host.lower().rstrip(".")
    if name == "localhost" or name.endswith(".localhost"):
        return f"{_named(host)} is a loopback name"
    return None


def host_and_port(url: httpx.URL) -> tuple[str, int]:
    """The host to look up (IDNA-encoded, no brackets) and the port to connect to."""
    port = url.port or (443 if url.scheme == "https" else 80)
    return url.raw_host.decode("ascii"), port


async def system_resolve(host: str, port: int) -> list[str]:
    """The addresses ``host`` resolves to, looked up by the system resolver in a thread
    (:meth:`asyncio.loop.getaddrinfo`), so the event loop never waits on DNS."""
    infos = await asyncio.get_running_loop().getaddrinfo(
        host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
    )
    return [str(info[4][0]) for info in infos]


def _named(host: str) -> str:
    """A host name for a message: at most 40 characters of it."""
    return host if len(host) <= 40 else host[:39] + "…"


def _literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


async def checked_addresses(
    host: str,
    port: int,
    resolve: Resolve = system_resolve,
    *,
    allow_private: bool = False,
    timeout: float | None = None,
) -> list[IPAddress]:
    """The addresses to connect to for ``host``, in the resolver's order, each one checked.

    An IP literal is its own address. A name is looked up (within ``timeout`` seconds) and
    every address it resolves to must be permitted: one refused address refuses the name,
    since the client could not choose among them safely. Raises :class:`Unresolvable` or
    :class:`RefusedDestination` with the reason in words. ``allow_private`` skips the
    policy, not the lookup.
    """
    literal = _literal(host)
    if literal is not None:
        why = None if allow_private else address_refusal(literal)
        if why is not None:
            raise RefusedDestination(f"{literal} is {why}")
        return [literal]
    why = None if allow_private else name_refusal(host)
    if why is not None:
        raise RefusedDestination(why)
    try:
        async with asyncio.timeout(timeout):
            found = await resolve(host, port)
    except TimeoutError:
        raise Unresolvable(
            f"{_named(host)} does not resolve (no answer within {timeout:g} s)"
        ) from None
    except (OSError, UnicodeError):
        raise Unresolvable(f"{_named(host)} does not resolve") from None
    addresses: list[IPAddress] = []
    for text in found:
        address = ipaddress.ip_address(text)
        if address not in addresses:
            addresses.append(address)
    if not addresses:
        raise Unresolvable(f"{_named(host)} does not resolve")
    for address in addresses:
        why = None if allow_private else address_refusal(address)
        if why is not None:
            raise RefusedDestination(f"{_named(host)} resolves to {address}, {why}")
    return addresses


def pinned(url: httpx.URL, address: IPAddress) -> tuple[httpx.URL, dict[str, str], dict[str, str]]:
    """``(url, headers, extensions)`` for a request to ``url`` sent to ``address`` and to
    nowhere else: the URL names the IP, the ``Host`` header the original host and port, and
    for https the ``sni_hostname`` extension makes httpcore send the real host name as SNI
    and check the certificate against it (``server_hostname`` of the TLS handshake)."""
    host, _ = host_and_port(url)
    headers = {"host": url.netloc.decode("ascii")}
    extensions = {"sni_hostname": host} if url.scheme == "https" and _literal(host) is None else {}
    return url.copy_with(host=str(address)), headers, extensions
