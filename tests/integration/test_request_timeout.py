"""--request-timeout in every dispatch mode, with real processes: a view that waits
cooperatively gets 504 and the stack of its greenlet in the log (tests/apps.py: deadlines)."""

from __future__ import annotations

import re

import pytest

from tests.helpers import DISPATCH_MODES, http_get, wait_for
from tests.integration.conftest import StartServer
from tests.server import ServerProcess

APP = "tests.apps:deadlines"


def start(start_server: StartServer, mode: str) -> ServerProcess:
    extra = ("--stats-bind", "off") if mode == "proxy" else ()
    return start_server(APP, "--request-timeout", "1", "--dispatch", mode, *extra)


def worker_pid(srv: ServerProcess) -> int:
    """The pid of the worker that serves (once one does: the proxy says 503 meanwhile)."""

    def pid() -> int:
        try:
            status, body = http_get(srv.port, "/pid")
        except OSError:
            return 0
        return int(body) if status == 200 else 0

    return wait_for(pid, what="a worker serving /pid")


@pytest.mark.parametrize("mode", DISPATCH_MODES)
def test_a_cooperative_wait_past_request_timeout_gets_504_and_its_greenlet_stack_logged(
    start_server: StartServer, mode: str
) -> None:
    srv = start(start_server, mode)
    first = worker_pid(srv)
    status, body = http_get(srv.port, "/sleep/5", timeout=20)
    assert status == 504 and b"too long" in body
    log = srv.wait_log("Request past --request-timeout: GET /sleep/5")
    assert re.search(r"GET /sleep/5 \(\d+\.\d s over 1s\)", log), log
    assert "in wait_cooperatively" in log  # where the greenlet was waiting
    assert worker_pid(srv) == first and "aborted" not in log  # its loop ran: no abort
    assert srv.calls().count("GET /sleep/5") == 1
