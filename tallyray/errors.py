"""Every error Tallyray raises on purpose, in one tree.

::

    TallyrayError
    ├── InvalidInput            the caller's mistake: HTTP 4xx, CLI exit code 2
    │   ├── ConfigError         meters / plans / settings that do not validate (422)
    │   ├── EventError          one or more events in a batch are invalid (422)
    │   ├── CurrencyError       unknown currency code, or two currencies mixed (422)
    │   ├── NotFound            no such object in this environment (404)
    │   ├── Conflict            the request contradicts stored state (409)
    │   ├── PayloadTooLarge     body or batch over the limit (413)
    │   ├── Unauthorized        missing, unknown, revoked or expired API key (401)
    │   ├── Forbidden           a key without the scope the call needs (403)
    │   ├── RateLimited         a key (or portal link) over its rate limit: 429 + Retry-After
    │   ├── SignatureError      a provider webhook whose signature is missing, wrong or stale (400)
    │   └── WebhookRefused      a signed provider webhook for the other environment (400)
    ├── StoreUnavailable        the database cannot be reached: 503 + Retry-After
    │   ├── AccountQuarantined  one account is set aside after an error applying its data (503)
    │   ├── Resharding          the shard count is being changed: writes wait (503)
    │   └── NotOwner            a shard asked about a customer another shard owns (503)
    └── ProviderUnavailable     a payment provider cannot be reached or failed on its side (502)

Each error carries a message that tells the caller what to fix and, where there are several
problems at once, a list of :class:`Problem` naming where each one is.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with the input, and where: a JSON path (``plans[0].base_fee``),
    an event index, or a line number."""

    where: str
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.message}" if self.where else self.message

    def to_json(self) -> dict[str, str]:
        return {"where": self.where, "message": self.message}


class TallyrayError(Exception):
    """Base of every error Tallyray raises on purpose."""

    type_name = "error"
    http_status = 500

    def __init__(self, message: str, problems: Iterable[Problem] = ()) -> None:
        self.problems: tuple[Problem, ...] = tuple(problems)
        super().__init__(message)

    def __reduce__(self) -> tuple[type[TallyrayError], tuple[str, tuple[Problem, ...]]]:
        # Keep the problems when the error crosses a process boundary (Ray pickles it).
        return (type(self), (self.message, self.problems))

    @property
    def message(self) -> str:
        return str(self.args[0])

    def to_json(self) -> dict[str, object]:
        """The one JSON error shape of the HTTP API."""
        return {
            "error": {
                "type": self.type_name,
                "message": self.message,
                "details": [p.to_json() for p in self.problems],
            }
        }

    def describe(self) -> str:
        """Human-readable text for the command line: the message, then each problem."""
        lines = [self.message]
        lines += [f"  - {p}" for p in self.problems]
        return "\n".join(lines)


class InvalidInput(TallyrayError):
    type_name = "invalid_request"
    http_status = 422


class ConfigError(InvalidInput):
    type_name = "invalid_config"

    @classmethod
    def of(cls, problems: Iterable[Problem]) -> ConfigError:
        problems = tuple(problems)
        noun = "problem" if len(problems) == 1 else "problems"
        return cls(f"invalid configuration: {len(problems)} {noun}", problems)


class EventError(InvalidInput):
    type_name = "invalid_events"

    @classmethod
    def of(cls, problems: Iterable[Problem]) -> EventError:
        problems = tuple(problems)
        noun = "event is" if len(problems) == 1 else "events are"
        return cls(f"{len(problems)} {noun} invalid; nothing was stored", problems)


class CurrencyError(InvalidInput):
    type_name = "invalid_currency"


class NotFound(InvalidInput):
    type_name = "not_found"
    http_status = 404


class Conflict(InvalidInput):
    type_name = "conflict"
    http_status = 409


class RequestInProgress(Conflict):
    """A request with this Idempotency-Key is still being answered: retry it shortly (the
    one error a client retries with the same key, so it has its own type)."""

    type_name = "request_in_progress"


class PayloadTooLarge(InvalidInput):
    type_name = "payload_too_large"
    http_status = 413


class Unauthorized(InvalidInput):
    type_name = "unauthorized"
    http_status = 401


class Forbidden(InvalidInput):
    type_name = "forbidden"
    http_status = 403

    @classmethod
    def needs(cls, scope: str, message: str) -> Forbidden:
        """A call that needs ``scope``, which the key does not hold."""
        return cls(message, [Problem("scope", f"needs '{scope}'")])


class RateLimited(InvalidInput):
    type_name = "rate_limited"
    http_status = 429

    def __init__(
        self, message: str, problems: Iterable[Problem] = (), retry_after: float = 1.0
    ) -> None:
        super().__init__(message, problems)
        self.retry_after = retry_after

    @property
    def retry_after_header(self) -> str:
        """Whole seconds, at least one (``Retry-After`` takes no fractions)."""
        return str(max(1, math.ceil(self.retry_after)))


class SignatureError(InvalidInput):
    type_name = "invalid_signature"
    http_status = 400


class WebhookRefused(InvalidInput):
    """A provider webhook whose signature verifies, but with the secret of one environment
    while it speaks of the other (its mode, or the invoice it names)."""

    type_name = "webhook_refused"
    http_status = 400


class StoreUnavailable(TallyrayError):
    type_name = "store_unavailable"
    http_status = 503
    retry_after_seconds = 1
    """What the ``Retry-After`` header says."""


class AccountQuarantined(StoreUnavailable):
    """One customer's account could not be applied from its stored data (a row that fails to
    parse or to price, a checkpoint that cannot be restored, ...). Its shard set it aside and
    goes on serving every other account; its stored data is kept, and a restart of the shard
    after the operator has repaired the row brings it back with everything."""

    type_name = "account_quarantined"
    retry_after_seconds = 60

    @classmethod
    def of(cls, customer_id: str) -> AccountQuarantined:
        return cls(
            f"the account of customer {customer_id!r} is set aside after an error applying its "
            "stored data; the operator has been alerted. This is not a problem with your "
            "request, and nothing of it was stored for this customer: retry later. Data stored "
            "before is kept and counts again once the account is repaired."
        )


class Resharding(StoreUnavailable):
    """The shard count is being changed (``tallyray reshard``): the shards stop taking
    writes, checkpoint, hand their accounts over and start again as the new set. Nothing of
    the request was stored; retrying after ``Retry-After`` reaches the new set."""

    type_name = "resharding"
    retry_after_seconds = 2

    @classmethod
    def now(cls) -> Resharding:
        return cls(
            "the shard count is being changed; nothing of this request was stored. Retry in "
            "a few seconds."
        )


class NotOwner(StoreUnavailable):
    """A request reached a shard that does not own its customer: the sender's idea of the
    shard count is older than the shards' (a reshard just happened). It learns the new
    count; a retry goes to the right shard."""

    type_name = "resharding"
    retry_after_seconds = 1


class ProviderUnavailable(TallyrayError):
    """The payment provider could not be reached, or answered with an error on its side:
    nothing was charged as far as we know, and the attempt may be retried."""

    type_name = "provider_unavailable"
    http_status = 502
