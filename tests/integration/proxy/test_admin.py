"""Admin endpoints and settings: /lb-health, /lb-stats, environment settings, bad flags. See
tests/integration/proxy/driver.py for the processes and clients; conftest.py for the fixtures.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tests.helpers import HOST, ROOT, free_port, server_env, wait_for
from tests.integration.proxy.backends import refused_port
from tests.integration.proxy.driver import Client, http_request, names, stats_for


def test_lb_health_and_lb_stats(start_proxy, backends) -> None:
    bs = backends(2)
    p = start_proxy(bs, "--strategy", "round_robin", "--health-check-interval", "0")
    with Client(p.port) as c:
        for _ in range(10):
            assert c.request().status == 200
        assert c.request("GET", "/missing-gets-200-anyway").status == 200
    status, health = p.health()
    assert status == 200
    assert health["status"] == "ok" and health["healthy"] == 2 and health["total"] == 2
    assert sorted(b["name"] for b in health["backends"]) == sorted(b.addr for b in bs)
    for hb in health["backends"]:
        assert hb["healthy"] is True and hb["in_flight"] == 0 and isinstance(hb["latency_ms"], (int, float))
    stats = p.stats()
    assert stats["strategy"] == "round_robin"
    assert stats["requests"] == 11 and stats["websockets"] == 0 and stats["queued"] == 0
    assert stats["connections"] >= 1
    per = [stats_for(stats, b.addr) for b in bs]
    assert sorted(s["requests"] for s in per) == [5, 6], per
    for s in per:
        assert s["errors"] == 0 and s["retries"] == 0
        assert s["responses"] == {"2xx": s["requests"], "3xx": 0, "4xx": 0, "5xx": 0}
        lat = s["latency_ms"]
        assert set(lat) >= {"p50", "p90", "p99", "max"}
        assert 0 <= lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"]
    assert http_request(p.admin_port, "GET", "/nope").status == 404


def test_stats_count_errors_by_class(start_proxy, backends) -> None:
    bad = backends(1, mode="malformed")[0]
    p = start_proxy([bad], "--health-check-interval", "0", "--retries", "0")
    assert http_request(p.port).status == 502
    s = stats_for(p.stats(), bad.addr)
    assert s["errors"] >= 1 or s["responses"]["5xx"] >= 1, s


def test_in_flight_shows_in_lb_health(start_proxy, backends) -> None:
    b = backends(1, delay=1.0)[0]
    p = start_proxy([b], "--health-check-interval", "0")
    t = threading.Thread(target=lambda: http_request(p.port, "GET", "/slow", timeout=5))
    t.start()
    try:
        wait_for(lambda: b.in_flight == 1, 5, "the request at the backend")
        assert p.health()[1]["backends"][0]["in_flight"] == 1
    finally:
        t.join(5)
    wait_for(lambda: p.health()[1]["backends"][0]["in_flight"] == 0, 3, "in_flight back to 0")


def test_retry_shows_in_lb_stats(start_proxy, backends) -> None:
    ok = backends(1)[0]
    dead = f"{HOST}:{refused_port()}"
    p = start_proxy([dead, ok.addr], "--strategy", "round_robin", "--health-check-interval", "0")
    for _ in range(4):
        assert http_request(p.port).status == 200
    stats = p.stats()
    assert stats["requests"] >= 4  # (counts tries: a retried request may count twice)
    dead_s, ok_s = stats_for(stats, dead), stats_for(stats, ok.addr)
    assert dead_s["errors"] >= 1, dead_s
    assert dead_s["retries"] + ok_s["retries"] >= 1, stats
    assert ok_s["responses"]["2xx"] == 4, ok_s


def test_admin_paths_on_the_public_port_go_to_a_backend(start_proxy, backends) -> None:
    b = backends(1)[0]
    p = start_proxy([b], "--health-check-interval", "0")
    for path in ("/lb-stats", "/lb-health"):
        r = http_request(p.port, "GET", path)
        assert r.status == 200 and r.body == b"b0", r
    assert [r.target for r in b.seen()] == ["/lb-stats", "/lb-health"]


def test_stats_bind_public_serves_admin_on_the_public_port(start_proxy, backends) -> None:
    b = backends(1)[0]
    p = start_proxy([b], "--health-check-interval", "0", "--stats-bind", "public", admin=False)
    r = http_request(p.port, "GET", "/lb-health")
    assert r.status == 200 and r.json()["total"] == 1, r
    assert b.seen() == []


def test_settings_from_the_environment(start_proxy, backends) -> None:
    bs = backends(2)
    p = start_proxy(
        None,
        env={
            "PREFORK_LB_BACKENDS": ",".join(b.addr for b in bs),
            "PREFORK_LB_STRATEGY": "round_robin",
            "PREFORK_LB_LB_HEADERS": "false",
            "PREFORK_LB_HEALTH_CHECK_INTERVAL": "0",
        },
    )
    assert p.stats()["strategy"] == "round_robin"
    rs = [http_request(p.port) for _ in range(4)]
    assert sorted(names(rs)) == ["b0", "b0", "b1", "b1"]
    assert all(r.header("x-backend-server") is None for r in rs)


def test_proxy_subcommand_needs_backends(tmp_path: Path) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "prefork_lb", "proxy", "-b", f"{HOST}:{free_port()}", "--stats-bind", "off"],
        cwd=ROOT,
        env=server_env(),
        capture_output=True,
        timeout=20,
        start_new_session=True,
    )
    assert r.returncode != 0
    err = r.stderr.decode()
    assert "backends" in err and "Traceback" not in err, err


@pytest.mark.parametrize(
    ("flags", "says"),
    [
        (["--backends", "127.0.0.1:80=0"], "invalid backend '127.0.0.1:80=0'"),
        (["--backends", "nope"], "invalid backend 'nope'"),
        (["--backends", "127.0.0.1:99999"], "invalid backend"),
        (["--backends", "127.0.0.1:80", "--forwarded-allow-ips", "10.0.0.0/33"], "10.0.0.0/33"),
        (["--backends", "127.0.0.1:80", "--strategy", "fastest"], "fastest"),
    ],
)
def test_bad_proxy_flags_are_one_clear_line(flags: list[str], says: str) -> None:
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "prefork_lb",
            "proxy",
            *flags,
            "-b",
            f"{HOST}:{free_port()}",
            "--stats-bind",
            "off",
        ],
        cwd=ROOT,
        env=server_env(),
        capture_output=True,
        timeout=20,
        start_new_session=True,
    )
    assert r.returncode != 0
    err = r.stderr.decode()
    assert says in err and "Traceback" not in err and len(err.strip().splitlines()) <= 3, err
