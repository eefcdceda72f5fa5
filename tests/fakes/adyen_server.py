"""A local Adyen Checkout: ``POST /v<N>/payments`` in Adyen's wire format.

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
import json
import re
import secrets
import threading
from datetime import UTC, datetime
from typing import Any

from . import LocalServer, Received, Reply

__all__ = ["OUTCOMES", "FakeAdyen", "notification_item", "sign_adyen_item", "signed_notification"]

#: storedPaymentMethodId → (resultCode, refusalReason, refusalReasonCode).
OUTCOMES: dict[str, tuple[str, str | None, str | None]] = {
    "refused": ("Refused", "Refused", "2"),
    "insufficient": ("Refused", "Not enough balance", "12"),
    "error": ("Error", "Acquirer Error", "4"),
    "pending": ("Pending", None, None),
    "received": ("Received", None, None),
}
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
    ) -> None:
        super().__init__()
        self.api_key = api_key
        self.merchant_account = merchant_account
        self.webhook_url = webhook_url
        self.hmac_key = hmac_key
        self.live = live
        self._state = threading.Lock()
        self._replies: dict[str, tuple[Any, Reply]] = {}

    def outage(self, status: int) -> Reply:
        return _error(status, "905", "Payment details are not supported", "internal")

    def respond(self, request: Received) -> Reply:
        if request.headers.get("x-api-key") != self.api_key:
            return _error(401, "000", "HTTP Status Response - Unauthorized", "security")
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
        reply = self._payment(body)
        if key is not None and reply.status < 500:
            with self._state:
                self._replies.setdefault(key, (body, reply))
        return reply

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
