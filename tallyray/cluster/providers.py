"""Payment providers from the settings: one set of credentials per environment, checked at
start.

Each provider has a live set of settings (``TALLYRAY_STRIPE_API_KEY``, ...) for the live
environment and a test set (``TALLYRAY_STRIPE_TEST_API_KEY``, ...) for the test environment;
an environment without a key has no such provider. :func:`payment_providers` builds them and
refuses, naming each variable, anything that could let one environment's payments reach the
other's account: a key of the other mode, an Adyen platform or endpoint of the other mode, an
``*_API_BASE`` that is neither a local fake nor the provider's own host, half a set of
credentials, or one secret used for both modes. ``tallyray serve`` calls
:func:`check_payment_settings` before it starts anything, and each ingress replica builds its
providers with :func:`payment_providers`, so a bad setting stops the server at once.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from tallyray.cluster.settings import Settings
from tallyray.errors import ConfigError, Problem
from tallyray.invoicing.payments import (
    AdyenProvider,
    PaymentProvider,
    PaymentProviders,
    StripeProvider,
)
from tallyray.invoicing.payments.endpoints import is_local
from tallyray.invoicing.payments.stripe_provider import stripe_key_mode

__all__ = ["check_payment_settings", "payment_providers"]

log = logging.getLogger("tallyray.cluster")

#: (provider, environment) → the provider's constructor argument → the Settings field.
_SLOTS: dict[tuple[str, str], dict[str, str]] = {
    ("stripe", "live"): {
        "api_key": "stripe_api_key",
        "webhook_secret": "stripe_webhook_secret",
        "api_base": "stripe_api_base",
    },
    ("stripe", "test"): {
        "api_key": "stripe_test_api_key",
        "webhook_secret": "stripe_test_webhook_secret",
        "api_base": "stripe_test_api_base",
    },
    ("adyen", "live"): {
        "api_key": "adyen_api_key",
        "merchant_account": "adyen_merchant_account",
        "hmac_key": "adyen_hmac_key",
        "api_base": "adyen_api_base",
        "live_endpoint_prefix": "adyen_live_url_prefix",
    },
    ("adyen", "test"): {
        "api_key": "adyen_test_api_key",
        "merchant_account": "adyen_test_merchant_account",
        "hmac_key": "adyen_test_hmac_key",
        "api_base": "adyen_test_api_base",
    },
}

#: Settings that must differ between the modes: (live field, test field, why).
_PER_MODE = (
    (
        "stripe_webhook_secret",
        "stripe_test_webhook_secret",
        "each mode's webhook endpoint has its own signing secret, and the secret is what "
        "tells a live delivery from a test one",
    ),
    ("adyen_api_key", "adyen_test_api_key", "Adyen's test and live platforms have separate keys"),
    (
        "adyen_hmac_key",
        "adyen_test_hmac_key",
        "each mode's webhook has its own HMAC key, and the key is what tells a live "
        "notification from a test one",
    ),
)

_VARIABLES = {field: variable for variable, field in Settings.ENV.items()}


def check_payment_settings(settings: Settings) -> None:
    """Raise :class:`ConfigError` naming each payment setting that is wrong; see the module."""
    providers = payment_providers(settings)
    providers.close()


def payment_providers(settings: Settings) -> PaymentProviders:
    """Each environment's providers, from its own credentials; the manual one in both."""
    problems: list[Problem] = []
    built: dict[str, dict[str, PaymentProvider]] = {"live": {}, "test": {}}
    endpoints: list[tuple[str, str, str]] = []
    for (name, env), fields in _SLOTS.items():
        values = {param: getattr(settings, field) for param, field in fields.items()}
        variables = {param: _VARIABLES[field] for param, field in fields.items()}
        if not values["api_key"]:
            problems += [
                Problem(
                    variables[param],
                    f"is set but {variables['api_key']} is not: without a key, {name} is off "
                    f"for the {env} environment",
                )
                for param in fields
                if param not in ("api_key", "api_base") and values[param]
            ]
            continue
        try:
            provider = _build(name, env, values)
        except ConfigError as error:
            problems += [_named(p, name, env, values, variables) for p in error.problems]
            continue
        built[env][name] = provider
        endpoints.append((env, name, provider.endpoint))
    for live_field, test_field, why in _PER_MODE:
        live_value, test_value = getattr(settings, live_field), getattr(settings, test_field)
        if live_value and test_value and live_value.strip().lower() == test_value.strip().lower():
            problems.append(
                Problem(_VARIABLES[test_field], f"is the same as {_VARIABLES[live_field]}: {why}")
            )
    if problems:
        raise ConfigError.of(problems)
    for env, name, endpoint in endpoints:
        if env == "live" and is_local(endpoint):
            log.warning(
                "live %s payments go to %s, a server on this machine: only a test fake "
                "should be there",
                name,
                endpoint,
            )
    return PaymentProviders(live=built["live"], test=built["test"])


def _build(name: str, env: str, values: Mapping[str, str | None]) -> StripeProvider | AdyenProvider:
    live = env == "live"
    if name == "stripe":
        import stripe

        stripe.enable_telemetry = False  # no files written under the operator's home
        return StripeProvider(
            api_key=values["api_key"] or "",
            webhook_secret=values["webhook_secret"] or "",
            api_base=values["api_base"],
            live=live,
        )
    return AdyenProvider(
        api_key=values["api_key"] or "",
        merchant_account=values["merchant_account"] or "",
        hmac_key=values["hmac_key"] or "",
        api_base=values["api_base"],
        live=live,
        live_endpoint_prefix=values.get("live_endpoint_prefix"),
    )


def _named(
    problem: Problem,
    name: str,
    env: str,
    values: Mapping[str, str | None],
    variables: Mapping[str, str],
) -> Problem:
    """An adapter's problem (``api_key: ...``) as the variable to fix, with a hint where a
    key was put in the other environment's variable."""
    message = problem.message
    if name == "stripe" and problem.where == "api_key":
        mode = stripe_key_mode(values["api_key"] or "")
        if mode is not None and mode != env:
            other = _VARIABLES[_SLOTS[(name, mode)]["api_key"]]
            message += f"; a {mode}-mode key belongs in {other}"
    return Problem(variables.get(problem.where, problem.where), message)
