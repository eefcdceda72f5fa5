"""A local Adyen Checkout: ``POST /v<N>/payments`` and ``POST /v<N>/sessions`` in Adyen's
wire format.

``/sessions`` with ``mode: hosted`` answers with the session's ``id``, ``sessionData`` and
``url``, a hosted page served here (``GET /checkoutshopper/{id}``): a form with the card
number and holder name. Adyen's test conventions decide: holder name ``DECLINED`` is refused,
any known test card (:data:`TEST_CARDS`) otherwise authorised. Either way an HMAC-signed
``AUTHORISATION`` notification (``merchantReference`` = the session's ``reference``) is sent;
an authorised payment redirects to ``returnUrl`` with ``sessionId`` and ``sessionResult``.
A session with ``storePaymentMethod: true`` may have a zero amount (a card check); once
authorised it also stores the card and sends ``RECURRING_CONTRACT`` (its ``pspReference`` the
stored payment method id, ``additionalData`` with ``cardSummary``, ``expiryDate``,
``paymentMethodVariant``). ``DELETE /v<N>/storedPaymentMethods/{id}`` forgets a stored card.

Requests need the ``X-API-Key`` header and this fake's merchant account; ``Idempotency-Key``
replays the first answer. The outcome comes from ``paymentMethod.storedPaymentMethodId``
(see :data:`OUTCOMES`; anything else is ``Authorised``). With ``webhook_url`` and
``hmac_key`` the fake then posts a standard ``AUTHORISATION`` notification, as Adyen does.

HMAC signatures follow Adyen's documented scheme for standard notifications: the values of
``pspReference:originalReference:merchantAccountCode:merchantReference:value:currency:eventCode:success``
(empty for a missing field), HMAC-SHA256 with the hex-decoded key, base64. They are computed
here, not by the SDK, so the adapter's check is tested against the documentation.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import hmac
import html
import json
import re
import secrets
import threading
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl, urlencode

from . import LocalServer, Received, Reply

__all__ = [
    "OUTCOMES",
    "TEST_CARDS",
    "FakeAdyen",
    "notification_item",
    "sign_adyen_item",
    "signed_notification",
]

#: storedPaymentMethodId → (resultCode, refusalReason, refusalReasonCode).
OUTCOMES: dict[str, tuple[str, str | None, str | None]] = {
    "refused": ("Refused", "Refused", "2"),
    "insufficient": ("Refused", "Not enough balance", "12"),
    "error": ("Error", "Acquirer Error", "4"),
    "pending": ("Pending", None, None),
    "received": ("Received", None, None),
}
#: Adyen's test card numbers this fake's hosted page takes.
TEST_CARDS = frozenset({"4111111145551142", "5555444433331111", "4988438843884305"})
SIGNED_FIELDS = (
    "pspReference",
    "originalReference",
    "merchantAccountCode",
    "merchantReference",
    "value",
    "currency",
    "eventCode",
    "success",
)


def sign_adyen_item(item: dict[str, Any], hmac_key_hex: str) -> str:
    """The ``additionalData.hmacSignature`` of one ``NotificationRequestItem``."""
    amount = item.get("amount") or {}
    values = {**item, "value": amount.get("value", ""), "currency": amount.get("currency", "")}
    signing = ":".join(str(values.get(name, "")) for name in SIGNED_FIELDS)
    digest = hmac.new(bytes.fromhex(hmac_key_hex), signing.encode(), hashlib.sha256).digest()
    return base64.b64encode(digest).decode()


def notification_item(
    *,
    psp_reference: str,
    merchant_reference: str,
    value: int,
    currency: str,
    event_code: str = "AUTHORISATION",
    success: bool = True,
    merchant_account: str = "TallyrayTest",
    reason: str = "",
) -> dict[str, Any]:
    """An unsigned ``NotificationRequestItem``."""
    return {
        "additionalData": {},
        "amount": {"currency": currency, "value": value},
        "eventCode": event_code,
        "eventDate": datetime.now(UTC).isoformat(timespec="seconds"),
        "merchantAccountCode": merchant_account,
        "merchantReference": merchant_reference,
        "paymentMethod": "visa",
        "pspReference": psp_reference,
        "reason": reason,
        "success": "true" if success else "false",
    }


def signed_notification(
    items: list[dict[str, Any]], hmac_key_hex: str, live: bool = False
) -> bytes:
    """A standard notification body with every item signed."""
    signed = []
    for item in items:
        item = copy.deepcopy(item)
        item["additionalData"] = {
            **item.get("additionalData", {}),
            "hmacSignature": sign_adyen_item(item, hmac_key_hex),
        }
        signed.append({"NotificationRequestItem": item})
    return json.dumps({"live": "true" if live else "false", "notificationItems": signed}).encode()


def _error(status: int, code: str, message: str, kind: str) -> Reply:
    payload = {"status": status, "errorCode": code, "message": message, "errorType": kind}
    return Reply.of_json(status, payload)


class FakeAdyen(LocalServer):
    """An Adyen Checkout API on 127.0.0.1. ``url`` is what ``AdyenProvider(api_base=...)`` takes."""

    def __init__(
        self,
        api_key: str = "AQE_test_tallyray",
        merchant_account: str = "TallyrayTest",
        *,
        webhook_url: str | None = None,
        hmac_key: str | None = None,
        live: bool = False,
        port: int = 0,
    ) -> None:
        super().__init__(port)
        self.api_key = api_key
        self.merchant_account = merchant_account
        self.webhook_url = webhook_url
        self.hmac_key = hmac_key
        self.live = live
        self._state = threading.Lock()
        self._replies: dict[str, tuple[Any, Reply]] = {}
        self._sessions: dict[str, dict[str, Any]] = {}
        #: storedPaymentMethodId → (shopperReference, card number) of the cards stored.
        self.stored_cards: dict[str, tuple[str | None, str]] = {}

    def outage(self, status: int) -> Reply:
        return _error(status, "905", "Payment details are not supported", "internal")

    @property
    def sessions(self) -> dict[str, dict[str, Any]]:
        with self._state:
            return copy.deepcopy(self._sessions)

    def respond(self, request: Received) -> Reply:
        if request.path.startswith("/checkoutshopper/"):  # the shopper's page: no API key
            return self._hosted_page(request)
        if request.headers.get("x-api-key") != self.api_key:
            return _error(401, "000", "HTTP Status Response - Unauthorized", "security")
        if request.method == "POST" and re.fullmatch(r"/v\d+/sessions", request.path):
            return self._idempotent(request, self._session)
        stored = re.fullmatch(r"/v\d+/storedPaymentMethods/(\w+)", request.path)
        if request.method == "DELETE" and stored:
            with self._state:
                known = self.stored_cards.pop(stored.group(1), None)
            if known is None:
                return _error(404, "000", "Stored payment method not found", "validation")
            return Reply(204)
        if request.method != "POST" or not re.fullmatch(r"/v\d+/payments", request.path):
            return _error(404, "000", f"Not found: {request.method} {request.path}", "validation")
        try:
            body = json.loads(request.body)
        except ValueError:
            return _error(
                400,
                "702",
                "Structure of PaymentRequest contains the following unknown fields",
                "validation",
            )
        return self._idempotent(request, self._payment, body)

    def _idempotent(
        self, request: Received, make: Any, body: dict[str, Any] | None = None
    ) -> Reply:
        if body is None:
            try:
                body = json.loads(request.body)
            except ValueError:
                return _error(400, "702", "Unable to parse the request body", "validation")
        key = request.headers.get("idempotency-key")
        if key is not None:
            with self._state:
                earlier = self._replies.get(key)
            if earlier is not None:
                if earlier[0] != body:
                    return _error(
                        422, "704", "request already processed or in progress", "validation"
                    )
                return earlier[1]
        reply: Reply = make(body)
        if key is not None and reply.status < 500:
            with self._state:
                self._replies.setdefault(key, (body, reply))
        return reply

    # -- sessions and the hosted page ------------------------------------------------------

    def _session(self, body: dict[str, Any]) -> Reply:
        if body.get("merchantAccount") != self.merchant_account:
            return _error(403, "901", "Invalid Merchant Account", "security")
        for required in ("amount", "reference", "returnUrl"):
            if required not in body:
                return _error(
                    422, "100", f"Required field '{required}' is not provided.", "validation"
                )
        amount = body["amount"]
        least = 0 if body.get("storePaymentMethod") is True else 1
        if not isinstance(amount.get("value"), int) or amount["value"] < least:
            return _error(422, "137", "Invalid amount specified", "validation")
        session_id = "CS" + secrets.token_hex(10).upper()
        session = {
            "id": session_id,
            "amount": amount,
            "reference": body["reference"],
            "returnUrl": body["returnUrl"],
            "merchantAccount": self.merchant_account,
            "mode": body.get("mode", "embedded"),
            "shopperReference": body.get("shopperReference"),
            "storePaymentMethod": body.get("storePaymentMethod") is True,
            "expiresAt": "2099-01-01T00:00:00+00:00",
            "sessionData": "Ab02b4c0!" + base64.b64encode(secrets.token_bytes(24)).decode(),
            "status": "active",
        }
        if session["mode"] == "hosted":
            session["url"] = f"{self.url}/checkoutshopper/{session_id}"
        with self._state:
            self._sessions[session_id] = session
        return Reply.of_json(201, {k: v for k, v in session.items() if k != "status"})

    def _hosted_page(self, request: Received) -> Reply:
        match = re.fullmatch(r"/checkoutshopper/(CS\w+)", request.path)
        with self._state:
            session = copy.deepcopy(self._sessions.get(match.group(1))) if match else None
        if session is None:
            return Reply(404, b"<h1>Not found</h1>", {"Content-Type": "text/html"})
        if session["status"] != "active":
            return _html(200, "<h1>This payment session is completed</h1>")
        if request.method == "GET":
            return _html(200, _payment_form(session, None))
        form = dict(parse_qsl(request.body.decode(), keep_blank_values=True))
        number = form.get("card_number", "").replace(" ", "")
        if number not in TEST_CARDS:
            return _html(200, _payment_form(session, "Incorrect card number"))
        psp = "".join(secrets.choice("ABCDEFGHJKLMNPQRSTUVWXYZ0123456789") for _ in range(16))
        refused = form.get("holder_name", "").strip().upper() == "DECLINED"
        body = {"reference": session["reference"], "amount": session["amount"]}
        self._notify(body, psp, not refused, "Refused" if refused else "")
        if refused:
            return _html(200, _payment_form(session, "Refused"))
        if session["storePaymentMethod"]:
            self._store_card(session, psp, number)
        with self._state:
            self._sessions[session["id"]]["status"] = "completed"
        joiner = "&" if "?" in session["returnUrl"] else "?"
        query = urlencode({"sessionId": session["id"], "sessionResult": "X" + psp})
        location = f"{session['returnUrl']}{joiner}{query}"
        return Reply(303, b"", {"Location": location})

    def _store_card(self, session: dict[str, Any], auth_psp: str, number: str) -> None:
        """Store the card of an authorised tokenizing session and announce it, as Adyen
        does with ``RECURRING_CONTRACT``."""
        stored_id = "".join(secrets.choice("ABCDEFGHJKLMNPQRSTUVWXYZ0123456789") for _ in range(16))
        with self._state:
            self.stored_cards[stored_id] = (session["shopperReference"], number)
        if self.webhook_url is None or self.hmac_key is None:
            return
        item = notification_item(
            psp_reference=stored_id,
            merchant_reference=session["reference"],
            value=session["amount"]["value"],
            currency=session["amount"]["currency"],
            event_code="RECURRING_CONTRACT",
            merchant_account=self.merchant_account,
        )
        item["originalReference"] = auth_psp
        item["additionalData"] = {
            "cardSummary": number[-4:],
            "expiryDate": "3/2030",
            "paymentMethodVariant": "mc" if number.startswith("5") else "visa",
            "shopperReference": session["shopperReference"] or "",
        }
        payload = signed_notification([item], self.hmac_key, self.live)
        self.send_webhook(self.webhook_url, {"Content-Type": "application/json"}, payload)

    def _payment(self, body: dict[str, Any]) -> Reply:
        if body.get("merchantAccount") != self.merchant_account:
            return _error(403, "901", "Invalid Merchant Account", "security")
        amount = body.get("amount") or {}
        for required in ("amount", "reference", "paymentMethod"):
            if required not in body:
                return _error(
                    422, "100", f"Required field '{required}' is not provided.", "validation"
                )
        if not isinstance(amount.get("value"), int) or amount["value"] < 0:
            return _error(422, "137", "Invalid amount specified", "validation")
        if not re.fullmatch(r"[A-Z]{3}", str(amount.get("currency"))):
            return _error(422, "138", "Invalid currency specified", "validation")
        method = body["paymentMethod"].get("storedPaymentMethodId", "")
        result_code, reason, reason_code = OUTCOMES.get(method, ("Authorised", None, None))
        psp = "".join(secrets.choice("ABCDEFGHJKLMNPQRSTUVWXYZ0123456789") for _ in range(16))
        answer: dict[str, Any] = {
            "additionalData": {
                "recurringProcessingModel": body.get("recurringProcessingModel", "")
            },
            "pspReference": psp,
            "resultCode": result_code,
            "amount": amount,
            "merchantReference": body["reference"],
            "paymentMethod": {"brand": "visa", "type": "scheme"},
        }
        if reason is not None:
            answer.update(refusalReason=reason, refusalReasonCode=reason_code)
        if result_code in {"Authorised", "Refused", "Error"}:
            self._notify(body, psp, result_code == "Authorised", reason or "")
        return Reply.of_json(200, answer, pspReference=psp)

    def _notify(self, body: dict[str, Any], psp: str, success: bool, reason: str) -> None:
        if self.webhook_url is None or self.hmac_key is None:
            return
        item = notification_item(
            psp_reference=psp,
            merchant_reference=body["reference"],
            value=body["amount"]["value"],
            currency=body["amount"]["currency"],
            success=success,
            merchant_account=self.merchant_account,
            reason=reason,
        )
        payload = signed_notification([item], self.hmac_key, self.live)
        self.send_webhook(self.webhook_url, {"Content-Type": "application/json"}, payload)


def _html(status: int, body: str) -> Reply:
    return Reply(status, body.encode(), {"Content-Type": "text/html; charset=utf-8"})


def _payment_form(session: dict[str, Any], error: str | None) -> str:
    amount = session["amount"]
    problem = f'<p role="alert" id="card-error">{html.escape(error)}</p>' if error else ""
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        "<title>Pay · Adyen test</title></head><body>"
        f"<h1>Pay {amount['value']} {html.escape(amount['currency'])} (minor units)</h1>{problem}"
        f'<form method="post" action="/checkoutshopper/{session["id"]}">'
        '<label for="card_number">Card number</label>'
        '<input id="card_number" name="card_number" autocomplete="off">'
        '<label for="holder_name">Name on card</label>'
        '<input id="holder_name" name="holder_name">'
        '<button type="submit">Pay</button></form></body></html>'
    )
