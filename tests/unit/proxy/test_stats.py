"""prefork_lb.proxy.stats: histogram accuracy and the /lb-stats per-backend shape."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from prefork_lb.proxy.stats import NBUCKETS, BackendStats, LatencyHistogram


def exact_percentile(samples: list[float], p: float) -> float:
    s = sorted(samples)
    return s[max(1, math.ceil(p / 100 * len(s))) - 1]


def test_empty_histogram() -> None:
    h = LatencyHistogram()
    assert h.count == 0 and h.percentile(50) is None and h.max == 0.0


def test_single_sample_is_exact() -> None:
    h = LatencyHistogram()
    h.record(0.0123)
    for p in (0, 50, 100):
        assert h.percentile(p) == 0.0123
    assert h.max == 0.0123 and h.count == 1


def test_percentiles_within_five_percent() -> None:
    rng = random.Random(7)
    samples = [math.exp(rng.uniform(math.log(1e-5), math.log(100.0))) for _ in range(5000)]
    h = LatencyHistogram()
    for s in samples:
        h.record(s)
    assert h.count == 5000 and h.max == max(samples)
    for p in (0, 1, 10, 50, 90, 99, 99.9, 100):
        got = h.percentile(p)
        want = exact_percentile(samples, p)
        assert got is not None and abs(got - want) / want <= 0.05, (p, got, want)


@settings(database=None, max_examples=200, deadline=None)
@given(
    st.lists(st.floats(min_value=1e-5, max_value=100.0), min_size=1, max_size=60),
    st.floats(min_value=0, max_value=100),
)
def test_property_relative_error(samples: list[float], p: float) -> None:
    h = LatencyHistogram()
    for s in samples:
        h.record(s)
    got = h.percentile(p)
    want = exact_percentile(samples, p)
    assert got is not None and abs(got - want) <= 0.05 * want


def test_out_of_range_samples_clamped_to_exact_extremes() -> None:
    h = LatencyHistogram()
    for s in (0.0, 2e-6, 500.0, 1000.0):
        h.record(s)
    assert h.percentile(0) == 0.0
    assert h.percentile(100) == 1000.0
    assert h.percentile(75) == 1000.0  # the overflow bucket answers with the true max
    assert h.buckets[0] == 2 and h.buckets[NBUCKETS - 1] == 2


def test_percentile_range_checked() -> None:
    h = LatencyHistogram()
    with pytest.raises(ValueError):
        h.percentile(101)
    with pytest.raises(ValueError):
        h.percentile(-1)


def test_reset() -> None:
    h = LatencyHistogram()
    h.record(1.0)
    h.record(0.5)
    assert h.percentile(0) == 0.5
    h.reset()
    assert h.count == 0 and h.percentile(99) is None and sum(h.buckets) == 0
    h.record(0.2)
    assert h.percentile(0) == 0.2 and h.max == 0.2


def test_backend_stats_as_dict() -> None:
    b = BackendStats()
    assert b.as_dict("127.0.0.1:9001") == {
        "name": "127.0.0.1:9001",
        "requests": 0,
        "errors": 0,
        "retries": 0,
        "websockets": 0,
        "pipelined": 0,
        "ejections": 0,
        "responses": {"2xx": 0, "3xx": 0, "4xx": 0, "5xx": 0},
        "latency_ms": {"p50": None, "p90": None, "p99": None, "max": None},
    }
    b.requests += 4
    for status, secs in (
        (200, 0.001),
        (204, 0.002),
        (301, 0.003),
        (404, 0.004),
        (503, 0.5),
        (101, 0.0),
        (700, 1),
    ):
        b.record_response(status, secs)
    b.record_error()
    b.record_retry()
    b.record_retry()
    d = b.as_dict("x")
    assert d["requests"] == 4 and d["errors"] == 1 and d["retries"] == 2
    assert d["responses"] == {"2xx": 2, "3xx": 1, "4xx": 1, "5xx": 1}
    assert b.responses[0] == 1  # the 101 is counted, but /lb-stats shows 2xx..5xx
    lat = d["latency_ms"]
    assert lat["max"] == 1000.0
    assert lat["p50"] == pytest.approx(3.0, rel=0.05)
    assert all(isinstance(v, float) and round(v, 3) == v for v in lat.values())


def test_underflow_bucket_in_the_middle() -> None:
    h = LatencyHistogram()
    for s in (1e-6, 2e-6, 8e-6, 1.0):
        h.record(s)
    assert h.percentile(50) == 5e-6  # the middle of [0, 10 us)


def test_cumulative_counts_at_prometheus_bounds() -> None:
    h = LatencyHistogram()
    for s in (0.001, 0.002, 0.02, 0.2, 2.0, 200.0):
        h.record(s)
    counts, total = h.cumulative((0.005, 0.05, 0.5, 5.0))
    assert counts == [2, 3, 4, 5]  # the 200 s sample is only in +Inf (the count)
    assert 200.0 < total < 200.0 + 2.3 * 1.04
    assert LatencyHistogram().cumulative((1.0,)) == ([0], 0.0)


def test_ejections_count_each_time_a_backend_is_taken_out_not_re_ejections() -> None:
    import asyncio

    from prefork_lb.balance import make
    from prefork_lb.config import defaults
    from prefork_lb.proxy.backend import Backend
    from prefork_lb.proxy.state import ProxyState

    loop = asyncio.new_event_loop()
    try:
        state = ProxyState(defaults(), make("round_robin"), loop)
        b = Backend("127.0.0.1", 9)
        state.add_backend(b)
        state.connect_failure(b, "connection refused")
        state.connect_failure(b, "connection refused")  # already out: not one more ejection
        assert b.stats.ejections == 1
        state.check_ejections(b.ejected_until)  # back on trial
        assert not b.ejected_until
        state.connect_failure(b, "connection refused")
        assert b.stats.ejections == 2
        assert b.stats.as_dict(b.key)["ejections"] == 2
    finally:
        loop.close()
