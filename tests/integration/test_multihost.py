"""Several hosts on one machine: prefork_lb servers in three network namespaces (tests/netns.py,
tests/multihost.py), standalone proxies in front of them on 127.0.0.1.

As root only (``ip netns``; CI runs as root), skipped with the reason otherwise. Checked: a host
cut off the network (its link down) under open-loop load fails no GET, and once it is back the
health checks return it to rotation; two proxies with one --sticky-secret honour each other's
cookies; a session kept in the shared Redis survives a cut of the host that served it. No
timing is asserted (bench/multihost.py records the latencies). About 25 s.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.helpers import wait_for
from tests.integration.proxy.driver import http_request
from tests.multihost import FALL, INTERVAL, RISE, OpenLoop, Rig, rig, served_by

# Generous slack over interval x fall (or rise): the machine running the suite is shared.
SLACK = 20.0


@pytest.fixture(scope="module")
def hosts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    with rig(tmp_path_factory.mktemp("multihost")) as r:
        yield r


def test_a_cut_host_fails_no_get_and_health_checks_bring_it_back(hosts: Rig) -> None:
    p = hosts.proxy("--strategy", "round_robin")
    cut = hosts.hosts[0]
    name = hosts.backend(cut)
    load = OpenLoop(p.port, rate=200, count=1600)  # 8 s
    try:
        wait_for(lambda: load.sent_about() >= 300, 20.0, "load under way")
        cut.cut()
        wait_for(lambda: p.backend_health(name) is False, INTERVAL * FALL + SLACK, f"{name} down")
        mark = load.sent_about()
        wait_for(lambda: load.sent_about() >= mark + 200, 20.0, "load on the two other hosts")
    finally:
        cut.restore()
    wait_for(lambda: p.backend_health(name) is True, INTERVAL * RISE + SLACK, f"{name} back up")
    samples = load.done(60.0)
    failed = [s for s in samples if s.status != 200]
    assert not failed, f"{len(failed)} of {len(samples)} GETs failed: {failed[:5]}"
    assert len(samples) == 1600
    # Every host served some of the load, and the cut one serves again.
    assert {s.backend for s in samples} == {hosts.backend(h) for h in hosts.hosts}
    assert served_by(p.port, name)


def test_two_proxies_with_one_sticky_secret_honour_each_others_cookies(hosts: Rig) -> None:
    flags = ("--strategy", "sticky", "--sticky-secret", "one secret for both proxies")
    a, b = hosts.proxy(*flags), hosts.proxy(*flags)
    pinned: dict[str, str] = {}
    for _ in range(12):
        r = http_request(a.port)
        assert r.status == 200, r
        cookie = (r.header("Set-Cookie") or "").split(";", 1)[0]
        backend = r.header("X-Backend-Server")
        assert cookie.startswith("lb=") and backend, r
        pinned[cookie] = backend
    assert len(set(pinned.values())) > 1, "proxy A put every new client on one backend"
    for cookie, backend in pinned.items():
        for proxy in (b, a):
            r = http_request(proxy.port, headers=[("Cookie", cookie)])
            assert r.status == 200 and r.header("X-Backend-Server") == backend, (cookie, r)
            assert r.header("Set-Cookie") is None, r


def test_a_session_survives_a_cut_of_the_host_that_served_it(hosts: Rig) -> None:
    p = hosts.proxy("--strategy", "sticky", "--sticky-secret", "sessions")
    r = http_request(p.port, "GET", "/count")
    assert r.status == 200 and r.json()["count"] == 1, r
    cookies = [c.split(";", 1)[0] for c in r.header_list("Set-Cookie")]
    assert len(cookies) == 2, r  # the proxy's sticky cookie and the session's
    header = [("Cookie", "; ".join(cookies))]
    first = r.header("X-Backend-Server")
    r = http_request(p.port, "GET", "/count", headers=header)
    assert r.status == 200 and r.json()["count"] == 2 and r.header("X-Backend-Server") == first, r
    cut = hosts.host_of(first)
    assert cut is not None
    cut.cut()
    try:
        r = http_request(p.port, "GET", "/count", headers=header, timeout=10.0)
        assert r.status == 200, r
        assert r.header("X-Backend-Server") != first and r.json()["count"] == 3, r
        assert r.json()["host"] != cut.ns
    finally:
        cut.restore()
    wait_for(lambda: p.backend_health(first) is True, INTERVAL * RISE + SLACK, f"{first} back up")
