"""The load a worker shows the handoff dispatcher never dips while a request is alive.

The dispatcher (prefork_lb.dispatch.dispatcher) reads a worker's load, in flight + fresh (the
connections with no request yet and the requests queued for a place), from shared memory at any
moment, and sends it no more connections than --max-concurrency + --queue-size allow. Each
engine moves a request from one count to the next as it goes: fresh, maybe queued, in flight.
If a count went down before the next one went up, a read in between would see room that is not
there, and the worker would get one connection too many (CI once saw a third request served
under --max-concurrency 1 --queue-size 1 with handoff).

Each test serves three requests on one worker entry (one in the app, one queued, one refused)
and reads the load after every write to the entry: between an arrival and a departure it may
rise for an instant (a request counted in the next count before it is counted out of the last),
never fall.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import gevent
import gevent.event
import gevent.socket
import pytest

from prefork_lb import scoreboard as sb
from prefork_lb.asgi.accounting import WorkerHooks
from prefork_lb.asgi.options import AsgiOptions
from prefork_lb.asgi.server import AsgiServer
from prefork_lb.sockets import handoff_message
from prefork_lb.worker.server import Server, ServerOptions

LEVELS = frozenset({"connection_opened", "request_finished", "connection_closed"})
# With handoff a connection arrives when the dispatcher sends it: opening it is a move.
HANDOFF_LEVELS = frozenset({"sent", "request_finished", "connection_closed"})


class LoadTrace:
    """A real, READY scoreboard entry; after each call to it, the load the dispatcher reads."""

    def __init__(self) -> None:
        self.board = sb.Scoreboard(2)
        self.entry = self.board.handle(self.board.allocate(1234, 0))
        self.entry.set_state(sb.READY)
        self.trace: list[tuple[str, int]] = []
        self.sent = 0  # connections the test passed over a handoff channel, as a dispatcher counts

    def load(self) -> int:
        """The dispatcher's view: in flight + fresh, and what was sent but not received."""
        load, received, _, _ = self.board.ready_load({0}, 0.0)[0]
        return load + max(0, self.sent - received)

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.entry, name)
        if not callable(attr):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            result = attr(*args, **kwargs)
            self.trace.append((name, self.load()))
            return result

        return call

    def dips(self, levels: frozenset[str] = LEVELS) -> list[tuple[str, int, int]]:
        """Each write that took the load below where the last arrival or departure (a
        connection opened, a request finished, a connection closed: ``levels``) left it: a
        request moved from one count to the next and was, for that instant, in neither."""
        out, floor = [], 0
        for name, load in self.trace:
            if name in levels:
                floor = load
            elif load < floor:
                out.append((name, floor, load))
        return out


def test_trace_sees_a_dip_where_a_count_goes_down_first() -> None:
    """The check can fail: fresh counted out before in flight counted in is a dip."""
    t = LoadTrace()
    t.connection_opened()
    t.first_request()
    t.request_started("GET", b"/")
    assert t.dips() == [("first_request", 1, 0)]


# -- the WSGI engine (prefork_lb.worker) ------------------------------------------------------


def _read_status(sock: gevent.socket.socket) -> int:
    data = b""
    with gevent.Timeout(5):
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            assert chunk, data
            data += chunk
    return int(data.split(b" ", 2)[1])


def test_wsgi_worker_counts_a_request_in_before_it_counts_it_out() -> None:
    release = gevent.event.Event()

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        if environ["PATH_INFO"] == "/slow":
            release.wait(5)
        start_response("200 OK", [("Content-Length", "2")])
        return [b"ok"]

    t = LoadTrace()
    server = Server(app, ServerOptions(max_concurrency=1, queue_size=1), board=t)
    clients = []
    for path in ("/slow", "/slow", "/x"):
        a, b = socket.socketpair()
        client = gevent.socket.socket(fileno=b.detach())
        clients.append(client)
        server.serve_connection(a, ("127.0.0.1", 1))
        client.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        gevent.sleep(0)  # (a cooperative switch, not a wait: the server reads it now)
        gevent.idle()
    assert _read_status(clients[2]) == 503
    release.set()
    assert [_read_status(c) for c in clients[:2]] == [200, 200]
    for c in clients:
        c.close()
    assert server.drain(timeout=5)
    names = [name for name, _ in t.trace]
    assert "queued" in names and "shed" in names, t.trace  # each path was taken
    assert t.dips() == [], t.trace
    assert t.load() == 0


# -- the ASGI engine (prefork_lb.asgi) --------------------------------------------------------


async def read_to_end(sock: socket.socket) -> bytes:
    loop, data = asyncio.get_running_loop(), b""
    while chunk := await asyncio.wait_for(loop.sock_recv(sock, 65536), 5):
        data += chunk
    return data


@pytest.mark.parametrize("keep_alive", [False, True], ids=["fresh", "kept-alive"])
def test_asgi_worker_counts_a_request_in_before_it_counts_it_out(keep_alive: bool) -> None:
    """Also on a kept-alive connection, whose later request is not fresh: it still counts
    while it waits in the queue."""
    t = LoadTrace()

    async def go() -> list[int]:
        loop = asyncio.get_running_loop()
        release = asyncio.Event()

        async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
            if scope["path"] == "/slow":
                await release.wait()
            await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
            await send({"type": "http.response.body", "body": b"ok"})

        opts = AsgiOptions(max_concurrency=1, queue_size=1)
        server = AsgiServer(app, opts, loop, hooks=WorkerHooks(t))
        socks = []
        try:
            for _ in range(3):
                a, b = socket.socketpair()
                b.setblocking(False)
                socks.append(b)
                server.add_connection(a)
                if keep_alive:  # a first request served, then the one that counts
                    await loop.sock_sendall(b, b"GET /first HTTP/1.1\r\nHost: x\r\n\r\n")
                    head = await asyncio.wait_for(loop.sock_recv(b, 65536), 5)
                    assert head.startswith(b"HTTP/1.1 200"), head
            for b, path in zip(socks, ("/slow", "/slow", "/x"), strict=True):
                await loop.sock_sendall(
                    b, f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()
                )
                for _ in range(50):  # (loop turns, not time: the server reads and admits it)
                    await asyncio.sleep(0)
            statuses = []
            for i, b in enumerate(reversed(socks)):
                if i == 1:
                    release.set()
                data = await read_to_end(b)
                statuses.append(int(data.split(b" ", 2)[1]))
                b.close()
            for _ in range(50):
                await asyncio.sleep(0)
            return statuses[::-1]
        finally:
            server.close()

    assert asyncio.run(go()) == [200, 200, 503]
    names = [name for name, _ in t.trace]
    assert "queued" in names and "shed" in names, t.trace  # each path was taken
    assert t.dips() == [], t.trace
    assert t.load() == 0


def test_asgi_worker_counts_a_handed_connection_open_before_received() -> None:
    """A connection from the handoff channel is counted as received (no longer the dispatcher's
    'sent, not received') only once it counts as open: its connection_made comes a loop pass
    or more after the read of the channel."""
    t = LoadTrace()

    async def go() -> bytes:
        loop = asyncio.get_running_loop()

        async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
            await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
            await send({"type": "http.response.body", "body": b"ok"})

        server = AsgiServer(app, AsgiOptions(), loop, hooks=WorkerHooks(t))
        ours, theirs = socket.socketpair()
        server.add_handoff_channel(ours)
        a, b = socket.socketpair()
        t.sent = 1
        t.trace.append(("sent", t.load()))
        socket.send_fds(theirs, [handoff_message([0.0])], [a.fileno()])
        a.close()
        b.setblocking(False)
        try:
            await loop.sock_sendall(b, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            out = await read_to_end(b)
            for _ in range(50):
                await asyncio.sleep(0)
            return out
        finally:
            b.close()
            theirs.close()
            server.close()
            ours.close()

    assert asyncio.run(go()).startswith(b"HTTP/1.1 200 ")
    names = [name for name, _ in t.trace]
    assert names.index("connection_opened") < names.index("received"), t.trace
    assert t.dips(HANDOFF_LEVELS) == [], t.trace
    assert t.load() == 0
