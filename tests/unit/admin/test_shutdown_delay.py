"""The master's side of --shutdown-delay and of the admin process's last stop, with fake
fork/kill/waitpid and an injected clock (see tests/unit/test_arbiter.py): TERM flags the
shutdown for /readyz and keeps serving, the graceful stop begins when the delay is over (or at a
second TERM), and the admin process is stopped only once it is the last process left."""

from __future__ import annotations

import signal
import socket
from collections.abc import Iterator

import pytest

from prefork_lb import scoreboard as sb
from prefork_lb.admin.totals import DELAYING, DRAINING, SERVING
from prefork_lb.arbiter import Arbiter
from prefork_lb.config import build
from prefork_lb.dispatch.base import ADMIN_SLOT
from tests.unit.test_arbiter import FakeOS


@pytest.fixture
def fake() -> FakeOS:
    return FakeOS()


def make(fake: FakeOS, **settings: object) -> Arbiter:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    values = {"workers": 2, "dispatch": "shared", "bind": ["127.0.0.1:0"], "stats_bind": f"127.0.0.1:{port}"}
    a = Arbiter(
        build({**values, **settings}, environ={}, app_uri="x:app"),
        clock=fake.clock,
        fork=fake.fork,
        kill=fake.kill,
        waitpid=fake.waitpid,
    )
    a.bind()
    return a


@pytest.fixture
def arb(fake: FakeOS) -> Iterator[Arbiter]:
    a = make(fake, shutdown_delay=3, graceful_timeout=10)
    yield a
    for s in a.all_sockets():
        s.close()


def started(arb: Arbiter) -> tuple[list[int], int]:
    arb.manage()
    for w in arb.workers.values():
        arb.board.put(w.entry, sb.STATE, sb.READY)
    arb.manage()
    workers = sorted(w.pid for w in arb.workers.values() if w.slot >= 0)
    (admin,) = [w.pid for w in arb.workers.values() if w.slot == ADMIN_SLOT]
    return workers, admin


def test_term_keeps_serving_through_the_delay_then_drains(fake: FakeOS, arb: Arbiter) -> None:
    workers, admin = started(arb)
    assert arb.totals.shutdown() == SERVING
    arb.handle_term()
    assert arb.totals.shutdown() == DELAYING and not arb.stopping
    assert fake.killed == []  # nobody is asked to stop yet
    fake.now += 2.9
    arb.end_shutdown_delay()
    assert not arb.stopping and fake.killed == []
    assert arb.sleep_time() <= 0.1 + 1e-9  # the loop wakes up for the delay's end
    fake.now += 0.2
    arb.end_shutdown_delay()
    assert arb.stopping == "graceful" and arb.totals.shutdown() == DRAINING
    for pid in workers:
        assert fake.signals_to(pid) == [signal.SIGTERM]
    assert fake.signals_to(admin) == []  # /readyz keeps saying 503 through the drain


def test_the_admin_process_stops_last(fake: FakeOS, arb: Arbiter) -> None:
    workers, admin = started(arb)
    arb.handle_term()
    arb.handle_term()  # a second TERM: the graceful stop begins now
    assert arb.stopping == "graceful"
    fake.exit(workers[0])
    arb.reap()
    assert not arb.step_stop() and fake.signals_to(admin) == []
    fake.exit(workers[1])
    arb.reap()
    assert not arb.step_stop()
    assert fake.signals_to(admin) == [signal.SIGTERM]
    fake.exit(admin)
    arb.reap()
    assert arb.step_stop()


def test_without_a_delay_term_drains_at_once(fake: FakeOS) -> None:
    a = make(fake)
    try:
        workers, admin = started(a)
        a.handle_term()
        assert a.stopping == "graceful" and a.totals.shutdown() == DRAINING
        assert all(fake.signals_to(pid) == [signal.SIGTERM] for pid in workers)
        assert fake.signals_to(admin) == []
    finally:
        for s in a.all_sockets():
            s.close()


def test_int_during_the_delay_stops_everything_at_once(fake: FakeOS, arb: Arbiter) -> None:
    workers, admin = started(arb)
    arb.handle_term()
    arb.handle_int()
    assert arb.stopping == "fast"
    for pid in [*workers, admin]:
        assert fake.signals_to(pid) == [signal.SIGQUIT]


def test_the_master_beats_for_livez(fake: FakeOS, arb: Arbiter) -> None:
    arb.totals.beat(123.5)
    assert arb.totals.master_beat() == 123.5


def test_after_usr2_term_drains_at_once_and_stops_the_admin_process(fake: FakeOS, arb: Arbiter) -> None:
    # The new master serves already, and its admin process answers on the same listener: no
    # delay, and this master's /readyz must not keep answering 503 there.
    workers, admin = started(arb)
    arb.argv = ["x:app"]
    arb.handle_usr2()
    assert arb.handed_over and arb.new_master
    arb.handle_term()
    assert arb.stopping == "graceful" and not arb.shutdown_at
    for pid in [*workers, admin]:
        assert fake.signals_to(pid) == [signal.SIGTERM]
