"""What a check or a reservation answers when Tallyray cannot be reached.

``on_unreachable`` is ``"deny"`` (the default: fail closed, nobody spends what cannot be
checked), ``"allow"`` (fail open: availability over exactness; the usage is still recorded
through the buffered ingest and billed later), or a callable ``customer_id -> bool`` (say,
allow your enterprise customers, deny free trials). Either way the answer says
``degraded=True``: it is the policy's, not Tallyray's.

"Cannot be reached" means: no answer after the retries (refused connection, timeout, lost
reply) or a ``5xx`` (the store or the customer's shard unavailable). A ``4xx`` is an answer
and is raised as the error it is.
"""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from typing import Literal

from tallyray_client.results import Hold, QuotaCheck

__all__ = ["OnUnreachable", "degraded_check", "degraded_hold", "policy_allows"]

OnUnreachable = Literal["deny", "allow"] | Callable[[str], bool]

REASON = "Tallyray could not be reached; answered by the client's on_unreachable policy"


def policy_allows(policy: OnUnreachable, customer_id: str) -> bool:
    if policy == "deny":
        return False
    if policy == "allow":
        return True
    if callable(policy):
        return bool(policy(customer_id))
    raise ValueError(f"on_unreachable must be 'deny', 'allow' or a callable, not {policy!r}")


def check_policy(policy: OnUnreachable) -> OnUnreachable:
    """``policy`` itself, once it is known to be one (so a typo fails at construction)."""
    if policy in ("deny", "allow") or callable(policy):
        return policy
    raise ValueError(f"on_unreachable must be 'deny', 'allow' or a callable, not {policy!r}")


def degraded_check(policy: OnUnreachable, customer_id: str) -> QuotaCheck:
    return QuotaCheck(
        allowed=policy_allows(policy, customer_id),
        cost=Decimal(0),
        available=None,
        currency=None,
        reason=REASON,
        degraded=True,
    )


def degraded_hold(policy: OnUnreachable, customer_id: str) -> Hold:
    return Hold(
        id=None,
        customer_id=customer_id,
        allowed=policy_allows(policy, customer_id),
        amount=Decimal(0),
        currency=None,
        expires_at=None,
        reason=REASON,
        degraded=True,
    )
