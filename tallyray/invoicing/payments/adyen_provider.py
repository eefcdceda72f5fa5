"""Adyen: a Checkout ``POST /payments`` per attempt with a stored card, and HMAC-signed
standard notifications.

:meth:`AdyenProvider.collect` sends the stored payment method as a merchant-initiated
(``ContAuth``, ``UnscheduledCardOnFile``) payment whose ``reference`` is our invoice id, with the
idempotency key ``"<invoice id>:<attempt>"``. How Adyen's answers map:

====================================  ===============================================
Adyen says                            Tallyray
====================================  ===============================================
``Authorised``                        ``succeeded``
``Refused``, ``Error``, ``Cancelled``  ``failed``, code ``refused:<refusalReasonCode>``
``Pending``, ``Received``, others     ``pending`` (a notification settles it)
401 / 403, 400 / 422                  ProviderUnavailable: a configuration problem
404, 5xx, network errors              ProviderUnavailable: retry the same attempt
====================================  ===============================================

The SDK builds its URLs from fixed hosts; :func:`_checkout_payments` is the one place that
points it at ``api_base`` instead (a local fake in tests).

Adyen's test and live platforms are separate services with separate credentials, and the SDK
picks one from its ``platform`` setting, then *rewrites* the URL it was given
(``AdyenClient._determine_api_url``): on ``test`` every ``-live`` becomes ``-test``; on
``live`` the Checkout test host becomes ``https://<prefix>-checkout-live.adyenpayments.com/
checkout`` and every ``-test`` becomes ``-live``. So where a call really goes depends on both
the platform and the URL. :func:`checkout_endpoint` asks the SDK, and the constructor refuses
any combination whose calls would land on the other mode's endpoints (or anywhere but the
mode's own host or a local fake, see :mod:`~tallyray.invoicing.payments.endpoints`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import Any
from urllib.parse import urlsplit

import Adyen
from Adyen.services.checkout import PaymentsApi, RecurringApi

from tallyray.errors import ConfigError, Problem, ProviderUnavailable, SignatureError
from tallyray.invoicing.payments.base import (
    AmountRules,
    CheckoutRequest,
    CheckoutSession,
    HostedRequest,
    HostedSession,
    PaymentRequest,
    PaymentResult,
    ProviderEvent,
    SavedMethod,
    SetupRequest,
    is_purchase_id,
    is_setup_id,
)
from tallyray.invoicing.payments.endpoints import is_local, is_under, override_problem

__all__ = ["ADYEN_AMOUNTS", "ADYEN_TEST_CHECKOUT", "AdyenProvider", "live_checkout"]

#: Adyen's Checkout origin on the test platform.
ADYEN_TEST_CHECKOUT = "https://checkout-test.adyen.com"

#: A live URL prefix as the Customer Area shows it: ``1797a841fbb37ca7-AdyenDemo``.
_PREFIX = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*")


def live_checkout(prefix: str) -> str:
    """Adyen's Checkout origin and path on the live platform for a merchant's URL prefix."""
    return f"https://{prefix}-checkout-live.adyenpayments.com/checkout"


# fmt: off
_ZERO_DECIMAL = (
    "BYR", "CVE", "DJF", "GHC", "GNF", "IDR", "JPY", "KMF", "KRW",
    "PYG", "RWF", "UGX", "VND", "VUV", "XAF", "XOF", "XPF",
)
_THREE_DECIMAL = ("BHD", "IQD", "JOD", "KWD", "LYD", "OMR", "TND")
# fmt: on

#: Adyen's table of decimals (https://docs.adyen.com/development-resources/currency-codes):
#: it differs from ISO 4217 for CLP (2) and CVE (0), and from CLDR for IDR, IQD, COP, HUF.
#: Adyen's sources disagree on ISK (0 or 2): a 100× error is worse than no payment.
ADYEN_AMOUNTS = AmountRules(
    provider="Adyen",
    default_digits=2,
    digits={
        **dict.fromkeys(_ZERO_DECIMAL, 0),
        **dict.fromkeys(_THREE_DECIMAL, 3),
        "MRO": 1,
    },
    refused={"ISK": "Adyen's documented decimals for ISK are ambiguous (0 or 2)"},
)

_SUCCEEDED = frozenset({"Authorised"})
_FAILED = frozenset({"Refused", "Error", "Cancelled"})


class AdyenProvider:
    """Collects invoices through Adyen Checkout and reads Adyen standard notifications.

    ``live`` picks the platform: Adyen's test host, or the live host named by
    ``live_endpoint_prefix`` (required when ``live``). ``api_base`` replaces the Checkout host
    with a local fake (tests), or names the mode's own host; the SDK's API version path is
    appended to it. :attr:`endpoint` is where payments are sent.
    """

    name = "adyen"

    def __init__(
        self,
        api_key: str,
        merchant_account: str,
        hmac_key: str,
        api_base: str | None = None,
        live: bool = False,
        *,
        live_endpoint_prefix: str | None = None,
        timeout_seconds: int = 30,
    ) -> None:
        problems = []
        if not api_key or not api_key.strip():
            problems.append(Problem("api_key", "is empty: use an API key of a web service user"))
        if not merchant_account or not merchant_account.strip():
            problems.append(Problem("merchant_account", "is empty"))
        try:
            if not bytes.fromhex(hmac_key):
                raise ValueError
        except (TypeError, ValueError):
            problems.append(
                Problem(
                    "hmac_key", "must be the webhook's HMAC key, in hexadecimal as Adyen shows it"
                )
            )
        if live and not live_endpoint_prefix:
            problems.append(
                Problem(
                    "live_endpoint_prefix",
                    "is needed for live payments: Customer Area > Developers > API URLs",
                )
            )
        elif live and not _PREFIX.fullmatch(str(live_endpoint_prefix)):
            problems.append(
                Problem(
                    "live_endpoint_prefix",
                    "must be the prefix alone, like 1797a841fbb37ca7-AdyenDemo (no https://, "
                    "no host name): Customer Area > Developers > API URLs",
                )
            )
        if problems:
            raise ConfigError.of(problems)
        mode = "live" if live else "test"
        official = live_checkout(str(live_endpoint_prefix)) if live else ADYEN_TEST_CHECKOUT
        client = Adyen.AdyenClient(
            xapikey=api_key,
            platform=mode,
            merchant_account=merchant_account,
            live_endpoint_prefix=live_endpoint_prefix,
            http_timeout=timeout_seconds,
        )
        self._payments = _checkout_payments(client, api_base)
        self._recurring = RecurringApi(client=client)
        self._recurring.baseUrl = self._payments.baseUrl  # the same Checkout origin and version
        #: Where payments are sent: the URL the SDK will really call.
        self.endpoint = checkout_endpoint(client, self._payments)
        if api_base:
            wrong_place = override_problem(api_base, official, mode)
            if wrong_place:
                problems.append(Problem("api_base", wrong_place))
        if not problems and not (is_local(self.endpoint) or is_under(self.endpoint, official)):
            problems.append(
                Problem(
                    "api_base",
                    f"would send {mode}-mode payments to {self.endpoint} (the Adyen SDK "
                    f"rewrites URLs for its platform): {mode}-mode calls go to {official}",
                )
            )
        if problems:
            raise ConfigError.of(problems)
        self._live = live
        self._merchant_account = merchant_account
        self._hmac_key = hmac_key

    @property
    def livemode(self) -> bool:
        """Whether this provider talks to Adyen's live platform."""
        return self._live

    def close(self) -> None:
        """Nothing to release: the SDK opens and closes a session per request."""

    def __enter__(self) -> AdyenProvider:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- collecting ----------------------------------------------------------------------

    def collect(self, request: PaymentRequest) -> PaymentResult:
        value = ADYEN_AMOUNTS.provider_units(request.amount, request.currency)
        shopper = request.provider_customer_id or request.customer_id
        if not request.payment_method:
            return PaymentResult(
                provider=self.name,
                status="failed",
                reference=None,
                provider_customer_id=shopper,
                amount_minor=value,
                failure_code="payment_method_missing",
                failure_message="the customer has no stored payment method",
            )
        body: dict[str, Any] = {
            "amount": {"value": value, "currency": request.currency},
            "reference": request.invoice_id,
            "merchantAccount": self._merchant_account,
            "shopperReference": shopper,
            "paymentMethod": {"type": "scheme", "storedPaymentMethodId": request.payment_method},
            "shopperInteraction": "ContAuth",
            "recurringProcessingModel": "UnscheduledCardOnFile",
            "metadata": request.metadata(),
        }
        if request.customer_email:
            body["shopperEmail"] = request.customer_email
        answer = self._checkout_call(self._payments.payments, body, request.idempotency_key)
        return self._result(answer, shopper, value)

    def _checkout_call(
        self, call: Callable[..., Any], body: dict[str, Any], idempotency_key: str
    ) -> dict[str, Any]:
        """One Checkout API call (``/payments``, ``/sessions``) and Adyen's answer; an error
        or no answer is :class:`~tallyray.errors.ProviderUnavailable`."""
        try:
            result = call(body, idempotency_key=idempotency_key)
        except Adyen.AdyenError as e:
            raise _unavailable(e, self._live) from e
        except OSError as e:  # requests' errors are OSErrors; the SDK does not wrap them
            raise ProviderUnavailable(f"cannot reach Adyen: {e}") from e
        return result.message if isinstance(result.message, dict) else {}

    # -- hosted checkout (credit purchases) ------------------------------------------------

    def start_checkout(self, request: CheckoutRequest) -> CheckoutSession:
        """An Adyen Checkout session for one credit purchase: its ``reference`` is the
        purchase id. The answer has both the hosted page's ``url`` and the ``sessionData`` a
        Drop-in would take."""
        value = ADYEN_AMOUNTS.provider_units(request.amount, request.currency)
        page, answer = self._hosted_session(
            request,
            request.purchase_id,
            value,
            {
                "metadata": {"tallyray_purchase_id": request.purchase_id},
                "lineItems": [
                    {
                        "quantity": 1,
                        "amountIncludingTax": value,
                        "description": request.description,
                    }
                ],
            },
        )
        return CheckoutSession(
            provider=page.provider,
            reference=page.reference,
            url=page.url,
            provider_customer_id=page.provider_customer_id,
            session_data=str(answer["sessionData"]) if answer.get("sessionData") else None,
            amount_minor=value,
        )

    # -- saving a card ---------------------------------------------------------------------

    def start_setup(self, request: SetupRequest) -> HostedSession:
        """An Adyen Checkout session that checks the card with a zero-value authorisation
        and stores it (``storePaymentMethod``, ``UnscheduledCardOnFile``) for the shopper.
        Adyen then sends a ``RECURRING_CONTRACT`` notification whose signed ``pspReference``
        is the stored payment method id and whose signed ``merchantReference`` is our setup
        id."""
        page, _ = self._hosted_session(
            request,
            request.setup_id,
            0,
            {
                "storePaymentMethod": True,
                "recurringProcessingModel": "UnscheduledCardOnFile",
                "shopperInteraction": "Ecommerce",
                "metadata": {"tallyray_setup_id": request.setup_id},
            },
        )
        return page

    def _hosted_session(
        self,
        request: HostedRequest,
        reference: str,
        value: int,
        fields: Mapping[str, Any],
    ) -> tuple[HostedSession, dict[str, Any]]:
        """``POST /sessions`` in ``mode: hosted`` for ``value`` minor units: ``reference``
        (our purchase or setup id) comes back signed as the notification's
        ``merchantReference``. The page, and Adyen's whole answer."""
        shopper = request.provider_customer_id or request.customer_id
        body: dict[str, Any] = {
            "amount": {"value": value, "currency": request.currency},
            "reference": reference,
            "merchantAccount": self._merchant_account,
            "returnUrl": request.success_url,
            "shopperReference": shopper,
            "mode": "hosted",
            **fields,
        }
        if request.customer_email:
            body["shopperEmail"] = request.customer_email
        answer = self._checkout_call(self._payments.sessions, body, request.idempotency_key)
        session_id = answer.get("id")
        if not session_id:
            raise ProviderUnavailable("Adyen answered /sessions without a session id")
        page = HostedSession(
            provider=self.name,
            reference=str(session_id),
            url=str(answer["url"]) if answer.get("url") else None,
            provider_customer_id=shopper,
        )
        return page, answer

    def describe_method(self, method: SavedMethod) -> SavedMethod:
        return method  # the notification carried what there is to show

    def forget_method(self, method: SavedMethod) -> None:
        try:
            self._recurring.delete_token_for_stored_payment_details(
                method.reference,
                query_parameters={
                    "shopperReference": method.provider_customer_id or "",
                    "merchantAccount": self._merchant_account,
                },
            )
        except Adyen.AdyenError as e:
            if getattr(e, "status_code", None) != 404:
                raise _unavailable(e, self._live) from e
        except OSError as e:
            raise ProviderUnavailable(f"cannot reach Adyen: {e}") from e

    def _result(self, answer: dict[str, Any], shopper: str, value: int) -> PaymentResult:
        code = str(answer.get("resultCode", ""))
        reference = answer.get("pspReference")
        if code in _FAILED:
            reason_code = answer.get("refusalReasonCode")
            return PaymentResult(
                provider=self.name,
                status="failed",
                reference=str(reference) if reference else None,
                provider_customer_id=shopper,
                amount_minor=value,
                failure_code=code.lower() + (f":{reason_code}" if reason_code else ""),
                failure_message=str(answer.get("refusalReason") or code),
            )
        return PaymentResult(
            provider=self.name,
            status="succeeded" if code in _SUCCEEDED else "pending",
            reference=str(reference) if reference else None,
            provider_customer_id=shopper,
            amount_minor=value,
        )

    # -- webhooks ------------------------------------------------------------------------

    def parse_webhook(
        self, headers: Mapping[str, str], body: bytes, now: int
    ) -> list[ProviderEvent]:
        """Every item is checked with its ``additionalData.hmacSignature``; one bad item
        rejects the whole delivery (Adyen then retries it). Adyen signs no timestamp, so
        ``now`` is unused: replays are caught by processing each ``event_id`` once."""
        try:
            notification = json.loads(body)
            items = [
                entry["NotificationRequestItem"] for entry in notification["notificationItems"]
            ]
        except (ValueError, KeyError, TypeError):
            raise SignatureError(
                "not an Adyen notification (JSON with notificationItems): cannot check it"
            ) from None
        live = notification.get("live")
        livemode = (
            {"true": True, "false": False}.get(str(live).lower()) if live is not None else None
        )
        events = []
        for index, item in enumerate(items):
            self._verify(item, index)
            events.append(_event(item, livemode))
        return events

    def _verify(self, item: Any, index: int) -> None:
        where = f"notificationItems[{index}]"
        if not isinstance(item, dict):
            raise SignatureError(f"{where} is not an object")
        additional = item.get("additionalData")
        if not isinstance(additional, dict) or not additional.get("hmacSignature"):
            raise SignatureError(f"{where} has no additionalData.hmacSignature")
        try:
            valid = Adyen.util.is_valid_hmac_notification(item, self._hmac_key)
        except (KeyError, TypeError, ValueError):
            raise SignatureError(f"{where} lacks the fields its signature covers") from None
        if not valid:
            raise SignatureError(f"{where}: the HMAC signature does not match")


def _event(item: dict[str, Any], livemode: bool | None) -> ProviderEvent:
    psp = str(item.get("pspReference", ""))
    code = str(item.get("eventCode", ""))
    success = str(item.get("success", "")).lower()
    if is_setup_id(str(item.get("merchantReference") or "")):
        return _setup_event(item, livemode, psp, code, success)
    if code == "AUTHORISATION" and success == "true":
        kind = "payment.succeeded"
    elif code == "AUTHORISATION" and success == "false":
        kind = "payment.failed"
    else:
        kind = "ignored"
    reference = str(item.get("merchantReference") or "") or None
    purchase = is_purchase_id(reference)  # the signed merchantReference says which it is
    amount, currency_code = _amount(item.get("amount"))
    return ProviderEvent(
        provider="adyen",
        event_id=f"{psp}:{code}:{success}",
        kind=kind,
        livemode=livemode,
        purchase_id=reference if purchase else None,
        invoice_id=None if purchase else reference,
        reference=psp or None,
        failure_message=str(item.get("reason") or "refused") if kind == "payment.failed" else None,
        amount=amount,
        currency=currency_code,
    )


def _setup_event(
    item: dict[str, Any], livemode: bool | None, psp: str, code: str, success: str
) -> ProviderEvent:
    """A notification about a card-saving session. ``RECURRING_CONTRACT`` with success saves
    the card: its ``pspReference`` *is* the stored payment method id, signed with the
    ``merchantReference`` (our setup id). Brand, last 4 and expiry come from
    ``additionalData`` (``paymentMethodVariant`` or the item's ``paymentMethod``,
    ``cardSummary``, ``expiryDate`` as ``"8/2028"``), which Adyen does not sign: they are shown
    to the customer, never used to charge. The zero-value ``AUTHORISATION`` is ignored."""
    setup_id = str(item["merchantReference"])
    saved = code == "RECURRING_CONTRACT" and success == "true" and bool(psp)
    additional = item.get("additionalData") or {}
    month, year = _expiry(additional.get("expiryDate"))
    summary = additional.get("cardSummary")
    brand = additional.get("paymentMethodVariant") or item.get("paymentMethod")
    shopper = additional.get("shopperReference") or additional.get("recurring.shopperReference")
    return ProviderEvent(
        provider="adyen",
        event_id=f"{psp}:{code}:{success}",
        kind="method.saved" if saved else "ignored",
        livemode=livemode,
        invoice_id=None,
        reference=psp or None,
        setup_id=setup_id if saved else None,
        method=SavedMethod(
            reference=psp,
            brand=str(brand) if brand else None,
            last4=str(summary)[-4:] if isinstance(summary, str) and summary.isdigit() else None,
            exp_month=month,
            exp_year=year,
            provider_customer_id=str(shopper) if shopper else None,
        )
        if saved
        else None,
    )


def _expiry(raw: object) -> tuple[int | None, int | None]:
    """Adyen's ``expiryDate`` (``"8/2028"``) as (month, year)."""
    if not isinstance(raw, str) or "/" not in raw:
        return None, None
    month, _, year = raw.partition("/")
    if not (month.isdigit() and year.isdigit()):
        return None, None
    return int(month), int(year)


def _amount(amount: object) -> tuple[Decimal | None, str | None]:
    """A notification's ``{"value", "currency"}`` as a Decimal and a currency code."""
    if not isinstance(amount, dict):
        return None, None
    value, code = amount.get("value"), amount.get("currency")
    code = code.upper() if isinstance(code, str) else None
    if code is None or not isinstance(value, int) or isinstance(value, bool):
        return None, code
    return ADYEN_AMOUNTS.decimal_amount(value, code), code


def _checkout_payments(client: Adyen.AdyenClient, api_base: str | None) -> PaymentsApi:
    """The SDK's Checkout payments service, sent to ``api_base`` when one is given.

    The SDK keeps each service's versioned URL in ``baseUrl``
    (``https://checkout-test.adyen.com/v72``); we keep its version path and swap the origin.
    """
    payments = PaymentsApi(client=client)
    if api_base:
        version = urlsplit(payments.baseUrl).path  # "/v72"
        payments.baseUrl = api_base.rstrip("/") + version
    return payments


def checkout_endpoint(client: Adyen.AdyenClient, payments: PaymentsApi) -> str:
    """The URL ``payments.payments`` will post to: the SDK's own rewriting of its base URL
    for the client's platform (a private method, so a test pins what it gives)."""
    return str(client._determine_api_url(client.platform, payments.baseUrl + "/payments"))


def _unavailable(error: Adyen.AdyenError, live: bool) -> ProviderUnavailable:
    message = error.message
    if isinstance(message, dict):
        text = str(message.get("message") or message)
        code = message.get("errorCode")
        detail = f"{text} (errorCode {code})" if code else text
    else:
        detail = str(message)
    status = getattr(error, "status_code", "")
    infix = "" if live else "TEST_"
    if isinstance(error, Adyen.AdyenAPIAuthenticationError | Adyen.AdyenAPIInvalidPermission):
        return ProviderUnavailable(
            f"Adyen rejected the API key (HTTP {status}): {detail}. This is a configuration "
            f"problem: check TALLYRAY_ADYEN_{infix}API_KEY and "
            f"TALLYRAY_ADYEN_{infix}MERCHANT_ACCOUNT"
        )
    if isinstance(
        error,
        Adyen.AdyenAPIValidationError
        | Adyen.AdyenAPIUnprocessableEntity
        | Adyen.AdyenInvalidRequestError,
    ):
        return ProviderUnavailable(
            f"Adyen rejected the request as invalid (HTTP {status}): {detail}. This is a "
            "configuration or data problem; retrying will not help"
        )
    return ProviderUnavailable(f"Adyen failed on its side (HTTP {status}): {detail}")
