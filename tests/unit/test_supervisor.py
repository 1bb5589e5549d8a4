"""The supervision steps and the autoscaling decision, driven directly: fake fork/kill/waitpid
and an injected clock (tests/unit/test_arbiter.py's FakeOS), real listeners where a mode needs them."""

from __future__ import annotations

import logging
import signal
from collections.abc import Iterator

import pytest

from prefork_lb import scoreboard as sb
from prefork_lb.arbiter import Arbiter
from prefork_lb.autoscale import Autoscaler
from prefork_lb.config import build
from prefork_lb.supervisor import ABORT_GRACE, DISPATCHER_SLOT, MAX_BACKOFF
from prefork_lb.worker import child
from tests.unit.test_arbiter import FakeOS, make, mark_ready


@pytest.fixture
def fake() -> FakeOS:
    return FakeOS()


@pytest.fixture
def arbiters() -> Iterator[list[Arbiter]]:
    made: list[Arbiter] = []
    yield made
    for arb in made:
        for s in arb.all_sockets():
            s.close()


def bound(fake: FakeOS, arbiters: list[Arbiter], mode: str, workers: int = 2, **settings) -> Arbiter:
    values = {
        "workers": workers,
        "dispatch": mode,
        "bind": ["127.0.0.1:0"],
        "stats_bind": "off",
        "control_socket": "off",
        **settings,
    }
    cfg = build(values, environ={}, app_uri="x:app")
    arb = Arbiter(cfg, clock=fake.clock, fork=fake.fork, kill=fake.kill, waitpid=fake.waitpid)
    arb.bind()
    arbiters.append(arb)
    return arb


def ready(arb: Arbiter, *pids: int) -> None:
    for pid in pids or list(arb.workers):
        arb.board.put(arb.workers[pid].entry, sb.STATE, sb.READY)


def helpers(arb: Arbiter) -> list[int]:
    return [w.pid for w in arb.workers.values() if w.slot == DISPATCHER_SLOT]


def test_kernel_modes_have_no_helper(fake: FakeOS, arbiters: list[Arbiter]) -> None:
    for mode in ("reuseport", "shared"):
        arb = bound(fake, arbiters, mode)
        arb.manage()
        assert sorted(w.slot for w in arb.workers.values()) == [0, 1]


@pytest.mark.parametrize("mode", ["handoff", "proxy"])
def test_fill_slots_starts_the_helper_too(fake: FakeOS, arbiters: list[Arbiter], mode: str) -> None:
    arb = bound(fake, arbiters, mode)
    arb.manage()
    assert sorted(w.slot for w in arb.workers.values()) == [DISPATCHER_SLOT, 0, 1]
    assert arb.slot_name(DISPATCHER_SLOT) == ("dispatcher" if mode == "handoff" else "proxy")


def test_announce_ready_waits_for_every_slot_and_the_helper(
    fake: FakeOS, arbiters: list[Arbiter], caplog: pytest.LogCaptureFixture
) -> None:
    arb = bound(fake, arbiters, "handoff")
    arb.manage()
    workers = [w.pid for w in arb.workers.values() if w.slot >= 0]
    ready(arb, *workers)
    arb.manage()
    assert not arb.ready_announced, "the dispatcher is not ready yet"
    ready(arb, *helpers(arb))
    with caplog.at_level(logging.INFO, "prefork_lb.error"):
        arb.manage()
    assert arb.ready_announced
    assert "(handoff dispatch, master pid" in caplog.text and "Ready: 2 workers serving" in caplog.text


def test_a_new_handoff_slot_replaces_the_dispatcher_new_one_first(
    fake: FakeOS, arbiters: list[Arbiter]
) -> None:
    arb = bound(fake, arbiters, "handoff")
    arb.manage()
    ready(arb)
    arb.manage()
    (old,) = helpers(arb)
    arb.handle_ttin()
    assert 2 in arb.mode.sockets.channels
    arb.manage()
    new = [p for p in helpers(arb) if p != old]
    assert len(new) == 1 and not fake.signals_to(old), "the old dispatcher serves until the new is ready"
    ready(arb, new[0])
    arb.manage()
    assert fake.signals_to(old) == [signal.SIGTERM]


def test_proxy_slots_put_their_port_on_the_scoreboard(fake: FakeOS, arbiters: list[Arbiter]) -> None:
    arb = bound(fake, arbiters, "proxy")
    arb.manage()
    ports = {e.slot: e.port for e in arb.board.entries_in_use()}
    assert ports[0] == arb.mode.slot_port(0) and ports[1] == arb.mode.slot_port(1)
    assert ports[DISPATCHER_SLOT] == 0


def test_shrink_closes_a_removed_slot_once_its_worker_is_gone(fake: FakeOS, arbiters: list[Arbiter]) -> None:
    arb = bound(fake, arbiters, "reuseport", workers=3)
    arb.manage()
    top = next(w.pid for w in arb.workers.values() if w.slot == 2)
    arb.handle_ttou()
    arb.shrink()
    assert fake.signals_to(top) == [signal.SIGTERM] and 2 in arb.mode.sockets.slots
    fake.exit(top)
    arb.reap()
    arb.shrink()
    assert 2 not in arb.mode.sockets.slots


def test_kill_overdue_after_the_graceful_timeout(fake: FakeOS, arbiters: list[Arbiter]) -> None:
    arb = bound(fake, arbiters, "shared", workers=1, graceful_timeout=5)
    arb.manage()
    (pid,) = list(arb.workers)
    arb.stop_worker(arb.workers[pid], signal.SIGTERM)
    fake.now += 5 + ABORT_GRACE - 0.1
    arb.kill_overdue(fake.now)
    assert fake.signals_to(pid) == [signal.SIGTERM]
    fake.now += 0.2
    arb.kill_overdue(fake.now)
    assert fake.signals_to(pid) == [signal.SIGTERM, signal.SIGKILL]


def test_note_ready_reads_the_scoreboard(fake: FakeOS, arbiters: list[Arbiter]) -> None:
    arb = bound(fake, arbiters, "shared", workers=1)
    arb.manage()
    (w,) = arb.workers.values()
    arb.note_ready()
    assert not w.ready
    arb.board.put(w.entry, sb.STATE, sb.RETIRING)  # retiring still serves
    arb.note_ready()
    assert w.ready


# -- the autoscaling decision alone ---------------------------------------------------------------


def test_autoscaler_scales_up_after_a_busy_period_then_cools_down() -> None:
    a = Autoscaler(up_after=2, down_after=10)
    assert a.decide(100, serving=2, busy=2, workers=2, low=2, high=4) == 0
    assert a.decide(101.9, serving=2, busy=2, workers=2, low=2, high=4) == 0
    assert a.decide(102, serving=2, busy=2, workers=2, low=2, high=4) == 1
    a.changed(102, up=True)
    assert a.decide(103, serving=3, busy=3, workers=3, low=2, high=4) == 0, "cooldown"
    assert a.decide(105, serving=3, busy=3, workers=3, low=2, high=4) == 1


def test_autoscaler_never_leaves_its_bounds() -> None:
    a = Autoscaler(up_after=1, down_after=1)
    assert a.decide(100, serving=4, busy=4, workers=4, low=2, high=4) == 0
    assert a.decide(105, serving=4, busy=4, workers=4, low=2, high=4) == 0
    b = Autoscaler(up_after=1, down_after=1)
    assert b.decide(100, serving=2, busy=0, workers=2, low=2, high=4) == 0
    assert b.decide(105, serving=2, busy=0, workers=2, low=2, high=4) == 0


def test_autoscaler_scales_down_after_a_quiet_period() -> None:
    a = Autoscaler(up_after=2, down_after=10)
    assert a.decide(100, serving=3, busy=1, workers=3, low=2, high=4) == 0
    assert a.decide(109, serving=3, busy=0, workers=3, low=2, high=4) == 0
    assert a.decide(110, serving=3, busy=1, workers=3, low=2, high=4) == -1
    a.changed(110, up=False)
    assert a.decide(111, serving=2, busy=2, workers=2, low=2, high=4) == 0, "a busy period starts afresh"


def test_a_steady_load_that_saturates_one_worker_keeps_a_steady_count() -> None:
    """One request always in flight (a client that sends the next request as soon as it has
    the answer), ticks every 0.5 s for two minutes: one worker more, then no change. The
    delays are those that made it flap (+1, -1, +1, -1 within 4 s)."""
    a = Autoscaler(up_after=0.5, down_after=1)
    workers, changes, now = 1, [], 100.0
    for _ in range(240):
        busy = min(workers, 1)
        change = a.decide(now, serving=workers, busy=busy, workers=workers, low=1, high=4)
        if change:
            a.changed(now, up=change > 0)
            workers += change
            changes.append(change)
        now += 0.5
    assert changes == [1] and workers == 2


def test_autoscaler_scales_down_once_the_added_worker_is_idle() -> None:
    a = Autoscaler(up_after=0.5, down_after=1)
    assert a.decide(100, serving=2, busy=1, workers=2, low=1, high=4) == 0
    assert a.decide(105, serving=2, busy=1, workers=2, low=1, high=4) == 0, (
        "one worker fewer would be saturated"
    )
    assert a.decide(105.5, serving=2, busy=0, workers=2, low=1, high=4) == 0
    assert a.decide(106.5, serving=2, busy=0, workers=2, low=1, high=4) == -1


def test_a_scale_up_restarts_the_idle_timer() -> None:
    a = Autoscaler(up_after=2, down_after=10)
    assert a.decide(100, serving=4, busy=1, workers=4, low=2, high=5) == 0
    assert a.idle_since == 100
    a.changed(105, up=True)
    assert a.idle_since == 0 and a.busy_since == 0
    assert a.decide(110.5, serving=5, busy=1, workers=5, low=2, high=5) == 0, "idle since 110.5 only"
    assert a.decide(120.5, serving=5, busy=1, workers=5, low=2, high=5) == -1


# -- a reload or a recycle whose new worker fails ---------------------------------------------------


def _serving(fake: FakeOS, workers: int = 1) -> tuple[Arbiter, list[int]]:
    arb = make(fake, workers=workers)
    arb.manage()
    for pid in arb.workers:
        mark_ready(arb, pid)
    arb.manage()
    return arb, sorted(arb.workers)


def _fail_reload(fake: FakeOS, arb: Arbiter, old: list[int], code: int = child.EXIT_BOOT) -> None:
    arb.handle_hup()
    arb.manage()
    for pid in set(arb.workers) - set(old):
        fake.exit(pid, code=code)
    arb.reap()
    arb.manage()
    assert sorted(arb.workers) == old, "the broken code is not retried before the next HUP"


def test_after_a_failed_reload_the_next_hup_replaces_the_workers(fake: FakeOS) -> None:
    arb, old = _serving(fake)
    _fail_reload(fake, arb, old)
    arb.handle_hup()  # the code is fixed
    arb.manage()
    (new,) = set(arb.workers) - set(old)
    mark_ready(arb, new)
    arb.manage()
    assert fake.signals_to(old[0]) == [signal.SIGTERM]


def test_after_a_failed_reload_max_requests_recycling_resumes(fake: FakeOS) -> None:
    arb, old = _serving(fake)
    _fail_reload(fake, arb, old)
    arb.board.put(arb.workers[old[0]].entry, sb.STATE, sb.RETIRING)  # --max-requests reached
    fake.now += MAX_BACKOFF
    arb.manage()
    (new,) = set(arb.workers) - set(old)
    mark_ready(arb, new)
    arb.manage()
    assert fake.signals_to(old[0]) == [signal.SIGTERM]


@pytest.mark.parametrize("code", [child.EXIT_BOOT, 1])
def test_a_recycle_whose_replacement_fails_is_retried_after_a_back_off(fake: FakeOS, code: int) -> None:
    arb, (old,) = _serving(fake)
    arb.board.put(arb.workers[old].entry, sb.STATE, sb.RETIRING)
    arb.manage()
    (bad,) = set(arb.workers) - {old}
    fake.exit(bad, code=code)  # the code on disk fails to import, or the new worker crashes
    arb.reap()
    arb.manage()
    assert list(arb.workers) == [old] and not fake.signals_to(old), "the old worker serves on"
    fake.now += MAX_BACKOFF
    arb.manage()
    (new,) = set(arb.workers) - {old}
    mark_ready(arb, new)
    arb.manage()
    assert fake.signals_to(old) == [signal.SIGTERM]


def test_a_reload_says_when_it_finished_and_how_many_workers_it_replaced(
    fake: FakeOS, caplog: pytest.LogCaptureFixture
) -> None:
    arb, old = _serving(fake, workers=2)
    with caplog.at_level(logging.INFO, "prefork_lb.error"):
        arb.handle_hup()
        arb.manage()
        first, second = sorted(set(arb.workers) - set(old))
        mark_ready(arb, first)
        arb.manage()
        assert "Reload finished" not in caplog.text
        mark_ready(arb, second)
        arb.manage()
        arb.manage()
    assert caplog.text.count("Reload finished: 2 workers replaced\n") == 1


def test_a_partly_failed_reload_says_so_when_it_finished(
    fake: FakeOS, caplog: pytest.LogCaptureFixture
) -> None:
    arb, old = _serving(fake, workers=2)
    with caplog.at_level(logging.INFO, "prefork_lb.error"):
        arb.handle_hup()
        arb.manage()
        good, bad = sorted(set(arb.workers) - set(old))
        fake.exit(bad, code=child.EXIT_BOOT)
        arb.reap()
        mark_ready(arb, good)
        arb.manage()
    assert "Reload finished: 1 worker replaced; 1 kept the running code" in caplog.text


def test_while_the_master_stops_a_crash_is_a_warning_and_a_calm_exit_is_not(
    fake: FakeOS, caplog: pytest.LogCaptureFixture
) -> None:
    arb = make(fake, workers=3)
    arb.manage()
    crashed, calm, killed = sorted(arb.workers)
    arb.stopping = "graceful"  # before any TERM went out: no worker has term_at yet
    fake.exit(crashed, signum=signal.SIGSEGV)
    fake.exit(calm, code=0)
    fake.exit(killed, signum=signal.SIGKILL)  # the deadline's SIGKILL, warned of when sent
    with caplog.at_level(logging.WARNING, "prefork_lb.error"):
        arb.reap()
    assert not arb.workers  # none replaced
    warned = [r.getMessage() for r in caplog.records]
    assert warned == [f"Worker 0 (pid {crashed}) exited: killed by SIGSEGV"], warned
