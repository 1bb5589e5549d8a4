"""``--mount ROUTE=APP[;key=value...]``: several worker pools under one master, each with its own
app, interface, worker count, balancing strategy and limits, routed by the proxy on Host and
path prefix (``--dispatch proxy`` only).

Pure code, no I/O: parsing a mount (:func:`parse_mount`), the table of all of them with each
pool's slots (:class:`MountTable`), and the routing rule (:meth:`MountTable.route`).

ROUTE is ``[HOST]/PREFIX``: ``/api``, ``/``, ``api.example.com/``, ``api.example.com/v2``.
A request goes to the mount whose host equals its Host (port dropped, case ignored) and whose
prefix is the longest that matches its path on a segment boundary (``/api`` matches ``/api``
and ``/api/x``, not ``/apix``); when no host mount matches, the host-less mounts are tried the
same way; no match at all is a 404 from the proxy.

Invariants: routes are unique (host and prefix); pools take consecutive worker slots in the
order the mounts are given (pool 0 slots ``0..w0-1``, pool 1 the next ``w1``, ...), so a slot
number alone says which pool a worker serves, in the master, in the worker and in the proxy.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

__all__ = [
    "KEYS",
    "Mount",
    "MountError",
    "MountTable",
    "boot_line",
    "parse_mount",
    "parse_mounts",
    "request_host",
]

INTERFACES = ("auto", "wsgi", "asgi")
_HOST = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*$")
_SEGMENT = re.compile(r"^[A-Za-z0-9._~!$&'()*+,;=:@%-]+$")


class MountError(ValueError):
    """A --mount the user got wrong: one line."""


def _count(key: str, text: str, least: int) -> int:
    try:
        n = int(text)
    except ValueError:
        raise MountError(f"{key}={text!r}: not a whole number") from None
    if n < least:
        raise MountError(f"{key}={n}: must be at least {least}")
    return n


# key (as written) -> the Mount field it sets
KEYS = {
    "workers": "workers",
    "interface": "interface",
    "strategy": "strategy",
    "max-concurrency": "max_concurrency",
    "queue-size": "queue_size",
}


@dataclass(frozen=True)
class Mount:
    """One pool: its route, its app and its own settings; ``first_slot`` is set by the table."""

    route: str  # as the user wrote it, normalised: "/api", "api.example.com/"
    host: str | None
    prefix: str  # "/" or "/api" (no trailing slash)
    app: str
    workers: int
    interface: str
    strategy: str
    max_concurrency: int
    queue_size: int
    first_slot: int = 0

    @property
    def slots(self) -> range:
        return range(self.first_slot, self.first_slot + self.workers)

    def matches_path(self, path: str) -> bool:
        p = self.prefix
        if p == "/":
            return True
        return path == p or (path.startswith(p) and path[len(p)] == "/")


def parse_route(text: str) -> tuple[str | None, str]:
    """``[HOST]/PREFIX`` -> (host or None, prefix without trailing slash)."""
    cut = text.find("/")
    if cut == -1:
        raise MountError(f"route {text!r}: must be [HOST]/PREFIX (e.g. /api, api.example.com/)")
    host, prefix = text[:cut].lower(), text[cut:]
    if host and not _HOST.match(host):
        raise MountError(f"route {text!r}: {host!r} is not a host name (no port, no wildcard)")
    parts = prefix.strip("/").split("/")
    if prefix.strip("/") and not all(_SEGMENT.match(s) for s in parts):
        raise MountError(f"route {text!r}: the prefix must be /SEGMENT/... (no empty segment, ? or #)")
    return host or None, "/" + "/".join(p for p in parts if p)


def parse_mount(text: str, defaults: Mapping[str, Any], strategies: Iterable[str]) -> Mount:
    """One ``ROUTE=APP[;key=value...]``; ``defaults`` holds the server-wide value of each key's
    field (workers, interface, strategy, max_concurrency, queue_size)."""
    route, eq, rest = text.strip().partition("=")
    if not eq:
        raise MountError(f"{text!r}: must be ROUTE=MODULE:APP[;key=value...] (e.g. /api=svc.api:app)")
    host, prefix = parse_route(route.strip())
    app, *options = [x.strip() for x in rest.split(";")]
    if not app:
        raise MountError(f"{text!r}: no app after {route.strip()}=")
    fields = {name: defaults[name] for name in KEYS.values()}
    seen: set[str] = set()
    for option in options:
        if not option:
            continue
        key, eq, value = (x.strip() for x in option.partition("="))
        key = key.replace("_", "-")
        if key not in KEYS:
            raise MountError(f"{text!r}: unknown key {key!r} (known: {', '.join(KEYS)})")
        if not eq or not value:
            raise MountError(f"{text!r}: {key} needs a value ({key}=...)")
        if key in seen:
            raise MountError(f"{text!r}: {key} given twice")
        seen.add(key)
        fields[KEYS[key]] = _option(key, value, strategies)
    normal = (host or "") + prefix
    return Mount(route=normal, host=host, prefix=prefix, app=app, **fields)


def _option(key: str, value: str, strategies: Iterable[str]) -> Any:
    if key == "workers":
        return _count(key, value, 1)
    if key in ("max-concurrency", "queue-size"):
        return _count(key, value, 0)
    allowed = INTERFACES if key == "interface" else tuple(strategies)
    if value not in allowed:
        raise MountError(f"{key}={value!r}: must be one of {', '.join(allowed)}")
    return value


class MountTable:
    """Every mount, with its slots, and the order routing tries them in."""

    def __init__(self, mounts: Iterable[Mount]) -> None:
        placed: list[Mount] = []
        slot = 0
        routes: set[str] = set()
        for m in mounts:
            if m.route in routes:
                raise MountError(f"route {m.route} is mounted twice")
            routes.add(m.route)
            placed.append(replace(m, first_slot=slot))
            slot += m.workers
        if not placed:
            raise MountError("no mount given")
        self.mounts = tuple(placed)
        self.total_workers = slot
        # Host mounts first, then the longest prefix: the first that matches wins.
        self._order = sorted(placed, key=lambda m: (m.host is None, -len(m.prefix)))

    def __len__(self) -> int:
        return len(self.mounts)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, MountTable) and self.mounts == other.mounts

    __hash__ = None  # type: ignore[assignment]

    def for_slot(self, slot: int) -> Mount | None:
        """The pool a worker slot belongs to; None for a helper slot or one past the pools."""
        for m in self.mounts:
            if m.first_slot <= slot < m.first_slot + m.workers:
                return m
        return None

    def route(self, host: str | None, path: str) -> Mount | None:
        """The mount a request for ``host`` (lower case, no port; None: no Host) and ``path``
        goes to, or None (404)."""
        for m in self._order:
            if (m.host is None or m.host == host) and m.matches_path(path):
                return m
        return None


def parse_mounts(texts: Iterable[str], defaults: Mapping[str, Any], strategies: Iterable[str]) -> MountTable:
    names = tuple(strategies)
    return MountTable(parse_mount(t, defaults, names) for t in texts)


def request_host(value: bytes | None) -> str | None:
    """A Host header's host: lower case, without the port (``[::1]:80`` -> ``[::1]``)."""
    if not value:
        return None
    text = value.decode("latin-1").strip().lower()
    if text.startswith("["):
        end = text.find("]")
        return text[: end + 1] if end != -1 else text
    return text.partition(":")[0]


_INTERFACE_FIX = re.compile(r"start it with --interface (\w+) \(or auto\)")


def boot_line(route: str | None, message: str) -> str:
    """A pool's worker's boot error (``route``: its mount's; None without --mount) as the user
    reads it: the mount named first, and a wrong interface fixed in the mount, not by a flag."""
    if route is None:
        return message
    return f"--mount {route}: " + _INTERFACE_FIX.sub(r"use interface=\1 (or auto) in its --mount", message)
