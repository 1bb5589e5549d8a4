"""The dashboard's document and page, and the StatsD sample, from a scoreboard built here."""

from __future__ import annotations

import re

from prefork_lb import scoreboard as sb
from prefork_lb.admin.dashboard import backend_rows, dashboard_doc, health_of, page, statsd_sample
from prefork_lb.admin.totals import Totals


def board_with_two_workers() -> tuple[sb.Scoreboard, Totals, list[int]]:
    board, totals = sb.Scoreboard(8), Totals(8)
    totals.started(77, 1000.0)
    totals.set_target(2)
    entries = []
    for slot, pid in ((0, 101), (1, 102)):
        i = board.allocate(pid, slot)
        board.put(i, sb.STATE, sb.READY)
        entries.append(i)
    return board, totals, entries


def test_the_document_has_the_master_the_workers_and_growing_totals() -> None:
    board, totals, (a, b) = board_with_two_workers()
    wa = board.handle(a)
    for status in (2, 2, 5):
        wa.request_started("GET", b"/x")
        wa.request_finished("GET", status)
        wa.publish()  # what the heartbeat does
    wb = board.handle(b)
    wb.request_started("POST", b"/slow?q=1")  # still being served
    board.putf(b, sb.REQ_START, 50.0)
    board.putf(a, sb.HEARTBEAT, 59.5)
    board.putf(b, sb.HEARTBEAT, 59.0)
    board.set_interface(b, "asgi")  # a's app has not said yet (--interface auto, still loading)
    rss = {101: (50.0 * 2**20, 1.0), 102: (60.0 * 2**20, 2.0)}
    doc = dashboard_doc(board, totals, "handoff", rss.get, clock=lambda: 60.0, wall=lambda: 1100.0)
    assert doc["master"] == {
        "pid": 77,
        "uptime": 100.0,
        "dispatch": "handoff",
        "version": doc["master"]["version"],
        "workers_target": 2,
    }
    assert doc["health"] == "ok" and doc["time"] == 1100.0
    w0, w1 = doc["workers"]
    assert (w0["pid"], w0["state"], w0["served"], w0["in_flight"], w0["current_request"]) == (
        101,
        "ready",
        3,
        0,
        "",
    )
    assert w0["rss"] == 50 * 2**20 and w0["heartbeat_age"] == 0.5 and w0["current_for"] is None
    assert (w1["pid"], w1["in_flight"], w1["current_request"], w1["current_for"]) == (
        102,
        1,
        "POST /slow?q=1",
        10.0,
    )
    assert (w0["interface"], w1["interface"]) == ("", "asgi")
    assert doc["totals"]["requests"] == 3 and doc["totals"]["errors"] == 1
    assert sum(doc["totals"]["histogram"]) == 3
    assert len(doc["totals"]["histogram"]) == len(doc["totals"]["bounds"]) + 1
    assert doc["backends"] == [] and doc["offload"] == {"busy": 0, "idle": 0}
    # A worker that exits: its row goes, its counts stay in the totals.
    totals.reaped(board, a, 0)
    doc = dashboard_doc(board, totals, "handoff", rss.get)
    assert [w["pid"] for w in doc["workers"]] == [102]
    assert doc["totals"]["requests"] == 3 and doc["health"] == "degraded"


def test_health() -> None:
    assert health_of([], 2) == "down"
    ready = {"slot": 0, "state": "ready"}
    assert health_of([ready, {"slot": 1, "state": "booting"}], 2) == "degraded"
    assert health_of([ready, {"slot": 1, "state": "retiring"}], 2) == "ok"


def test_backend_rows_join_stats_and_health() -> None:
    stats = {
        "backends": [
            {"name": "a:1", "requests": 9, "errors": 1, "latency_ms": {"p50": 2.0, "p99": 30.0}},
            {"name": "b:2", "requests": 0, "errors": 0, "latency_ms": {"p50": None, "p99": None}},
        ]
    }
    health = {
        "backends": [{"name": "a:1", "healthy": True, "in_flight": 3}, {"name": "b:2", "healthy": False}]
    }
    assert backend_rows(stats, health) == [
        {
            "name": "a:1",
            "health": "healthy",
            "in_flight": 3,
            "requests": 9,
            "errors": 1,
            "p50": 0.002,
            "p99": 0.03,
        },
        {
            "name": "b:2",
            "health": "unhealthy",
            "in_flight": 0,
            "requests": 0,
            "errors": 0,
            "p50": None,
            "p99": None,
        },
    ]
    assert backend_rows(None, None) == []


def test_the_page_loads_nothing_from_elsewhere() -> None:
    html = page().decode()
    assert "dashboard.json" in html
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html), "the page must not load from a CDN"
    assert "fetch(" in html and "http://" not in html and "https://" not in html


def test_statsd_sample() -> None:
    board, totals, (a, b) = board_with_two_workers()
    wa = board.handle(a)
    for status in (2, 4):
        wa.request_started("GET", b"/")
        wa.request_finished("GET", status)
        wa.publish()  # what the heartbeat does
    totals.spawned("start")
    totals.spawned("start")
    totals.spawned("crash")
    s = statsd_sample(board, totals)
    assert (
        s.requests == 2 and s.by_status["2xx"] == 1 and s.by_status["4xx"] == 1 and "none" not in s.by_status
    )
    assert s.workers == 2 and sum(s.histogram) == 2 and list(s.bounds) == list(sb.DURATION_BUCKETS)
    assert s.counters["spawns.start"] == 2 and s.counters["spawns.crash"] == 1
    assert s.gauges == {"requests_in_flight": 0, "workers_target": 2}
