"""The master's choice of worker class under --interface (prefork_lb.interface), driven through
the supervisor with fake fork/waitpid (tests/unit/test_arbiter.py's FakeOS)."""

from __future__ import annotations

import logging
import signal
from typing import Any

import pytest

from prefork_lb.asgi.child import AsgiWorkerChild
from prefork_lb.child import EXIT_BOOT, EXIT_WRONG_INTERFACE
from prefork_lb.config import build
from prefork_lb.interface import MAX_FLIPS, InterfaceChoice
from prefork_lb.worker.child import WorkerChild
from tests.unit.test_arbiter import FakeOS, make, mark_ready


async def asgi_app(scope: Any, receive: Any, send: Any) -> None:
    pass


def cfg(interface: str, app_object: Any = None) -> Any:
    c = build({"interface": interface}, environ={}, app_uri="x:app")
    c.app_object = app_object
    return c


@pytest.fixture
def fake() -> FakeOS:
    return FakeOS()


def test_explicit_settings_choose_the_class() -> None:
    assert InterfaceChoice(cfg("wsgi")).child_class() is WorkerChild
    assert InterfaceChoice(cfg("asgi")).child_class() is AsgiWorkerChild
    assert InterfaceChoice(cfg("auto")).child_class() is WorkerChild  # until a worker says


def test_an_app_object_is_detected_in_the_master() -> None:
    assert InterfaceChoice(cfg("auto", asgi_app)).current == "asgi"
    assert InterfaceChoice(cfg("auto", lambda environ, start_response: [])).current == "wsgi"
    assert InterfaceChoice(cfg("auto", 42)).current == "wsgi"  # the worker says why, in one line


def test_a_reload_with_auto_keeps_what_was_learned_and_an_explicit_one_decides() -> None:
    choice = InterfaceChoice(cfg("auto"))
    assert choice.wrong("wsgi") and choice.current == "asgi"
    choice.reconfigure(cfg("auto"))
    assert choice.current == "asgi"
    choice.reconfigure(cfg("wsgi"))
    assert choice.current == "wsgi"


def test_a_word_from_a_worker_of_the_old_class_changes_nothing() -> None:
    choice = InterfaceChoice(cfg("auto"))
    assert choice.wrong("wsgi") and choice.current == "asgi"
    assert choice.wrong("wsgi") and choice.current == "asgi", "a sibling started before the flip"
    assert choice.flips == 1


def test_an_app_that_changes_shape_on_every_import_stops_flipping(caplog: pytest.LogCaptureFixture) -> None:
    choice = InterfaceChoice(cfg("auto"))
    for _ in range(MAX_FLIPS):
        assert choice.wrong(choice.current)
    with caplog.at_level(logging.ERROR, "prefork_lb.error"):
        assert not choice.wrong(choice.current)
    assert "interface changes from one import to the next" in caplog.text
    choice.ready(choice.current)
    assert choice.wrong(choice.current), "a worker got ready in between: the count starts again"


def test_workers_that_find_an_asgi_app_are_started_again_as_asgi_workers(
    fake: FakeOS, caplog: pytest.LogCaptureFixture
) -> None:
    arb = make(fake, workers=2)
    arb.manage()
    first = sorted(arb.workers)
    assert {w.interface for w in arb.workers.values()} == {"wsgi"}
    for pid in first:
        fake.exit(pid, code=EXIT_WRONG_INTERFACE)
    with caplog.at_level(logging.INFO, "prefork_lb.error"):
        arb.reap()
        arb.manage()
    assert arb.boot_error is None and not arb.stopping
    assert sorted(w.slot for w in arb.workers.values()) == [0, 1]
    assert {w.interface for w in arb.workers.values()} == {"asgi"}
    assert caplog.text.count("The app is an ASGI application: starting ASGI workers") == 1
    assert "died unexpectedly" not in caplog.text and not arb.next_spawn, "no back-off"


def test_a_reload_replacement_that_finds_the_other_interface_is_replaced_by_the_other_class(
    fake: FakeOS,
) -> None:
    arb = make(fake, workers=1)
    arb.manage()
    (old,) = arb.workers
    mark_ready(arb, old)
    arb.manage()
    arb.handle_hup()
    arb.manage()
    (new,) = set(arb.workers) - {old}
    fake.exit(new, code=EXIT_WRONG_INTERFACE)
    arb.reap()
    arb.manage()
    (again,) = set(arb.workers) - {old}
    assert arb.workers[again].interface == "asgi" and arb.workers[old].replaced_by == again
    assert not fake.signals_to(old), "the old worker serves until its successor is ready"


def test_a_lifespan_failure_at_start_stops_the_master_without_respawning(fake: FakeOS) -> None:
    arb = make(fake, workers=2, interface="asgi")
    arb.manage()
    pids = sorted(arb.workers)
    fake.exit(pids[0], code=EXIT_BOOT)
    arb.reap()
    assert arb.boot_error is not None and arb.boot_error.code == 3
    assert arb.stopping == "fast", "the master's loop steps the stop from here: nothing new starts"
    assert fake.signals_to(pids[1]) == [signal.SIGQUIT]


def test_the_flip_limit_ends_in_a_boot_failure(fake: FakeOS) -> None:
    arb = make(fake, workers=1)
    arb.manage()
    for _ in range(MAX_FLIPS + 1):
        (pid,) = arb.workers
        fake.exit(pid, code=EXIT_WRONG_INTERFACE)
        arb.reap()
        arb.manage()
    assert arb.boot_error is not None and arb.boot_error.code == 3
