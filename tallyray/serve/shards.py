"""How the ingress talks to the shard actors: one call per shard per request.

Ray's failures are translated at this one boundary: a shard that is dead or restarting is
:class:`StoreUnavailable` (503, retry), and a Tallyray error raised inside a shard comes out as
itself, problems and all.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import ray
from ray.exceptions import RayActorError, RayTaskError

from tallyray.actors.routing import shard_of
from tallyray.errors import StoreUnavailable, TallyrayError

__all__ = ["NAMESPACE", "ShardRouter", "shard_name"]

NAMESPACE = "tallyray"


def shard_name(index: int) -> str:
    return f"shard-{index}"


def _lookup(index: int) -> Any:
    return ray.get_actor(shard_name(index), namespace=NAMESPACE)


class ShardRouter:
    def __init__(self, count: int, lookup: Callable[[int], Any] = _lookup) -> None:
        self.count = count
        self._lookup = lookup
        self._handles: dict[int, Any] = {}

    def index(self, env: str, customer_id: str) -> int:
        return shard_of(env, customer_id, self.count)

    def handle(self, index: int) -> Any:
        found = self._handles.get(index)
        if found is None:
            found = self._handles[index] = self._lookup(index)
        return found

    async def call(self, index: int, method: str, *args: Any) -> Any:
        try:
            return await getattr(self.handle(index), method).remote(*args)
        except RayTaskError as error:
            cause = error.cause
            if isinstance(cause, TallyrayError):
                raise cause from None
            raise
        except RayActorError:
            raise StoreUnavailable(
                f"shard {index} is restarting; nothing from this request was acknowledged by "
                "it; retry shortly"
            ) from None

    async def call_all(self, method: str, *args: Any) -> list[Any]:
        import asyncio

        return list(await asyncio.gather(*(self.call(i, method, *args) for i in range(self.count))))
