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
slot comes and goes with its worker (``prefork_lb ctl scale``).

The changes outlive the proxy process: each one applied is recorded in a :class:`Journal`, a
shared mapping the master creates before it forks (prefork_lb.dispatch.proxy), and a new proxy
(a reload, a crash) replays it once it has its backends from the configuration, skipping what
no longer applies. The journal keeps the last change of each kind (membership, state, weight)
per backend, so it stays as small as the pool.
"""

from __future__ import annotations

import json
import logging
import struct
from typing import Any

from prefork_lb.proxy.backend import Backend
from prefork_lb.proxy.health import HealthState, parse_backends

__all__ = ["CACHE_OFF", "Journal", "OperatorError", "apply", "cache_operation", "state_of"]

log = logging.getLogger("prefork_lb.error")

ENABLED, DRAINING, DISABLED = "", "draining", "disabled"
CACHE_OFF = "the response cache is off (start the proxy with --cache-size MIB)"


class OperatorError(ValueError):
    """A change the proxy refuses (an unknown backend, a local slot removed): one line."""


CHECKING = "waiting for its first health check"


def state_of(proxy: Any, b: Backend) -> str:
    """``up``, ``down``, ``checking`` (added, its first health check not in yet), ``draining``
    or ``disabled``, as /lb-stats and ctl show it."""
    if b.admin_state:
        return str(b.admin_state)
    if b.health is not None and b.health.checking:
        return "checking"
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


def cache_operation(proxy: Any, req: dict[str, Any]) -> dict[str, Any]:
    """``prefork_lb ctl cache purge [PREFIX]``: drop what the prefix matches from this proxy
    process's response cache (prefork_lb.proxy.cache_store.CacheStore.purge). Not journalled:
    a new proxy process starts with an empty cache anyway."""
    cache = getattr(proxy, "cache", None)
    if cache is None:
        raise OperatorError(CACHE_OFF)
    if req.get("op") != "purge":
        raise OperatorError(f"unknown cache operation {req.get('op')!r}")
    prefix = req.get("prefix")
    if prefix is not None and not isinstance(prefix, str):
        raise OperatorError("the prefix must be a string")
    n = cache.store.purge(prefix)
    return {"purged": n, "prefix": prefix, "cache": cache.store.stats()}


def add(proxy: Any, spec: str, health: tuple[int, int] | None) -> Backend:
    if getattr(proxy, "mounts", None) is not None:
        raise OperatorError("with --mount every backend is a pool's worker: no remote backend can be added")
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
        b.health = HealthState(*health, healthy=None)  # its first check decides: nothing till then
    proxy.add_backend(b)
    if health is not None:
        b.down_reason = CHECKING
        proxy.strategy.mark_down(b.key)
    return b


_KIND = {"add": "member", "remove": "member", "drain": "state", "disable": "state", "enable": "state"}
_LEN = struct.Struct("=I")


def compact(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The changes that matter, in order: the last of each kind per backend; a removal drops
    what came before it for that backend (an add after it starts afresh)."""
    out: list[dict[str, Any]] = []
    for e in entries:
        key, kind = e["key"], _KIND.get(e["op"], e["op"])
        if e["op"] == "remove":
            out = [x for x in out if x["key"] != key]
        else:
            out = [x for x in out if not (x["key"] == key and _KIND.get(x["op"], x["op"]) == kind)]
        out.append(e)
    return out


def journal_entry(req: dict[str, Any], doc: dict[str, Any]) -> dict[str, Any]:
    """What to replay of an applied request (an add by its key and weight)."""
    b = doc["backend"]
    entry: dict[str, Any] = {"op": req["op"], "key": b["name"]}
    if req["op"] == "add":
        entry["name"] = f"{b['name']}={b['weight']}"
    else:
        entry["name"] = b["name"]
    if req["op"] == "weight":
        entry["weight"] = b["weight"]
    return entry


class Journal:
    """The applied changes, as JSON behind a length word, in a buffer shared by every proxy
    process of one master (an mmap, or a bytearray in tests). One writer at a time: the
    proxy that answers the admin process."""

    def __init__(self, buf: Any) -> None:
        self.buf = buf

    def entries(self) -> list[dict[str, Any]]:
        (n,) = _LEN.unpack_from(self.buf, 0)
        if not 0 < n <= len(self.buf) - _LEN.size:
            return []
        try:
            got = json.loads(bytes(self.buf[_LEN.size : _LEN.size + n]))
        except ValueError:
            return []
        return [e for e in got if isinstance(e, dict)] if isinstance(got, list) else []

    def record(self, entry: dict[str, Any]) -> None:
        entries = compact([*self.entries(), entry])
        data = json.dumps(entries, separators=(",", ":")).encode()
        while entries and len(data) > len(self.buf) - _LEN.size:
            entries = entries[1:]  # full (thousands of backends): the oldest go first
            data = json.dumps(entries, separators=(",", ":")).encode()
        _LEN.pack_into(self.buf, 0, 0)  # a reader in between sees no journal, never half of one
        self.buf[_LEN.size : _LEN.size + len(data)] = data
        _LEN.pack_into(self.buf, 0, len(data))

    def replay(self, proxy: Any, health: tuple[int, int] | None) -> int:
        """Apply the recorded changes to a new proxy's pool; the number that applied."""
        done = 0
        for e in self.entries():
            req = {k: v for k, v in e.items() if k != "key"}
            try:
                apply(proxy, req, health)
                done += 1
            except (OperatorError, ValueError, KeyError) as exc:
                log.info(
                    "proxy: control socket change %s %s no longer applies (%s)",
                    e.get("op"),
                    e.get("key"),
                    exc,
                )
        return done
