"""The master's handlers driven directly: fake fork/kill/waitpid and an injected clock."""

from __future__ import annotations

import logging
import os
import signal
import socket
import time

import pytest

from prefork_lb import scoreboard as sb
from prefork_lb.arbiter import ABORT_GRACE, Arbiter
from prefork_lb.config import build
from prefork_lb.worker import child


class FakeOS:
    def __init__(self) -> None:
        self.next_pid = 1000
        self.killed: list[tuple[int, int]] = []
        self.exits: list[tuple[int, int]] = []  # (pid, wait status) for waitpid to return
        self.now = 100.0

    def fork(self) -> int:
        self.next_pid += 1
        return self.next_pid

    def kill(self, pid: int, sig: int) -> None:
        self.killed.append((pid, sig))

    def waitpid(self, pid: int, options: int) -> tuple[int, int]:
        if self.exits:
            return self.exits.pop(0)
        return 0, 0

    def clock(self) -> float:
        return self.now

    def exit(self, pid: int, code: int = 0, signum: int = 0) -> None:
        status = signum if signum else (code << 8)
        self.exits.append((pid, status))

    def signals_to(self, pid: int) -> list[int]:
        return [s for p, s in self.killed if p == pid]


@pytest.fixture
def fake() -> FakeOS:
    return FakeOS()


def make(fake: FakeOS, workers: int = 2, **settings) -> Arbiter:
    cfg = build(
        {"workers": workers, "dispatch": "shared", "timeout": 30, **settings}, environ={}, app_uri="x:app"
    )
    return Arbiter(cfg, clock=fake.clock, fork=fake.fork, kill=fake.kill, waitpid=fake.waitpid)


def mark_ready(arb: Arbiter, pid: int) -> None:
    w = arb.workers[pid]
    arb.board.put(w.entry, sb.STATE, sb.READY)


def test_manage_fills_every_slot(fake: FakeOS) -> None:
    arb = make(fake, workers=3)
    arb.manage()
    assert sorted(w.slot for w in arb.workers.values()) == [0, 1, 2]
    arb.manage()  # idempotent
    assert len(arb.workers) == 3


def test_dead_worker_is_replaced_in_its_slot(fake: FakeOS, caplog: pytest.LogCaptureFixture) -> None:
    arb = make(fake)
    arb.manage()
    victim = next(w for w in arb.workers.values() if w.slot == 1)
    mark_ready(arb, victim.pid)
    arb.manage()  # the master sees it ready
    fake.now += 5
    fake.exit(victim.pid, signum=signal.SIGKILL)
    with caplog.at_level(logging.ERROR, "prefork_lb.error"):
        arb.reap()
    assert victim.pid not in arb.workers
    assert "died unexpectedly: killed by SIGKILL" in caplog.text
    arb.manage()
    assert sorted(w.slot for w in arb.workers.values()) == [0, 1]
    assert arb.board.get(victim.entry, sb.PID) != victim.pid  # its entry was cleared or reused


def test_crash_loop_backs_off(fake: FakeOS) -> None:
    arb = make(fake, workers=1)
    delays = []
    for _ in range(4):
        arb.manage()
        (w,) = arb.workers.values()
        fake.exit(w.pid, code=1)  # dies at once
        arb.reap()
        delays.append(arb.next_spawn[0] - fake.now)
        arb.manage()
        assert not arb.workers, "no respawn before the back-off delay"
        fake.now = arb.next_spawn[0]
    assert delays == sorted(delays) and delays[-1] > delays[0]


def test_boot_failure_stops_the_master_with_exit_code(fake: FakeOS) -> None:
    arb = make(fake)
    arb.manage()
    first, second = list(arb.workers.values())
    fake.exit(first.pid, code=child.EXIT_APP_LOAD)
    arb.reap()
    assert arb.boot_error is not None and arb.boot_error.code == 2
    assert arb.stopping == "fast"
    assert signal.SIGQUIT in fake.signals_to(second.pid)


def test_ttin_adds_and_ttou_drains_the_highest_slot(fake: FakeOS) -> None:
    arb = make(fake, workers=2)
    arb.manage()
    arb.handle_ttin()
    arb.manage()
    assert sorted(w.slot for w in arb.workers.values()) == [0, 1, 2]
    top = next(w for w in arb.workers.values() if w.slot == 2)
    arb.handle_ttou()
    arb.manage()
    assert fake.signals_to(top.pid) == [signal.SIGTERM]
    others = [w.pid for w in arb.workers.values() if w.slot < 2]
    assert all(not fake.signals_to(p) for p in others)


def test_ttou_never_goes_below_one(fake: FakeOS) -> None:
    arb = make(fake, workers=1)
    arb.handle_ttou()
    assert arb.num_workers == 1


def test_hup_starts_new_workers_before_draining_old(fake: FakeOS) -> None:
    arb = make(fake, workers=2)
    arb.manage()
    old = sorted(arb.workers)
    for pid in old:
        mark_ready(arb, pid)
    arb.manage()
    arb.handle_hup()
    arb.manage()
    new = sorted(set(arb.workers) - set(old))
    assert len(new) == 2
    assert all(not fake.signals_to(p) for p in old), "old workers keep serving until the new are ready"
    mark_ready(arb, new[0])
    arb.manage()
    replaced = arb.workers[new[0]]
    drained = [p for p in old if fake.signals_to(p) == [signal.SIGTERM]]
    assert len(drained) == 1 and arb.workers[drained[0]].slot == replaced.slot
    mark_ready(arb, new[1])
    arb.manage()
    assert all(fake.signals_to(p) == [signal.SIGTERM] for p in old)


def test_only_a_stop_of_the_server_tells_the_workers_nothing_serves_after_them(fake: FakeOS) -> None:
    """A reload's old workers keep their idle grace (the proxy still serves); the workers of a
    server that stops skip it (scoreboard SERVER_STOP, read as they begin to drain)."""
    arb = make(fake, workers=1)
    arb.manage()
    (old,) = list(arb.workers)
    mark_ready(arb, old)
    old_entry = arb.board.handle(arb.workers[old].entry)
    arb.handle_hup()
    arb.manage()
    (new,) = set(arb.workers) - {old}
    mark_ready(arb, new)
    arb.manage()
    assert fake.signals_to(old) == [signal.SIGTERM] and not old_entry.server_stopping()
    new_entry = arb.board.handle(arb.workers[new].entry)
    assert not new_entry.server_stopping()
    arb.handle_term()
    assert fake.signals_to(new) == [signal.SIGTERM] and new_entry.server_stopping()


def test_failed_replacement_keeps_the_old_worker(fake: FakeOS) -> None:
    arb = make(fake, workers=1)
    arb.manage()
    (old,) = list(arb.workers)
    mark_ready(arb, old)
    arb.handle_hup()
    arb.manage()
    (new,) = set(arb.workers) - {old}
    fake.exit(new, code=child.EXIT_BOOT)
    arb.reap()
    assert arb.boot_error is None and arb.stopping is None
    arb.manage()
    assert list(arb.workers) == [old] and not fake.signals_to(old)


def test_retiring_worker_is_replaced_then_drained(fake: FakeOS) -> None:
    arb = make(fake, workers=1)
    arb.manage()
    (old,) = list(arb.workers)
    w = arb.workers[old]
    arb.board.put(w.entry, sb.STATE, sb.RETIRING)  # max-requests reached
    arb.manage()
    (new,) = set(arb.workers) - {old}
    assert not fake.signals_to(old)
    mark_ready(arb, new)
    arb.manage()
    assert fake.signals_to(old) == [signal.SIGTERM]


def test_missed_heartbeat_aborts_then_kills_and_names_the_request(fake: FakeOS, caplog) -> None:
    arb = make(fake, workers=1, timeout=5)
    arb.manage()
    (pid,) = list(arb.workers)
    entry = arb.board.handle(arb.workers[pid].entry)
    entry.request_started("POST", b"/slow/report")
    arb.board.putf(arb.workers[pid].entry, sb.HEARTBEAT, time.monotonic() - 6)
    with caplog.at_level(logging.CRITICAL, "prefork_lb.error"):
        arb.check_timeouts()
    assert fake.signals_to(pid) == [signal.SIGABRT]
    assert "WORKER TIMEOUT" in caplog.text and "POST /slow/report" in caplog.text
    fake.now += ABORT_GRACE + 0.1
    arb.check_timeouts()
    assert fake.signals_to(pid) == [signal.SIGABRT, signal.SIGKILL]
    fake.exit(pid, signum=signal.SIGKILL)
    arb.reap()
    arb.manage()
    assert len(arb.workers) == 1 and pid not in arb.workers


def test_graceful_stop_waits_then_kills_stragglers(fake: FakeOS) -> None:
    arb = make(fake, workers=2, graceful_timeout=10)
    arb.manage()
    a, b = list(arb.workers)
    arb.handle_term()
    assert fake.signals_to(a) == [signal.SIGTERM] and fake.signals_to(b) == [signal.SIGTERM]
    fake.exit(a)
    arb.reap()
    assert not arb.step_stop()
    fake.now += 11
    assert not arb.step_stop()
    assert fake.signals_to(b)[-1] == signal.SIGKILL
    fake.exit(b, signum=signal.SIGKILL)
    arb.reap()
    assert arb.step_stop()


def test_a_failed_start_kills_what_is_left_without_a_warning(fake: FakeOS, caplog) -> None:
    arb = make(fake)
    arb.manage()
    first, second = list(arb.workers.values())
    fake.exit(first.pid, code=child.EXIT_APP_LOAD)
    arb.reap()
    fake.now = arb.stop_deadline
    with caplog.at_level(logging.WARNING, "prefork_lb.error"):
        assert not arb.step_stop()
    assert fake.signals_to(second.pid)[-1] == signal.SIGKILL
    assert "did not stop in time" not in caplog.text


def test_fast_stop_sends_quit(fake: FakeOS) -> None:
    arb = make(fake, workers=1)
    arb.manage()
    (pid,) = list(arb.workers)
    arb.handle_int()
    assert fake.signals_to(pid) == [signal.SIGQUIT]


def test_reuseport_gives_each_slot_its_own_listener() -> None:
    cfg = build(
        {"workers": 2, "dispatch": "reuseport", "bind": ["127.0.0.1:0"], "stats_bind": "off"},
        environ={},
        app_uri="x:app",
    )
    arb = Arbiter(cfg)
    try:
        arb.bind()
        assert set(arb.mode.sockets.slots) == {0, 1}
        assert not arb.mode.sockets.shared
        s0, s1 = arb.mode.sockets.slots[0][0], arb.mode.sockets.slots[1][0]
        assert s0.fileno() != s1.fileno()
        # Port 0: both slots are in one SO_REUSEPORT group on the port the first one got.
        assert s0.getsockname() == s1.getsockname()
        assert s0.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) == 1
    finally:
        for s in arb.all_sockets():
            s.close()


def test_exit_statuses_are_described() -> None:
    from prefork_lb.arbiter import describe_exit

    assert describe_exit(-9) == "killed by SIGKILL"
    assert describe_exit(3) == "exit code 3"
    assert os.waitstatus_to_exitcode(3 << 8) == 3


def test_ready_worker_killed_by_a_signal_is_replaced_without_back_off(fake: FakeOS) -> None:
    arb = make(fake, workers=1)
    arb.manage()
    (pid,) = list(arb.workers)
    mark_ready(arb, pid)
    arb.manage()
    fake.now += 0.3  # young, but it was serving
    fake.exit(pid, signum=signal.SIGKILL)
    arb.reap()
    arb.manage()
    assert len(arb.workers) == 1 and pid not in arb.workers


def test_master_wakes_when_a_back_off_ends(fake: FakeOS) -> None:
    arb = make(fake, workers=1)
    arb.manage()
    (pid,) = list(arb.workers)
    fake.exit(pid, code=1)
    arb.reap()
    assert 0 < arb.sleep_time() <= arb.next_spawn[0] - fake.now + 1e-9


def test_scoreboard_shows_offload_pool_use() -> None:
    board = sb.Scoreboard(4)
    board.handle(2).offload(busy=1, idle=3)
    snap = board.snapshot(2)
    assert (snap["offload_busy"], snap["offload_idle"]) == (1, 3)


def _set_busy(arb: Arbiter, n_busy: int) -> None:
    for i, w in enumerate(sorted(arb.workers.values(), key=lambda w: w.slot)):
        arb.board.put(w.entry, sb.IN_FLIGHT, 1 if i < n_busy else 0)


def _ready_all(arb: Arbiter) -> None:
    for pid in list(arb.workers):
        mark_ready(arb, pid)
    arb.manage()


def test_autoscale_up_when_all_busy_long_enough_then_down_when_quiet(fake: FakeOS, caplog) -> None:
    arb = make(fake, workers=2, max_workers=4, autoscale_up_after=2, autoscale_down_after=10)
    arb.manage()
    _ready_all(arb)
    _set_busy(arb, 2)
    arb.autoscale()
    fake.now += 1.0
    arb.autoscale()
    assert arb.num_workers == 2, "not before autoscale_up_after"
    fake.now += 1.5
    with caplog.at_level(logging.INFO, "prefork_lb.error"):
        arb.autoscale()
    assert arb.num_workers == 3 and "Autoscale: 3 workers" in caplog.text
    arb.manage()
    _ready_all(arb)
    _set_busy(arb, 3)
    fake.now += 1.0
    arb.autoscale()
    assert arb.num_workers == 3, "cooldown and a fresh busy period"
    fake.now += 3.0
    arb.autoscale()
    fake.now += 2.5
    arb.autoscale()
    assert arb.num_workers == 4
    arb.manage()
    _ready_all(arb)
    fake.now += 5
    _set_busy(arb, 4)
    arb.autoscale()
    fake.now += 5
    arb.autoscale()
    assert arb.num_workers == 4, "never above --max-workers"
    # Load drops: one busy worker at most.
    _set_busy(arb, 1)
    arb.autoscale()
    fake.now += 9
    arb.autoscale()
    assert arb.num_workers == 4, "not before autoscale_down_after"
    fake.now += 1.5
    arb.autoscale()
    assert arb.num_workers == 3
    for _ in range(10):
        fake.now += 11
        arb.autoscale()
    assert arb.num_workers == 2, "never below --workers"


def test_autoscale_is_off_without_max_workers(fake: FakeOS) -> None:
    arb = make(fake, workers=2)
    arb.manage()
    _ready_all(arb)
    _set_busy(arb, 2)
    for _ in range(5):
        fake.now += 10
        arb.autoscale()
    assert arb.num_workers == 2


def test_hup_cannot_change_the_dispatch_mode(fake: FakeOS, caplog: pytest.LogCaptureFixture) -> None:
    arb = make(fake, workers=1)
    arb.reload_config = lambda: build(
        {"workers": 1, "dispatch": "handoff", "timeout": 30}, environ={}, app_uri="x:app"
    )
    with caplog.at_level(logging.WARNING, logger="prefork_lb.error"):
        arb.handle_hup()
    assert arb.cfg.dispatch == "shared" and arb.mode.name == "shared"
    assert "--dispatch handoff needs a restart or USR2; keeping shared" in caplog.text


def test_ttin_with_a_control_socket_target_sets_the_count(fake: FakeOS) -> None:
    arb = make(fake, workers=2)
    arb.manage()
    arb.totals.request_scale(4)  # what `prefork_lb ctl scale 4` writes before its TTIN
    arb.handle_ttin()
    arb.manage()
    assert sorted(w.slot for w in arb.workers.values()) == [0, 1, 2, 3]
    arb.totals.request_scale(1)
    arb.handle_ttin()
    arb.manage()
    assert sorted(w.slot for w in arb.workers.values() if not w.term_at) == [0]
    arb.handle_ttin()  # a plain TTIN again: one more
    assert arb.num_workers == 2


def test_term_with_a_control_socket_grace(fake: FakeOS) -> None:
    arb = make(fake, workers=1, graceful_timeout=30)
    arb.manage()
    (pid,) = list(arb.workers)
    arb.totals.request_stop_grace(2)  # `prefork_lb ctl stop --graceful-timeout 2`
    arb.handle_term()
    # The worker drains for 2 s too (the scoreboard tells it), not for --graceful-timeout.
    assert arb.board.handle(arb.workers[pid].entry).stop_grace(30.0) == 2.0
    fake.now += 3
    assert not arb.step_stop()
    assert fake.signals_to(pid) == [signal.SIGTERM, signal.SIGKILL]


def test_a_control_socket_grace_holds_through_the_shutdown_delay(fake: FakeOS) -> None:
    arb = make(fake, workers=1, graceful_timeout=30, shutdown_delay=5)
    arb.manage()
    (pid,) = list(arb.workers)
    arb.totals.request_stop_grace(2)
    arb.handle_term()
    assert not arb.stopping and not fake.signals_to(pid)  # serving through the delay
    fake.now += 5
    arb.end_shutdown_delay()
    assert arb.stopping == "graceful" and fake.signals_to(pid) == [signal.SIGTERM]
    assert arb.board.handle(arb.workers[pid].entry).stop_grace(30.0) == 2.0
    fake.now += 3
    assert not arb.step_stop()
    assert fake.signals_to(pid)[-1] == signal.SIGKILL


def test_a_plain_term_leaves_the_workers_their_graceful_timeout(fake: FakeOS) -> None:
    arb = make(fake, workers=1, graceful_timeout=30)
    arb.manage()
    (pid,) = list(arb.workers)
    arb.handle_term()
    assert fake.signals_to(pid) == [signal.SIGTERM]
    assert arb.board.handle(arb.workers[pid].entry).stop_grace(30.0) == 30.0
