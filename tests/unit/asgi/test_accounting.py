"""The ASGI worker's request hooks: scoreboard rows, metrics cells and access log lines written as
the WSGI worker writes them (prefork_lb.asgi.accounting)."""

from __future__ import annotations

import io
import time
from types import SimpleNamespace
from typing import Any

from prefork_lb import scoreboard as sb
from prefork_lb.asgi.accounting import WorkerHooks, access_environ, request_target
from prefork_lb.logs import AccessLog

SCOPE: dict[str, Any] = {
    "type": "http",
    "method": "POST",
    "path": "/caf\u00e9",
    "raw_path": b"/caf%C3%A9",
    "query_string": b"a=1&b=2",
    "http_version": "1.1",
    "scheme": "http",
    "client": ("127.0.0.9", 5555),
    "headers": [(b"user-agent", b"curl/8"), (b"x-thing", b"a"), (b"x-thing", b"b"), (b"referer", b"/r")],
}


def board_entry() -> tuple[sb.Scoreboard, int, sb.WorkerEntry]:
    board = sb.Scoreboard(4)
    i = board.allocate(1234, 0)
    return board, i, board.handle(i)


def test_request_target_is_the_raw_path_and_query() -> None:
    assert request_target(SCOPE) == b"/caf%C3%A9?a=1&b=2"
    assert request_target({"path": "/x"}) == b"/x"


def test_access_environ_has_what_the_access_log_reads() -> None:
    env = access_environ(SCOPE)
    assert env["REQUEST_METHOD"] == "POST" and env["PATH_INFO"] == "/caf\u00c3\u00a9"  # PEP 3333
    assert env["QUERY_STRING"] == "a=1&b=2" and env["RAW_URI"] == "/caf%C3%A9?a=1&b=2"
    assert env["SERVER_PROTOCOL"] == "HTTP/1.1" and env["REMOTE_ADDR"] == "127.0.0.9"
    assert env["HTTP_USER_AGENT"] == "curl/8" and env["HTTP_X_THING"] == "a,b"
    assert "REMOTE_ADDR" not in access_environ({"type": "http", "client": None})


def test_a_request_fills_the_row_the_master_names_then_the_metrics() -> None:
    board, i, entry = board_entry()
    hooks = WorkerHooks(entry)
    hooks.request_started(SimpleNamespace(), SCOPE)
    assert board.in_flight(i) == 1
    assert board.current_request(i) == "POST /caf%C3%A9?a=1&b=2"
    hooks.request_finished(None, SCOPE, 504, 20, 0.01)
    assert board.in_flight(i) == 0 and entry.served == 1
    assert sum(entry.cells) == 1 and entry.duration_us > 0


def test_status_zero_counts_as_no_response() -> None:
    _, _, entry = board_entry()
    hooks = WorkerHooks(entry)
    hooks.request_started(None, SCOPE)
    hooks.request_finished(None, SCOPE, 0, 0, 0.0)  # the client left before any response
    assert entry.in_flight == 0 and entry.served == 1


def test_the_access_log_line_is_the_wsgi_workers() -> None:
    _, _, entry = board_entry()
    log = AccessLog('%(h)s "%(r)s" %(s)s %(b)s "%(a)s" %({x-thing}i)s', None)
    log.stream = out = io.StringIO()
    WorkerHooks(entry, log).request_finished(None, SCOPE, 201, 7, 0.5)
    assert out.getvalue() == '127.0.0.9 "POST /caf%C3%A9?a=1&b=2 HTTP/1.1" 201 7 "curl/8" a,b\n'


def test_the_json_access_log_has_the_status() -> None:
    _, _, entry = board_entry()
    log = AccessLog("json", None)
    log.stream = out = io.StringIO()
    WorkerHooks(entry, log).request_finished(None, SCOPE, 404, 0, 0.5)
    assert '"http.response.status_code":404' in out.getvalue()


def test_load_counters_go_to_the_entry() -> None:
    board, i, entry = board_entry()
    hooks = WorkerHooks(entry)
    q, base = board.q, i * sb._WORDS
    served, silent = SimpleNamespace(accepted_at=0.0), SimpleNamespace(accepted_at=0.0)
    hooks.connection_opened(served)
    hooks.connection_opened(silent)
    assert (q[base + sb.CONNS], q[base + sb.FRESH]) == (2, 2)
    hooks.request_started(served, SCOPE)
    assert q[base + sb.FRESH] == 1, "a connection with a request is not fresh any more"
    hooks.request_finished(served, SCOPE, 200, 1, 0.0)
    hooks.request_started(served, SCOPE)  # its second request changes nothing
    hooks.request_finished(served, SCOPE, 200, 1, 0.0)
    hooks.connection_closed(served)
    hooks.connection_closed(silent)
    assert (q[base + sb.CONNS], q[base + sb.FRESH]) == (0, 0)
    hooks.received(3)
    waiting = SimpleNamespace(accepted_at=time.monotonic() - 1.0)
    hooks.connection_opened(waiting)
    hooks.request_queued(waiting, 1)  # it counts as queued, no longer as fresh: once
    assert (q[base + sb.FRESH], q[base + sb.QUEUED]) == (1, 1)
    hooks.request_started(waiting, SCOPE)  # it got its place: out of the queue
    assert (q[base + sb.IN_FLIGHT], q[base + sb.FRESH], q[base + sb.QUEUED]) == (1, 0, 0)
    assert entry.wait_s >= 1.0, "its queue wait counts from the accept"
    hooks.request_finished(waiting, SCOPE, 200, 1, 0.0)
    hooks.connection_closed(waiting)
    left = SimpleNamespace(accepted_at=0.0)  # its client left while it waited
    hooks.connection_opened(left)
    hooks.request_queued(left, 1)
    hooks.request_queued(left, -1)
    hooks.connection_closed(left)
    assert (q[base + sb.FRESH], q[base + sb.QUEUED], left.lb_waited) == (0, 0, 0.0)
    hooks.shed()
    hooks.deadline_passed()
    assert (q[base + sb.RECEIVED], q[base + sb.SHED], q[base + sb.DEADLINES]) == (3, 1, 1)
