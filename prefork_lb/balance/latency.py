"""Peak-EWMA latency estimates for a set of members (Finagle's and linkerd's load metric).

Each member carries three numbers, kept here: ``ewma`` (the estimate right after its last
sample, ``None`` before the first), ``ewma_at`` (the clock when that was) and ``estimate``
(the value strategies read, brought up to date by :meth:`PeakEwma.refresh`).

Rules, all in seconds of the injected clock, with ``tau`` the ``decay`` time constant:

* a sample above the estimate left by the previous sample replaces it at once (the *peak*): a
  member that turns slow is avoided from its first slow answer;
* a sample below pulls the estimate toward it with weight ``1 - exp(-dt / tau)``, ``dt`` the
  time since the member's previous sample, so the estimate falls smoothly, however often samples
  come;
* a failed request counts as a sample of at least twice the current estimate, so a member that
  fails fast never looks fast;
* between samples the estimate decays toward a *neutral* value with the same time constant:
  the median of the other eligible members' estimates (the configured default when they have
  none). A once-slow member so gets traffic again, and a new member starts at the median, so
  it is neither flooded (as with an estimate of 0) nor starved (as with a pessimistic one).

What is sampled is anything with those three fields and ``eligible`` (:class:`Sampled`):
the strategies' :class:`~prefork_lb.balance.base.Member`, which this module does not import,
so that ``base`` can build on it.

No timers: :meth:`refresh` recomputes every member's decayed estimate and the neutral value
when a strategy asks for it, at most once every ``decay / 100`` seconds (1% of the decay),
which keeps a pick a plain scan over precomputed numbers.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Protocol


class Sampled(Protocol):
    """What a latency estimate is kept on (a strategy's member)."""

    ewma: float | None  # the estimate right after the last sample; None before the first
    ewma_at: float  # the clock at that sample
    estimate: float  # the decayed estimate strategies read

    @property
    def eligible(self) -> bool:
        """Whether it can be picked now (only those count for the neutral value)."""
        ...


def median(values: list[float]) -> float:
    """Median of a sorted, non-empty list."""
    n = len(values)
    half = n // 2
    if n % 2:
        return values[half]
    return (values[half - 1] + values[half]) / 2


def median_without(values: list[float], p: int) -> float:
    """Median of sorted ``values`` with the element at index ``p`` left out (``len(values) >= 2``)."""
    n = len(values) - 1
    half = n // 2

    def at(j: int) -> float:
        return values[j] if j < p else values[j + 1]

    if n % 2:
        return at(half)
    return (at(half - 1) + at(half)) / 2


class PeakEwma:
    """The shared parameters and neutral value of the members' peak-EWMA estimates."""

    __slots__ = ("decay", "default", "every", "neutral", "next_refresh")

    def __init__(self, decay: float = 10.0, default: float = 0.1) -> None:
        if not decay > 0:
            raise ValueError(f"latency decay must be > 0 seconds, not {decay!r}")
        if not default > 0:
            raise ValueError(f"default latency must be > 0 seconds, not {default!r}")
        self.decay = float(decay)
        self.default = float(default)
        self.every = self.decay / 100
        self.neutral = self.default
        self.next_refresh = -math.inf

    def observe(self, m: Sampled, latency: float, ok: bool, now: float) -> None:
        """Fold one finished request's latency (seconds) into ``m``'s estimate."""
        if latency < 0:
            raise ValueError(f"latency must be >= 0 seconds, not {latency!r}")
        if not ok:
            latency = max(latency, 2 * m.estimate)
        ewma = m.ewma
        if ewma is None or latency >= ewma:
            new = latency
        else:
            # Between samples the estimate slides toward the neutral value by 1 - w; a sample
            # takes the neutral value's place, so samples, when they come, are all that counts.
            w = math.exp(-max(now - m.ewma_at, 0.0) / self.decay)
            new = ewma * w + latency * (1 - w)
        m.ewma = m.estimate = new
        m.ewma_at = now

    def set(self, m: Sampled, latency: float, now: float) -> None:
        """Take an estimate made elsewhere (e.g. the worker's own EWMA) as ``m``'s."""
        if latency < 0:
            raise ValueError(f"latency must be >= 0 seconds, not {latency!r}")
        m.ewma = m.estimate = float(latency)
        m.ewma_at = now

    def refresh(self, members: Iterable[Sampled], now: float) -> None:
        """Decay every member's estimate toward its neutral value, as of ``now``."""
        self.next_refresh = now + self.every
        members = list(members)
        ranked = sorted((m for m in members if m.eligible and m.ewma is not None), key=lambda m: m.estimate)
        values = [m.estimate for m in ranked]
        self.neutral = median(values) if values else self.default
        # Each sampled eligible member decays toward the median of the *others*: with two
        # members, the median of both would hold a slow one halfway up for ever.
        target = {id(m): median_without(values, p) for p, m in enumerate(ranked)} if len(values) > 1 else {}
        decay = self.decay
        for m in members:
            if m.ewma is None:
                m.estimate = self.neutral
                continue
            t = target.get(id(m), self.default if m.eligible else self.neutral)
            m.estimate = t + (m.ewma - t) * math.exp(-max(now - m.ewma_at, 0.0) / decay)
