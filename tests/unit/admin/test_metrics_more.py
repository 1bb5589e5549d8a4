"""The /metrics families of queueing, offload, request deadlines and the proxy's upstream pools,
on a scoreboard built here (the collector's side; tests/integration/test_metrics_more.py drives
real processes)."""

from __future__ import annotations

from prefork_lb import scoreboard as sb
from prefork_lb.admin.totals import REQUEST_ABORTS, Totals
from prefork_lb.offload.counters import COMPLETED, FAILED, TIMED_OUT, TaskCounters
from tests.unit.admin.test_metrics import scrape, worker

W0 = (("worker", "0"),)


def test_queue_waits_are_published_at_the_beat_with_their_bucket() -> None:
    board, totals = sb.Scoreboard(4), Totals(4)
    w = worker(board, 11, 0)
    w.request_started("GET", b"/", board.getf(0, sb.HEARTBEAT) - 0.3)  # arrived 0.3 s before now
    w.request_started("GET", b"/")  # arrival unknown: no wait
    assert scrape(board, totals)[("prefork_lb_request_queue_wait_seconds_count", W0)] == 0
    w.beat()  # published even though nothing finished yet
    m = scrape(board, totals)
    hist = "prefork_lb_request_queue_wait_seconds_bucket"
    assert m[("prefork_lb_request_queue_wait_seconds_count", W0)] == 2
    assert m[(hist, (("le", "0.0005"), ("worker", "0")))] == 1
    assert m[(hist, (("le", "0.25"), ("worker", "0")))] == 1
    assert m[(hist, (("le", "0.5"), ("worker", "0")))] == 2
    assert 0.3 <= m[("prefork_lb_request_queue_wait_seconds_sum", W0)] < 0.5
    assert m[("prefork_lb_requests_in_flight", W0)] == 2


def test_queued_requests_are_a_gauge_and_count_as_load() -> None:
    board, totals = sb.Scoreboard(4), Totals(4)
    w = worker(board, 12, 0)
    w.queued(3)
    assert scrape(board, totals)[("prefork_lb_requests_queued", W0)] == 3
    w.queued(-2)
    assert scrape(board, totals)[("prefork_lb_requests_queued", W0)] == 1
    assert board.entries_in_use()[0].fresh == 1


def test_request_timeouts_by_where() -> None:
    board, totals = sb.Scoreboard(4), Totals(4)
    w = worker(board, 13, 0)
    w.deadline_passed()
    w.deadline_passed()
    totals.count(REQUEST_ABORTS)
    docs = {"stats": {"timeouts": 4, "backends": []}, "health": {}, "metrics": {}}
    m = scrape(board, totals, proxy=lambda: docs)
    name = "prefork_lb_request_timeouts_total"
    assert m[(name, (("where", "worker"),))] == 2
    assert m[(name, (("where", "master"),))] == 1
    assert m[(name, (("where", "proxy"),))] == 4
    # A reaped worker's deadlines stay counted (they are counter words the master folds).
    totals.reaped(board, 0, 0)
    assert scrape(board, totals)[(name, (("where", "worker"),))] == 2


def test_offload_tasks_and_their_durations_per_slot() -> None:
    board, totals = sb.Scoreboard(4), Totals(4)
    w = worker(board, 14, 0)
    tasks = TaskCounters()
    for _ in range(3):
        tasks.submitted()
        tasks.ended(COMPLETED, 0.02)
    tasks.submitted()
    tasks.ended(FAILED, 0.3)
    tasks.submitted()
    tasks.ended(TIMED_OUT)
    w.offload(1, 2, 4, tasks.words())
    m = scrape(board, totals)
    name = "prefork_lb_offload_tasks_total"
    got = {o: m[(name, (("outcome", o), ("worker", "0")))] for o in sb.OFFLOAD_OUTCOMES}
    assert got == {"submitted": 5, "completed": 3, "failed": 1, "timed_out": 1, "cancelled": 0}
    hist = "prefork_lb_offload_task_duration_seconds"
    assert m[(hist + "_count", W0)] == 4
    assert m[(hist + "_bucket", (("le", "0.025"), ("worker", "0")))] == 3
    assert m[(hist + "_bucket", (("le", "0.5"), ("worker", "0")))] == 4
    assert abs(m[(hist + "_sum", W0)] - 0.36) < 1e-5
    assert m[("prefork_lb_offload_pool_size", W0)] == 4
    assert m[("prefork_lb_offload_busy_processes", W0)] == 1


def test_the_proxys_pools_and_websockets() -> None:
    board, totals = sb.Scoreboard(4), Totals(4)
    b = "10.0.0.1:80"
    docs = {
        "stats": {"requests": 1, "websockets": 5, "backends": []},
        "health": {},
        "metrics": {
            "bounds": [],
            "backends": {b: {"idle": 1, "connecting": 0, "active": 3, "websockets": 2}},
        },
    }
    m = scrape(board, totals, proxy=lambda: docs)
    assert m[("prefork_lb_backend_active_connections", (("backend", b),))] == 3
    assert m[("prefork_lb_backend_websockets_open", (("backend", b),))] == 2
    assert m[("prefork_lb_proxy_websockets_total", ())] == 5


def test_the_entry_layout_has_no_overlaps_and_fits() -> None:
    from prefork_lb.offload import counters

    words: dict[int, str] = {}

    def take(name: str, first: int, n: int = 1) -> None:
        for w in range(first, first + n):
            assert w not in words, f"{name} overlaps {words.get(w)} at word {w}"
            words[w] = name

    for name in ("PID", "STATE", "HEARTBEAT", "IN_FLIGHT", "SERVED", "REQ_START", "SLOT", "LATENCY"):
        take(name, getattr(sb, name))
    for name in ("RECEIVED", "CONNS", "TEXT_LEN", "FRESH", "OFFLOAD_BUSY", "OFFLOAD_IDLE", "PORT"):
        take(name, getattr(sb, name))
    take("RETIRE_REASON", sb.RETIRE_REASON)
    take("text", sb._TEXT_OFFSET // 8, sb._TEXT_MAX // 8)
    take("SHED", sb.SHED)
    take("BY_STATUS", sb.BY_STATUS, len(sb.STATUS_CLASSES))
    take("BY_METHOD", sb.BY_METHOD, len(sb.METHODS))
    take("DURATION_US", sb.DURATION_US)
    take("HISTOGRAM", sb.HISTOGRAM, len(sb.DURATION_BUCKETS) + 1)
    take("DEADLINES", sb.DEADLINES)
    take("QUEUE_WAIT_US", sb.QUEUE_WAIT_US)
    take("QUEUE_HISTOGRAM", sb.QUEUE_HISTOGRAM, len(sb.QUEUE_BUCKETS) + 1)
    take("OFFLOAD_TASKS", sb.OFFLOAD_TASKS, len(sb.OFFLOAD_OUTCOMES))
    take("OFFLOAD_US", sb.OFFLOAD_US)
    take("OFFLOAD_HISTOGRAM", sb.OFFLOAD_HISTOGRAM, len(sb.DURATION_BUCKETS) + 1)
    take("QUEUED", sb.QUEUED)
    take("OFFLOAD_SIZE", sb.OFFLOAD_SIZE)
    assert max(words) < sb.ENTRY_SIZE // 8
    # The counters the master folds are one run, and the totals' rows hold them.
    assert [w for w, n in words.items() if sb.COUNTERS <= w < sb.COUNTERS_END] == list(
        range(sb.COUNTERS, sb.COUNTERS_END)
    )
    from prefork_lb.admin.totals import NCOUNTERS, ROW

    assert NCOUNTERS <= ROW
    # What a pool writes is what the entry has room for, in the same order and buckets.
    assert len(TaskCounters().words()) == sb.COUNTERS_END - sb.OFFLOAD_TASKS
    assert counters.OUTCOMES == sb.OFFLOAD_OUTCOMES and counters.BOUNDS == sb.DURATION_BUCKETS
