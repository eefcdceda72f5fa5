"""A local Stripe: the few ``/v1`` endpoints Tallyray calls, in Stripe's wire format.

- ``POST /v1/customers`` and ``GET /v1/customers/{id}``
- ``POST /v1/payment_intents`` (form-encoded, nested ``metadata[...]``; ``confirm=true``
  decides the outcome from Stripe's test payment methods, see :data:`DECLINES`) and
  ``GET /v1/payment_intents/{id}``
- ``POST /v1/checkout/sessions`` (``mode=payment``, one ``line_items`` entry with
  ``price_data``) and ``GET /v1/checkout/sessions/{id}``; the session's ``url`` is a hosted
  page served here, ``GET /pay/{id}``: a form with a card number field. Stripe's test cards
  decide (:data:`TEST_CARDS`): a paying card completes the session, sends signed
  ``payment_intent.succeeded`` and ``checkout.session.completed`` events and redirects to the
  ``success_url``; a declining one sends ``payment_intent.payment_failed`` and shows the page
  again with the decline; "Cancel" goes to the ``cancel_url``. :meth:`FakeStripe.expire`
  expires an open session (``checkout.session.expired``).
- ``mode=setup`` sessions save a card instead: the page's "Save card" with a good test card
  makes a PaymentMethod (``pm_…``, attached to the session's customer, charged afterwards as
  the test card it stands for) and a succeeded SetupIntent carrying
  ``setup_intent_data[metadata]``, sends signed ``setup_intent.succeeded`` and
  ``checkout.session.completed`` events and redirects to the ``success_url``.
- ``GET /v1/payment_methods/{id}`` and ``POST /v1/payment_methods/{id}/detach``.

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
import html
import json
import re
import secrets
import threading
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl

from . import LocalServer, Received, Reply

__all__ = ["DECLINES", "TEST_CARDS", "FakeStripe", "sign_stripe_payload"]

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
#: Card numbers typed on the hosted page → the test payment method they stand for.
TEST_CARDS = {
    "4242424242424242": "pm_card_visa",
    "5555555555554444": "pm_card_mastercard",
    "4000000000000002": "pm_card_chargeDeclined",
    "4000000000009995": "pm_card_chargeDeclinedInsufficientFunds",
}
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
        port: int = 0,
    ) -> None:
        super().__init__(port)
        self.api_key = api_key
        #: Stripe's ``livemode``: the key's mode.
        self.livemode = api_key.startswith(("sk_live_", "rk_live_"))
        self.webhook_url = webhook_url
        self.webhook_secret = webhook_secret
        self._clock = clock
        self._state = threading.Lock()
        self._customers: dict[str, dict[str, Any]] = {}
        self._intents: dict[str, dict[str, Any]] = {}
        self._sessions: dict[str, dict[str, Any]] = {}
        self._methods: dict[str, dict[str, Any]] = {}
        self._setup_intents: dict[str, dict[str, Any]] = {}
        self._replies: dict[str, tuple[str, str, dict[str, Any], Reply]] = {}

    @property
    def customers(self) -> dict[str, dict[str, Any]]:
        with self._state:
            return copy.deepcopy(self._customers)

    @property
    def payment_intents(self) -> dict[str, dict[str, Any]]:
        with self._state:
            return copy.deepcopy(self._intents)

    @property
    def payment_methods(self) -> dict[str, dict[str, Any]]:
        with self._state:
            return copy.deepcopy(self._methods)

    @property
    def checkout_sessions(self) -> dict[str, dict[str, Any]]:
        with self._state:
            return copy.deepcopy(self._sessions)

    def outage(self, status: int) -> Reply:
        if status == 429:
            return _error(429, "invalid_request_error", "Too many requests.", code="rate_limit")
        return _error(status, "api_error", "Something went wrong on Stripe's end.")

    # -- routing ---------------------------------------------------------------------------

    def respond(self, request: Received) -> Reply:
        if request.path.startswith("/pay/"):  # the hosted page: the customer's, no API key
            return self._hosted_page(request)
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
        if method == "POST" and path in {
            "/v1/customers",
            "/v1/payment_intents",
            "/v1/checkout/sessions",
        }:
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
        if match := re.fullmatch(r"/v1/payment_methods/(pm_\w+)(/detach)?", path):
            return self._payment_method(method, match.group(1), bool(match.group(2)))
        if method == "GET" and (
            match := re.fullmatch(
                r"/v1/(customers|payment_intents|checkout/sessions)/([\w]+)", path
            )
        ):
            kind, object_id = match.groups()
            with self._state:
                store = {
                    "customers": self._customers,
                    "payment_intents": self._intents,
                    "checkout/sessions": self._sessions,
                }[kind]
                found = copy.deepcopy(store.get(object_id))
            if found is None:
                noun = {"customers": "customer", "payment_intents": "payment_intent"}.get(
                    kind, "checkout.session"
                )
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
        if request.path == "/v1/checkout/sessions":
            return self._create_checkout_session(params)
        return self._create_payment_intent(request, params)

    # -- checkout sessions and their hosted page ------------------------------------------

    def _create_checkout_session(self, params: dict[str, Any]) -> Reply:
        mode = params.get("mode")
        if mode not in ("payment", "setup"):
            return _invalid("mode", "This fake supports mode=payment and mode=setup only.")
        for required in ("success_url", "cancel_url"):
            if not str(params.get(required, "")).startswith(("http://", "https://")):
                return _invalid(required, f"Not a valid URL: {params.get(required)!r}")
        if mode == "setup":
            return self._create_setup_session(params)
        items = params.get("line_items") or {}
        item = items.get("0") if isinstance(items, dict) else None
        price = (item or {}).get("price_data") or {}
        amount, currency = str(price.get("unit_amount", "")), str(price.get("currency", ""))
        if not amount.isdigit() or int(amount) <= 0:
            return _invalid("line_items[0][price_data][unit_amount]", "Invalid positive integer")
        if not currency or currency != currency.lower():
            return _invalid("line_items[0][price_data][currency]", f"Invalid currency: {currency}.")
        quantity = int(item.get("quantity", "1")) if item else 1
        return self._new_session(
            params,
            currency,
            payment_status="unpaid",
            amount_subtotal=int(amount) * quantity,
            amount_total=int(amount) * quantity,
            customer_email=params.get("customer_email"),
            payment_intent=None,
            _intent_metadata=(params.get("payment_intent_data") or {}).get("metadata", {}),
            _product=((price.get("product_data") or {}).get("name")) or "",
        )

    def _new_session(self, params: dict[str, Any], currency: str, **fields: Any) -> Reply:
        """An open Checkout Session of ``params["mode"]``, with the mode's own ``fields``."""
        session_id = f"cs_{'live' if self.livemode else 'test'}_{secrets.token_hex(12)}"
        session: dict[str, Any] = {
            "id": session_id,
            "object": "checkout.session",
            "mode": params["mode"],
            "status": "open",
            "currency": currency,
            "customer": params.get("customer"),
            "client_reference_id": params.get("client_reference_id"),
            "metadata": params.get("metadata", {}),
            "success_url": params["success_url"],
            "cancel_url": params["cancel_url"],
            "url": f"{self.url}/pay/{session_id}",
            "livemode": self.livemode,
            "created": int(self._clock()),
            "expires_at": int(self._clock()) + 86_400,
            **fields,
        }
        with self._state:
            self._sessions[session_id] = session
        return Reply.of_json(200, _public(session))

    def expire(self, session_id: str) -> None:
        """Expire an open session, as Stripe does after 24 hours: a signed
        ``checkout.session.expired`` event."""
        with self._state:
            session = self._sessions[session_id]
            assert session["status"] == "open", session["status"]
            session["status"] = "expired"
            public = _public(session)
        self._send_event("checkout.session.expired", public, None)

    def _hosted_page(self, request: Received) -> Reply:
        match = re.fullmatch(r"/pay/(cs_\w+)", request.path)
        with self._state:
            session = copy.deepcopy(self._sessions.get(match.group(1))) if match else None
        if session is None:
            return Reply(404, b"<h1>Not found</h1>", {"Content-Type": "text/html"})
        if session["status"] != "open":
            return _html(200, f"<h1>This checkout session is {session['status']}</h1>")
        form = _setup_form if session["mode"] == "setup" else _payment_form
        if request.method == "GET":
            return _html(200, form(session, None))
        entered = dict(parse_qsl(request.body.decode(), keep_blank_values=True))
        if entered.get("action") == "cancel":
            return Reply(303, b"", {"Location": session["cancel_url"]})
        number = entered.get("card_number", "").replace(" ", "")
        method = TEST_CARDS.get(number)
        if method is None:
            return _html(200, form(session, "Your card number is invalid."))
        if session["mode"] == "setup":
            return self._save_card(session, number, method)
        intent = self._session_intent(session, method)
        if intent["status"] != "succeeded":
            error = intent["last_payment_error"] or {}
            return _html(200, form(session, str(error.get("message", "Declined."))))
        with self._state:
            stored = self._sessions[session["id"]]
            stored.update(status="complete", payment_status="paid", payment_intent=intent["id"])
            public = _public(stored)
        self._send_event("checkout.session.completed", public, None)
        return Reply(303, b"", {"Location": session["success_url"]})

    def _session_intent(self, session: dict[str, Any], method: str) -> dict[str, Any]:
        """A PaymentIntent for the session, confirmed with ``method``; its events sent."""
        intent: dict[str, Any] = {
            "id": (intent_id := session.get("payment_intent") or _id("pi")),
            "object": "payment_intent",
            "amount": session["amount_total"],
            "amount_received": 0,
            "currency": session["currency"],
            "customer": session.get("customer"),
            "payment_method": method,
            "description": session["_product"],
            "metadata": dict(session["_intent_metadata"]),
            "created": int(self._clock()),
            "last_payment_error": None,
            "livemode": self.livemode,
            "status": "requires_payment_method",
        }
        if method in SUCCEEDS:
            intent.update(status="succeeded", amount_received=intent["amount"])
            event_type = "payment_intent.succeeded"
        else:
            code, decline_code, message = DECLINES[method]
            intent["last_payment_error"] = {
                "type": "card_error",
                "code": code,
                "decline_code": decline_code,
                "message": message,
            }
            event_type = "payment_intent.payment_failed"
        with self._state:
            self._intents[intent_id] = copy.deepcopy(intent)
            self._sessions[session["id"]]["payment_intent"] = intent_id
        self._send_event(event_type, intent, None)
        return intent

    # -- saving cards (mode=setup) and payment methods -----------------------------------

    def _create_setup_session(self, params: dict[str, Any]) -> Reply:
        currency = str(params.get("currency", ""))
        if not currency or currency != currency.lower():
            return _invalid("currency", f"Invalid currency: {currency}.")
        customer = params.get("customer")
        with self._state:
            known = customer in self._customers
        if not known:
            return _invalid("customer", f"No such customer: '{customer}'")
        return self._new_session(
            params,
            currency,
            payment_status="no_payment_required",
            setup_intent=None,
            _setup_metadata=(params.get("setup_intent_data") or {}).get("metadata", {}),
        )

    def _save_card(self, session: dict[str, Any], number: str, behaves_as: str) -> Reply:
        """The setup page's card was entered: a PaymentMethod and a succeeded SetupIntent."""
        if behaves_as == "pm_card_chargeDeclined":  # declines a setup too
            return _html(200, _setup_form(session, "Your card was declined."))
        method = {
            "id": _id("pm"),
            "object": "payment_method",
            "type": "card",
            "card": {
                "brand": "mastercard" if number.startswith("5") else "visa",
                "last4": number[-4:],
                "exp_month": 12,
                "exp_year": 2030,
                "country": "US",
                "funding": "credit",
            },
            "customer": session["customer"],
            "livemode": self.livemode,
            "created": int(self._clock()),
            "_behaves_as": behaves_as,
        }
        intent = {
            "id": _id("seti"),
            "object": "setup_intent",
            "status": "succeeded",
            "usage": "off_session",
            "customer": session["customer"],
            "payment_method": method["id"],
            "metadata": dict(session["_setup_metadata"]),
            "livemode": self.livemode,
            "created": int(self._clock()),
        }
        with self._state:
            self._methods[method["id"]] = method
            self._setup_intents[intent["id"]] = intent
            stored = self._sessions[session["id"]]
            stored.update(status="complete", setup_intent=intent["id"])
            public = _public(stored)
        self._send_event("setup_intent.succeeded", copy.deepcopy(intent), None)
        self._send_event("checkout.session.completed", public, None)
        return Reply(303, b"", {"Location": session["success_url"]})

    def _payment_method(self, method: str, method_id: str, detach: bool) -> Reply:
        with self._state:
            found = self._methods.get(method_id)
            if found is not None and detach and method == "POST":
                if found["customer"] is None:
                    return _error(
                        400,
                        "invalid_request_error",
                        "The payment method you provided is not attached to a customer so "
                        "detachment is impossible.",
                    )
                found["customer"] = None
            shown = None if found is None else _public(found)
        if shown is None or (method == "POST") != detach:
            return _error(
                404,
                "invalid_request_error",
                f"No such PaymentMethod: '{method_id}'",
                code="resource_missing",
                param="payment_method",
            )
        return Reply.of_json(200, shown)

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
        saved = params.get("payment_method")
        with self._state:
            card = self._methods.get(str(saved))
        if card is not None:  # a saved card is charged as the test card it stands for
            params = {**params, "payment_method": card["_behaves_as"]}
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
        self._send_event(event_type, intent, request.headers.get("idempotency-key"))

    def _send_event(
        self, event_type: str, obj: dict[str, Any], idempotency_key: str | None
    ) -> None:
        if self.webhook_url is None or self.webhook_secret is None:
            return
        now = int(self._clock())
        event = {
            "id": _id("evt"),
            "object": "event",
            "api_version": API_VERSION,
            "created": now,
            "data": {"object": obj},
            "livemode": self.livemode,
            "pending_webhooks": 1,
            "request": {"id": _id("req"), "idempotency_key": idempotency_key},
            "type": event_type,
        }
        body = json.dumps(event).encode()
        headers = {
            "Content-Type": "application/json; charset=utf-8",
            "User-Agent": "Stripe/1.0 (+https://stripe.com/docs/webhooks)",
            "Stripe-Signature": sign_stripe_payload(body, self.webhook_secret, now),
        }
        self.send_webhook(self.webhook_url, headers, body)


def _invalid(param: str, message: str) -> Reply:
    return _error(400, "invalid_request_error", message, param=param)


def _id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(12)}"


def _public(session: dict[str, Any]) -> dict[str, Any]:
    """A session as the API shows it (without this fake's own bookkeeping)."""
    return {k: v for k, v in session.items() if not k.startswith("_")}


def _html(status: int, body: str) -> Reply:
    return Reply(status, body.encode(), {"Content-Type": "text/html; charset=utf-8"})


def _payment_form(session: dict[str, Any], error: str | None) -> str:
    """The hosted page: what is paid, a card number, Pay and Cancel."""
    amount = session["amount_total"]
    currency = session["currency"].upper()
    digits = (
        0 if currency.lower() in {"jpy", "krw"} else 3 if currency.lower() in THREE_DECIMAL else 2
    )
    shown = f"{amount / 10**digits:.{digits}f} {currency}"
    heading = f"<h1>Pay {html.escape(shown)}</h1><p>{html.escape(session['_product'])}</p>"
    return _card_form(session, error, "Pay", heading, ("pay", "Pay"))


def _setup_form(session: dict[str, Any], error: str | None) -> str:
    """The hosted page of a setup session: a card number, Save card and Cancel."""
    heading = "<h1>Save a card for future payments</h1>"
    return _card_form(session, error, "Save a card", heading, ("save", "Save card"))


def _card_form(
    session: dict[str, Any], error: str | None, title: str, heading: str, submit: tuple[str, str]
) -> str:
    problem = f'<p role="alert" id="card-error">{html.escape(error)}</p>' if error else ""
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        f"<title>{title} · Stripe test mode</title></head><body>{heading}{problem}"
        f'<form method="post" action="/pay/{session["id"]}">'
        '<label for="card_number">Card number</label>'
        '<input id="card_number" name="card_number" autocomplete="off">'
        f'<button type="submit" name="action" value="{submit[0]}">{submit[1]}</button>'
        '<button type="submit" name="action" value="cancel">Cancel</button>'
        "</form></body></html>"
    )
