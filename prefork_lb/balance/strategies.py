"""The picking strategies that need no hint: rotation, load, chance and latency.

Each ``pick`` is the hot path (once per connection in the dispatcher, once per request in the
proxy): it reads the precomputed eligible list and totals of :class:`~prefork_lb.balance.base.Strategy`,
never sorts, and scans the eligible members at most once. Ties between equally loaded members
are broken round-robin by starting each scan just after the previous pick, so equal members
alternate instead of the first one taking everything.

Weights: ``round_robin`` ignores them (and so slow start); the others use each member's
effective weight (``weight`` scaled by the slow-start ramp).
"""

from __future__ import annotations

import math
import random
from bisect import bisect_right
from itertools import accumulate
from typing import Any

from prefork_lb.balance.base import K, Member, Strategy


class RoundRobin(Strategy[K]):
    """Eligible members in turn, in the order they were added; weights are ignored."""

    name = "round_robin"

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self._next = 0

    def pick(self, hint: Any = None) -> K | None:
        elig = self._eligible
        i = self._next
        if i >= len(elig):
            if not elig:
                return None
            i = 0
        self._next = i + 1
        m = elig[i]
        m.picks += 1
        return m.key


class WeightedRoundRobin(Strategy[K]):
    """nginx's smooth weighted round robin: weights 5, 1, 1 give a a b a c a a.

    Every pick adds each eligible member's weight to its running ``current`` and takes the
    member with the highest, which then gives back the total. Over ``sum(weights)`` picks every
    member is picked exactly ``weight`` times, spread out rather than in runs.
    """

    name = "weighted_round_robin"

    def pick(self, hint: Any = None) -> K | None:
        if self._ramping:
            self._ramp(self._clock())
        elig = self._eligible
        if not elig:
            return None
        best = elig[0]
        high = -math.inf
        for m in elig:
            m.current = cw = m.current + m.eff
            if cw > high:
                high = cw
                best = m
        best.current -= self._weight
        best.picks += 1
        return best.key


class LeastConnections(Strategy[K]):
    """Fewest in flight per unit of weight (``in_flight / weight``); ties go round-robin."""

    name = "least_connections"

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self._next = 0

    def pick(self, hint: Any = None) -> K | None:
        elig = self._eligible
        if not elig:
            return None
        if self._ramping:
            self._ramp(self._clock())
        i = self._next
        order = elig[i:] + elig[:i] if 0 < i < len(elig) else elig
        best = order[0]
        if self._uniform:
            low_n = 1 << 62
            for m in order:
                if m.in_flight < low_n:
                    low_n = m.in_flight
                    best = m
                    if not low_n:
                        break  # idle: nothing beats it
        else:
            low = math.inf
            for m in order:
                score = m.in_flight / m.eff
                if score < low:
                    low = score
                    best = m
                    if not score:
                        break
        self._next = best.pos + 1
        best.picks += 1
        return best.key


class WeightedRandom(Strategy[K]):
    """A random eligible member, with probability proportional to its weight.

    ``rng``: a :class:`random.Random` (tests pass a seeded one; default: a fresh one).
    """

    name = "random"

    def __init__(self, *, rng: random.Random | None = None, **options: Any) -> None:
        self._random = (rng or random.Random()).random
        self._cum: list[float] = []
        super().__init__(**options)

    def _changed(self) -> None:
        super()._changed()
        self._cum = [] if self._uniform else list(accumulate(m.eff for m in self._eligible))

    def pick(self, hint: Any = None) -> K | None:
        if self._ramping:
            self._ramp(self._clock())
        elig = self._eligible
        n = len(elig)
        if not n:
            return None
        if self._uniform:
            m = elig[int(self._random() * n)]
        else:
            cum = self._cum
            m = elig[min(bisect_right(cum, self._random() * cum[-1]), n - 1)]
        m.picks += 1
        return m.key


class PowerOfTwoChoices(Strategy[K]):
    """Two distinct random eligible members; the one with fewer in flight per unit of weight.

    Nearly as even as least_connections, but never herds onto one member when the load it
    reads is stale (Mitzenmacher's power of two choices). ``rng`` as for ``random``.
    """

    name = "p2c"

    def __init__(self, *, rng: random.Random | None = None, **options: Any) -> None:
        self._random = (rng or random.Random()).random
        super().__init__(**options)

    def pick(self, hint: Any = None) -> K | None:
        if self._ramping:
            self._ramp(self._clock())
        elig = self._eligible
        n = len(elig)
        if n < 2:
            if not n:
                return None
            m = elig[0]
        else:
            r = self._random
            i = int(r() * n)
            j = int(r() * (n - 1))
            if j >= i:
                j += 1
            a = elig[i]
            b = elig[j]
            m = a if a.in_flight * b.eff <= b.in_flight * a.eff else b
        m.picks += 1
        return m.key


class LeastLatency(Strategy[K]):
    """Lowest peak-EWMA latency x (in_flight + 1) per unit of weight; ties go round-robin.

    The latency estimates (see :mod:`prefork_lb.balance.latency`) come from
    ``on_finish(key, latency)`` or ``set_load(key, n, latency)``; the cost multiplies by the
    work in flight, so the fastest member only takes more until it is no longer fastest.
    ``decay`` (default 10 s) is how fast an estimate forgets a slow past. A member with no
    sample yet is picked whenever it has nothing in flight: one probe at a time until it is
    measured, so a new member is neither flooded nor left unmeasured behind a fast one.
    """

    name = "least_latency"

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self._next = 0

    def pick(self, hint: Any = None) -> K | None:
        elig = self._eligible
        if not elig:
            return None
        now = self._clock()
        if now >= self._ewma.next_refresh:
            self._ewma.refresh(self._members.values(), now)
        if self._ramping:
            self._ramp(now)
        i = self._next
        order = elig[i:] + elig[:i] if 0 < i < len(elig) else elig
        best: Member[K] = order[0]
        low = math.inf
        if self._uniform:  # equal weights: leave the division out
            for m in order:
                if m.ewma is None and not m.in_flight:
                    best = m  # never measured: probe it, one request at a time
                    break
                cost = m.estimate * (m.in_flight + 1)
                if cost < low:
                    low = cost
                    best = m
        else:
            for m in order:
                if m.ewma is None and not m.in_flight:
                    best = m
                    break
                cost = m.estimate * (m.in_flight + 1) / m.eff
                if cost < low:
                    low = cost
                    best = m
        self._next = best.pos + 1
        best.picks += 1
        return best.key
