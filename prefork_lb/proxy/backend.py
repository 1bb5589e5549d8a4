"""One upstream address of the proxy: where it is, its pool of idle keep-alive connections,
its health (passive ejection, the active check's state) and its statistics.

Invariants: ``idle`` holds only connections with nothing in flight and nothing queued (see
prefork_lb.proxy.upstream); ``batch`` is the connection that the pipelined GETs of the current
pass of the event loop go on, cleared when that pass's writes go out; ``ejected_until`` is 0
unless the backend is ejected, and then the monotonic time it may come back.

Connections only appear here as a type: this module imports no module of the proxy that
could import it back (upstream.py sees a backend through its ``Pool`` protocol).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from prefork_lb.proxy.health import PassiveEjector
from prefork_lb.proxy.stats import BackendStats

if TYPE_CHECKING:
    from prefork_lb.proxy.upstream import Upstream

__all__ = ["Backend"]


class Backend:
    """One upstream address: its pool of idle connections, health and statistics."""

    __slots__ = (
        "key",
        "host",
        "port",
        "name",
        "weight",
        "idle",
        "stats",
        "health",
        "ejector",
        "slot",
        "pool",
        "ejected_until",
        "checking",
        "connecting",
        "down_reason",
        "batch",
        "admin_state",
        "open",
        "tunnels",
    )

    def __init__(
        self, host: str, port: int, weight: int = 1, slot: int | None = None, pool: str | None = None
    ) -> None:
        self.host = host
        self.port = port
        self.key = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self.name = self.key.encode("latin-1")
        self.weight = weight
        self.idle: list[Upstream] = []
        self.stats = BackendStats()
        self.health: Any = None  # HealthState for remote backends with active checks
        self.ejector = PassiveEjector()
        self.slot = slot  # a local worker slot, or None for a remote backend
        self.pool = pool  # --mount: the route of the slot's pool (prefork_lb.mounts), else None
        self.ejected_until = 0.0
        self.checking = False
        self.connecting = 0
        self.down_reason = ""
        self.batch: Upstream | None = None  # a connection whose pipelined GETs go out at the end of this pass
        self.admin_state = ""  # "", "draining" or "disabled": an operator's (prefork_lb.proxy.operator)
        self.open = 0  # upstream connections open (idle, in use, or a tunnel)
        self.tunnels = 0  # of which WebSocket tunnels
