"""Health checks: a backend is taken out (ejected) and put back; custom path; a hung backend. See
tests/integration/proxy/driver.py for the processes and clients; conftest.py for the fixtures.
"""

from __future__ import annotations

from tests.helpers import wait_for
from tests.integration.proxy.driver import FAST_HEALTH, backend_requests, http_request


def test_health_checks_take_a_backend_out_and_back(start_proxy, backends) -> None:
    bs = backends(3)
    sick = bs[0]
    p = start_proxy(bs, "--strategy", "round_robin", *FAST_HEALTH)
    p.wait_healthy(3)
    checks = sick.seen("/health")
    assert checks and all(r.method == "GET" and r.target == "/health" for r in checks)
    assert all(r.header("host") for r in checks), "a health check without Host (HTTP/1.1 requires it)"
    sick.health_status = 500
    t0 = sick.health_checks
    wait_for(lambda: p.backend_health(sick.addr) is False, 5, "the sick backend marked down")
    assert sick.health_checks - t0 >= 2, "down before --health-check-fall 2 failed checks"
    sick.clear()
    for _ in range(12):
        assert http_request(p.port).status == 200
    assert sick.seen() == []
    sick.health_status = 200
    t1 = sick.health_checks
    wait_for(lambda: p.backend_health(sick.addr) is True, 5, "the backend back up")
    assert sick.health_checks - t1 >= 2, "up before --health-check-rise 2 passed checks"
    for _ in range(9):
        assert http_request(p.port).status == 200
    assert len(sick.seen()) >= 2


def test_custom_health_check_path(start_proxy, backends) -> None:
    b = backends(1)[0]
    p = start_proxy([b], *FAST_HEALTH, "--health-check-path", "/healthz?deep=1")
    wait_for(lambda: b.seen("/healthz"), 5, "a check on the custom path")
    assert b.seen("/healthz")[0].target == "/healthz?deep=1"
    assert p.health()[0] == 200


def test_health_check_timeout_marks_a_hung_backend_down(start_proxy, backends) -> None:
    hang = backends(1, mode="hang")[0]
    ok = backends(1)[0]
    p = start_proxy(
        [hang, ok],
        "--strategy",
        "round_robin",
        "--health-check-interval",
        "0.2",
        "--health-check-timeout",
        "0.3",
        "--health-check-fall",
        "2",
        "--upstream-timeout",
        "5",
    )
    wait_for(lambda: p.backend_health(hang.addr) is False, 5, "the hung backend marked down")
    status, health = p.health()
    assert status == 200 and health["status"] == "degraded", health
    before = backend_requests(p)
    assert [http_request(p.port).status for _ in range(4)] == [200] * 4
    after = backend_requests(p)
    assert after[hang.addr] == before[hang.addr], "requests went to the hung backend"
    assert after[ok.addr] == before[ok.addr] + 4
