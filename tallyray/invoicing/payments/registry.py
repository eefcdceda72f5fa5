"""Each environment's payment providers: test data never reaches live credentials.

An API key's environment (``live`` or ``test``) scopes every object, invoices included, and
the same holds for the money behind them: a test invoice is collected only with test-mode
credentials, a live one only with live-mode ones. :class:`PaymentProviders` keeps one set of
providers per environment and refuses, when it is built, a provider whose credentials are of
the other mode (:attr:`PaymentProvider.livemode`). An environment without credentials for a
provider has no such provider: asking for it is a :class:`~tallyray.errors.Conflict`, never a
fall back to the other environment. The manual provider (no account behind it) is in both.

Webhooks come to one URL per provider for both modes, so :meth:`PaymentProviders.parse_webhook`
finds the environment whose secret verifies the delivery and requires every event in it to
say it is of that mode (Stripe's ``livemode``, Adyen's ``live``).
"""

from __future__ import annotations

from collections.abc import Mapping

from tallyray.errors import ConfigError, Conflict, Problem, SignatureError, WebhookRefused
from tallyray.invoicing.payments.base import PaymentProvider, ProviderEvent
from tallyray.invoicing.payments.manual import ManualProvider

__all__ = ["ENVIRONMENTS", "PaymentProviders"]

ENVIRONMENTS = ("live", "test")


class PaymentProviders:
    """The providers of the ``live`` and the ``test`` environment, by name."""

    __slots__ = ("_by_env",)

    def __init__(
        self,
        live: Mapping[str, PaymentProvider] | None = None,
        test: Mapping[str, PaymentProvider] | None = None,
    ) -> None:
        manual = ManualProvider()
        by_env: dict[str, dict[str, PaymentProvider]] = {
            "live": {"manual": manual, **(live or {})},
            "test": {"manual": manual, **(test or {})},
        }
        problems = []
        for env, providers in by_env.items():
            for name, provider in providers.items():
                where = f"{env}.{name}"
                if provider.name != name:
                    problems.append(Problem(where, f"is the {provider.name} provider"))
                mode = provider.livemode
                if mode is not None and mode != (env == "live"):
                    problems.append(
                        Problem(
                            where,
                            f"has {'live' if mode else 'test'}-mode credentials: the {env} "
                            f"environment takes only {env}-mode ones",
                        )
                    )
        if problems:
            raise ConfigError.of(problems)
        self._by_env = by_env

    def names(self, env: str) -> list[str]:
        """The providers configured for ``env``, sorted."""
        return sorted(self._by_env[env])

    def get(self, env: str, name: str) -> PaymentProvider:
        """``env``'s provider called ``name``; a :class:`Conflict` when ``env`` has none."""
        found = self._by_env[env].get(name)
        if found is None:
            raise Conflict(
                f"{name} is not configured for the {env} environment (its payment providers: "
                f"{', '.join(self.names(env))}); see docs/payments.md"
            )
        return found

    def close(self) -> None:
        """Release what the providers hold (Stripe's HTTP connections)."""
        for providers in self._by_env.values():
            for provider in providers.values():
                close = getattr(provider, "close", None)
                if callable(close):
                    close()

    def with_provider(self, env: str, provider: PaymentProvider) -> PaymentProviders:
        """A copy with ``provider`` added to (or replacing its namesake in) ``env``."""
        changed = {e: dict(p) for e, p in self._by_env.items()}
        changed[env][provider.name] = provider
        return PaymentProviders(live=changed["live"], test=changed["test"])

    def parse_webhook(
        self, name: str, headers: Mapping[str, str], body: bytes, now: int
    ) -> tuple[str, list[ProviderEvent]]:
        """The environment a webhook delivery comes from, and its events.

        Each environment that has the provider checks the signature with its own secret; the
        first that verifies it owns the delivery, and every event must then say it is of that
        environment's mode. :class:`SignatureError` when no secret verifies it,
        :class:`WebhookRefused` when an event claims the other mode (or none): a delivery
        signed with the test secret can never touch live invoices.
        """
        candidates: list[tuple[str, PaymentProvider]] = []
        for env, providers in self._by_env.items():
            provider = providers.get(name)
            if provider is not None and all(provider is not p for _, p in candidates):
                candidates.append((env, provider))  # the manual provider serves both
        if not candidates:
            raise Conflict(f"payment provider {name!r} is not configured on this server")
        failures: list[tuple[str, str]] = []
        for env, provider in candidates:
            try:
                events = provider.parse_webhook(headers, body, now)
            except SignatureError as error:
                failures.append((env, error.message))
                continue
            for event in events:
                _require_mode(event, env)
            return env, events
        if len(failures) == 1:
            raise SignatureError(failures[0][1])
        if len({message for _, message in failures}) == 1:
            raise SignatureError(
                f"{failures[0][1]} (with the webhook secret of each environment: "
                f"{', '.join(env for env, _ in failures)})"
            )
        raise SignatureError(
            f"the {name} webhook verifies with no environment's secret: "
            + "; ".join(f"{env}: {message}" for env, message in failures)
        )


def _require_mode(event: ProviderEvent, env: str) -> None:
    if event.livemode is None:
        raise WebhookRefused(
            f"{event.provider} event {event.event_id} does not say whether it is live or test "
            "(livemode / live): refused"
        )
    claimed = "live" if event.livemode else "test"
    if claimed != env:
        raise WebhookRefused(
            f"{event.provider} event {event.event_id} is a {claimed}-mode event but is signed "
            f"with the {env} environment's webhook secret: refused"
        )
