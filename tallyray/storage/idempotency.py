"""The answers to requests sent with an ``Idempotency-Key``, kept for a day.

Stripe's semantics: the first request with a key is answered and its answer kept; a retry
with the same key and the same request gets that answer again, without doing anything; the
same key with another request is a conflict. A key is claimed before the first request runs
(a row with no answer yet), so two copies racing each other cannot both run.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Engine, and_, delete, insert, select, update
from sqlalchemy.exc import IntegrityError

from tallyray.storage import tables as t

__all__ = ["KEEP_US", "Claim", "IdempotencyStore", "Stored"]

KEEP_US = 24 * 3600 * 1_000_000
"""How long an answer is kept: a retry after this runs as a new request."""


@dataclass(frozen=True, slots=True)
class Stored:
    """A key seen before: the request it was used for, and its answer (``status`` ``None``
    while that request is still being answered)."""

    fingerprint: str
    status: int | None
    content_type: str | None
    body: bytes | None


Claim = Stored | None
"""What claiming a key finds: ``None`` when it is ours now, else what was there."""


class IdempotencyStore:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def claim(
        self, env: str, key: str, method: str, path: str, fingerprint: str, now: int
    ) -> Claim:
        """Claim ``key`` for this request, or return what an earlier one left (one older than
        :data:`KEEP_US` is forgotten first)."""
        i = t.idempotency_keys
        where = and_(i.c.env == env, i.c.key == key)
        with self.engine.begin() as conn:
            conn.execute(delete(i).where(where, i.c.created_at < now - KEEP_US))
            try:
                conn.execute(
                    insert(i).values(
                        env=env,
                        key=key,
                        method=method,
                        path=path[:500],
                        fingerprint=fingerprint,
                        created_at=now,
                    )
                )
                return None
            except IntegrityError:
                pass
        with self.engine.connect() as conn:
            row = conn.execute(
                select(i.c.fingerprint, i.c.status, i.c.content_type, i.c.body).where(where)
            ).first()
        if row is None:  # forgotten between the two: a retry will claim it
            return Stored(fingerprint, None, None, None)
        return Stored(row.fingerprint, row.status, row.content_type, row.body)

    def answer(
        self, env: str, key: str, status: int, content_type: str | None, body: bytes
    ) -> None:
        """Keep the answer of the request that claimed ``key``."""
        i = t.idempotency_keys
        with self.engine.begin() as conn:
            conn.execute(
                update(i)
                .where(i.c.env == env, i.c.key == key)
                .values(status=status, content_type=content_type, body=body)
            )

    def release(self, env: str, key: str) -> None:
        """Let ``key`` go unanswered (the request failed in a way a retry may fix)."""
        i = t.idempotency_keys
        with self.engine.begin() as conn:
            conn.execute(delete(i).where(i.c.env == env, i.c.key == key, i.c.status.is_(None)))

    def forget_before(self, moment: int) -> int:
        """Drop answers older than ``moment``; returns how many."""
        i = t.idempotency_keys
        with self.engine.begin() as conn:
            return conn.execute(delete(i).where(i.c.created_at < moment)).rowcount
