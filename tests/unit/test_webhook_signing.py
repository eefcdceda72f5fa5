"""Webhook signatures, checked by an independent Standard Webhooks verifier (the
``standardwebhooks`` package), and the retry schedule."""

from __future__ import annotations

import base64
import itertools
import time

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from tallyray.alerts.deliverer import message_body
from tallyray.alerts.schedule import (
    EVENT_TYPES,
    SUBSCRIBABLE_TYPES,
    TEST_EVENT,
    RetrySchedule,
)
from tallyray.alerts.signing import SECRET_PREFIX, headers, new_secret, secret_key, sign
from tallyray.errors import ConfigError

HOUR = 3600.0

# -- signing -------------------------------------------------------------------------------


def test_the_spec_test_vector() -> None:
    # From the Standard Webhooks reference libraries' tests.
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    body = b'{"test": 2432232314}'
    assert (
        sign(secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body)
        == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    )


@pytest.mark.parametrize(
    ("msg_id", "body"),
    [
        ("msg_1", b'{"type":"webhook.test","data":{}}'),
        ("alert:test:acme:alr_1:1764547200000000:1:triggered", b'{"value":"62.5"}'),
        ("invoice.paid:inv_01", '{"name":"Müller GmbH","amount":"€ 1.00"}'.encode()),
        ("payment.failed:inv_01:3", b""),
    ],
)
def test_our_signatures_verify_with_standardwebhooks(msg_id: str, body: bytes) -> None:
    secret = new_secret()
    sent = headers(secret, msg_id, int(time.time()), body)
    assert set(sent) == {"webhook-id", "webhook-timestamp", "webhook-signature"}
    assert sent["webhook-id"] == msg_id
    Webhook(secret).verify(body, sent, json_parse=False)  # raises when wrong


def test_a_real_message_body_verifies_and_parses() -> None:
    secret = new_secret()
    payload = {"customer_id": "acme", "currency": "EUR", "value": "62.5"}
    body = message_body("alert.triggered", 1_764_547_200_000_000, payload)
    sent = headers(secret, "alert:x", int(time.time()), body)
    assert Webhook(secret).verify(body, sent) == {
        "type": "alert.triggered",
        "timestamp": "2025-12-01T00:00:00Z",
        "data": payload,
    }


@pytest.mark.parametrize(
    "tamper",
    [
        "body",  # one byte of the body changed
        "id",  # the signature of another message
        "secret",  # signed with another endpoint's secret
        "stale",  # signed 10 minutes ago (receivers allow 5)
    ],
)
def test_standardwebhooks_rejects_what_does_not_match(tamper: str) -> None:
    secret, body, now = new_secret(), b'{"a":1}', int(time.time())
    sent = headers(
        new_secret() if tamper == "secret" else secret,
        "msg_1",
        now - 600 if tamper == "stale" else now,
        body,
    )
    if tamper == "id":
        sent["webhook-id"] = "msg_2"
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(b'{"a":2}' if tamper == "body" else body, sent)


def test_secrets_are_whsec_and_base64_of_32_random_bytes() -> None:
    made = {new_secret() for _ in range(50)}
    assert len(made) == 50
    for secret in made:
        assert secret.startswith(SECRET_PREFIX)
        assert len(base64.b64decode(secret[len(SECRET_PREFIX) :])) == 32 >= 24
        assert secret_key(secret) == base64.b64decode(secret[6:])
    assert new_secret(lambda n: b"\x00" * n) == "whsec_" + "A" * 43 + "="


@pytest.mark.parametrize("bad", ["abc", "whsec_", "whsec_not base64!", "sk_" + "A" * 44])
def test_a_malformed_secret_is_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        secret_key(bad)


# -- event types ---------------------------------------------------------------------------


def test_event_types() -> None:
    assert EVENT_TYPES == (
        "alert.triggered",
        "alert.recovered",
        "credits.depleted",
        "invoice.finalized",
        "invoice.paid",
        "payment.failed",
        "recharge.succeeded",
        "recharge.failed",
        "recharge.capped",
        "recharge.disabled",
        "usage.unpriced",
        "webhook.test",
    )
    assert TEST_EVENT not in SUBSCRIBABLE_TYPES
    assert set(SUBSCRIBABLE_TYPES) | {TEST_EVENT} == set(EVENT_TYPES)


# -- the retry schedule --------------------------------------------------------------------


def test_the_default_schedule() -> None:
    schedule = RetrySchedule()
    assert schedule.delays == (5, 300, 1800, 7200, 18000, 36000, 50400)
    assert schedule.attempts == 8
    # 5 s + 5 min + 30 min + 2 h + 5 h + 10 h + 14 h = 113,705 s = 31.6 h;
    # with every wait 20% short: 90,964 s = 25.3 h — still more than a day
    shortest, longest = schedule.span()
    assert (shortest, longest) == pytest.approx((90_964.0, 136_446.0))
    assert shortest >= 24 * HOUR


@pytest.mark.parametrize(
    ("failed", "draw", "wait"),
    [
        (1, 0.5, 5.0),  # no jitter at the middle of the draw
        (1, 0.0, 4.0),  # 5 s × 0.8
        (1, 0.999_999, 6.0),  # 5 s × 1.2 (just under)
        (2, 0.25, 270.0),  # 5 min × 0.9
        (4, 0.75, 7920.0),  # 2 h × 1.1
        (7, 0.0, 40_320.0),  # 14 h × 0.8
        (8, 0.5, None),  # the 8th failure was the last attempt
    ],
)
def test_each_wait_and_its_jitter(failed: int, draw: float, wait: float | None) -> None:
    got = RetrySchedule().delay(failed, lambda: draw)
    assert got == (None if wait is None else pytest.approx(wait, abs=1e-3))


def test_jitter_stays_within_twenty_percent() -> None:
    schedule = RetrySchedule()
    draws = itertools.cycle([0.0, 0.1, 0.37, 0.5, 0.81, 0.999_999])
    for failed, base in enumerate(schedule.delays, start=1):
        for _ in range(6):
            wait = schedule.delay(failed, lambda: next(draws))
            assert wait is not None
            assert 0.8 * base <= wait < 1.2 * base


def test_next_attempt_is_in_microseconds_after_now() -> None:
    now = 1_764_547_200_000_000
    assert RetrySchedule().next_attempt_at(now, 2, lambda: 0.5) == now + 300_000_000
    assert RetrySchedule().next_attempt_at(now, 8, lambda: 0.5) is None


@pytest.mark.parametrize(
    ("text", "delays"),
    [
        ("5s,5m,30m,2h,5h,10h,14h", (5, 300, 1800, 7200, 18000, 36000, 50400)),
        ("500ms, 1, 1.5m, 1d", (0.5, 1, 90, 86400)),
        ("", ()),  # one attempt, no retries
    ],
)
def test_a_schedule_from_settings_text(text: str, delays: tuple[float, ...]) -> None:
    assert RetrySchedule.parse(text).delays == delays


@pytest.mark.parametrize("text", ["5s,soon", "5 minutes", "-5s", "0s"])
def test_a_bad_schedule_is_a_config_error(text: str) -> None:
    with pytest.raises(ConfigError):
        RetrySchedule.parse(text)
