"""API keys: made, found, listed, revoked. A key's secret is shown once, when it is made, and
stored only as its SHA-256 hash (keys are long random secrets: no salt is needed)."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from sqlalchemy import Engine, and_, insert, or_, select, update

from tallyray.access import ADMIN, ALL_SCOPES, SCOPES, generate_key
from tallyray.errors import NotFound
from tallyray.pricing.events import format_timestamp
from tallyray.storage import tables as t
from tallyray.storage.audit import AuditEntry, write_audit

__all__ = ["ApiKey", "KeyStore", "hash_key"]

LAST_USED_GRAIN_US = 60 * 1_000_000
"""``last_used_at`` is written at most this often per key: coarse on purpose."""


def hash_key(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class ApiKey:
    """What is known of a key, never its secret."""

    id: str
    env: str
    name: str | None
    scopes: frozenset[str]
    prefix: str
    """The first characters of the secret (``trk_test_AbC…``): enough to recognise it."""
    created_at: int
    expires_at: int | None = None
    last_used_at: int | None = None
    revoked_at: int | None = None
    seeded: bool = False

    def usable_at(self, now: int) -> bool:
        return self.revoked_at is None and (self.expires_at is None or now < self.expires_at)

    def to_json(self) -> dict[str, Any]:
        def moment(us: int | None) -> str | None:
            return None if us is None else format_timestamp(us)

        return {
            "id": self.id,
            "env": self.env,
            "name": self.name,
            "scopes": sorted(self.scopes, key=_scope_order),
            "prefix": self.prefix,
            "created_at": moment(self.created_at),
            "expires_at": moment(self.expires_at),
            "last_used_at": moment(self.last_used_at),
            "revoked_at": moment(self.revoked_at),
            "seeded": self.seeded,
        }


def _scope_order(scope: str) -> int:
    return SCOPES.index(scope) if scope in SCOPES else len(SCOPES)


def _key(row: Any) -> ApiKey:
    return ApiKey(
        id=row.id,
        env=row.env,
        name=row.name,
        scopes=frozenset(s for s in row.scopes.split(",") if s),
        prefix=row.prefix,
        created_at=row.created_at,
        expires_at=row.expires_at,
        last_used_at=row.last_used_at,
        revoked_at=row.revoked_at,
        seeded=bool(row.seeded),
    )


class KeyStore:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def create(
        self,
        env: str,
        now: int,
        name: str | None = None,
        scopes: Iterable[str] = ALL_SCOPES,
        expires_at: int | None = None,
        audit: AuditEntry | None = None,
    ) -> tuple[ApiKey, str]:
        """A new key for ``env``: (the key, its secret). The secret is never stored."""
        secret = generate_key(env)
        key = ApiKey(
            id=f"key_{secrets.token_hex(12)}",
            env=env,
            name=name,
            scopes=frozenset([ADMIN]) if env == ADMIN else frozenset(scopes),
            prefix=secret[:16],
            created_at=now,
            expires_at=expires_at,
        )
        with self.engine.begin() as conn:
            self._insert(conn, key, secret)
            write_audit(conn, audit and replace(audit, object_id=key.id))
        return key, secret

    def _insert(self, conn: Any, key: ApiKey, secret: str) -> None:
        conn.execute(
            insert(t.api_keys).values(
                id=key.id,
                env=key.env,
                hash=hash_key(secret),
                prefix=key.prefix,
                name=key.name,
                created_at=key.created_at,
                scopes=",".join(sorted(key.scopes, key=_scope_order)),
                expires_at=key.expires_at,
                seeded=key.seeded,
            )
        )

    def seed_admin(self, secret: str, now: int) -> ApiKey:
        """Store the operator's admin key (``TALLYRAY_ADMIN_KEY``) if it is new, and revoke
        every key seeded before it: changing the variable retires the old key."""
        digest = hash_key(secret)
        k = t.api_keys
        with self.engine.begin() as conn:
            row = conn.execute(select(k).where(k.c.hash == digest)).first()
            if row is None:
                key = ApiKey(
                    id=f"key_{secrets.token_hex(12)}",
                    env=ADMIN,
                    name="seeded",
                    scopes=frozenset([ADMIN]),
                    prefix=secret[:16],
                    created_at=now,
                    seeded=True,
                )
                self._insert(conn, key, secret)
            else:
                key = _key(row)
            conn.execute(
                update(k)
                .where(k.c.seeded.is_(True), k.c.id != key.id, k.c.revoked_at.is_(None))
                .values(revoked_at=now)
            )
        return key

    def find(self, secret: str) -> ApiKey | None:
        """The key with this secret, revoked and expired ones included (the caller decides),
        or ``None``."""
        with self.engine.connect() as conn:
            row = conn.execute(
                select(t.api_keys).where(t.api_keys.c.hash == hash_key(secret))
            ).first()
        return None if row is None else _key(row)

    def get(self, key_id: str) -> ApiKey:
        with self.engine.connect() as conn:
            row = conn.execute(select(t.api_keys).where(t.api_keys.c.id == key_id)).first()
        if row is None:
            raise NotFound(f"no API key {key_id!r}")
        return _key(row)

    def list(self, env: str | None = None) -> list[ApiKey]:
        """Every key (of ``env``), oldest first."""
        query = select(t.api_keys).order_by(t.api_keys.c.created_at, t.api_keys.c.id)
        if env is not None:
            query = query.where(t.api_keys.c.env == env)
        with self.engine.connect() as conn:
            return [_key(row) for row in conn.execute(query)]

    def revoke(self, key_id: str, now: int, audit: AuditEntry | None = None) -> ApiKey:
        """Revoke a key for good (revoking it again changes nothing)."""
        k = t.api_keys
        with self.engine.begin() as conn:
            row = conn.execute(select(k).where(k.c.id == key_id)).first()
            if row is None:
                raise NotFound(f"no API key {key_id!r}")
            if row.revoked_at is None:
                conn.execute(update(k).where(k.c.id == key_id).values(revoked_at=now))
                write_audit(conn, audit)
        return self.get(key_id)

    def touch(self, used: Mapping[str, int]) -> None:
        """Note when keys were last used (key id → moment), skipping keys whose note is less
        than :data:`LAST_USED_GRAIN_US` old."""
        k = t.api_keys
        with self.engine.begin() as conn:
            for key_id, at in used.items():
                conn.execute(
                    update(k)
                    .where(
                        and_(
                            k.c.id == key_id,
                            or_(
                                k.c.last_used_at.is_(None),
                                k.c.last_used_at < at - LAST_USED_GRAIN_US,
                            ),
                        )
                    )
                    .values(last_used_at=at)
                )
