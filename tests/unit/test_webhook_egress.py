"""Where webhooks may go (tallyray.alerts.egress) and what the delivery log says when a send
fails (tallyray.alerts.reasons): tables of addresses, hosts and errors, each with its verdict."""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import socket
import ssl
from collections.abc import Sequence

import httpx
import pytest

from tallyray.alerts.egress import (
    RefusedDestination,
    Unresolvable,
    address_refusal,
    checked_addresses,
    name_refusal,
    pinned,
)
from tallyray.alerts.reasons import MAX_REASON, clip, error_reason, status_reason

# -- the destination policy, address by address ----------------------------------------------


@pytest.mark.parametrize(
    ("address", "verdict"),
    [
        # public unicast: permitted
        ("93.184.215.14", None),
        ("8.8.8.8", None),
        ("1.1.1.1", None),
        ("100.63.255.255", None),  # just below the shared space
        ("100.128.0.0", None),  # just above it
        ("172.15.255.255", None),  # just below 172.16/12
        ("172.32.0.0", None),  # just above it
        ("192.0.1.1", None),  # between 192.0.0/24 and 192.0.2/24
        ("198.20.0.1", None),  # above the benchmarking 198.18/15
        ("223.255.255.255", None),  # the last unicast address below multicast
        ("2001:4860:4860::8888", None),
        ("2606:4700:4700::1111", None),
        ("::ffff:8.8.8.8", None),  # IPv4-mapped public: the IPv4 address itself
        ("64:ff9b::808:808", None),  # NAT64 of 8.8.8.8 (an IPv6-only network's DNS64)
        ("2002:808:808::1", None),  # 6to4 of 8.8.8.8
        # loopback
        ("127.0.0.1", "a loopback address"),
        ("127.255.255.254", "a loopback address"),
        ("::1", "a loopback address"),
        # private
        ("10.0.0.5", "a private address"),
        ("10.255.255.255", "a private address"),
        ("172.16.0.1", "a private address"),
        ("172.31.255.255", "a private address"),
        ("192.168.1.1", "a private address"),
        ("fd00::1", "a private (unique local) address"),
        ("fc00::1", "a private (unique local) address"),
        # link-local, and the cloud metadata service inside it
        ("169.254.169.254", "a link-local address (the cloud metadata service)"),
        ("169.254.0.1", "a link-local address"),
        ("fe80::1", "a link-local address"),
        ("fe80::1%eth0", "a link-local address"),  # with a scope, as getaddrinfo gives it
        ("febf::1", "a link-local address"),
        # shared address space (carrier-grade NAT)
        ("100.64.0.1", "a shared (CGNAT) address"),
        ("100.127.255.255", "a shared (CGNAT) address"),
        # multicast
        ("224.0.0.1", "a multicast address"),
        ("239.255.255.250", "a multicast address"),  # SSDP
        ("233.1.1.1", "a multicast address"),  # GLOP: ipaddress calls it global
        ("ff02::1", "a multicast address"),
        ("ff0e::1", "a multicast address"),
        # unspecified and broadcast
        ("0.0.0.0", "an unspecified address"),
        ("0.1.2.3", "an unspecified address"),  # "this network", 0/8
        ("::", "an unspecified address"),
        ("255.255.255.255", "the broadcast address"),
        # reserved, documentation, benchmarking: never a real receiver
        ("240.0.0.1", "a reserved address"),
        ("254.1.2.3", "a reserved address"),
        ("192.0.0.8", "a reserved address (IETF protocol assignments)"),
        ("192.0.2.10", "a documentation address"),
        ("198.51.100.7", "a documentation address"),
        ("203.0.113.9", "a documentation address"),
        ("198.18.0.1", "a benchmarking address"),
        ("198.19.255.255", "a benchmarking address"),
        ("192.88.99.1", "a reserved address (6to4 relay anycast)"),
        ("2001:db8::1", "a documentation address"),
        ("3fff::1", "a documentation address"),
        ("100::1", "a discard-only address"),
        ("2001::1", "a reserved address (IETF protocol assignments)"),  # Teredo
        ("2001:2::1", "a reserved address (IETF protocol assignments)"),  # benchmarking
        ("64:ff9b:1::1", "a local-use NAT64 address"),
        ("fec0::1", "a site-local address"),
        ("5f00::1", "a reserved address"),  # SRv6 SIDs: ipaddress knows it is reserved
        # IPv6 forms carrying a refused IPv4 address: judged by what they carry
        ("::ffff:127.0.0.1", "an IPv4-mapped form of 127.0.0.1, a loopback address"),
        ("::ffff:10.0.0.5", "an IPv4-mapped form of 10.0.0.5, a private address"),
        (
            "::ffff:169.254.169.254",
            "an IPv4-mapped form of 169.254.169.254, "
            "a link-local address (the cloud metadata service)",
        ),
        ("::127.0.0.1", "an IPv4-compatible form of 127.0.0.1, a loopback address"),
        ("::8.8.8.8", "a deprecated IPv4-compatible address"),  # whatever it carries
        ("64:ff9b::7f00:1", "a NAT64 form of 127.0.0.1, a loopback address"),
        (
            "64:ff9b::a9fe:a9fe",
            "a NAT64 form of 169.254.169.254, a link-local address (the cloud metadata service)",
        ),
        ("2002:c0a8:101::1", "a 6to4 form of 192.168.1.1, a private address"),
        ("2002:7f00:1::", "a 6to4 form of 127.0.0.1, a loopback address"),
        ("::ffff:100.64.0.1", "an IPv4-mapped form of 100.64.0.1, a shared (CGNAT) address"),
    ],
)
def test_which_addresses_a_webhook_may_go_to(address: str, verdict: str | None) -> None:
    assert address_refusal(ipaddress.ip_address(address)) == verdict


@pytest.mark.parametrize(
    ("host", "verdict"),
    [
        ("localhost", "localhost is a loopback name"),
        ("LOCALHOST", "LOCALHOST is a loopback name"),
        ("localhost.", "localhost. is a loopback name"),
        ("api.localhost", "api.localhost is a loopback name"),
        ("hooks.example.com", None),
        ("localhost.example.com", None),  # an ordinary name under example.com
        ("notlocalhost", None),
    ],
)
def test_localhost_names_are_refused_without_resolving(host: str, verdict: str | None) -> None:
    assert name_refusal(host) == verdict


# -- checking a host: literal, or every address it resolves to ------------------------------


class FakeDNS:
    """A resolver that knows only ``answers`` (a name absent from it does not resolve) and
    records what it was asked."""

    def __init__(self, answers: dict[str, Sequence[str]]) -> None:
        self.answers = answers
        self.asked: list[str] = []

    async def __call__(self, host: str, port: int) -> list[str]:
        self.asked.append(host)
        if host not in self.answers:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return list(self.answers[host])


DNS = {
    "hooks.example.com": ["93.184.215.14", "2606:2800:21f:cb07:6820:80da:af6b:8b2c"],
    "twice.example.com": ["93.184.215.14", "93.184.215.14"],
    "mixed.example.com": ["93.184.215.14", "10.0.0.5"],
    "internal.example.com": ["10.0.0.5"],
    "metadata.example.com": ["169.254.169.254"],
    "mapped.example.com": ["::ffff:127.0.0.1"],
    "localhost": ["127.0.0.1"],
    "empty.example.com": [],
}


@pytest.mark.parametrize(
    ("host", "addresses", "refusal"),
    [
        ("hooks.example.com", ["93.184.215.14", "2606:2800:21f:cb07:6820:80da:af6b:8b2c"], None),
        ("twice.example.com", ["93.184.215.14"], None),  # each address once
        ("8.8.8.8", ["8.8.8.8"], None),  # a literal is its own address
        ("2001:4860:4860::8888", ["2001:4860:4860::8888"], None),
        ("127.0.0.1", None, "127.0.0.1 is a loopback address"),
        ("::1", None, "::1 is a loopback address"),
        ("10.1.2.3", None, "10.1.2.3 is a private address"),
        # one refused address refuses the name
        ("mixed.example.com", None, "mixed.example.com resolves to 10.0.0.5, a private address"),
        (
            "internal.example.com",
            None,
            "internal.example.com resolves to 10.0.0.5, a private address",
        ),
        (
            "metadata.example.com",
            None,
            "metadata.example.com resolves to 169.254.169.254, a link-local address "
            "(the cloud metadata service)",
        ),
        (
            "mapped.example.com",
            None,
            "mapped.example.com resolves to ::ffff:7f00:1, an IPv4-mapped form of 127.0.0.1, "
            "a loopback address",
        ),
        ("localhost", None, "localhost is a loopback name"),
        ("nowhere.example.com", None, "nowhere.example.com does not resolve"),
        ("empty.example.com", None, "empty.example.com does not resolve"),
        ("a" * 60 + ".example.com", None, "a" * 39 + "… does not resolve"),  # names cut short
    ],
)
def test_a_host_is_permitted_when_every_address_it_resolves_to_is(
    host: str, addresses: list[str] | None, refusal: str | None
) -> None:
    resolve = FakeDNS(DNS)
    if refusal is None:
        found = asyncio.run(checked_addresses(host, 443, resolve))
        assert [str(a) for a in found] == addresses
    else:
        with pytest.raises(RefusedDestination) as caught:
            asyncio.run(checked_addresses(host, 443, resolve))
        assert str(caught.value) == refusal
    if host == "localhost" or host[0].isdigit() or ":" in host:
        assert resolve.asked == []  # refused without asking


@pytest.mark.parametrize(
    ("host", "addresses"),
    [
        ("127.0.0.1", ["127.0.0.1"]),
        ("internal.example.com", ["10.0.0.5"]),
        ("mixed.example.com", ["93.184.215.14", "10.0.0.5"]),
        ("localhost", ["127.0.0.1"]),  # resolved like any name
    ],
)
def test_allow_private_turns_the_policy_off_but_still_resolves(
    host: str, addresses: list[str]
) -> None:
    found = asyncio.run(checked_addresses(host, 80, FakeDNS(DNS), allow_private=True))
    assert [str(a) for a in found] == addresses


def test_an_unresolvable_name_is_refused_with_or_without_the_policy() -> None:
    for allow_private in (False, True):
        with pytest.raises(Unresolvable, match="^nowhere.example.com does not resolve$"):
            asyncio.run(
                checked_addresses(
                    "nowhere.example.com", 80, FakeDNS(DNS), allow_private=allow_private
                )
            )


def test_a_resolver_that_does_not_answer_in_time_is_an_unresolvable_name() -> None:
    async def hangs(host: str, port: int) -> list[str]:
        await asyncio.sleep(60)
        return ["93.184.215.14"]

    with pytest.raises(Unresolvable, match=r"^slow.example.com does not resolve \(no answer "):
        asyncio.run(checked_addresses("slow.example.com", 80, hangs, timeout=0.05))


@pytest.mark.parametrize(
    "host",
    # Numeric forms the C resolver reads as 127.0.0.1 (ipaddress does not: they are names).
    ["127.1", "2130706433", "0x7f.0.0.1", "0177.0.0.1"],
)
def test_odd_spellings_of_loopback_are_refused_by_what_they_resolve_to(host: str) -> None:
    with pytest.raises(RefusedDestination, match=f"^{host} resolves to 127.0.0.1, a loopback"):
        asyncio.run(checked_addresses(host, 80))  # the system resolver: no DNS query needed


# -- the pinned request ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "address", "sent_to", "host", "sni"),
    [
        (
            "https://hooks.example.com/t?x=1",
            "93.184.215.14",
            "https://93.184.215.14/t?x=1",
            "hooks.example.com",
            "hooks.example.com",
        ),
        (
            "http://hooks.example.com:8080/t",
            "93.184.215.14",
            "http://93.184.215.14:8080/t",
            "hooks.example.com:8080",
            None,  # no TLS, no SNI
        ),
        (
            "https://hooks.example.com:8443/",
            "2606:2800:21f:cb07:6820:80da:af6b:8b2c",
            "https://[2606:2800:21f:cb07:6820:80da:af6b:8b2c]:8443/",
            "hooks.example.com:8443",
            "hooks.example.com",
        ),
        (
            "https://bücher.example/hook",  # IDNA: the name on the wire is punycode
            "93.184.215.14",
            "https://93.184.215.14/hook",
            "xn--bcher-kva.example",
            "xn--bcher-kva.example",
        ),
        (
            "https://8.8.8.8/hook",  # a literal: the certificate names the IP, no SNI
            "8.8.8.8",
            "https://8.8.8.8/hook",
            "8.8.8.8",
            None,
        ),
        (
            "http://[2001:4860:4860::8888]:81/",
            "2001:4860:4860::8888",
            "http://[2001:4860:4860::8888]:81/",
            "[2001:4860:4860::8888]:81",
            None,
        ),
    ],
)
def test_a_send_goes_to_the_checked_address_under_the_real_host_name(
    url: str, address: str, sent_to: str, host: str, sni: str | None
) -> None:
    target, headers, extensions = pinned(httpx.URL(url), ipaddress.ip_address(address))
    assert str(target) == sent_to
    assert headers == {"host": host}
    assert extensions == ({} if sni is None else {"sni_hostname": sni})


# -- what the delivery log keeps -------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "reason"),
    [
        (500, "HTTP 500 Internal Server Error"),
        (503, "HTTP 503 Service Unavailable"),
        (429, "HTTP 429 Too Many Requests"),
        (301, "HTTP 301 Moved Permanently"),  # redirects are not followed
        (404, "HTTP 404 Not Found"),
        (599, "HTTP 599"),  # no standard phrase
    ],
)
def test_a_status_is_named_by_its_standard_phrase(code: int, reason: str) -> None:
    assert status_reason(code) == reason


def wrapped(error: BaseException, outer: type[Exception] = httpx.ConnectError) -> Exception:
    """``error`` as httpx raises it: an httpx error caused by (httpcore's, caused by) it."""
    try:
        try:
            raise error
        except BaseException as inner:
            raise outer("whatever the far end said: SSH-2.0-OpenSSH_9.6") from inner
    except Exception as raised:
        return raised


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (wrapped(ConnectionRefusedError(errno.ECONNREFUSED, "refused")), "connection refused"),
        (wrapped(OSError(errno.ENETUNREACH, "unreachable")), "network unreachable"),
        (wrapped(OSError(errno.EHOSTUNREACH, "no route")), "host unreachable"),
        (
            wrapped(ConnectionResetError(errno.ECONNRESET, "reset"), httpx.ReadError),
            "connection reset",
        ),
        (
            wrapped(ssl.SSLCertVerificationError(1, "hostname mismatch for evil.example")),
            "TLS certificate did not verify",
        ),
        (wrapped(ssl.SSLError(1, "wrong version number")), "TLS handshake failed"),
        (wrapped(OSError(errno.EPERM, "?")), "could not connect"),
        # A banner where an HTTP status line should be: the words are ours, never the banner.
        (
            httpx.RemoteProtocolError("illegal status line: b'SSH-2.0-OpenSSH'"),
            "no valid HTTP answer",
        ),
        (httpx.ReadError("read failed"), "the connection failed while reading the answer"),
        (httpx.WriteError("write failed"), "the connection failed while sending"),
        (httpx.UnsupportedProtocol("ftp"), "not an http:// or https:// URL"),
        (ValueError("some text from somewhere"), "failed (ValueError)"),
    ],
)
def test_an_error_is_named_by_its_kind_never_by_its_message(
    error: BaseException, reason: str
) -> None:
    assert error_reason(error) == reason
    assert "SSH" not in error_reason(error)


@pytest.mark.parametrize(
    ("text", "kept"),
    [
        ("timed out after 10 s", "timed out after 10 s"),
        ("a\nb\x00c\x1b[31m", "a?b?c?[31m"),  # printable only
        ("x" * 500, "x" * (MAX_REASON - 1) + "…"),
    ],
)
def test_a_reason_is_printable_and_short(text: str, kept: str) -> None:
    assert clip(text) == kept
