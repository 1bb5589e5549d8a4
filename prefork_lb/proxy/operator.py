"""What an operator can change in a running proxy's backend pool: ``prefork_lb ctl backend ...``.

Pure state changes on a proxy's backends and balancing strategy (prefork_lb.proxy.state's
``backends``, ``strategy``, ``add_backend``, ``remove_backend``), applied by the proxy process
when the admin process asks over their private link (prefork_lb.admin.link); no I/O here but
closing a backend's idle connections.

Administrative state (``Backend.admin_state``), separate from health as in HAProxy:

* ``""`` (enabled): picked when healthy;
* ``"draining"``: no new requests; those in flight finish; health checks go on;
* ``"disabled"``: no requests at all; idle keep-alive connections are closed at once.

Both leave the member drained in the strategy (prefork_lb.balance.base: a health check that
marks it up again does not undo it); ``enable`` undoes either. ``weight`` changes the
strategy's weight. ``add`` and ``remove`` are for remote backends (--backends); a local worker
slot comes and goes with its worker (``prefork_lb ctl scale``). The state lives in the proxy
process: a replaced proxy (a reload, a crash) starts again from the configuration.
"""

from __future__ import annotations

from typing import Any

from prefork_lb.proxy.backend import Backend
from prefork_lb.proxy.health import HealthState, parse_backends

__all__ = ["OperatorError", "apply", "state_of"]

ENABLED, DRAINING, DISABLED = "", "draining", "disabled"


class OperatorError(ValueError):
    """A change the proxy refuses (an unknown backend, a local slot removed): one line."""


def state_of(proxy: Any, b: Backend) -> str:
    """``up``, ``down``, ``draining`` or ``disabled``, as /lb-stats and ctl show it."""
    if b.admin_state:
        return str(b.admin_state)
    m = proxy.strategy.members.get(b.key)
    return "up" if m is not None and m.up else "down"


def describe(proxy: Any, b: Backend) -> dict[str, Any]:
    return {"name": b.key, "state": state_of(proxy, b), "weight": b.weight}


def find(proxy: Any, name: str) -> Backend:
    b = proxy.backends.get(name)
    if b is None:
        known = ", ".join(sorted(proxy.backends)) or "none"
        raise OperatorError(f"unknown backend {name!r} (backends: {known})")
    return b  # type: ignore[no-any-return]


def apply(proxy: Any, req: dict[str, Any], health: tuple[int, int] | None = None) -> dict[str, Any]:
    """Apply one request (``op``, ``name``, ``weight``) -> ``{"backend": {...}}``.
    ``health``: (rise, fall) for an added backend's active checks, None without them.
    The caller starts what an added backend needs in the loop (its health check)."""
    op = req.get("op")
    name = str(req.get("name") or "")
    if op == "add":
        return {"backend": describe(proxy, add(proxy, name, health))}
    b = find(proxy, name)
    if op == "remove":
        if b.slot is not None:
            raise OperatorError(f"{b.key} is local worker slot {b.slot}: scale the workers instead")
        proxy.remove_backend(b.key)
        return {"backend": {"name": b.key, "state": "removed", "weight": b.weight}}
    strategy = proxy.strategy
    if op == "drain":
        b.admin_state = DRAINING
        strategy.drain(b.key)
    elif op == "disable":
        b.admin_state = DISABLED
        strategy.drain(b.key)
        for up in list(b.idle):
            up.close()
    elif op == "enable":
        b.admin_state = ENABLED
        strategy.undrain(b.key)
    elif op == "weight":
        weight = req.get("weight")
        if isinstance(weight, bool) or not isinstance(weight, int) or weight < 1:
            raise OperatorError(f"weight must be an integer >= 1, not {weight!r}")
        strategy.set_weight(b.key, weight)
        b.weight = weight
    else:
        raise OperatorError(f"unknown operation {op!r}")
    return {"backend": describe(proxy, b)}


def add(proxy: Any, spec: str, health: tuple[int, int] | None) -> Backend:
    try:
        parsed = parse_backends([spec])
    except ValueError as exc:
        raise OperatorError(str(exc)) from None
    if len(parsed) != 1:
        raise OperatorError(f"expected one HOST:PORT[=WEIGHT], got {spec!r}")
    host, port, weight = parsed[0]
    b = Backend(host, port, weight)
    if b.key in proxy.backends:
        raise OperatorError(f"{b.key} is a backend already")
    if health is not None:
        b.health = HealthState(*health)
    proxy.add_backend(b)
    return b
