"""The proxy's worker pools (``--mount``): one balancing strategy per pool behind the one
strategy object the rest of the proxy talks to.

:class:`PooledStrategy` answers everything the proxy asks a strategy about a member (start,
finish, up, down, drain, weight, members, snapshot) by handing it to the strategy of the
member's pool; only picking needs the pool, which the exchange finds from the request
(:meth:`prefork_lb.mounts.MountTable.route`) and names to :meth:`PooledStrategy.pick_in`.

Invariants: a backend key belongs to one pool, placed (:meth:`PooledStrategy.place`) before it
is added; ``members`` is the union of the pools' members, read live.
"""

from __future__ import annotations

from collections import ChainMap
from collections.abc import Callable, Mapping
from typing import Any

from prefork_lb.mounts import MountTable

__all__ = ["PooledStrategy"]


class PooledStrategy:
    """The strategies of the pools of a mount table, as one."""

    name = "pooled"

    def __init__(self, table: MountTable, make: Callable[[str], Any]) -> None:
        self.table = table
        self.pools: dict[str, Any] = {m.route: make(m.strategy) for m in table.mounts}
        self.pool_of: dict[str, str] = {}
        self._members: ChainMap[str, Any] = ChainMap(*(s.members for s in self.pools.values()))

    def place(self, key: str, pool: str) -> None:
        self.pool_of[key] = pool

    def of(self, key: str) -> Any:
        return self.pools[self.pool_of[key]]

    # -- picking ------------------------------------------------------------------------------

    def pick_in(self, pool: str, hint: Any = None) -> str | None:
        key: str | None = self.pools[pool].pick(hint)
        return key

    def pick(self, hint: Any = None) -> str | None:
        """Without a pool (no request behind it): the first pool's pick."""
        return self.pick_in(self.table.mounts[0].route, hint)

    # -- members, by their pool ---------------------------------------------------------------

    def add(self, key: str, weight: int = 1) -> None:
        self.of(key).add(key, weight)

    def remove(self, key: str) -> None:
        pool = self.pool_of.pop(key, None)
        if pool is not None:
            self.pools[pool].remove(key)

    def on_start(self, key: str) -> None:
        self.of(key).on_start(key)

    def on_finish(self, key: str, latency: float | None = None, ok: bool = True) -> None:
        self.of(key).on_finish(key, latency, ok)

    def mark_up(self, key: str) -> None:
        self.of(key).mark_up(key)

    def mark_down(self, key: str) -> None:
        self.of(key).mark_down(key)

    def drain(self, key: str) -> None:
        self.of(key).drain(key)

    def undrain(self, key: str) -> None:
        self.of(key).undrain(key)

    def set_weight(self, key: str, weight: int) -> None:
        self.of(key).set_weight(key, weight)

    def cookie_for(self, key: str) -> str:
        cookie: str = self.of(key).cookie_for(key)
        return cookie

    @property
    def members(self) -> Mapping[str, Any]:
        return self._members

    def keys(self) -> list[str]:
        return list(self.pool_of)

    def snapshot(self) -> list[Any]:
        return [m for s in self.pools.values() for m in s.snapshot()]
