"""/lb-health and /lb-stats of the modes without a proxy, from a scoreboard built here."""

from __future__ import annotations

from prefork_lb import scoreboard as sb
from prefork_lb.admin.documents import health_doc, stats_doc
from prefork_lb.admin.totals import Totals


def test_health_counts_slots_with_a_ready_worker() -> None:
    board, totals = sb.Scoreboard(8), Totals(8)
    totals.set_target(2)
    assert health_doc(board, totals)["status"] == "down"
    i = board.allocate(11, 0)
    board.put(i, sb.STATE, sb.READY)
    j = board.allocate(12, 1)  # still booting
    doc = health_doc(board, totals)
    assert (doc["status"], doc["healthy"], doc["total"]) == ("degraded", 1, 2)
    assert [(w["slot"], w["pid"], w["state"]) for w in doc["workers"]] == [
        (0, 11, "ready"),
        (1, 12, "booting"),
    ]
    board.put(j, sb.STATE, sb.READY)
    board.allocate(13, -2)  # the admin process is not a worker
    assert health_doc(board, totals)["status"] == "ok"


def test_stats_sum_the_requests_of_live_and_exited_workers() -> None:
    board, totals = sb.Scoreboard(8), Totals(8)
    totals.started(5, 0.0)
    i = board.allocate(21, 0)
    e = board.handle(i)
    for _ in range(4):
        e.request_started("GET", b"/")
        e.request_finished("GET", 2)
        e.publish()  # what the heartbeat does
    totals.reaped(board, i, 0)
    e = board.handle(board.allocate(22, 0))
    e.request_started("GET", b"/")
    e.request_finished("GET", 3)
    e.publish()  # what the heartbeat does
    doc = stats_doc(board, totals, "shared")
    assert doc["requests"] == 5 and doc["master_pid"] == 5 and doc["dispatch"] == "shared"
    assert [w["pid"] for w in doc["workers"]] == [22]
