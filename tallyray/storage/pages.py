"""Cursor pagination for every list of the API (``limit``, ``starting_after``, ``has_more``).

A page is read by keyset, not by offset: the cursor is the id of the last object of the
previous page, and the next page holds what sorts after it in the list's own order. Pages
stay correct while objects are added, and cost the same however deep a client reads.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from sqlalchemy import Column, and_, or_
from sqlalchemy.engine import Connection
from sqlalchemy.sql import ColumnElement, Select

from tallyray.errors import InvalidInput, Problem

__all__ = [
    "DEFAULT_LIMIT",
    "MAX_LIMIT",
    "Order",
    "Page",
    "PageRequest",
    "page_of_list",
    "read_page",
]

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000

T = TypeVar("T")

Order = Sequence[tuple[Column[Any], bool]]
"""A list's sort order: ``(column, descending)`` pairs, the last one unique (the id)."""


@dataclass(frozen=True, slots=True)
class PageRequest:
    """What a client asked for: at most ``limit`` objects after ``starting_after``."""

    limit: int = DEFAULT_LIMIT
    starting_after: str | None = None

    @classmethod
    def of(cls, limit: int, starting_after: str | None) -> PageRequest:
        if not 1 <= limit <= MAX_LIMIT:
            raise InvalidInput(
                f"'limit' must be from 1 to {MAX_LIMIT}", [Problem("limit", str(limit))]
            )
        if starting_after is not None and not 0 < len(starting_after) <= 255:
            raise InvalidInput(
                "'starting_after' must be the id of the last object of the page before",
                [Problem("starting_after", "empty or too long")],
            )
        return cls(limit, starting_after)


FIRST_PAGE = PageRequest()


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    items: list[T]
    has_more: bool


def _unknown_cursor(cursor: str, what: str) -> InvalidInput:
    return InvalidInput(
        f"'starting_after' names no {what} of this list: pass the id of the last {what} of "
        "the page before",
        [Problem("starting_after", cursor)],
    )


def read_page(
    conn: Connection,
    query: Select[Any],
    order: Order,
    id_column: Column[Any],
    page: PageRequest,
    what: str,
) -> Page[Any]:
    """One page of ``query`` (already filtered) in ``order``: rows after the row whose
    ``id_column`` is ``page.starting_after`` (``400`` when no row of the list has it)."""
    if page.starting_after is not None:
        columns = [column for column, _ in order]
        cursor = conn.execute(
            query.with_only_columns(*columns).where(id_column == page.starting_after)
        ).first()
        if cursor is None:
            raise _unknown_cursor(page.starting_after, what)
        query = query.where(_after(order, tuple(cursor)))
    query = query.order_by(*(c.desc() if descending else c for c, descending in order))
    rows = conn.execute(query.limit(page.limit + 1)).all()
    return Page(list(rows[: page.limit]), len(rows) > page.limit)


def _after(order: Order, values: Sequence[Any]) -> ColumnElement[bool]:
    """Rows sorting after ``values`` in ``order`` (mixed directions allowed): strictly
    after on the first column, or equal on it and after on the rest."""
    clauses = []
    for i, (column, descending) in enumerate(order):
        equal = [c == v for (c, _), v in zip(order[:i], values[:i], strict=True)]
        beyond = column < values[i] if descending else column > values[i]
        clauses.append(and_(*equal, beyond))
    return or_(*clauses)


def page_of_list(
    items: Sequence[T], key: Callable[[T], str], page: PageRequest, what: str
) -> Page[T]:
    """A page of a short list already in memory (meters, plans, endpoints, rates)."""
    start = 0
    if page.starting_after is not None:
        ids = [key(item) for item in items]
        if page.starting_after not in ids:
            raise _unknown_cursor(page.starting_after, what)
        start = ids.index(page.starting_after) + 1
    chunk = list(items[start : start + page.limit + 1])
    return Page(chunk[: page.limit], len(chunk) > page.limit)
