"""The portal's **Payment** page: the customer's saved cards (add, replace, remove through the
provider's own page) and its auto-recharge settings. The same services as the API
(:mod:`tallyray.invoicing.payment_methods`, :mod:`tallyray.invoicing.recharge`); the pages'
shared plumbing (the link, the error pages, forms) is :mod:`tallyray.serve.routes.portal`'s.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from tallyray.errors import Conflict, InvalidInput, NotFound
from tallyray.invoicing.recharge import AutoRecharges
from tallyray.serve.routes.portal import _form, _guarded, _number, _page, _pages, _see, _Visit

__all__ = ["router"]

router = APIRouter()

NOTICES = {
    "card-pending": "Thank you. Your card appears here once the payment provider confirms it.",
    "card-canceled": "No card was saved.",
    "card-removed": "Card removed.",
    "recharge-saved": "Auto-recharge saved.",
}
_BRANDS = {
    "visa": "Visa",
    "mastercard": "Mastercard",
    "mc": "Mastercard",
    "amex": "American Express",
}


def _services(request: Request) -> tuple[Any, Any]:
    billing = _pages(request).services.billing
    if billing is None:  # pragma: no cover — build_app always makes one
        raise NotFound("no payments here")
    return billing.methods, billing.recharges


async def _payment_page(
    request: Request,
    v: _Visit,
    status: int = 200,
    errors: Mapping[str, str] | None = None,
    entered: Mapping[str, str] | None = None,
    continue_to: str | None = None,
) -> Response:
    methods, recharges = _services(request)
    cards = await methods.list(v.env, v.customer_id)
    settings = await recharges.get(v.env, v.customer_id)
    recent = await recharges.recent(v.env, v.customer_id)
    provider = str(v.record.billing.get("payment_provider") or "manual")
    if settings["threshold"] is None:
        state = "Auto-recharge is not set up."
    elif settings["enabled"]:
        state = (
            f"On: when the available balance falls below {v.fmt.money(settings['threshold'])}, "
            f"{v.fmt.money(settings['amount'])} is charged to your card, at most "
            f"{v.fmt.money(settings['monthly_cap'])} a month."
        )
    else:
        state = "Auto-recharge is off."
    shown = {
        "enabled": "on" if settings["enabled"] else "",
        "threshold": settings["threshold"] or "",
        "amount": settings["amount"] or "",
        "monthly_cap": settings["monthly_cap"] or "",
    }
    context = v.context(
        "payment",
        request,
        cards=[_card_row(card) for card in cards],
        can_save=provider in ("stripe", "adyen"),
        provider_name={"stripe": "Stripe", "adyen": "Adyen"}.get(provider, provider),
        recharge={"state": state, "disabled_reason": settings["disabled_reason"]},
        recharges=[_recharge_row(r, settings, v) for r in recent],
        entered={**shown, **(entered or {})},
        errors=dict(errors or {}),
        continue_to=continue_to,
    )
    done = request.query_params.get("done", "")
    if done in NOTICES:
        context["notice"] = NOTICES[done]
    return _page("payment.html", status, **context)


def _recharge_row(
    crossing: Mapping[str, Any], settings: Mapping[str, Any], v: _Visit
) -> dict[str, str]:
    """One auto-recharge as the customer is told of it: what happened to the charge."""
    fmt = v.fmt
    failure = str((crossing["failure"] or {}).get("message") or "Your card was declined.")
    failure = failure if failure.endswith((".", ")")) else f"{failure}."
    status = crossing["status"]
    if status == "succeeded":
        text = "Added to your credit."
    elif status in ("requested", "charging"):
        text = "Charging your card."
    elif status == "pending":
        text = "Charged; the credit appears once the payment provider confirms it."
    elif status == "retry" and crossing["next_attempt_at"] is not None:
        when = fmt.moment(int(crossing["next_attempt_at"]))
        text = f"Not charged. {failure} We try again at {when}."
    elif status == "failed":
        text = f"Not charged. {failure} Auto-recharge was turned off."
    elif status == "capped":
        text = "Not charged: it would have passed your monthly limit."
    else:  # skipped
        text = "Not charged: auto-recharge was off."
    amount = crossing["amount"] or settings["amount"]
    return {
        "when": fmt.moment(int(crossing["created_at"])),
        "amount": fmt.money(amount) if amount is not None else "",
        "status": status,
        "text": text,
    }


def _card_row(card: Mapping[str, Any]) -> dict[str, Any]:
    brand = _BRANDS.get(str(card["brand"]), str(card["brand"] or "Card").capitalize())
    month, year = card["exp_month"], card["exp_year"]
    return {
        "id": card["id"],
        "label": f"{brand} ending {card['last4'] or '····'}",
        "expires": f"{month:02d}/{year}" if month and year else "",
        "default": card["default"],
    }


@router.get("/portal/{token}/payment", include_in_schema=False)
async def get_payment(token: str, request: Request) -> Response:
    p = _pages(request)

    async def make() -> Response:
        return await _payment_page(request, await p.visit(request, token))

    return await _guarded(request, make)


async def _to_provider(request: Request, token: str, replaces: str | None) -> Response:
    p = _pages(request)

    async def make() -> Response:
        v = await p.visit(request, token)
        methods, _ = _services(request)
        back = str(request.base_url).rstrip("/") + f"{v.base}/payment"
        try:
            setup = await methods.start_setup(
                v.env,
                v.customer_id,
                f"{back}?done=card-pending",
                f"{back}?done=card-canceled",
                replaces,
            )
        except Conflict as error:
            return await _payment_page(request, v, 409, {"form": error.message})
        # Not a redirect to the provider: the portal's CSP keeps forms on its own origin
        # (form-action 'self'), so the customer follows a link from our page instead.
        return _see(f"{v.base}/payment/setups/{setup['id']}")

    return await _guarded(request, make)


@router.get("/portal/{token}/payment/setups/{setup_id}", include_in_schema=False)
async def get_setup(token: str, setup_id: str, request: Request) -> Response:
    """The way to the provider's page for a setup just started."""
    p = _pages(request)

    async def make() -> Response:
        v = await p.visit(request, token)
        methods, _ = _services(request)
        setup = await run_in_threadpool(methods.store.setup, setup_id)
        if setup is None or (setup["env"], setup["customer_id"]) != (v.env, v.customer_id):
            raise NotFound(f"no setup {setup_id!r}")
        if setup["completed_at"] is not None or not setup["url"]:
            return _see(f"{v.base}/payment")
        return await _payment_page(request, v, continue_to=str(setup["url"]))

    return await _guarded(request, make)


@router.post("/portal/{token}/payment/cards", include_in_schema=False)
async def post_card(token: str, request: Request) -> Response:
    """Off to the provider's page to save a card; it sends the customer back here."""
    return await _to_provider(request, token, None)


@router.post("/portal/{token}/payment/cards/{method_id}/replace", include_in_schema=False)
async def post_card_replace(token: str, method_id: str, request: Request) -> Response:
    return await _to_provider(request, token, method_id)


@router.post("/portal/{token}/payment/cards/{method_id}/delete", include_in_schema=False)
async def post_card_delete(token: str, method_id: str, request: Request) -> Response:
    p = _pages(request)

    async def make() -> Response:
        v = await p.visit(request, token)
        methods, _ = _services(request)
        entry = v.audit(
            request,
            "payment_method.removed",
            p.clock(),
            {"customer_id": v.customer_id},
            "payment_method",
            method_id,
        )
        with contextlib.suppress(NotFound):  # twice, or not this customer's
            await methods.remove(v.env, v.customer_id, method_id, entry)
        return _see(f"{v.base}/payment?done=card-removed")

    return await _guarded(request, make)


@router.post("/portal/{token}/payment/auto-recharge", include_in_schema=False)
async def post_auto_recharge(token: str, request: Request) -> Response:
    p = _pages(request)

    async def make() -> Response:
        v = await p.visit(request, token)
        form = await _form(request)
        recharges: AutoRecharges = _services(request)[1]
        doc: dict[str, Any] = {"enabled": form.get("enabled") == "on"}
        errors: dict[str, str] = {}
        for name in ("threshold", "amount", "monthly_cap"):
            raw = form.get(name, "").strip()
            try:
                doc[name] = format(_number(raw, v.fmt.babel), "f")
            except ValueError:
                errors[name] = f"Enter an amount such as {v.fmt.example_amount()}."
        if errors:
            return await _payment_page(request, v, 422, errors, form)
        entry = v.audit(
            request,
            "auto_recharge.updated",
            p.clock(),
            {"customer_id": v.customer_id, "settings": doc},
        )
        try:
            await recharges.put(v.env, v.customer_id, doc, entry)
        except InvalidInput as error:
            found = {pr.where: pr.message for pr in error.problems} or {"form": error.message}
            return await _payment_page(request, v, 422, found, form)
        except Conflict as error:
            return await _payment_page(request, v, 409, {"form": error.message}, form)
        return _see(f"{v.base}/payment?done=recharge-saved")

    return await _guarded(request, make)
