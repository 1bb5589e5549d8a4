"""The master's --request-timeout decision for blocked workers (prefork_lb.request_deadline),
as pure functions, and driven through the supervisor's watchdog step with a fake OS."""

from __future__ import annotations

import logging
import signal
import time

import pytest

from prefork_lb import scoreboard as sb
from prefork_lb.request_deadline import GRACE, RequestClock, abort_line, heartbeat_interval, overdue
from tests.unit.test_arbiter import FakeOS, make

NOW = 1000.0


def clock(entry: int, in_flight: int = 1, started_ago: float = 0.0, beat_ago: float = 0.0) -> RequestClock:
    return RequestClock(entry, in_flight, NOW - started_ago, NOW - beat_ago)


def test_only_a_request_past_deadline_and_grace_with_a_stale_heartbeat_is_overdue() -> None:
    clocks = [
        clock(0, started_ago=1 + GRACE + 0.5, beat_ago=GRACE + 0.5),  # blocked past it: abort
        clock(1, started_ago=1 + GRACE + 0.5, beat_ago=0.1),  # its loop runs: the greenlet's business
        clock(2, started_ago=1 + GRACE - 0.1, beat_ago=5.0),  # not past the grace yet
        clock(3, in_flight=0, started_ago=50.0, beat_ago=50.0),  # no request in flight
        clock(4, in_flight=3, started_ago=30.0, beat_ago=30.0),  # several: the latest is late
    ]
    assert overdue(clocks, NOW, 1.0) == [0, 4]


def test_no_request_timeout_aborts_nobody() -> None:
    assert overdue([clock(0, started_ago=100.0, beat_ago=100.0)], NOW, 0.0) == []


def test_heartbeat_is_frequent_enough_for_the_grace_while_request_timeout_is_set() -> None:
    assert heartbeat_interval(30.0, 0.0) == 1.0  # as before
    assert heartbeat_interval(2.0, 0.0) == 0.5
    assert heartbeat_interval(30.0, 1.0) <= GRACE / 4
    assert heartbeat_interval(0.1, 5.0) == 0.05


def test_abort_line_names_request_limit_and_elapsed_time() -> None:
    line = abort_line(0, 1234, "GET /slow", 1.0, 2.04, 1.8)
    assert "Worker 0 (pid 1234) aborted: GET /slow over --request-timeout 1s (2.0 s" in line


@pytest.fixture
def fake() -> FakeOS:
    return FakeOS()


def test_watchdog_aborts_a_blocked_request_then_kills_and_replaces_at_once(fake: FakeOS, caplog) -> None:
    arb = make(fake, workers=1, timeout=0, request_timeout=1.0)
    arb.manage()
    (pid,) = list(arb.workers)
    i = arb.workers[pid].entry
    arb.board.handle(i).request_started("GET", b"/burn/5")
    arb.board.putf(i, sb.REQ_START, time.monotonic() - 1 - GRACE - 0.5)
    arb.board.putf(i, sb.HEARTBEAT, time.monotonic())  # the loop still answers: not yet
    arb.check_timeouts()
    assert fake.signals_to(pid) == []
    arb.board.putf(i, sb.HEARTBEAT, time.monotonic() - GRACE - 0.5)
    with caplog.at_level(logging.CRITICAL, "prefork_lb.error"):
        arb.check_timeouts()
    assert fake.signals_to(pid) == [signal.SIGABRT]  # faulthandler writes its stack
    assert "aborted: GET /burn/5 over --request-timeout 1s" in caplog.text
    arb.manage()  # its slot gets a new worker at once, before it is even gone
    assert len(arb.workers) == 2
    fake.now += 2.1
    arb.check_timeouts()
    assert fake.signals_to(pid) == [signal.SIGABRT, signal.SIGKILL]
    fake.exit(pid, signum=signal.SIGKILL)
    arb.reap()
    arb.manage()
    assert len(arb.workers) == 1 and pid not in arb.workers and not arb.next_spawn
