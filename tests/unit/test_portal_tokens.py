"""Portal session tokens: a round trip, expiry, and every way of tampering with one."""

from __future__ import annotations

import base64
import hashlib
import hmac

import orjson
import pytest

from tallyray.errors import Unauthorized
from tallyray.portal.tokens import (
    ExpiredToken,
    InvalidToken,
    PortalKeys,
    PortalSession,
    issue_token,
    read_token,
)

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))
NOW = 1_790_000_000_000_000  # µs
HOUR = 3_600_000_000


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def swap_payload(token: str, doc: object) -> str:
    """The token with another payload, keeping the original signature."""
    return f"{b64(orjson.dumps(doc))}.{token.split('.')[1]}"


def test_round_trip() -> None:
    token = issue_token(KEY, "test", "acme", NOW + HOUR)
    assert read_token(KEY, token, NOW) == PortalSession("test", "acme", NOW + HOUR)


@pytest.mark.parametrize("customer_id", ["acme", "a.b/c?d#e f", "ünïcødé-客户", "x" * 255, "\n"])
def test_any_customer_id_survives_and_the_token_stays_url_safe(customer_id: str) -> None:
    token = issue_token(KEY, "live", customer_id, NOW + HOUR)
    assert set(token) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.")
    assert read_token(KEY, token, NOW).customer_id == customer_id


@pytest.mark.parametrize(
    ("now", "ok"),
    [
        (NOW, True),
        (NOW + HOUR - 1, True),  # the last microsecond
        (NOW + HOUR, False),  # expires_at itself is too late
        (NOW + 2 * HOUR, False),
    ],
)
def test_expiry(now: int, ok: bool) -> None:
    token = issue_token(KEY, "test", "acme", NOW + HOUR)
    if ok:
        assert read_token(KEY, token, now).customer_id == "acme"
    else:
        with pytest.raises(ExpiredToken):
            read_token(KEY, token, now)


def test_an_expired_token_is_still_an_invalid_one_and_a_401() -> None:
    assert issubclass(ExpiredToken, InvalidToken)
    assert issubclass(InvalidToken, Unauthorized)
    assert InvalidToken("x").http_status == 401


GOOD = issue_token(KEY, "test", "acme", NOW + HOUR)
PAYLOAD, SIGNATURE = GOOD.split(".")


def flip(text: str, index: int) -> str:
    """One character of base64url text changed to another valid one."""
    char = "A" if text[index] != "A" else "B"
    return text[:index] + char + text[index + 1 :]


@pytest.mark.parametrize(
    "token",
    [
        pytest.param(f"{flip(PAYLOAD, 0)}.{SIGNATURE}", id="payload first char"),
        pytest.param(f"{flip(PAYLOAD, len(PAYLOAD) // 2)}.{SIGNATURE}", id="payload middle"),
        pytest.param(f"{flip(PAYLOAD, len(PAYLOAD) - 1)}.{SIGNATURE}", id="payload last char"),
        pytest.param(f"{PAYLOAD}.{flip(SIGNATURE, 0)}", id="signature first char"),
        pytest.param(f"{PAYLOAD}.{flip(SIGNATURE, 20)}", id="signature middle"),
        pytest.param(f"{PAYLOAD}.{SIGNATURE[:-1]}", id="signature cut short"),
        pytest.param(f"{PAYLOAD}.{SIGNATURE}A", id="signature too long"),
        pytest.param(f"{PAYLOAD}.", id="no signature"),
        pytest.param(f".{SIGNATURE}", id="no payload"),
        pytest.param(PAYLOAD, id="no dot"),
        pytest.param(f"{PAYLOAD}.{SIGNATURE}.{SIGNATURE}", id="three parts"),
        pytest.param(f"{PAYLOAD}={'.'}{SIGNATURE}", id="padding"),
        pytest.param(f"{PAYLOAD}.{SIGNATURE.replace(SIGNATURE[0], '+', 1)}", id="not base64url"),
        pytest.param("", id="empty"),
        pytest.param("x" * 5000, id="huge"),
        pytest.param(swap_payload(GOOD, ["v1", "test", "globex", NOW + HOUR]), id="customer"),
        pytest.param(swap_payload(GOOD, ["v1", "live", "acme", NOW + HOUR]), id="env"),
        pytest.param(swap_payload(GOOD, ["v1", "test", "acme", NOW + 99 * HOUR]), id="expiry"),
        pytest.param(swap_payload(GOOD, ["v2", "test", "acme", NOW + HOUR]), id="version"),
        pytest.param(issue_token(OTHER_KEY, "test", "acme", NOW + HOUR), id="other key"),
    ],
)
def test_tampering_with_any_part_is_refused(token: str) -> None:
    with pytest.raises(InvalidToken) as caught:
        read_token(KEY, token, NOW)
    assert not isinstance(caught.value, ExpiredToken)
    assert caught.value.message == "this portal link is not valid"  # never says which part


def signed(doc: object) -> str:
    """A token whose payload is ``doc``, signed as the module docstring says: what only a
    holder of the key could make."""
    payload = b64(orjson.dumps(doc))
    sig = hmac.new(KEY, b"tallyray-portal." + payload.encode(), hashlib.sha256).digest()
    return f"{payload}.{b64(sig)}"


def test_the_documented_signature_scheme_is_the_one_used() -> None:
    assert signed(["v1", "test", "acme", NOW + HOUR]) == GOOD


@pytest.mark.parametrize(
    "doc",
    [
        pytest.param(["v1", "admin", "acme", NOW + HOUR], id="admin env"),
        pytest.param(["v1", "prod", "acme", NOW + HOUR], id="unknown env"),
        pytest.param(["v1", "", "acme", NOW + HOUR], id="empty env"),
        pytest.param(["v1", "test", "", NOW + HOUR], id="empty customer"),
        pytest.param(["v1", "test", 7, NOW + HOUR], id="customer not a string"),
        pytest.param(["v1", "test", "acme", str(NOW + HOUR)], id="expiry as text"),
        pytest.param(["v1", "test", "acme", True], id="expiry a boolean"),
        pytest.param(["v1", "test", "acme"], id="too short"),
        pytest.param({"env": "test"}, id="an object"),
    ],
)
def test_a_signed_but_malformed_payload_is_refused(doc: object) -> None:
    with pytest.raises(InvalidToken):
        read_token(KEY, signed(doc), NOW)


def test_a_token_is_only_issued_for_live_or_test() -> None:
    with pytest.raises(ValueError, match="live or test"):
        issue_token(KEY, "admin", "acme", NOW + HOUR)


def test_the_env_is_bound_by_the_signature() -> None:
    live = issue_token(KEY, "live", "acme", NOW + HOUR)
    test = issue_token(KEY, "test", "acme", NOW + HOUR)
    assert read_token(KEY, live, NOW).env == "live"
    assert read_token(KEY, test, NOW).env == "test"
    assert live.split(".")[1] != test.split(".")[1]
    with pytest.raises(InvalidToken):
        read_token(KEY, f"{test.split('.')[0]}.{live.split('.')[1]}", NOW)


def test_portal_keys_wrap_the_functions_and_want_a_long_key() -> None:
    keys = PortalKeys(KEY)
    token = keys.issue("test", "acme", NOW + HOUR)
    assert token == GOOD and keys.read(token, NOW).customer_id == "acme"
    with pytest.raises(ValueError, match="32 bytes"):
        PortalKeys(b"short")


def test_the_payload_is_readable_but_not_forgeable() -> None:
    assert orjson.loads(unb64(PAYLOAD)) == ["v1", "test", "acme", NOW + HOUR]
