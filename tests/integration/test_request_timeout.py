"""--request-timeout in every dispatch mode, with real processes: a view that blocks its
worker's loop (CPU) gets its worker aborted by the master, with the stack and the request in
the error log, and a new worker at once; a view that waits cooperatively gets 504 and the
stack of its greenlet in the log (tests/apps.py: deadlines)."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest

from tests.helpers import DISPATCH_MODES, http_get, wait_for
from tests.integration.conftest import StartServer
from tests.server import ServerProcess

APP = "tests.apps:deadlines"


def start(start_server: StartServer, mode: str) -> ServerProcess:
    extra = ("--stats-bind", "off") if mode == "proxy" else ()
    return start_server(APP, "--request-timeout", "1", "--dispatch", mode, *extra)


@pytest.fixture(scope="module", params=DISPATCH_MODES)
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[ServerProcess, str]]:
    """(server, mode): one server per mode that the mode-parametrized tests share (pytest runs
    both tests of one mode before the next mode's server); each reads the log from where it
    began."""
    mode = request.param
    extra = ("--stats-bind", "off") if mode == "proxy" else ()
    flags = ("--request-timeout", "1", "--dispatch", mode, *extra)
    srv = ServerProcess(APP, flags, workdir=tmp_path_factory.mktemp("server"))
    try:
        yield srv.start(), mode
    finally:
        srv.discard()


def worker_pid(srv: ServerProcess) -> int:
    """The pid of the worker that serves (once one does: the proxy says 503 meanwhile)."""

    def pid() -> int:
        try:
            status, body = http_get(srv.port, "/pid")
        except OSError:
            return 0
        return int(body) if status == 200 else 0

    return wait_for(pid, what="a worker serving /pid")


def test_a_view_blocking_the_loop_past_request_timeout_gets_its_worker_aborted(
    server: tuple[ServerProcess, str],
) -> None:
    srv, mode = server
    seen = len(srv.log_text())
    first = worker_pid(srv)
    try:
        status: int | None = http_get(srv.port, "/burn/5", timeout=20)[0]
    except OSError:
        status = None  # nobody in front of the worker: its death closes the connection
    if mode == "proxy":
        assert status == 504  # the proxy answers for the worker it lost
    else:
        assert status is None  # (the app would have answered 200 after 5 s)
    log = wait_for(
        lambda: "in burn_cpu" in srv.log_text()[seen:] and srv.log_text()[seen:],
        what="the blocked worker's stack (faulthandler) in the error log",
    )
    assert re.search(r"aborted: GET /burn/5 over --request-timeout 1s \(\d+\.\d s", log), log
    second = worker_pid(srv)
    assert second != first
    assert srv.calls().count("GET /burn/5") == 1  # never retried on another worker


def test_a_c_call_holding_the_gil_past_request_timeout_gets_its_worker_aborted(
    start_server: StartServer,
) -> None:
    """The stack comes from faulthandler's C handler, which runs while the GIL is held."""
    srv = start(start_server, "reuseport")
    first = worker_pid(srv)
    with pytest.raises(OSError):
        http_get(srv.port, "/gil/5", timeout=20)  # the app would answer 200 after 5 s
    log = wait_for(lambda: "in hold_the_gil" in srv.log_text() and srv.log_text(), what="the stack")
    assert "aborted: GET /gil/5 over --request-timeout 1s" in log
    assert worker_pid(srv) != first


def test_a_cooperative_wait_past_request_timeout_gets_504_and_its_greenlet_stack_logged(
    server: tuple[ServerProcess, str],
) -> None:
    srv, _mode = server
    seen = len(srv.log_text())
    first = worker_pid(srv)
    status, body = http_get(srv.port, "/sleep/5", timeout=20)
    assert status == 504 and b"too long" in body
    log = srv.wait_log("Request past --request-timeout: GET /sleep/5")[seen:]
    assert re.search(r"GET /sleep/5 \(\d+\.\d s over 1s\)", log), log
    assert "in wait_cooperatively" in log  # where the greenlet was waiting
    assert worker_pid(srv) == first and "aborted" not in log  # its loop ran: no abort
    assert srv.calls().count("GET /sleep/5") == 1


def test_through_the_proxy_a_request_that_timed_out_is_never_retried_on_another_worker(
    start_server: StartServer,
) -> None:
    srv = start_server(APP, "-w", "2", "--request-timeout", "1", "--dispatch", "proxy", "--stats-bind", "off")
    wait_for(lambda: "Ready: 2 workers" in srv.log_text(), what="two workers")
    worker_pid(srv)
    status, body = http_get(srv.port, "/burn/5", timeout=30)
    assert status == 504 and b"too long" in body
    srv.wait_log("aborted: GET /burn/5")
    assert srv.calls().count("GET /burn/5") == 1  # the other worker never got it
