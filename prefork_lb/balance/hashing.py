"""Consistent hashing with bounded loads (Mirrokni, Thorup, Zadimoghaddam 2016; Vimeo, Google).

``pick(hint)`` maps a hint (the client address) to a point on a ring of virtual nodes and walks
clockwise to the first eligible member whose load stays within its bound:

    in_flight + 1 <= ceil(factor * (total_in_flight + 1) * eff / total_eff)

``total_*`` over the eligible members, ``eff`` the member's effective weight (with equal weights,
the paper's ``ceil(factor * (m + 1) / n)``). So the same hint keeps landing on the same member
while it is not overloaded, and no member ever holds more than ``factor`` times its share.

Invariants:

* the ring is a pure function of the member keys and weights: each member owns
  ``vnodes * weight`` points at ``blake2b(f"{key}#{i}")`` (never Python's per-process randomised
  ``hash()``), so every process, and every restart, agrees on it; adding or removing a member
  moves only the hints whose walk meets its points (about 1/N of them);
* members that are down or draining keep their points and are skipped by the walk, so a hint
  goes back to its member when it comes back;
* the ring is rebuilt at the first pick after members or weights change, not at each change,
  so loading a configuration of many members costs one sort;
* the bounds sum to at least ``total_in_flight + 1`` (``factor >= 1``), so some eligible member
  on the ring always has room and one lap always ends the walk.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from hashlib import blake2b
from operator import itemgetter
from typing import Any

from prefork_lb.balance.base import K, Member, Strategy


def ring_point(data: bytes) -> int:
    """A stable 64-bit position on the ring."""
    return int.from_bytes(blake2b(data, digest_size=8).digest(), "big")


def hint_bytes(hint: object) -> bytes:
    if isinstance(hint, bytes):
        return hint
    return str(hint).encode("utf-8", "surrogatepass")


class ConsistentHash(Strategy[K]):
    """Hint -> member on a hash ring, with bounded loads.

    ``vnodes``: ring points per unit of weight (default 160); ``factor``: how far above its
    share a member's load may go (default 1.25; >= 1). Pass the client's address without its
    port as the hint. A pick without a hint wants no affinity: it gets a fresh point each time.
    Keys are placed by ``str(key)``, so give members keys whose ``str`` is stable.
    """

    name = "hash"

    def __init__(self, *, vnodes: int = 160, factor: float = 1.25, **options: Any) -> None:
        if isinstance(vnodes, bool) or not isinstance(vnodes, int) or vnodes < 1:
            raise ValueError(f"vnodes must be an integer >= 1, not {vnodes!r}")
        if not factor >= 1:
            raise ValueError(f"load factor must be >= 1, not {factor!r}")
        self.vnodes = vnodes
        self.factor = float(factor)
        self._points_of: dict[Any, list[int]] = {}
        self._points: list[int] = []
        self._owners: list[Member[K]] = []
        self._stale = False  # members or weights changed: rebuild the ring at the next pick
        self._seq = 0
        super().__init__(**options)

    # -- the ring ----------------------------------------------------------------------------------

    def _place(self, m: Member[K]) -> None:
        pts = self._points_of.setdefault(m.key, [])
        want = self.vnodes * m.weight
        if len(pts) > want:
            del pts[want:]
        prefix = str(m.key)
        pts.extend(
            ring_point(f"{prefix}#{i}".encode("utf-8", "surrogatepass")) for i in range(len(pts), want)
        )

    def _build(self) -> None:
        members = self._members
        ring = sorted(((p, members[k]) for k, pts in self._points_of.items() for p in pts), key=itemgetter(0))
        self._points = [p for p, _ in ring]
        self._owners = [m for _, m in ring]
        self._stale = False

    def _added(self, m: Member[K]) -> None:
        super()._added(m)
        self._place(m)
        self._stale = True

    def _removed(self, m: Member[K]) -> None:
        super()._removed(m)
        del self._points_of[m.key]
        self._stale = True

    def _weight_set(self, m: Member[K]) -> None:
        super()._weight_set(m)
        self._place(m)
        self._stale = True

    # -- picking -------------------------------------------------------------------------------------

    def pick(self, hint: Any = None) -> K | None:
        if not self._eligible:
            return None
        if self._stale:
            self._build()
        if self._ramping:
            self._ramp(self._clock())
        if hint is None:
            hint = self._seq
            self._seq += 1
        owners = self._owners
        n = len(owners)
        i = bisect_right(self._points, ring_point(hint_bytes(hint)))
        if i == n:
            i = 0
        bound = self.factor * (self._load + 1) / self._weight
        for _ in range(n):
            m = owners[i]
            if m.eligible and m.in_flight < math.ceil(bound * m.eff):
                break
            i += 1
            if i == n:
                i = 0
        else:
            # Cannot happen while the load totals are consistent (see the module docstring);
            # should they not be, prefer the least loaded member to failing the pick.
            m = min(self._eligible, key=lambda m: m.in_flight / m.eff)
        m.picks += 1
        return m.key

    def owner(self, hint: Any) -> K | None:
        """The eligible member ``hint`` maps to when loads are ignored (no pick is counted)."""
        if not self._eligible:
            return None
        if self._stale:
            self._build()
        owners = self._owners
        n = len(owners)
        i = bisect_right(self._points, ring_point(hint_bytes(hint))) % n
        while not owners[i].eligible:
            i = (i + 1) % n
        return owners[i].key
