"""A shard's accounts, and the committed events each has not been given yet.

With many customers a group commit brings each account one or two events, and giving them to
the account (:meth:`CustomerAccount.record`, its flags, alerts and headroom) costs far more
per call than per event (docs/benchmarks.md, "An account's commits applied when it is
read"). So a shard does not apply a commit to its accounts at once: :class:`Accounts` keeps,
per account, the commits it has not applied, and applies them — in one call where
:meth:`CustomerAccount.record_together` can — before anything reads that account: a quota
check, a reservation, a balance, a limit, a period's close, a checkpoint's snapshot. The shard
applies everything waiting a moment later at the latest (:data:`APPLY_WAIT_SECONDS`), so
alerts fire by then.

Nothing here touches durability: a commit's events are in the log before its requests are
answered, applied or not, and a shard that stops with events waiting replays them from the
log after its checkpoint like any other (a checkpoint applies everything waiting first).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal, get_args

if TYPE_CHECKING:
    from _collections_abc import dict_items, dict_values

    from tallyray.actors.account import CustomerAccount
    from tallyray.pricing.events import Event

__all__ = [
    "APPLY_WAIT_SECONDS",
    "APPLY_WAYS",
    "SETTLE_EVENTS",
    "Accounts",
    "AccountKey",
    "ApplyWay",
    "Commits",
]

AccountKey = tuple[str, str]
"""(environment, customer id)."""

Commits = list[tuple[int, list["Event"]]]
"""An account's commits not applied yet: (commit time, its events for the account), oldest
first."""

ApplyWay = Literal["alone", "together", "one_by_one"]
"""How an account was given its waiting commits: the only one there was, several folded in
one call (``CustomerAccount.record_together``), or several one by one (it refused)."""
APPLY_WAYS: tuple[ApplyWay, ...] = get_args(ApplyWay)

APPLY_WAIT_SECONDS = 0.2
"""How long committed events may wait for their account to be read before the shard applies
them anyway (their alerts fire then)."""

SETTLE_EVENTS = 4000
"""A shard applies everything waiting once this many events wait: they count against the
caps as if each could add a group (see ``ShardCore.room``), so they must not pile up."""


class Accounts(dict[AccountKey, "CustomerAccount"]):
    """The shard's accounts by key; reading one (``[key]``, :meth:`get`) first applies the
    commits it has not applied, and :meth:`values` and :meth:`items` apply every account's.
    Membership, iteration over keys and ``len`` apply nothing.

    ``apply(key, commits)`` is the shard's: it gives the account its commits (or sets the
    account aside)."""

    __slots__ = ("_apply", "events", "unapplied")

    def __init__(self, apply: Callable[[AccountKey, Commits], None]) -> None:
        super().__init__()
        self._apply = apply
        self.unapplied: dict[AccountKey, Commits] = {}
        """Per account, the commits it has not applied (in the order they were made)."""
        self.events = 0
        """How many events :attr:`unapplied` holds."""

    def hold(self, key: AccountKey, at: int, events: list[Event]) -> None:
        """Keep a commit's events for the account until it is read (or applied anyway)."""
        found = self.unapplied.get(key)
        if found is None:
            self.unapplied[key] = [(at, events)]
        else:
            found.append((at, events))
        self.events += len(events)

    def settle(self, key: AccountKey) -> None:
        """Apply what waits for one account (nothing if nothing does)."""
        commits = self.unapplied.pop(key, None)
        if commits is not None:
            self.events -= sum(len(events) for _, events in commits)
            self._apply(key, commits)

    def settle_all(self) -> None:
        """Apply what waits for every account, in one go (see ``ShardCore._settle`` for the
        one that lets the event loop run in between)."""
        while self.unapplied:
            self.settle(next(iter(self.unapplied)))

    def __getitem__(self, key: AccountKey) -> CustomerAccount:
        if key in self.unapplied:
            self.settle(key)
        return dict.__getitem__(self, key)

    def get(self, key: AccountKey, default: None = None) -> CustomerAccount | None:  # type: ignore[override]
        if key in self.unapplied:
            self.settle(key)
        return dict.get(self, key)

    def values(self) -> dict_values[AccountKey, CustomerAccount]:
        self.settle_all()
        return dict.values(self)

    def items(self) -> dict_items[AccountKey, CustomerAccount]:
        self.settle_all()
        return dict.items(self)

    def pop(self, key: AccountKey, *default: Any) -> Any:
        """Forget the account, and what waits for it: its state is dropped (an account set
        aside is rebuilt from its checkpoint and the log)."""
        commits = self.unapplied.pop(key, None)
        if commits is not None:
            self.events -= sum(len(events) for _, events in commits)
        return dict.pop(self, key, *default)
