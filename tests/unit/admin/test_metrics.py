"""The /metrics collector on a scoreboard built here: what a scrape shows after workers counted,
exited and were replaced (prometheus_client's own parser reads the text back)."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from prefork_lb import scoreboard as sb
from prefork_lb.admin.metrics import ServerCollector
from prefork_lb.admin.totals import Totals


def scrape(
    board: sb.Scoreboard, totals: Totals, **kw: Any
) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    registry = CollectorRegistry(auto_describe=False)
    info = kw.pop("process_info", lambda pid: (1024.0, 0.5))
    registry.register(ServerCollector(board, totals, "shared", process_info=info, clock=lambda: 100.0, **kw))
    text = generate_latest(registry).decode()
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def worker(board: sb.Scoreboard, pid: int, slot: int) -> sb.WorkerEntry:
    i = board.allocate(0, slot)
    board.set_pid(i, pid)
    entry = board.handle(i)
    entry.set_state(sb.READY)
    return entry


def serve(entry: sb.WorkerEntry, method: str, status_class: int, n: int = 1) -> None:
    for _ in range(n):
        entry.request_started(method, b"/")
        entry.request_finished(method, status_class)
        entry.publish()  # what the heartbeat does


def test_requests_by_status_class_method_and_duration() -> None:
    board, totals = sb.Scoreboard(8), Totals(8)
    w0 = worker(board, 101, 0)
    serve(w0, "GET", 2, 3)
    serve(w0, "POST", 5)
    serve(w0, "BREW", 4)
    serve(w0, "GET", 0)  # the client left before any response
    m = scrape(board, totals)
    assert m[("prefork_lb_requests_total", (("code", "2xx"), ("worker", "0")))] == 3
    assert m[("prefork_lb_requests_total", (("code", "5xx"), ("worker", "0")))] == 1
    assert m[("prefork_lb_requests_total", (("code", "4xx"), ("worker", "0")))] == 1
    assert m[("prefork_lb_requests_total", (("code", "none"), ("worker", "0")))] == 1
    assert m[("prefork_lb_requests_by_method_total", (("method", "GET"), ("worker", "0")))] == 4
    assert m[("prefork_lb_requests_by_method_total", (("method", "other"), ("worker", "0")))] == 1
    assert m[("prefork_lb_request_duration_seconds_count", (("worker", "0"),))] == 6
    assert m[("prefork_lb_request_duration_seconds_bucket", (("le", "+Inf"), ("worker", "0")))] == 6
    assert m[("prefork_lb_request_duration_seconds_bucket", (("le", "10.0"), ("worker", "0")))] == 6
    assert m[("prefork_lb_requests_in_flight", (("worker", "0"),))] == 0


def test_a_slow_request_lands_in_its_bucket() -> None:
    board, totals = sb.Scoreboard(4), Totals(4)
    w = worker(board, 7, 0)
    w.request_started("GET", b"/slow")
    board.putf(0, sb.REQ_START, board.getf(0, sb.REQ_START) - 0.3)  # started 0.3 s ago
    w.request_finished("GET", 2)
    w.publish()  # what the heartbeat does
    m = scrape(board, totals)
    assert m[("prefork_lb_request_duration_seconds_bucket", (("le", "0.25"), ("worker", "0")))] == 0
    assert m[("prefork_lb_request_duration_seconds_bucket", (("le", "0.5"), ("worker", "0")))] == 1
    assert 0.3 <= m[("prefork_lb_request_duration_seconds_sum", (("worker", "0"),))] < 0.5


def test_a_reaped_workers_counts_stay_in_its_slots_totals() -> None:
    board, totals = sb.Scoreboard(8), Totals(8)
    old = worker(board, 201, 1)
    serve(old, "GET", 2, 5)
    before = scrape(board, totals)[("prefork_lb_requests_total", (("code", "2xx"), ("worker", "1")))]
    totals.reaped(board, 0, 1)  # what the master does once it reaped pid 201
    assert board.entries_in_use() == []
    new = worker(board, 202, 1)
    serve(new, "GET", 2, 2)
    m = scrape(board, totals)
    assert before == 5
    assert m[("prefork_lb_requests_total", (("code", "2xx"), ("worker", "1")))] == 7
    assert m[("prefork_lb_request_duration_seconds_count", (("worker", "1"),))] == 7
    assert ("prefork_lb_worker_heartbeat_age_seconds", (("pid", "201"), ("worker", "1"))) not in m
    assert ("prefork_lb_worker_heartbeat_age_seconds", (("pid", "202"), ("worker", "1"))) in m


def test_the_sequence_lock_makes_a_reader_wait_for_a_fold() -> None:
    board, totals = sb.Scoreboard(4), Totals(4)
    serve(worker(board, 5, 0), "GET", 2, 4)
    totals.q[0] += 1  # a fold in progress (odd): the reader cannot trust what it reads
    assert totals.read_counters(board, tries=3) == {}
    totals.q[0] += 1
    assert sum(totals.read_counters(board)[0][1:7]) == 4


def test_workers_master_counters_and_process_gauges() -> None:
    board, totals = sb.Scoreboard(8), Totals(8)
    totals.started(99, 1_700_000_000.0)
    totals.set_target(3)
    totals.spawned("start")
    totals.spawned("start")
    totals.spawned("crash")
    w = worker(board, 301, 0)
    board.putf(0, sb.HEARTBEAT, 98.5)
    booting = board.allocate(302, 1)
    assert board.state(booting) == sb.BOOTING
    w.request_started("GET", b"/busy")
    m = scrape(board, totals)
    assert m[("prefork_lb_workers_target", ())] == 3
    assert m[("prefork_lb_workers", (("state", "ready"),))] == 1
    assert m[("prefork_lb_workers", (("state", "booting"),))] == 1
    assert m[("prefork_lb_worker_spawns_total", (("reason", "start"),))] == 2
    assert m[("prefork_lb_worker_spawns_total", (("reason", "crash"),))] == 1
    assert m[("prefork_lb_worker_heartbeat_age_seconds", (("pid", "301"), ("worker", "0")))] == 1.5
    assert m[("prefork_lb_worker_state", (("pid", "301"), ("state", "ready"), ("worker", "0")))] == 1
    assert m[("prefork_lb_requests_in_flight", (("worker", "0"),))] == 1
    assert (
        m[("prefork_lb_process_resident_memory_bytes", (("pid", "301"), ("role", "worker"), ("worker", "0")))]
        == 1024
    )
    assert (
        m[("prefork_lb_process_cpu_seconds_total", (("pid", "99"), ("role", "master"), ("worker", "")))]
        == 0.5
    )
    assert m[("prefork_lb_master_start_time_seconds", ())] == 1_700_000_000.0
    build = [k for k in m if k[0] == "prefork_lb_build_info"]
    assert len(build) == 1 and ("dispatch", "shared") in build[0][1]


def test_admission_sheds_and_backends_from_the_proxys_documents() -> None:
    board, totals = sb.Scoreboard(4), Totals(4)
    worker(board, 401, 0)
    board.put(0, sb.COUNTERS, 3)  # the admission helper's 503 counter
    docs = {
        "stats": {
            "requests": 9,
            "active_connections": 1,
            "queued": 0,
            "backends": [
                {
                    "name": "10.0.0.1:80",
                    "requests": 9,
                    "errors": 1,
                    "retries": 2,
                    "websockets": 0,
                    "pipelined": 0,
                    "ejections": 4,
                    "responses": {"2xx": 8, "3xx": 0, "4xx": 0, "5xx": 1},
                    "latency_ms": {"p50": 2.0, "p90": 4.0, "p99": None, "max": 9.0},
                }
            ],
        },
        "health": {"backends": [{"name": "10.0.0.1:80", "healthy": True, "in_flight": 2}]},
        "metrics": {
            "bounds": [0.005, 0.01],
            "backends": {
                "10.0.0.1:80": {"idle": 3, "connecting": 0, "buckets": [7, 8], "count": 9, "sum": 0.5}
            },
        },
    }
    m = scrape(board, totals, proxy=lambda: docs)
    assert m[("prefork_lb_admission_rejected_total", (("worker", "0"),))] == 3
    assert m[("prefork_lb_backend_requests_total", (("backend", "10.0.0.1:80"),))] == 9
    assert m[("prefork_lb_backend_retries_total", (("backend", "10.0.0.1:80"),))] == 2
    assert m[("prefork_lb_backend_ejections_total", (("backend", "10.0.0.1:80"),))] == 4
    assert m[("prefork_lb_backend_responses_total", (("backend", "10.0.0.1:80"), ("code", "5xx")))] == 1
    assert (
        m[("prefork_lb_backend_latency_quantile_seconds", (("backend", "10.0.0.1:80"), ("quantile", "0.5")))]
        == 0.002
    )
    assert (
        "prefork_lb_backend_latency_quantile_seconds",
        (("backend", "10.0.0.1:80"), ("quantile", "0.99")),
    ) not in m
    assert m[("prefork_lb_backend_up", (("backend", "10.0.0.1:80"),))] == 1
    assert m[("prefork_lb_backend_in_flight", (("backend", "10.0.0.1:80"),))] == 2
    assert m[("prefork_lb_proxy_requests_total", ())] == 9
    assert m[("prefork_lb_backend_idle_connections", (("backend", "10.0.0.1:80"),))] == 3
    hist = "prefork_lb_backend_latency_seconds_bucket"
    assert m[(hist, (("backend", "10.0.0.1:80"), ("le", "0.005")))] == 7
    assert m[(hist, (("backend", "10.0.0.1:80"), ("le", "+Inf")))] == 9
    assert m[("prefork_lb_backend_latency_seconds_sum", (("backend", "10.0.0.1:80"),))] == 0.5


def test_a_proxy_that_does_not_answer_leaves_out_its_backends() -> None:
    board, totals = sb.Scoreboard(4), Totals(4)
    m = scrape(board, totals, proxy=lambda: None)
    assert not [k for k in m if k[0].startswith("prefork_lb_backend_")]
    assert m[("prefork_lb_workers_target", ())] == 0


def test_backend_weight_and_operator_state() -> None:
    from prefork_lb.admin.metrics import backend_metrics

    docs = {
        "stats": {
            "backends": [{"name": "a:1", "state": "draining", "weight": 4}, {"name": "b:1", "state": "up"}]
        },
        "health": {
            "backends": [
                {"name": "a:1", "healthy": True, "state": "draining"},
                {"name": "b:1", "healthy": True},
            ]
        },
    }
    got = {
        (m.name, s.labels.get("backend"), s.labels.get("state")): s.value
        for m in backend_metrics(docs)
        for s in m.samples
    }
    assert got[("prefork_lb_backend_weight", "a:1", None)] == 4
    assert got[("prefork_lb_backend_state", "a:1", "draining")] == 1
    assert got[("prefork_lb_backend_up", "a:1", None)] == 0  # healthy, but the proxy sends it nothing
    assert got[("prefork_lb_backend_up", "b:1", None)] == 1


def test_the_response_cache_counts_and_memory() -> None:
    from prefork_lb.admin.metrics import backend_metrics

    cache = {
        "hits": 5,
        "misses": 2,
        "stale": 1,
        "coalesced": 3,
        "stored": 2,
        "evicted": 1,
        "purged": 4,
        "too_big": 6,
        "entries": 7,
        "bytes": 900,
        "capacity_bytes": 1048576,
        "max_object_bytes": 1024,
    }
    got = {
        (s.name, s.labels.get("result")): s.value
        for m in backend_metrics({"stats": {"backends": [], "cache": cache}})
        for s in m.samples
        if s.name.startswith("prefork_lb_proxy_cache_")
    }
    assert got == {
        ("prefork_lb_proxy_cache_requests_total", "hit"): 5,
        ("prefork_lb_proxy_cache_requests_total", "miss"): 2,
        ("prefork_lb_proxy_cache_requests_total", "stale"): 1,
        ("prefork_lb_proxy_cache_requests_total", "coalesced"): 3,
        ("prefork_lb_proxy_cache_stored_total", None): 2,
        ("prefork_lb_proxy_cache_evicted_total", None): 1,
        ("prefork_lb_proxy_cache_purged_total", None): 4,
        ("prefork_lb_proxy_cache_too_big_total", None): 6,
        ("prefork_lb_proxy_cache_entries", None): 7,
        ("prefork_lb_proxy_cache_bytes", None): 900,
        ("prefork_lb_proxy_cache_capacity_bytes", None): 1048576,
    }
    off = [m.name for m in backend_metrics({"stats": {"backends": [], "cache": None}})]
    assert off and not [n for n in off if n.startswith("prefork_lb_proxy_cache_")]
