"""A shard closes the periods whose grace window has passed by itself, each checkpoint round
(``ShardCore.close_due_periods``), and a round that finds none due writes nothing."""

from __future__ import annotations

from decimal import Decimal

import pytest
from suite_clock import CLOCK
from support import unique

from tallyray.actors.shard import IncomingEvent, ShardCore
from tallyray.clock import ManualClock

pytestmark = pytest.mark.anyio

GRACE_DAYS = 3
PROPERTIES = {"model": "gpt-4o", "input_tokens": 1000, "output_tokens": 100}


def calls(customer: str, n: int, at: int) -> list[IncomingEvent]:
    return [(customer, unique("evt"), "llm.completion", at, PROPERTIES) for _ in range(n)]


# The customers of `store_url` subscribe to monthly `pro` at the suite's clock (2026-11-20
# unless told otherwise): the period of the events below is that calendar month.
@pytest.mark.parametrize(
    ("days_after_the_month", "closed"),
    [
        (-10, 0),  # the month still open
        (1, 0),  # it ended, within its grace
        (GRACE_DAYS, 1),  # the grace over: closed by the round
        (40, 1),
    ],
)
async def test_a_round_closes_what_its_grace_has_passed(
    store_url: str, days_after_the_month: int, closed: int
) -> None:
    core = ShardCore(0, 1, store_url, 3600, clock=CLOCK)
    try:
        await core.ingest("test", calls("p", 2, CLOCK()))
        spend = Decimal(core.balance("test", "p")["period_spend_precise"])
        period_end = core.account("test", "p").profile.period_of(CLOCK()).end
        await core.checkpoint()
    finally:
        core.close()
    now = period_end + days_after_the_month * 86_400_000_000
    later = ShardCore(0, 1, store_url, 3600, GRACE_DAYS * 86_400, clock=ManualClock(now))
    try:
        commits = later.stats.commits
        assert await later.close_due_periods() == closed
        rows = later.billing.closed_period_rows("test", "p")
        assert [Decimal(row["spend"]) for row in rows] == [spend] * closed
        if not closed:  # nothing due: no commit, nothing written
            assert later.stats.commits == commits
            assert later.account("test", "p").periods
    finally:
        later.close()
