"""Balancing strategies through the proxy: round robin, weights, least connections, random, latency,
hash, sticky cookies, slow start. See tests/integration/proxy/driver.py for the processes and
clients; conftest.py for the fixtures.
"""

from __future__ import annotations

import base64
from collections import Counter

import pytest

from tests.helpers import HOST, wait_for
from tests.integration.proxy.driver import (
    FAST_HEALTH,
    Client,
    Load,
    by_name,
    http_request,
    names,
    sticky_cookie,
)


def test_round_robin_rotates_exactly(start_proxy, backends) -> None:
    bs = backends(3)
    p = start_proxy(bs, "--strategy", "round_robin", "--health-check-interval", "0")
    seq = names(http_request(p.port) for _ in range(12))
    assert sorted(seq[:3]) == ["b0", "b1", "b2"], seq
    assert seq == seq[:3] * 4, seq


def test_round_robin_over_one_keepalive_connection(start_proxy, backends) -> None:
    """Balancing is per request, not per client connection."""
    bs = backends(3)
    p = start_proxy(bs, "--strategy", "round_robin", "--health-check-interval", "0")
    with Client(p.port) as c:
        seq = names(c.request() for _ in range(9))
    assert sorted(seq[:3]) == ["b0", "b1", "b2"] and seq == seq[:3] * 3, seq


def test_weighted_round_robin_follows_the_weights(start_proxy, backends) -> None:
    bs = backends(3)
    spec = [f"{bs[0].addr}=3", bs[1].addr, bs[2].addr]
    p = start_proxy(spec, "--strategy", "weighted_round_robin", "--health-check-interval", "0")
    with Client(p.port) as c:
        counts = Counter(names(c.request() for _ in range(100)))
    # weights 3:1:1 -> 60:20:20 over 100 requests (a smooth rotation gives exactly that)
    assert 55 <= counts["b0"] <= 65 and 15 <= counts["b1"] <= 25 and 15 <= counts["b2"] <= 25, counts


def test_least_connections_prefers_the_backends_that_finish(start_proxy, backends) -> None:
    slow = backends(1, delay=0.2)[0]
    fast = backends(2)
    p = start_proxy([slow, *fast], "--strategy", "least_connections", "--health-check-interval", "0")
    with Load(p.port, threads=4, limit=20, seconds=4.0) as load:
        for t in load.threads:
            t.join(timeout=10)
    assert load.failures == []
    n_slow, n_fast = len(slow.seen()), [len(b.seen()) for b in fast]
    assert n_slow >= 1, "the slow backend got nothing at all (is it considered?)"
    assert all(n > 2 * n_slow for n in n_fast), (n_slow, n_fast)


@pytest.mark.parametrize("strategy", ["random", "p2c"])
def test_random_strategies_use_every_backend_evenly(start_proxy, backends, strategy: str) -> None:
    bs = backends(3)
    p = start_proxy(bs, "--strategy", strategy, "--health-check-interval", "0")
    with Client(p.port) as c:
        counts = Counter(names(c.request() for _ in range(300)))
    # 100 expected each; the standard deviation of a uniform pick is ~8
    assert set(counts) == {"b0", "b1", "b2"}, counts
    assert all(60 <= n <= 140 for n in counts.values()), counts


def test_least_latency_avoids_the_slow_backend(start_proxy, backends) -> None:
    slow = backends(1, delay=0.05)[0]
    fast = backends(2)
    p = start_proxy([slow, *fast], "--strategy", "least_latency", "--health-check-interval", "0")
    with Client(p.port) as c:
        for _ in range(80):
            assert c.request().status == 200
    n_slow, n_fast = len(slow.seen()), [len(b.seen()) for b in fast]
    assert 4 * n_slow < sum(n_fast), (n_slow, n_fast)


def test_least_latency_tries_every_backend(start_proxy, backends) -> None:
    """A backend with no latency sample yet must get some traffic (balance/latency.py: a new
    member starts at the median, "neither flooded nor starved"), or it is never measured."""
    slow = backends(1, delay=0.05)[0]
    fast = backends(2)
    p = start_proxy([slow, *fast], "--strategy", "least_latency", "--health-check-interval", "0")
    with Client(p.port) as c:
        for _ in range(60):
            assert c.request().status == 200
    assert all(b.seen() for b in fast), [len(b.seen()) for b in (slow, *fast)]


def test_hash_pins_each_client_address(start_proxy, backends) -> None:
    bs = backends(3)
    p = start_proxy(bs, "--strategy", "hash", "--health-check-interval", "0")
    chosen: dict[str, set[str]] = {}
    for i in range(2, 10):
        src = f"127.0.0.{i}"
        chosen[src] = {http_request(p.port, source=src).body.decode() for _ in range(5)}
    assert all(len(v) == 1 for v in chosen.values()), chosen
    # 8 addresses all on one of 3 backends would not be a hash (p ~ 0.0005 for a fair one)
    assert len(set().union(*chosen.values())) >= 2, chosen


def test_sticky_cookie_pins_and_fails_over(start_proxy, backends) -> None:
    bs = backends(3)
    p = start_proxy(bs, "--strategy", "sticky", *FAST_HEALTH)
    first = http_request(p.port)
    assert first.status == 200
    cookie = sticky_cookie(first)
    assert cookie, first
    set_cookie = first.header("set-cookie") or ""
    attrs = {a.strip().lower() for a in set_cookie.split(";")[1:]}
    assert "path=/" in attrs and "httponly" in attrs, set_cookie
    owner = by_name(bs)[first.body.decode()]
    leaks = {owner.addr, str(owner.port), HOST}
    try:
        decoded = base64.urlsafe_b64decode(cookie + "=" * (-len(cookie) % 4)).decode("latin-1")
    except ValueError:
        decoded = ""
    assert not any(x in cookie or x in decoded for x in leaks), (cookie, decoded)

    with Client(p.port) as c:
        got = {c.request(headers=[("Cookie", f"other=1; lb={cookie}")]).body.decode() for _ in range(20)}
    assert got == {owner.name}

    owner.stop()
    r = http_request(p.port, headers=[("Cookie", f"lb={cookie}")])
    assert r.status == 200 and r.body.decode() != owner.name, r
    new_cookie = sticky_cookie(r)
    assert new_cookie and new_cookie != cookie, r
    again = {http_request(p.port, headers=[("Cookie", f"lb={new_cookie}")]).body.decode() for _ in range(10)}
    assert again == {r.body.decode()}


def test_sticky_cookie_name_is_configurable(start_proxy, backends) -> None:
    bs = backends(2)
    p = start_proxy(bs, "--strategy", "sticky", "--sticky-cookie", "route", "--health-check-interval", "0")
    r = http_request(p.port)
    cookie = sticky_cookie(r, "route")
    assert cookie and sticky_cookie(r, "lb") is None, r
    got = {http_request(p.port, headers=[("Cookie", f"route={cookie}")]).body.decode() for _ in range(8)}
    assert got == {r.body.decode()}


def test_slow_start_ramps_a_recovered_backend(start_proxy, backends) -> None:
    bs = backends(3)
    p = start_proxy(bs, "--strategy", "weighted_round_robin", "--slow-start", "5", *FAST_HEALTH)
    p.wait_healthy(3)
    bs[0].health_status = 500
    wait_for(lambda: p.backend_health(bs[0].addr) is False, 5, "b0 down")
    bs[0].health_status = 200
    wait_for(lambda: p.backend_health(bs[0].addr) is True, 5, "b0 back up")
    with Client(p.port) as c:
        counts = Counter(names(c.request() for _ in range(60)))
    # equal weights would give 20 each; b0 is at a fraction of its weight for 5 s
    assert counts["b0"] < 14 and counts["b1"] > 20 and counts["b2"] > 20, counts
