"""Credit grants and how usage burns them (tallyray/pricing/credits.py)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tallyray.errors import CurrencyError
from tallyray.pricing.credits import Burned, CreditGrant, Ledger, burn_order

D = Decimal
AT = 1_000  # "now", in microseconds since the epoch, for the tables below


def grant(id: str, amount: str, **kw: Any) -> CreditGrant:
    return CreditGrant.new(id, D(amount), "EUR", **kw)


def ledger(*grants: CreditGrant, uncovered: str = "0") -> Ledger:
    return Ledger("EUR", tuple(grants), D(uncovered))


def remaining(book: Ledger) -> dict[str, str]:
    return {g.id: str(g.remaining) for g in book.grants}


# --- burn order ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("grants", "expected"),
    [
        # lower priority number first
        ([grant("A", "1", priority=2), grant("B", "1", priority=1)], ["B", "A"]),
        # same priority: earliest expiry first, never-expiring last
        (
            [
                grant("never", "1"),
                grant("late", "1", expires_at=2_000),
                grant("soon", "1", expires_at=1_500),
            ],
            ["soon", "late", "never"],
        ),
        # same priority and expiry: oldest first
        ([grant("new", "1", created_at=20), grant("old", "1", created_at=10)], ["old", "new"]),
        # everything equal: by id, so the order is total
        ([grant("b", "1"), grant("a", "1")], ["a", "b"]),
        # priority beats expiry
        (
            [grant("p2-soon", "1", priority=2, expires_at=1_100), grant("p1-never", "1")],
            ["p1-never", "p2-soon"],
        ),
    ],
)
def test_burn_order(grants: list[CreditGrant], expected: list[str]) -> None:
    assert [g.id for g in burn_order(grants)] == expected


# --- burning ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("grants", "cost", "burned", "left", "uncovered"),
    [
        # priority 1 burns first: B 100 − 30 = 70
        (
            [grant("A", "100", priority=2), grant("B", "100", priority=1)],
            "30",
            [("B", "30")],
            {"A": "100", "B": "70"},
            "0",
        ),
        # earliest expiry first: C (expires 1,500) before B (2,000) before A (never)
        (
            [
                grant("A", "100"),
                grant("B", "100", expires_at=2_000),
                grant("C", "100", expires_at=1_500),
            ],
            "30",
            [("C", "30")],
            {"A": "100", "B": "100", "C": "70"},
            "0",
        ),
        # oldest first
        (
            [grant("A", "100", created_at=20), grant("B", "100", created_at=10)],
            "30",
            [("B", "30")],
            {"A": "100", "B": "70"},
            "0",
        ),
        # spills over: A 10 then B 30 − 10 = 20
        (
            [grant("A", "10", priority=1), grant("B", "50", priority=2)],
            "30",
            [("A", "10"), ("B", "20")],
            {"A": "0", "B": "30"},
            "0",
        ),
        # more than is left: 40 − 10 − 5 = 25 uncovered
        (
            [grant("A", "10"), grant("B", "5", priority=2)],
            "40",
            [("A", "10"), ("B", "5")],
            {"A": "0", "B": "0"},
            "25",
        ),
        # an expired grant does not burn: A expired at 500 < 1,000; 30 − 20 = 10 uncovered
        (
            [grant("A", "100", expires_at=500), grant("B", "20", priority=2)],
            "30",
            [("B", "20")],
            {"A": "100", "B": "0"},
            "10",
        ),
        # a grant expiring exactly now is expired (active while at < expires_at)
        (
            [grant("A", "100", expires_at=AT), grant("B", "100", priority=2)],
            "1",
            [("B", "1")],
            {"A": "100", "B": "99"},
            "0",
        ),
        # no grants: all uncovered
        ([], "12.34", [], {}, "12.34"),
        # zero cost: nothing happens
        ([grant("A", "10")], "0", [], {"A": "10"}, "0"),
    ],
)
def test_burn(
    grants: list[CreditGrant],
    cost: str,
    burned: list[tuple[str, str]],
    left: dict[str, str],
    uncovered: str,
) -> None:
    before = ledger(*grants)
    after, used = before.charge(D(cost), AT)
    assert [(b.grant_id, str(b.amount)) for b in used] == burned
    assert remaining(after) == left
    assert after.uncovered == D(uncovered)
    assert [g.id for g in after.grants] == [g.id for g in grants]  # order kept
    assert before.grants == tuple(grants)  # state in, state out: the input is not changed


def test_burns_accumulate_uncovered_spend() -> None:
    book = ledger(grant("A", "10"))
    book, _ = book.charge(D("8"), AT)  # A 10 → 2
    book, used = book.charge(D("5"), AT)  # A 2 → 0, 3 uncovered
    assert used == (Burned("A", D(2)),)
    book, used = book.charge(D("4"), AT)  # nothing left: 3 + 4 = 7 uncovered
    assert used == ()
    assert book.uncovered == D(7)


@pytest.mark.parametrize(
    ("at", "remaining_now", "expired_now"),
    [
        (499, "130", "0"),  # all active: 10 + 20 + 100
        (500, "120", "10"),  # A expires at 500: 20 + 100 left, 10 lost
        (999, "120", "10"),
        (1_000, "100", "30"),  # B expires at 1,000 too: 100 left, 10 + 20 lost
    ],
)
def test_remaining_excludes_expired_grants(at: int, remaining_now: str, expired_now: str) -> None:
    book = ledger(
        grant("A", "10", expires_at=500),
        grant("B", "20", expires_at=1_000),
        grant("C", "100"),
    )
    assert book.remaining(at) == D(remaining_now)
    assert book.expired(at) == D(expired_now)


# --- give-back (negative cost) ---------------------------------------------------------------

# A (priority 1, 10) and B (priority 2, 50) after a cost of 70: both burned out, 10 uncovered.
SPENT = ledger(grant("A", "10"), grant("B", "50", priority=2)).charge(D(70), AT)[0]


@pytest.mark.parametrize(
    ("give_back", "burned", "left", "uncovered"),
    [
        # 5 ≤ 10 uncovered: only the uncovered spend goes down
        ("5", [], {"A": "0", "B": "0"}, "5"),
        # 15: 10 uncovered, then 5 back to B (burned last, so restored first)
        ("15", [("B", "-5")], {"A": "0", "B": "5"}, "0"),
        # 65: 10 uncovered, 50 back to B, 5 back to A
        ("65", [("B", "-50"), ("A", "-5")], {"A": "5", "B": "50"}, "0"),
        # 100: 10 + 50 + 10 = 70 restored; the other 30 cannot go below zero spend
        ("100", [("B", "-50"), ("A", "-10")], {"A": "10", "B": "50"}, "0"),
    ],
)
def test_give_back(
    give_back: str, burned: list[tuple[str, str]], left: dict[str, str], uncovered: str
) -> None:
    assert remaining(SPENT) == {"A": "0", "B": "0"} and SPENT.uncovered == D(10)
    after, used = SPENT.charge(-D(give_back), AT)
    assert [(b.grant_id, str(b.amount)) for b in used] == burned
    assert remaining(after) == left
    assert after.uncovered == D(uncovered)
    for g in after.grants:
        assert g.remaining <= g.amount  # never above what was granted


def test_give_back_skips_a_grant_that_has_expired() -> None:
    # A (expires 1,500) burns first: a cost of 30 at 1,000 takes A 10, B 20.
    book = ledger(grant("A", "10", expires_at=1_500), grant("B", "50", priority=2))
    book, _ = book.charge(D(30), AT)
    assert remaining(book) == {"A": "0", "B": "30"}
    # At 2,000 A has expired: 25 back gives B its 20; A's 5 is gone with A.
    book, used = book.charge(D(-25), 2_000)
    assert used == (Burned("B", D(-20)),)
    assert remaining(book) == {"A": "0", "B": "50"}
    assert book.uncovered == 0


def test_give_back_only_to_grants_that_burned() -> None:
    # B has not been touched: the refund of A's burn goes to A only
    book = ledger(grant("A", "10"), grant("B", "50", priority=2))
    book, _ = book.charge(D(4), AT)  # A 10 → 6
    book, used = book.charge(D(-3), AT)  # B used nothing; A 6 → 9
    assert used == (Burned("A", D(-3)),)
    assert remaining(book) == {"A": "9", "B": "50"}


@given(
    amounts=st.lists(st.decimals(min_value="0.01", max_value=1000, places=2), max_size=5),
    cost=st.decimals(min_value=0, max_value=5000, places=2),
)
def test_burn_then_give_back_the_same_restores_the_ledger(
    amounts: list[Decimal], cost: Decimal
) -> None:
    start = ledger(*(grant(f"g{i}", str(a), priority=i % 2) for i, a in enumerate(amounts)))
    spent, used = start.charge(cost, AT)
    assert sum((b.amount for b in used), D(0)) + spent.uncovered == cost
    assert spent.remaining(AT) == start.remaining(AT) - (cost - spent.uncovered)
    restored, _ = spent.charge(-cost, AT)
    assert restored == start


# --- grants and currencies -------------------------------------------------------------------


def test_a_grant_in_another_currency_is_refused() -> None:
    with pytest.raises(CurrencyError, match="USD cannot pay for usage in EUR"):
        Ledger("EUR").add_grant(CreditGrant.new("g", D(10), "USD"))


def test_add_grant_returns_a_new_ledger() -> None:
    empty = Ledger("EUR")
    book = empty.add_grant(grant("A", "10")).add_grant(grant("B", "5"))
    assert [g.id for g in book.grants] == ["A", "B"]
    assert empty.grants == ()
    assert book.remaining(AT) == D(15)


@pytest.mark.parametrize("amount", [D(0), D(-5), 10, 1.5, "10"])
def test_a_grant_amount_must_be_a_positive_decimal(amount: object) -> None:
    with pytest.raises(ValueError, match="positive Decimal"):
        CreditGrant.new("g", amount, "EUR")  # type: ignore[arg-type]


def test_new_grant_is_unused() -> None:
    g = grant("A", "25.50", priority=3, expires_at=9, created_at=4)
    assert (g.amount, g.remaining, g.used) == (D("25.50"), D("25.50"), D(0))
    assert (g.priority, g.expires_at, g.created_at) == (3, 9, 4)
    assert g.active_at(8) and not g.active_at(9)
