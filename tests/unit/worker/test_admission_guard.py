"""The worker's admission guard (prefork_lb.worker.guard) in this process: while the loop does
not run (a view blocks it), the guard thread parks what the worker has room for and refuses the
rest with 503; the loop serves what was parked once it runs again. And the decision it asks the
server, ``room_while_blocked``."""

from __future__ import annotations

import socket
import time
from types import SimpleNamespace

from prefork_lb.worker.server import Server, ServerOptions
from tests.helpers import wait_for


def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
    return [b"ok"]


def test_room_while_blocked_counts_the_app_the_queue_the_parked_and_unread_connections() -> None:
    server = Server(app, ServerOptions(max_concurrency=1, queue_size=1))
    assert server.room_while_blocked() == 2
    assert server.admission is not None and server.admission.acquire(blocking=False)
    assert server.held() == 1 and server.room_while_blocked() == 1
    fresh = SimpleNamespace(had_request=False)
    server.young.append((time.monotonic(), fresh))  # type: ignore[arg-type]
    assert server.room_while_blocked() == 0, "accepted just before the loop blocked"
    fresh.had_request = True
    server.parked.append((None, None))
    assert server.held() == 2 and server.room_while_blocked() == 0
    server.waiting = 1
    assert server.room_while_blocked() == -1


def test_without_admission_control_there_is_no_guard() -> None:
    server = Server(app, ServerOptions())
    ls = socket.create_server(("127.0.0.1", 0))
    server.add_listener(ls)
    assert server.guard is None and server.held() == 0
    server.drain(timeout=1)


def test_while_the_loop_does_not_run_the_guard_parks_then_refuses() -> None:
    server = Server(app, ServerOptions(max_concurrency=1, queue_size=1))
    ls = socket.create_server(("127.0.0.1", 0))
    addr = ls.getsockname()
    server.add_listener(ls)  # nothing runs the loop until drain() below: it is "blocked"
    clients = []
    try:
        for _ in range(4):
            c = socket.create_connection(addr, timeout=10)
            c.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            clients.append(c)
        guard = server.guard
        wait_for(lambda: len(server.parked) == 2 and guard.refused == 2, what="parked 2, refused 2")
        for c in clients[2:]:
            answer = c.recv(4096)
            assert answer.startswith(b"HTTP/1.1 503") and b"\r\nRetry-After: 1\r\n" in answer
        server.drain(timeout=2)  # the loop runs: it serves what was parked
        for c in clients[:2]:
            assert c.recv(4096).startswith(b"HTTP/1.1 200 OK")
    finally:
        for c in clients:
            c.close()
