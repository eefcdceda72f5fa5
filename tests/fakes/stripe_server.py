"""A local Stripe: the few ``/v1`` endpoints Tallyray calls, in Stripe's wire format.

- ``POST /v1/customers`` and ``GET /v1/customers/{id}``
- ``POST /v1/payment_intents`` (form-encoded, nested ``metadata[...]``; ``confirm=true``
  decides the outcome from Stripe's test payment methods, see :data:`DECLINES`) and
  ``GET /v1/payment_intents/{id}``

Every request needs ``Authorization: Bearer <api_key>``, and, as at Stripe, the key decides the
mode: with a live key (``sk_live_``, ``rk_live_``) every object and event says ``livemode: true``,
with a test key ``false``. POSTs honour ``Idempotency-Key`` (the
same key and parameters replay the first answer, other parameters are an
``idempotency_error``). With ``webhook_url`` and ``webhook_secret`` the fake posts a signed
``payment_intent.*`` event after each confirmation, as Stripe does, from its own thread.

Signatures follow Stripe's documented scheme (``Stripe-Signature: t=<unix>,v1=<hex>``, the
HMAC-SHA256 of ``"<t>.<body>"`` keyed with the endpoint secret), written out here rather than
borrowed from the SDK, so the adapter's verification is tested against the documentation.
"""

from __future__ import annotations

import copy
import hashlib
import hmac
import json
import re
import secrets
import threading
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl

from . import LocalServer, Received, Reply

__all__ = ["DECLINES", "FakeStripe", "sign_stripe_payload"]

#: Stripe test payment methods that decline: (code, decline_code, message).
DECLINES = {
    "pm_card_chargeDeclined": ("card_declined", "generic_decline", "Your card was declined."),
    "pm_card_chargeDeclinedInsufficientFunds": (
        "card_declined",
        "insufficient_funds",
        "Your card has insufficient funds.",
    ),
    "pm_card_chargeDeclinedExpiredCard": ("expired_card", None, "Your card has expired."),
}
SUCCEEDS = frozenset({"pm_card_visa", "pm_card_mastercard"})
REQUIRES_ACTION = frozenset({"pm_card_authenticationRequired"})
THREE_DECIMAL = frozenset({"bhd", "jod", "kwd", "omr", "tnd"})
API_VERSION = "2025-01-27.acacia"


def sign_stripe_payload(body: bytes, secret: str, timestamp: int) -> str:
    """The ``Stripe-Signature`` header value for ``body`` sent at ``timestamp``."""
    signed = str(timestamp).encode() + b"." + body
    digest = hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def decode_form(body: bytes) -> dict[str, Any]:
    """Stripe's form encoding, ``metadata[invoice]=x`` → ``{"metadata": {"invoice": "x"}}``."""
    result: dict[str, Any] = {}
    for key, value in parse_qsl(body.decode(), keep_blank_values=True, strict_parsing=False):
        head, *rest = re.split(r"\[", key)
        path = [head, *(part.rstrip("]") for part in rest)]
        node = result
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = value
    return result


def _error(status: int, kind: str, message: str, **fields: Any) -> Reply:
    return Reply.of_json(status, {"error": {"type": kind, "message": message, **fields}})


class FakeStripe(LocalServer):
    """A Stripe API on 127.0.0.1. ``url`` is what ``StripeProvider(api_base=...)`` takes.

    One fake serves one key, so one mode: run two for a live and a test account.
    """

    def __init__(
        self,
        api_key: str = "sk_test_tallyray",
        *,
        webhook_url: str | None = None,
        webhook_secret: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__()
        self.api_key = api_key
        #: Stripe's ``livemode``: the key's mode.
        self.livemode = api_key.startswith(("sk_live_", "rk_live_"))
        self.webhook_url = webhook_url
        self.webhook_secret = webhook_secret
        self._clock = clock
        self._state = threading.Lock()
        self._customers: dict[str, dict[str, Any]] = {}
        self._intents: dict[str, dict[str, Any]] = {}
        self._replies: dict[str, tuple[str, str, dict[str, Any], Reply]] = {}

    @property
    def customers(self) -> dict[str, dict[str, Any]]:
        with self._state:
            return copy.deepcopy(self._customers)

    @property
    def payment_intents(self) -> dict[str, dict[str, Any]]:
        with self._state:
            return copy.deepcopy(self._intents)

    def outage(self, status: int) -> Reply:
        if status == 429:
            return _error(429, "invalid_request_error", "Too many requests.", code="rate_limit")
        return _error(status, "api_error", "Something went wrong on Stripe's end.")

    # -- routing ---------------------------------------------------------------------------

    def respond(self, request: Received) -> Reply:
        reply = self._authorized(request) or self._route(request)
        return Reply(
            reply.status,
            reply.body,
            {**reply.headers, "Request-Id": _id("req"), "Stripe-Version": API_VERSION},
        )

    def _authorized(self, request: Received) -> Reply | None:
        auth = request.headers.get("authorization", "")
        if not auth:
            return _error(
                401,
                "invalid_request_error",
                "You did not provide an API key. You need to provide your API key in the "
                "Authorization header, using Bearer auth (e.g. 'Authorization: Bearer "
                "YOUR_SECRET_KEY').",
            )
        key = auth.removeprefix("Bearer ").strip()
        if key != self.api_key:
            return _error(
                401, "invalid_request_error", f"Invalid API Key provided: {key[:8]}****{key[-4:]}"
            )
        return None

    def _route(self, request: Received) -> Reply:
        method, path = request.method, request.path
        if method == "POST" and path in {"/v1/customers", "/v1/payment_intents"}:
            params = decode_form(request.body)
            key = request.headers.get("idempotency-key")
            if key is None:
                return self._create(request, params)
            with self._state:
                earlier = self._replies.get(key)
            if earlier is not None:
                if earlier[:3] != (method, path, params):
                    return _error(
                        400,
                        "idempotency_error",
                        "Keys for idempotent requests can only be used with the same parameters "
                        f"they were first used with. Try using a key other than '{key}' if you "
                        "meant to execute a different request.",
                    )
                reply = earlier[3]
                return Reply(
                    reply.status, reply.body, {**reply.headers, "Idempotent-Replayed": "true"}
                )
            reply = self._create(request, params)
            with self._state:
                self._replies.setdefault(key, (method, path, params, reply))
            return reply
        if method == "GET" and (
            match := re.fullmatch(r"/v1/(customers|payment_intents)/([\w]+)", path)
        ):
            kind, object_id = match.groups()
            with self._state:
                store = self._customers if kind == "customers" else self._intents
                found = copy.deepcopy(store.get(object_id))
            if found is None:
                noun = "customer" if kind == "customers" else "payment_intent"
                return _error(
                    404,
                    "invalid_request_error",
                    f"No such {noun}: '{object_id}'",
                    code="resource_missing",
                    param="id",
                )
            return Reply.of_json(200, found)
        return _error(
            404,
            "invalid_request_error",
            f"Unrecognized request URL ({method}: {path}). Please see https://stripe.com/docs "
            "or we can help at https://support.stripe.com/.",
        )

    def _create(self, request: Received, params: dict[str, Any]) -> Reply:
        if request.path == "/v1/customers":
            return self._create_customer(params)
        return self._create_payment_intent(request, params)

    # -- customers -------------------------------------------------------------------------

    def _create_customer(self, params: dict[str, Any]) -> Reply:
        customer = {
            "id": _id("cus"),
            "object": "customer",
            "created": int(self._clock()),
            "email": params.get("email"),
            "name": params.get("name"),
            "description": params.get("description"),
            "metadata": params.get("metadata", {}),
            "livemode": self.livemode,
        }
        with self._state:
            self._customers[customer["id"]] = customer
        return Reply.of_json(200, customer)

    # -- payment intents -------------------------------------------------------------------

    def _create_payment_intent(self, request: Received, params: dict[str, Any]) -> Reply:
        invalid = self._invalid_payment_intent(params)
        if invalid is not None:
            return invalid
        method = params.get("payment_method")
        intent: dict[str, Any] = {
            "id": (intent_id := _id("pi")),
            "object": "payment_intent",
            "amount": int(params["amount"]),
            "amount_received": 0,
            "currency": params["currency"],
            "customer": params.get("customer"),
            "payment_method": method,
            "description": params.get("description"),
            "metadata": params.get("metadata", {}),
            "client_secret": f"{intent_id}_secret_{secrets.token_hex(8)}",
            "confirmation_method": "automatic",
            "capture_method": "automatic",
            "created": int(self._clock()),
            "last_payment_error": None,
            "next_action": None,
            "livemode": self.livemode,
            "status": "requires_payment_method" if method is None else "requires_confirmation",
        }
        reply: Reply
        event_type: str | None = None
        if params.get("confirm") != "true":
            reply = Reply.of_json(200, intent)
        elif method in SUCCEEDS:
            intent.update(
                status="succeeded", amount_received=intent["amount"], latest_charge=_id("ch")
            )
            reply, event_type = Reply.of_json(200, intent), "payment_intent.succeeded"
        elif method in REQUIRES_ACTION:
            intent.update(
                status="requires_action",
                next_action={
                    "type": "use_stripe_sdk",
                    "use_stripe_sdk": {"type": "three_d_secure_redirect"},
                },
            )
            reply, event_type = Reply.of_json(200, intent), "payment_intent.requires_action"
        else:
            code, decline_code, message = DECLINES[str(method)]
            error = {
                "type": "card_error",
                "code": code,
                "message": message,
                "charge": _id("ch"),
                "doc_url": f"https://stripe.com/docs/error-codes/{code.replace('_', '-')}",
                **({"decline_code": decline_code} if decline_code else {}),
            }
            intent.update(
                status="requires_payment_method",
                last_payment_error=dict(error, payment_method={"id": method}),
            )
            reply = Reply.of_json(402, {"error": {**error, "payment_intent": intent}})
            event_type = "payment_intent.payment_failed"
        with self._state:
            self._intents[intent_id] = copy.deepcopy(intent)
        if event_type is not None:
            self._notify(event_type, intent, request)
        return reply

    def _invalid_payment_intent(self, params: dict[str, Any]) -> Reply | None:
        def invalid(param: str, message: str, code: str = "parameter_invalid_integer") -> Reply:
            return _error(400, "invalid_request_error", message, param=param, code=code)

        amount, currency = params.get("amount", ""), params.get("currency", "")
        if not amount.isdigit() or int(amount) <= 0:
            return invalid("amount", "Invalid positive integer")
        if not currency or currency != currency.lower():
            return invalid("currency", f"Invalid currency: {currency}.", "invalid_currency")
        if currency in THREE_DECIMAL and int(amount) % 10:
            return invalid(
                "amount",
                f"Invalid amount: {currency.upper()} amounts must be divisible by 10.",
                "invalid_charge_amount",
            )
        if currency == "isk" and int(amount) % 100:
            return invalid(
                "amount",
                "Invalid amount. Currency ISK has become effectively zero-decimal and charged "
                "amounts must be evenly divisible by 100.",
                "invalid_charge_amount_no_decimal_compatible",
            )
        customer = params.get("customer")
        with self._state:
            known = customer is None or customer in self._customers
        if not known:
            return invalid("customer", f"No such customer: '{customer}'", "resource_missing")
        method = params.get("payment_method")
        if params.get("confirm") == "true" and method is None:
            return invalid(
                "payment_method",
                "You cannot confirm this PaymentIntent because it's missing a payment method.",
                "payment_intent_unexpected_state",
            )
        if method is not None and method not in SUCCEEDS | REQUIRES_ACTION | DECLINES.keys():
            return invalid(
                "payment_method", f"No such PaymentMethod: '{method}'", "resource_missing"
            )
        return None

    # -- webhooks --------------------------------------------------------------------------

    def _notify(self, event_type: str, intent: dict[str, Any], request: Received) -> None:
        if self.webhook_url is None or self.webhook_secret is None:
            return
        now = int(self._clock())
        event = {
            "id": _id("evt"),
            "object": "event",
            "api_version": API_VERSION,
            "created": now,
            "data": {"object": intent},
            "livemode": self.livemode,
            "pending_webhooks": 1,
            "request": {
                "id": _id("req"),
                "idempotency_key": request.headers.get("idempotency-key"),
            },
            "type": event_type,
        }
        body = json.dumps(event).encode()
        headers = {
            "Content-Type": "application/json; charset=utf-8",
            "User-Agent": "Stripe/1.0 (+https://stripe.com/docs/webhooks)",
            "Stripe-Signature": sign_stripe_payload(body, self.webhook_secret, now),
        }
        self.send_webhook(self.webhook_url, headers, body)


def _id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(12)}"
