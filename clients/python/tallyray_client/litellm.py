"""Tallyray in the LiteLLM proxy: every completion is reserved before the model is called,
settled with what it used, and released when it fails.

In the proxy's ``config.yaml``::

    litellm_settings:
      callbacks: ["tallyray_client.litellm.proxy_handler"]

with ``TALLYRAY_URL`` and ``TALLYRAY_API_KEY`` (a key with the ``ingest`` scope) in the
proxy's environment; ``TALLYRAY_CUSTOMER_FROM`` and ``TALLYRAY_ON_UNREACHABLE`` tune it
(``docs/gateway.md``). Or make a :class:`TallyrayHook` of your own in a
``custom_callbacks.py`` next to the config and name that instance instead.

- :meth:`~TallyrayHook.async_pre_call_hook` maps the request to a Tallyray customer (the
  LiteLLM key's, team's or request's metadata, or key fields: ``customer_from``), estimates
  the call — input tokens counted with ``litellm.token_counter``, output tokens at the
  request's ``max_tokens`` (or ``max_completion_tokens``, else ``default_max_tokens``) —
  and reserves it. When it does not fit, the call is refused with an ``HTTPException``
  (``402`` by default), which the proxy answers as an OpenAI-style error; when Tallyray
  cannot be reached and the policy denies, ``503``.
- :meth:`~TallyrayHook.async_log_success_event` settles the hold with the actual input and
  output tokens and the model (LiteLLM calls it once per call, for streams with the
  complete response).
- :meth:`~TallyrayHook.async_log_failure_event` and
  :meth:`~TallyrayHook.async_post_call_failure_hook` release it.

A call is tied to its hold by ``litellm_call_id`` (the proxy sets it before the hooks run;
the hook sets one when it is missing), and the hold's id and customer are also written to
the request's ``metadata`` (``tallyray_reservation_id``, ``tallyray_customer_id``).
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import litellm
from fastapi import HTTPException
from litellm.integrations.custom_logger import CustomLogger

from tallyray_client.aio import AsyncTallyray
from tallyray_client.errors import NotFound, RateLimited, TallyrayError
from tallyray_client.policy import OnUnreachable
from tallyray_client.reservation import AsyncReservation

__all__ = ["DEFAULT_CUSTOMER_FROM", "TallyrayHook", "customer_of"]

log = logging.getLogger("tallyray_client")

DEFAULT_CUSTOMER_FROM: tuple[str, ...] = (
    "key.metadata.tallyray_customer_id",
    "team.metadata.tallyray_customer_id",
)
"""Where the customer is looked for, first found wins (see :func:`customer_of`)."""

BILLED_CALL_TYPES = frozenset({"completion", "acompletion", "text_completion", "atext_completion"})

CustomerFrom = Sequence[str] | Callable[[Any, Mapping[str, Any]], str | None]


def customer_of(sources: CustomerFrom, key: Any, data: Mapping[str, Any]) -> str | None:
    """The Tallyray customer of a request.

    ``sources`` is a callable ``(user_api_key_dict, data) -> customer id | None``, or paths
    tried in order: ``key.<field>`` (``key.team_id``, ``key.user_id``, ``key.key_alias``,
    ``key.end_user_id``, ``key.org_id``), ``key.metadata.<field>`` (the LiteLLM key's
    metadata), ``team.metadata.<field>``, ``request.user`` (the OpenAI ``user`` field) and
    ``request.metadata.<field>``."""
    if callable(sources):
        return sources(key, data)
    for source in sources:
        found = _lookup(source, key, data)
        if found not in (None, ""):
            return str(found)
    return None


def _lookup(source: str, key: Any, data: Mapping[str, Any]) -> Any:
    root, _, rest = source.partition(".")
    if root == "key" and rest.startswith("metadata."):
        return (getattr(key, "metadata", None) or {}).get(rest.removeprefix("metadata."))
    if root == "team" and rest.startswith("metadata."):
        return (getattr(key, "team_metadata", None) or {}).get(rest.removeprefix("metadata."))
    if root == "key":
        return getattr(key, rest, None)
    if root == "request" and rest.startswith("metadata."):
        return (data.get("metadata") or {}).get(rest.removeprefix("metadata."))
    if root == "request":
        return data.get(rest)
    raise ValueError(f"unknown customer source {source!r}")


@dataclass
class _Open:
    reservation: AsyncReservation
    model: str
    since: float


class TallyrayHook(CustomLogger):
    """A LiteLLM ``CustomLogger`` that reserves, settles and releases (module docstring).

    ``client`` defaults to an :class:`~tallyray_client.AsyncTallyray` made from the
    environment. ``unmapped`` says what happens to a call whose customer cannot be found:
    ``"deny"`` (the default, ``403``) or ``"allow"`` (the call goes through unbilled)."""

    def __init__(
        self,
        client: AsyncTallyray | None = None,
        *,
        customer_from: CustomerFrom = DEFAULT_CUSTOMER_FROM,
        unmapped: str = "deny",
        on_unreachable: OnUnreachable = "deny",
        event_type: str = "llm.completion",
        model_property: str = "model",
        input_property: str = "input_tokens",
        output_property: str = "output_tokens",
        default_max_tokens: int = 4096,
        ttl_seconds: float = 600,
        refuse_status: int = 402,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if unmapped not in ("deny", "allow"):
            raise ValueError("unmapped must be 'deny' or 'allow'")
        self.client = client or AsyncTallyray(on_unreachable=on_unreachable)
        self.customer_from = customer_from
        self.unmapped = unmapped
        self.event_type = event_type
        self.model_property = model_property
        self.input_property = input_property
        self.output_property = output_property
        self.default_max_tokens = default_max_tokens
        self.ttl_seconds = ttl_seconds
        self.refuse_status = refuse_status
        self._open: dict[str, _Open] = {}
        self._ending = 0  # settlements and releases under way

    @property
    def open_holds(self) -> int:
        """Calls reserved and not yet settled or released (the ones under way included)."""
        return len(self._open) + self._ending

    # -- before the call -------------------------------------------------------------------

    def estimate(self, data: Mapping[str, Any]) -> dict[str, Any]:
        """The would-be event of a request: its input tokens, and its most output tokens."""
        model = str(data.get("model") or "")
        messages = data.get("messages")
        prompt = data.get("prompt")
        if messages is not None:
            tokens = litellm.token_counter(model=model, messages=messages)
        elif prompt is not None:
            text = prompt if isinstance(prompt, str | list) else str(prompt)
            tokens = litellm.token_counter(model=model, text=text)
        else:
            tokens = 0
        most = data.get("max_completion_tokens") or data.get("max_tokens")
        return self._event(model, int(tokens), int(most or self.default_max_tokens))

    def _event(self, model: str, inputs: int, outputs: int) -> dict[str, Any]:
        return {
            "type": self.event_type,
            "properties": {
                self.model_property: model,
                self.input_property: inputs,
                self.output_property: outputs,
            },
        }

    async def async_pre_call_hook(
        self,
        user_api_key_dict: Any,
        cache: Any,
        data: dict[str, Any],
        call_type: str,
    ) -> dict[str, Any] | None:
        if str(call_type) not in BILLED_CALL_TYPES:
            return None
        self._forget_stale()
        customer = customer_of(self.customer_from, user_api_key_dict, data)
        if customer is None:
            if self.unmapped == "allow":
                return None
            raise HTTPException(
                status_code=403,
                detail={"error": "no Tallyray customer is mapped to this key, team or request"},
            )
        call_id = data.get("litellm_call_id") or str(uuid.uuid4())
        data["litellm_call_id"] = call_id
        try:
            reservation = await self.client.reserve(customer, self.estimate(data), self.ttl_seconds)
        except TallyrayError as error:
            raise HTTPException(
                status_code=_status_for(error), detail={"error": f"tallyray: {error.message}"}
            ) from error
        if not reservation.allowed:
            status = 503 if reservation.degraded else self.refuse_status
            reason = reservation.hold.reason or "not allowed"
            raise HTTPException(status_code=status, detail={"error": reason})
        self._open[call_id] = _Open(reservation, str(data.get("model") or ""), time.monotonic())
        metadata = data.setdefault("metadata", {})
        if isinstance(metadata, dict):
            metadata["tallyray_reservation_id"] = reservation.id
            metadata["tallyray_customer_id"] = customer
        return data

    def _forget_stale(self) -> None:
        """Holds whose call never reported back expire on the server at their TTL; forget
        them here too, so the map cannot grow without bound."""
        cutoff = time.monotonic() - self.ttl_seconds
        stale = []
        for call_id, found in self._open.items():  # oldest first: dicts keep their order
            if found.since >= cutoff:
                break
            stale.append(call_id)
        for call_id in stale:
            del self._open[call_id]

    # -- after the call --------------------------------------------------------------------

    async def async_log_success_event(
        self, kwargs: dict[str, Any], response_obj: Any, start_time: Any, end_time: Any
    ) -> None:
        found = self._open.pop(str(kwargs.get("litellm_call_id")), None)
        if found is None:
            return
        self._ending += 1
        try:
            await self._settle(found, kwargs, response_obj)
        finally:
            self._ending -= 1

    async def _settle(self, found: _Open, kwargs: dict[str, Any], response_obj: Any) -> None:
        inputs, outputs = _usage(kwargs, response_obj)
        found.reservation.record(
            self._event(found.model or kwargs.get("model", ""), inputs, outputs)
        )
        try:
            await found.reservation.settle()
        except TallyrayError as failure:  # the events still count: same ids through the ingest
            log.warning(
                "settling %s failed (%s); events go to the ingest", found.reservation.id, failure
            )
            await self.client.ingest(found.reservation.events)

    async def async_log_failure_event(
        self, kwargs: dict[str, Any], response_obj: Any, start_time: Any, end_time: Any
    ) -> None:
        await self._release(kwargs.get("litellm_call_id"))

    async def async_post_call_failure_hook(
        self,
        request_data: dict[str, Any],
        original_exception: Exception,
        user_api_key_dict: Any,
        traceback_str: str | None = None,
    ) -> None:
        """The proxy's failure path: also reached when a later hook refuses the call after
        this one reserved it, where no model was called and no failure event is logged."""
        await self._release(request_data.get("litellm_call_id"))

    async def _release(self, call_id: Any) -> None:
        found = self._open.pop(str(call_id), None)
        if found is None:
            return
        self._ending += 1
        try:
            await found.reservation.release()
        except TallyrayError as failure:
            log.warning(
                "releasing %s failed (%s); it expires at its TTL", found.reservation.id, failure
            )
        finally:
            self._ending -= 1


def _status_for(error: TallyrayError) -> int:
    """What the proxy answers when the reservation itself failed: an unknown customer is
    refused (403); a rate limit passes on (429); anything else — including Tallyray refusing
    the proxy's own key — is the billing system being unavailable (503), not the caller's
    fault."""
    if isinstance(error, NotFound):
        return 403
    if isinstance(error, RateLimited):
        return 429
    if error.status is not None and 400 <= error.status < 500 and error.status not in (401, 403):
        return error.status
    return 503


def _usage(kwargs: Mapping[str, Any], response: Any) -> tuple[int, int]:
    """Actual input and output tokens: the response's ``usage``, else LiteLLM's standard
    logging payload."""
    usage = getattr(response, "usage", None)
    if usage is None and isinstance(response, Mapping):
        usage = response.get("usage")
    if usage is not None:
        return _count(usage, "prompt_tokens"), _count(usage, "completion_tokens")
    logged = kwargs.get("standard_logging_object") or {}
    return int(logged.get("prompt_tokens") or 0), int(logged.get("completion_tokens") or 0)


def _count(usage: Any, name: str) -> int:
    value = usage.get(name) if isinstance(usage, Mapping) else getattr(usage, name, None)
    return int(value or 0)


def _from_environment() -> TallyrayHook:
    sources = os.environ.get("TALLYRAY_CUSTOMER_FROM")
    policy = os.environ.get("TALLYRAY_ON_UNREACHABLE", "deny")
    if policy not in ("deny", "allow"):
        raise ValueError("TALLYRAY_ON_UNREACHABLE must be 'deny' or 'allow'")
    return TallyrayHook(
        customer_from=tuple(s.strip() for s in sources.split(",") if s.strip())
        if sources
        else DEFAULT_CUSTOMER_FROM,
        on_unreachable="allow" if policy == "allow" else "deny",
        unmapped=os.environ.get("TALLYRAY_UNMAPPED", "deny"),
    )


_handler: TallyrayHook | None = None


def __getattr__(name: str) -> Any:
    """``proxy_handler``: the hook the proxy's config names, made from the environment the
    first time it is asked for (not at import, so importing this module needs no settings)."""
    global _handler
    if name == "proxy_handler":
        if _handler is None:
            _handler = _from_environment()
        return _handler
    raise AttributeError(name)
