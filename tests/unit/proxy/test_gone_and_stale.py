"""prefork_lb.proxy in process: a pooled connection the backend closed before answering (sent
again on a new connection to the same backend, not counted against it), a retry with no
backend left (the failure, not 503), an answer that waits in a socket whose connection failed
(read and relayed), and a queued client that left before it was read (never sent on). Fake
transports as in test_exchange.py; where the socket itself is asked, a TCP connection on
127.0.0.1."""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import Iterator
from typing import Any

import pytest

from prefork_lb.proxy.server import ClientConn
from prefork_lb.proxy.upstream import Upstream
from tests.unit.proxy.test_exchange import GET, OK, Rig, got
from tests.unit.proxy.test_fuzz import FakeTransport


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    lp = asyncio.new_event_loop()
    yield lp
    lp.close()


class SocketTransport(FakeTransport):
    """A fake transport that owns a real socket, for what asks the socket itself."""

    def __init__(self, sock: socket.socket) -> None:
        super().__init__()
        self.sock = sock

    def get_extra_info(self, name: str) -> Any:
        return self.sock if name == "socket" else super().get_extra_info(name)


def tcp_pair() -> tuple[socket.socket, socket.socket]:
    """Two ends of a TCP connection on 127.0.0.1 (ours non-blocking, as a transport's is)."""
    with socket.create_server(("127.0.0.1", 0)) as lst:
        theirs = socket.create_connection(lst.getsockname())
        mine, _ = lst.accept()
    mine.setblocking(False)
    return mine, theirs


def reset(sock: socket.socket) -> None:
    """Close with a reset (RST), as a server does that closes with unread bytes."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def pooled(rig: Rig) -> None:
    """One GET answered on a new connection, which then waits in the backend's pool."""
    c, t = rig.client()
    c.data_received(GET)
    up, _ = rig.open()
    up.data_received(OK)
    rig.proxy.end_of_pass()
    assert up in rig.backends[0].idle and up.last_used > 0


def test_a_pooled_connection_closed_before_any_byte_goes_again_fresh_to_the_same_backend(loop) -> None:
    rig = Rig(loop, backends=2, retries=0)
    pooled(rig)
    b0 = rig.backends[0]
    up = b0.idle[0]
    rig.proxy.strategy.pick = lambda hint=None: b0.key  # type: ignore[method-assign]
    c, t = rig.client()
    c.data_received(GET)
    rig.proxy.end_of_pass()
    assert c.ex is not None and c.ex.up is up
    up.connection_lost(ConnectionResetError())
    assert [b for b, _ in rig.connects] == [b0]  # the same backend, a new connection
    fresh, ut = rig.open()
    rig.proxy.end_of_pass()  # (a head seen before goes out at the end of the pass)
    assert got(ut).startswith(b"GET /x")
    fresh.data_received(OK)
    assert got(t).startswith(b"HTTP/1.1 200 OK") and got(t).endswith(b"ok")
    m = rig.proxy.strategy.members[b0.key]
    assert b0.stats.errors == 0 and m.failures == 0 and not b0.ejector.failures
    assert rig.in_flight() == [0, 0]


def test_a_fresh_connection_that_fails_too_is_a_failure_of_the_backend(loop) -> None:
    rig = Rig(loop, backends=1, retries=0)
    pooled(rig)
    b0 = rig.backends[0]
    up = b0.idle[0]
    c, t = rig.client()
    c.data_received(GET)
    rig.proxy.end_of_pass()
    up.connection_lost(ConnectionResetError())
    fresh, _ = rig.open()
    fresh.connection_lost(ConnectionResetError())
    assert got(t).startswith(b"HTTP/1.1 502") and not rig.connects
    assert b0.stats.errors == 1 and len(b0.ejector.failures) == 1


def test_a_retry_with_no_backend_left_answers_the_failure_not_503(loop) -> None:
    rig = Rig(loop, backends=1)
    c, t = rig.client()
    c.data_received(GET)
    up, _ = rig.open()
    rig.proxy.strategy.mark_down(rig.backends[0].key)  # (its health check just failed, say)
    up.connection_lost(None)
    assert got(t).startswith(b"HTTP/1.1 502") and b"backend closed the connection" in got(t)
    assert b"503" not in got(t) and not rig.connects


def test_an_answer_waiting_in_a_failed_connection_is_relayed(loop) -> None:
    """The backend answered an upload early and reset the connection: the write error comes
    first, the answer is still in the socket."""
    rig = Rig(loop)
    c, t = rig.client()
    c.data_received(b"POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n" + b"u" * 1000)
    mine, theirs = tcp_pair()
    with mine, theirs:
        b, ex = rig.connects.pop(0)
        up = Upstream(b, rig.proxy.response_memo)
        up.connection_made(SocketTransport(mine))
        ex.connected(b, up, None)
        theirs.sendall(
            b"HTTP/1.1 413 Content Too Large\r\nContent-Length: 9\r\nConnection: close\r\n\r\ntoo large"
        )
        reset(theirs)
        up.connection_lost(BrokenPipeError())
    out = got(t)
    assert out.startswith(b"HTTP/1.1 413") and out.endswith(b"too large"), out
    assert b"502" not in out and t.closed and rig.backends[0].stats.errors == 0


@pytest.mark.parametrize("how", ["close", "shut", "reset", "there"])
def test_a_queued_client_that_left_is_closed_unread_when_its_place_comes(loop, how: str) -> None:
    rig = Rig(loop, max_connections=1)
    first, _ = rig.client()
    mine, theirs = tcp_pair()
    with mine, theirs:
        queued = ClientConn(rig.proxy, "http")
        qt = SocketTransport(mine)
        queued.connection_made(qt)
        assert queued.queued and rig.proxy.waiting[0] is queued
        theirs.sendall(GET)
        if how == "shut":
            theirs.shutdown(socket.SHUT_WR)
        if how == "reset":
            reset(theirs)
        elif how == "close":
            theirs.close()
        first.connection_lost(None)  # its place frees
        if how == "there":
            assert not queued.queued and not qt.closed
        else:
            assert qt.closed and not rig.connects and rig.proxy.requests == 0
            queued.connection_lost(None)
            assert rig.proxy.active == 0 and not rig.proxy.waiting
