"""The handoff dispatcher under --max-concurrency: it sends a worker no more than its places
and queue, and refuses a connection itself (503, Retry-After) when every ready worker is full,
rather than keep it for a worker whose loop a view may block. Real sockets, no processes."""

from __future__ import annotations

import array
import socket
import time
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest

from prefork_lb import scoreboard as sb
from prefork_lb.config import build
from prefork_lb.dispatch.dispatcher import Dispatcher


class Rig:
    """A dispatcher with one channel per slot and a READY worker entry per slot."""

    def __init__(self, slots: int, **settings: Any) -> None:
        values = {"dispatch": "handoff", "bind": ["127.0.0.1:0"], "workers": slots, **settings}
        cfg = build(values, environ={}, app_uri="x:app")
        self.board = sb.Scoreboard(slots + 1)
        self.workers = []
        self.channels: dict[int, socket.socket] = {}
        self.worker_ends: dict[int, socket.socket] = {}
        for slot in range(slots):
            i = self.board.allocate(100 + slot, slot)
            self.board.set_pid(i, 100 + slot)
            w = self.board.handle(i)
            w.set_state(sb.READY)
            self.workers.append(w)
            send, recv = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
            send.setblocking(False)
            self.channels[slot], self.worker_ends[slot] = send, recv
        self.own = self.board.allocate(1, -1)  # the dispatcher's scoreboard entry
        process: Any = SimpleNamespace(entry=self.board.handle(self.own))
        self.d = Dispatcher(cfg, self.board, process, [], self.channels)
        self.clients: list[socket.socket] = []
        self.ours: list[socket.socket] = []

    def connection(self) -> socket.socket:
        """A connection the dispatcher accepted, whose client has sent its request."""
        ours, client = socket.socketpair()
        client.settimeout(2)
        client.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        self.clients.append(client)
        self.ours.append(ours)
        self.d.pending.append((ours, ("127.0.0.1", 40000 + len(self.clients)), time.monotonic()))
        return client

    def received(self, slot: int) -> int:
        """Connections passed over ``slot``'s channel so far (the worker's side reads them)."""
        end = self.worker_ends[slot]
        end.setblocking(False)
        n = 0
        while True:
            try:
                _, anc, _, _ = end.recvmsg(1, socket.CMSG_SPACE(64 * 4))
            except BlockingIOError:
                return n
            for _, _, data in anc:
                fds = array.array("i", data[: len(data) - len(data) % 4])
                n += len(fds)
                for fd in fds:
                    socket.socket(fileno=fd).close()

    def close(self) -> None:
        self.d.shedder.close_all()
        for s in [*self.clients, *self.ours, *self.channels.values(), *self.worker_ends.values()]:
            s.close()


@pytest.fixture
def rig() -> Iterator[Any]:
    made: list[Rig] = []

    def make(slots: int = 1, **settings: Any) -> Rig:
        r = Rig(slots, **settings)
        made.append(r)
        return r

    yield make
    for r in made:
        r.close()


def test_a_worker_gets_its_places_and_queue_and_the_rest_is_refused(rig) -> None:
    r = rig(max_concurrency=1, queue_size=1)
    clients = [r.connection() for _ in range(4)]
    r.d.sync()
    r.d.dispatch()
    assert r.received(0) == 2 and r.d.pending == []
    for client in clients[2:]:
        answer = client.recv(4096)
        assert answer.startswith(b"HTTP/1.1 503") and b"\r\nRetry-After: 1\r\n" in answer
    assert r.board.shed(r.own) == 2  # counted in the dispatcher's entry


def test_a_worker_blocked_in_a_view_is_full_by_what_it_holds(rig) -> None:
    r = rig(max_concurrency=1, queue_size=1)
    w = r.workers[0]
    w.connection_opened()
    w.first_request()
    w.request_started("GET", b"/burn")  # in its app, its loop blocked there
    w.connection_opened()  # a second connection, request not read yet
    client = r.connection()
    r.d.sync()
    r.d.dispatch()
    assert r.received(0) == 0 and client.recv(4096).startswith(b"HTTP/1.1 503")


def test_a_queued_request_counts_as_load(rig) -> None:
    r = rig(max_concurrency=1, queue_size=1)
    w = r.workers[0]
    w.request_started("GET", b"/a")
    w.queued(1)  # waits for the place: the worker is full
    client = r.connection()
    r.d.sync()
    r.d.dispatch()
    assert r.received(0) == 0 and client.recv(4096).startswith(b"HTTP/1.1 503")


def test_with_room_on_another_worker_nothing_is_refused(rig) -> None:
    r = rig(slots=2, max_concurrency=1, queue_size=0)
    r.workers[0].request_started("GET", b"/a")  # full
    r.connection()
    r.d.sync()
    r.d.dispatch()
    assert (r.received(0), r.received(1), len(r.d.shedder)) == (0, 1, 0)


def test_without_a_limit_connections_wait_for_a_worker_as_before(rig) -> None:
    r = rig()
    r.workers[0].set_state(sb.DRAINING)  # no ready worker
    r.connection()
    r.d.sync()
    r.d.dispatch()
    assert len(r.d.pending) == 1 and len(r.d.shedder) == 0


def test_with_no_ready_worker_a_limited_server_waits_too(rig) -> None:
    r = rig(max_concurrency=1, queue_size=1)
    r.workers[0].set_state(sb.BOOTING)  # being replaced: its slot will take it
    r.connection()
    r.d.sync()
    r.d.dispatch()
    assert len(r.d.pending) == 1 and len(r.d.shedder) == 0
