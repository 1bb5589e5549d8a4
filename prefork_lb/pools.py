"""The master's side of ``--mount``: which app, interface and settings a worker slot's process
gets. Each pool (prefork_lb.mounts) has its own :class:`InterfaceChoice`, so a WSGI pool and an
ASGI pool run side by side, and ``--interface auto`` is learned per pool.

The master still never imports an app: a slot's worker gets a copy of the config in which the
pool's app, interface, strategy and limits replace the server-wide ones (:func:`pool_config`),
and imports that app after the fork. Without --mount everything here is the single
:class:`InterfaceChoice` and the config as it is.
"""

from __future__ import annotations

import copy
from typing import Any

from prefork_lb.interface import InterfaceChoice
from prefork_lb.mounts import Mount

__all__ = ["MountedInterfaces", "interfaces_for", "pool_config"]


def pool_config(cfg: Any, mount: Mount) -> Any:
    """A copy of ``cfg`` as one pool's workers see it."""
    mine = copy.copy(cfg)
    mine.__dict__["sources"] = dict(cfg.sources)
    mine.__dict__["warnings"] = list(cfg.warnings)
    mine.app_uri = mount.app
    mine.mounts = None  # a worker serves one app: its own
    mine.mount_route = mount.route  # (its boot error names the mount: prefork_lb.mounts.boot_line)
    source = f"--mount {mount.route}"
    mine.set("interface", mount.interface, source)
    mine.set("strategy", mount.strategy, source)
    mine.set("max_concurrency", mount.max_concurrency, source)
    mine.set("queue_size", mount.queue_size, source)
    mine.server_workers = cfg.workers  # --max-rss N% and the offload pools divide by all of them
    mine.set("workers", mount.workers, source)
    return mine


class MountedInterfaces(InterfaceChoice):
    """One InterfaceChoice per pool; a worker's slot says whose. Itself is the choice for slots
    in no pool (none are started: the pools hold every slot)."""

    def __init__(self, cfg: Any) -> None:
        self.pools: list[tuple[Mount, Any, InterfaceChoice]] = []
        super().__init__(cfg)

    def reconfigure(self, cfg: Any) -> None:
        super().reconfigure(cfg)
        learned = {m.route: choice for m, _, choice in self.pools}
        pools = []
        for m in cfg.mounts.mounts:
            mine = pool_config(cfg, m)
            choice = learned.get(m.route)
            if choice is None:
                choice = InterfaceChoice(mine)
                choice.route = m.route
            else:
                choice.reconfigure(mine)  # auto keeps what this pool's workers told
            pools.append((m, mine, choice))
        self.pools = pools

    def learned(self) -> dict[str, str]:
        return {m.route: choice.current for m, _, choice in self.pools}

    def _pool(self, slot: int) -> tuple[Mount, Any, InterfaceChoice] | None:
        for pool in self.pools:
            if slot in pool[0].slots:
                return pool
        return None

    def for_slot(self, slot: int) -> InterfaceChoice:
        pool = self._pool(slot)
        return self if pool is None else pool[2]

    def cfg_for(self, slot: int, cfg: Any) -> Any:
        pool = self._pool(slot)
        return cfg if pool is None else pool[1]


def interfaces_for(cfg: Any) -> InterfaceChoice:
    """The master's worker-class choice: per pool with --mount, else the one."""
    if getattr(cfg, "mounts", None) is not None:
        return MountedInterfaces(cfg)
    return InterfaceChoice(cfg)
