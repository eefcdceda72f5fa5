"""Which shard owns a customer. Stable across processes and restarts (no Python ``hash``)."""

from __future__ import annotations

from zlib import crc32

__all__ = ["shard_of"]


def shard_of(env: str, customer_id: str, shards: int) -> int:
    return crc32(f"{env}\x00{customer_id}".encode()) % shards
