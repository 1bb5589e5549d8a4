"""The master's side of the admin process and of the metrics: the admin slot is filled and
refilled, spawns are counted by reason, and a reaped worker's counters move to its slot's
totals (fake fork/kill/waitpid, see tests/unit/test_arbiter.py)."""

from __future__ import annotations

import logging
import signal
import socket
from collections.abc import Iterator

import pytest

from prefork_lb import scoreboard as sb
from prefork_lb.arbiter import Arbiter
from prefork_lb.config import build
from prefork_lb.dispatch.base import ADMIN_SLOT
from tests.unit.test_arbiter import FakeOS


@pytest.fixture
def fake() -> FakeOS:
    return FakeOS()


@pytest.fixture
def arb(fake: FakeOS) -> Iterator[Arbiter]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    values = {"workers": 2, "dispatch": "shared", "bind": ["127.0.0.1:0"], "stats_bind": f"127.0.0.1:{port}"}
    a = Arbiter(
        build(values, environ={}, app_uri="x:app"),
        clock=fake.clock,
        fork=fake.fork,
        kill=fake.kill,
        waitpid=fake.waitpid,
    )
    a.bind()
    yield a
    for s in a.all_sockets():
        s.close()


def pid_in(arb: Arbiter, slot: int) -> int:
    (pid,) = [w.pid for w in arb.workers.values() if w.slot == slot and not w.term_at]
    return pid


def ready_all(arb: Arbiter) -> None:
    for w in arb.workers.values():
        arb.board.put(w.entry, sb.STATE, sb.READY)


def test_the_admin_slot_is_filled_and_refilled(fake: FakeOS, arb: Arbiter) -> None:
    arb.manage()
    assert sorted(w.slot for w in arb.workers.values()) == [ADMIN_SLOT, 0, 1]
    assert arb.slot_name(ADMIN_SLOT) == "admin process"
    ready_all(arb)
    arb.manage()
    admin = pid_in(arb, ADMIN_SLOT)
    fake.exit(admin, signum=signal.SIGKILL)
    arb.reap()
    arb.manage()
    assert pid_in(arb, ADMIN_SLOT) != admin
    assert arb.totals.spawns()["start"] == 2  # workers only: the admin process is not one


def test_spawns_by_reason_and_a_reload_summary_without_the_admin(
    fake: FakeOS, arb: Arbiter, caplog: pytest.LogCaptureFixture
) -> None:
    arb.manage()
    ready_all(arb)
    arb.manage()
    fake.exit(pid_in(arb, 0), signum=signal.SIGKILL)  # crash
    arb.reap()
    arb.manage()
    ready_all(arb)
    arb.manage()
    spawns = arb.totals.spawns()
    assert (spawns["start"], spawns["crash"]) == (2, 1)
    assert arb.totals.header()["target"] == 2
    with caplog.at_level(logging.INFO, logger="prefork_lb.error"):
        arb.handle_hup()
        for _ in range(4):
            arb.manage()
            ready_all(arb)
            for w in list(arb.workers.values()):
                if w.term_at:
                    fake.exit(w.pid)
            arb.reap()
        arb.manage()
    assert arb.totals.spawns()["reload"] == 2
    # The admin process was replaced too, and is not counted as a worker.
    assert "Reload finished: 2 workers replaced\n" in caplog.text


def test_a_worker_that_asks_to_retire_says_why(fake: FakeOS, arb: Arbiter) -> None:
    arb.manage()
    ready_all(arb)
    arb.manage()
    arb.board.handle(arb.workers[pid_in(arb, 1)].entry).retiring("max_rss")
    arb.manage()
    assert arb.totals.spawns()["max_rss"] == 1


def test_a_reaped_workers_counters_join_its_slots_totals(fake: FakeOS, arb: Arbiter) -> None:
    arb.manage()
    pid = pid_in(arb, 1)
    entry = arb.board.handle(arb.workers[pid].entry)
    for _ in range(3):
        entry.request_started("GET", b"/")
        entry.request_finished("GET", 2)
        entry.publish()  # what the heartbeat does
    fake.exit(pid, code=1)
    arb.reap()
    counts = arb.totals.read_counters(arb.board)
    assert counts[1][sb.BY_STATUS - sb.COUNTERS + 2] == 3  # 2xx
    arb.manage()  # its replacement starts from zero; the slot's total does not
    assert arb.totals.read_counters(arb.board)[1][sb.BY_STATUS - sb.COUNTERS + 2] == 3


def test_a_worker_aborted_by_the_watchdog_is_counted_and_replaced_for_timeout(
    fake: FakeOS, arb: Arbiter
) -> None:
    import time

    from prefork_lb.admin import totals as tt

    arb.manage()
    ready_all(arb)
    arb.manage()
    stuck = pid_in(arb, 0)
    arb.board.putf(arb.workers[stuck].entry, sb.HEARTBEAT, time.monotonic() - 1000)
    arb.check_timeouts()
    assert fake.signals_to(stuck) == [signal.SIGABRT]
    fake.exit(stuck, signum=signal.SIGABRT)
    arb.reap()
    arb.manage()
    assert arb.totals.q[tt.TIMEOUTS] == 1
    assert arb.totals.spawns()["timeout"] == 1 and arb.totals.spawns()["crash"] == 0
