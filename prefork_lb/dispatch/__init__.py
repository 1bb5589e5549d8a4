"""The ways a connection reaches a worker (--dispatch): a registry of mode objects by short name.

``reuseport`` and ``shared`` are kernel dispatch: the master only creates the listeners and
workers accept. ``handoff`` has a dispatcher process accept and pass each connection to the
worker a balancing strategy picks; ``proxy`` puts the L7 proxy process in front of workers on
loopback ports. Each mode is a :class:`~prefork_lb.dispatch.base.DispatchMode`; the arbiter asks
it and never compares mode names.

Adding a mode: a module here with a ``DispatchMode`` subclass, one line in :data:`DISPATCH`.
Importing this package imports neither the arbiter nor gevent (the configuration reads
:data:`DISPATCH_MODES` for the --dispatch choices).
"""

from __future__ import annotations

from typing import Any

from prefork_lb.dispatch.base import HELPER_SLOT, DispatchMode
from prefork_lb.dispatch.handoff import HandoffMode
from prefork_lb.dispatch.proxy import ProxyMode
from prefork_lb.dispatch.reuseport import ReuseportMode
from prefork_lb.dispatch.shared import SharedMode

DISPATCH: dict[str, type[DispatchMode]] = {
    "reuseport": ReuseportMode,
    "shared": SharedMode,
    "handoff": HandoffMode,
    "proxy": ProxyMode,
}
DISPATCH_MODES: tuple[str, ...] = tuple(DISPATCH)  # in registry order; the first is the default

__all__ = ["DISPATCH", "DISPATCH_MODES", "HELPER_SLOT", "DispatchMode", "make"]


def make(cfg: Any) -> DispatchMode:
    """The mode object for ``cfg.dispatch``."""
    return DISPATCH[cfg.dispatch](cfg)
