"""The response cache's operations with real processes: its counts in /lb-stats and on /metrics
(standalone and ``--dispatch proxy``), and ``prefork_lb ctl cache purge`` through the control
socket: a purged response is asked of the backend again; with the cache off, one clear line."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import ROOT, server_env
from tests.integration.proxy.driver import backend_requests, http_request
from tests.integration.proxy.test_cache import target
from tests.integration.test_admin import scrape, total

CACHED = target("/with-headers", "Cache-Control: public, max-age=60")


@pytest.fixture
def sock_path() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="plb-cache-", dir="/tmp"))  # unix socket paths are short
    yield d / "ctl.sock"
    shutil.rmtree(d, ignore_errors=True)


def ctl(sock: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "prefork_lb", "ctl", "--socket", str(sock), *args],
        env=server_env({"PYTHONPATH": str(ROOT)}),
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )


def seen(b: Any, t: str) -> int:
    """Requests for exactly the target ``t`` that reached the recording backend ``b``."""
    return sum(r.target == t for r in b.seen())


def cache_of(stats: dict[str, Any]) -> dict[str, int]:
    doc = stats["cache"]
    assert isinstance(doc, dict), stats
    return doc


def test_hits_and_misses_show_in_lb_stats_and_metrics(start_proxy, backends) -> None:  # type: ignore[no-untyped-def]
    b = backends(1)[0]
    p = start_proxy([b], "--health-check-interval", "0", "--cache-size", "2", "--cache-max-object", "1")
    empty = cache_of(p.stats())
    assert empty["entries"] == 0 and empty["hits"] == 0 and empty["capacity_bytes"] == 2 * 1024 * 1024
    for _ in range(3):
        assert http_request(p.port, target=CACHED).status == 200
    big = target("/with-headers", "Cache-Control: max-age=60", "X-Pad: " + "x" * 2000)
    assert http_request(p.port, target=big).status == 200
    assert len(b.seen("/with-headers")) == 2  # one miss each; the second and third were hits
    c = cache_of(p.stats())
    assert (c["hits"], c["misses"], c["stored"], c["too_big"], c["entries"]) == (2, 2, 1, 1, 1)
    assert 0 < c["bytes"] <= c["capacity_bytes"]
    m = scrape(p.admin_port)
    assert total(m, "prefork_lb_proxy_cache_requests_total", result="hit") == 2
    assert total(m, "prefork_lb_proxy_cache_requests_total", result="miss") == 2
    assert total(m, "prefork_lb_proxy_cache_requests_total", result="stale") == 0
    assert total(m, "prefork_lb_proxy_cache_stored_total") == 1
    assert total(m, "prefork_lb_proxy_cache_too_big_total") == 1
    assert total(m, "prefork_lb_proxy_cache_purged_total") == 0
    assert total(m, "prefork_lb_proxy_cache_entries") == 1
    assert total(m, "prefork_lb_proxy_cache_bytes") == c["bytes"]
    assert total(m, "prefork_lb_proxy_cache_capacity_bytes") == 2 * 1024 * 1024


def test_without_a_cache_there_is_no_cache_section_nor_metric(start_proxy, backends) -> None:  # type: ignore[no-untyped-def]
    p = start_proxy(backends(1), "--health-check-interval", "0")
    assert p.stats()["cache"] is None
    assert not [k for k in scrape(p.admin_port) if k[0].startswith("prefork_lb_proxy_cache_")]


def test_purge_through_ctl_sends_the_next_request_to_the_backend(start_proxy, backends, sock_path) -> None:  # type: ignore[no-untyped-def]
    b = backends(1)[0]
    p = start_proxy(
        [b], "--health-check-interval", "0", "--cache-size", "1", "--control-socket", str(sock_path)
    )
    other = target("/with-headers", "Cache-Control: max-age=60")
    for t in (CACHED, CACHED, other, other):
        assert http_request(p.port, target=t).status == 200
    assert (seen(b, CACHED), seen(b, other)) == (1, 1)

    prefix = "/with-headers?h=Cache-Control%3A%20public"  # CACHED's, not other's
    r = ctl(sock_path, "cache", "purge", prefix)
    assert r.returncode == 0, r
    assert r.stdout.startswith(f"purged 1 cached response under {prefix}; 1 left"), r.stdout
    assert http_request(p.port, target=CACHED).status == 200
    assert http_request(p.port, target=other).header("cache-status") is not None  # still a hit
    assert (seen(b, CACHED), seen(b, other)) == (2, 1)

    r = ctl(sock_path, "--json", "cache", "purge", "http://127.0.0.1/")
    assert r.returncode == 0, r
    doc = json.loads(r.stdout)
    assert doc["purged"] == 2 and doc["cache"]["entries"] == 0 and doc["cache"]["purged"] == 3
    assert http_request(p.port, target=other).status == 200
    assert seen(b, other) == 2
    assert total(scrape(p.admin_port), "prefork_lb_proxy_cache_purged_total") == 3

    r = ctl(sock_path, "cache", "purge", "two words")
    assert r.returncode == 2 and "printable ASCII" in r.stderr, r
    r = ctl(sock_path, "cache", "drop")
    assert r.returncode == 2 and "cache needs an operation: purge" in r.stderr, r


def test_purge_with_the_cache_off_says_so(start_proxy, backends, sock_path) -> None:  # type: ignore[no-untyped-def]
    start_proxy(backends(1), "--health-check-interval", "0", "--control-socket", str(sock_path))
    r = ctl(sock_path, "cache", "purge")
    assert r.returncode == 2, r
    assert r.stderr.strip() == (
        "prefork_lb ctl: cache purge: the response cache is off (start the proxy with --cache-size MIB)"
    )


def test_the_integrated_proxy_counts_and_purges(start_proxy, sock_path) -> None:  # type: ignore[no-untyped-def]
    p = start_proxy(
        None,
        *("--dispatch", "proxy", "--workers", "1", "--cache-size", "1"),
        *("--control-socket", str(sock_path)),
        app="tests.apps:cacheable",
    )
    first = http_request(p.port, target="/page")
    assert first.status == 200 and first.header("cache-status") == "prefork_lb; fwd=uri-miss; stored"
    assert http_request(p.port, target="/page").body == first.body  # a hit
    assert sum(backend_requests(p).values()) == 1
    c = cache_of(p.stats())
    assert (c["hits"], c["misses"], c["entries"]) == (1, 1, 1)
    assert total(scrape(p.admin_port), "prefork_lb_proxy_cache_requests_total", result="hit") == 1

    r = ctl(sock_path, "cache", "purge")
    assert r.returncode == 0 and r.stdout.startswith("purged 1 cached response; 0 left"), r
    again = http_request(p.port, target="/page")
    assert again.status == 200 and again.body != first.body  # the worker answered anew
    assert sum(backend_requests(p).values()) == 2
