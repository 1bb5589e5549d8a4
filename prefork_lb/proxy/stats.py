"""Per-backend counters and latency histograms for ``/lb-stats``; pure, no I/O.

:class:`LatencyHistogram` is log-linear (HdrHistogram's layout): each power of two of the
10 us unit is split into :data:`SUB_BUCKETS` equal buckets, from 10 us to 100 s. A bucket is at
most 1/16 of its lower bound wide, so reporting its midpoint is within 3.2% of any sample in
it; the exact minimum and maximum are kept as well and clamp what is reported, so samples below
10 us or past the range (167 s) still give a truthful p0/p100. Recording is O(1) (one ``frexp``), memory is
a fixed list of ints: nothing is stored per sample.
"""

from __future__ import annotations

import math
from typing import Any

UNIT = 1e-5  # seconds: the lower end of the range, 10 us
TOP = 100.0  # seconds: the upper end of the range
SUB_BUCKETS = 16  # linear buckets per power of two: 1/16 wide -> <= 3.2% error at the midpoint
# Powers of two needed to reach TOP / UNIT = 1e7: 24 (2**24 > 1e7, so the range ends at 167 s).
_POWERS = math.frexp(TOP / UNIT)[1]
NBUCKETS = 1 + _POWERS * SUB_BUCKETS + 1  # [0]: below 10 us; [-1]: past the range

_frexp = math.frexp


class LatencyHistogram:
    """Latency samples in seconds, summarised as percentiles."""

    __slots__ = ("buckets", "count", "max", "min")

    def __init__(self) -> None:
        self.buckets = [0] * NBUCKETS
        self.count = 0
        self.max = 0.0
        self.min = 0.0

    def record(self, seconds: float) -> None:
        v = seconds / UNIT
        if v < 1.0:
            i = 0
        else:
            m, e = _frexp(v)  # v = m * 2**e, 0.5 <= m < 1, e >= 1
            i = 1 + (e - 1) * SUB_BUCKETS + int((m - 0.5) * (2 * SUB_BUCKETS))
            if i >= NBUCKETS:
                i = NBUCKETS - 1
        self.buckets[i] += 1
        if self.count == 0:
            self.min = self.max = seconds
        elif seconds > self.max:
            self.max = seconds
        elif seconds < self.min:
            self.min = seconds
        self.count += 1

    def percentile(self, p: float) -> float | None:
        """The ``p``-th percentile (0..100) in seconds, or None with no samples."""
        if not 0.0 <= p <= 100.0:
            raise ValueError(f"percentile {p} is not within 0..100")
        if self.count == 0:
            return None
        # Nearest-rank: the smallest sample with at least p% of the samples at or below it.
        rank = max(1, math.ceil(p / 100.0 * self.count))
        if rank == 1:
            return self.min  # the extremes are known exactly
        if rank == self.count:
            return self.max
        buckets = self.buckets
        i = 0
        seen = buckets[0]
        while seen < rank:  # ends: rank <= count == sum(buckets)
            i += 1
            seen += buckets[i]
        if i == NBUCKETS - 1:
            return self.max  # past the range: the largest samples, of which max is one
        return min(max(_midpoint(i), self.min), self.max)

    def cumulative(self, bounds: tuple[float, ...]) -> tuple[list[int], float]:
        """For /metrics: how many samples are at or below each bound (seconds, ascending),
        placing each bucket's samples at its midpoint (within 3.2%, as the percentiles), and
        their approximate sum. Read at scrape time, never on the request path."""
        counts = [0] * len(bounds)
        total = 0.0
        for i, n in enumerate(self.buckets):
            if not n:
                continue
            if i == NBUCKETS - 1:
                at = self.max
            else:
                at = min(max(_midpoint(i), self.min), self.max)
            total += n * at
            for j, b in enumerate(bounds):
                if at <= b:
                    counts[j] += n
        return counts, total

    def reset(self) -> None:
        self.buckets = [0] * NBUCKETS
        self.count = 0
        self.max = 0.0
        self.min = 0.0


def _midpoint(i: int) -> float:
    """The middle of bucket ``i``, in seconds (the ends are clamped by the caller)."""
    if i == 0:
        return UNIT / 2
    e, k = divmod(i - 1, SUB_BUCKETS)
    low = 2.0**e * (1.0 + k / SUB_BUCKETS)
    return (low + 2.0**e / SUB_BUCKETS / 2) * UNIT


# Index of a status code's class in BackendStats.responses: 1xx -> 0 ... 5xx -> 4.
CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")
_REPORTED = CLASSES[1:]  # /lb-stats shows 2xx..5xx (a 101 becomes a websocket, not a response)


class BackendStats:
    """Counters for one backend. The engine bumps ``requests`` (on each try sent), ``errors``,
    ``retries``, ``websockets`` and ``pipelined`` directly; :meth:`record_response` counts a final response by
    class and records its latency, without touching ``requests``; ``ejections`` counts the times the
    backend was taken out of rotation (passive ejection or a failed connect), not its re-ejections
    while already out."""

    __slots__ = (
        "requests",
        "errors",
        "retries",
        "websockets",
        "pipelined",
        "ejections",
        "responses",
        "histogram",
    )

    def __init__(self) -> None:
        self.requests = 0
        self.errors = 0
        self.retries = 0
        self.websockets = 0
        self.pipelined = 0  # requests sent behind another on the same connection
        self.ejections = 0
        self.responses = [0, 0, 0, 0, 0]
        self.histogram = LatencyHistogram()

    def record_response(self, status: int, seconds: float) -> None:
        c = status // 100 - 1
        if 0 <= c < 5:
            self.responses[c] += 1
        self.histogram.record(seconds)

    def record_error(self) -> None:
        self.errors += 1

    def record_retry(self) -> None:
        self.retries += 1

    def as_dict(self, name: str) -> dict[str, Any]:
        """This backend's entry in ``/lb-stats``; latencies in ms, 3 decimals, None without samples."""
        h = self.histogram
        return {
            "name": name,
            "requests": self.requests,
            "errors": self.errors,
            "retries": self.retries,
            "websockets": self.websockets,
            "pipelined": self.pipelined,
            "ejections": self.ejections,
            "responses": {cls: self.responses[i + 1] for i, cls in enumerate(_REPORTED)},
            "latency_ms": {
                "p50": _ms(h.percentile(50)),
                "p90": _ms(h.percentile(90)),
                "p99": _ms(h.percentile(99)),
                "max": _ms(h.max if h.count else None),
            },
        }


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000.0, 3)
