"""Pipelining on backend connections, in process (fake transports, no sockets): which GETs share
a connection, one write per pass, answers in order, backpressure, and a connection that dies."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from prefork_lb.proxy.server import Backend, ClientConn, Proxy, Upstream
from tests.unit.proxy.test_fuzz import RESPONSE, FakeTransport, new_proxy

GET = b"GET /same HTTP/1.1\r\nHost: x\r\n\r\n"
SLOW_OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    lp = asyncio.new_event_loop()
    yield lp
    lp.close()


class Rig:
    """A proxy with one backend whose connections are fake; clients are fake too."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.proxy: Proxy = new_proxy(loop)
        self.ups: list[tuple[Upstream, FakeTransport]] = []
        self.proxy.connect = self._connect  # type: ignore[method-assign]

    def _connect(self, b: Backend, ex: Any) -> None:
        up = Upstream(b, self.proxy.response_memo)
        t = FakeTransport()
        up.connection_made(t)
        self.ups.append((up, t))
        ex.attach(up)

    def client(self) -> tuple[ClientConn, FakeTransport]:
        c = ClientConn(self.proxy, "http")
        t = FakeTransport()
        c.connection_made(t)
        return c, t

    def warm(self) -> None:
        """Two exchanges, answered at once: the head is kept (the second time), and fast."""
        for _ in range(2):
            c, t = self.client()
            c.data_received(GET)
            self.proxy.end_of_pass()
            up, _ = self.ups[-1]
            up.data_received(RESPONSE)
            self.proxy.end_of_pass()
            assert b"".join(t.data).startswith(b"HTTP/1.1 200 OK")
        assert len(self.ups) == 1


def test_gets_in_one_pass_share_one_connection_and_one_write(loop) -> None:
    rig = Rig(loop)
    rig.warm()
    clients = [rig.client() for _ in range(3)]
    for c, _ in clients:
        c.data_received(GET)  # all in the same pass of the loop
    up, t = rig.ups[0]
    assert len(up.queue) == 2 and t.data[-1:] != []
    before = len(t.data)
    rig.proxy.end_of_pass()
    assert len(t.data) == before + 1 and t.data[-1].count(b"GET /same HTTP/1.1") == 3
    assert len(rig.ups) == 1
    up.data_received(RESPONSE * 3)  # the answers in one read
    rig.proxy.end_of_pass()
    for _, ct in clients:
        assert b"".join(ct.data).count(b"HTTP/1.1 200 OK") == 1
    assert up.ex is None and not up.queue and up in up.backend.idle
    assert up.backend.stats.pipelined == 2


def test_no_pipelining_before_a_quick_answer_or_after_a_slow_one(loop) -> None:
    rig = Rig(loop)
    a, _ = rig.client()
    b, _ = rig.client()
    a.data_received(GET)  # never answered before: its own connection each
    b.data_received(GET)
    rig.proxy.end_of_pass()
    assert len(rig.ups) == 2 and not any(up.queue for up, _ in rig.ups)
    # Answered, but after 20 ms: still not pipelined.
    for up, _ in rig.ups:
        assert up.ex is not None
        up.ex.started -= 0.02
        up.data_received(SLOW_OK)
    rig.proxy.end_of_pass()
    c, _ = rig.client()
    d, _ = rig.client()
    c.data_received(GET)
    d.data_received(GET)
    assert not any(up.queue for up, _ in rig.ups)


def test_a_client_that_stops_reading_pauses_itself_not_a_shared_connection(loop) -> None:
    rig = Rig(loop)
    rig.warm()
    (a, _), (b, bt) = rig.client(), rig.client()
    a.data_received(GET)
    b.data_received(GET)
    rig.proxy.end_of_pass()
    up, _ = rig.ups[0]
    assert up.ex is a.ex and list(up.queue) == [b.ex]
    a.pause_writing()
    assert not up.paused and "writing" in a.paused_by
    up.data_received(RESPONSE * 2)
    rig.proxy.end_of_pass()
    assert b"".join(bt.data).count(b"HTTP/1.1 200 OK") == 1  # b is not held up by a
    a.resume_writing()
    assert "writing" not in a.paused_by
    # Unshared, the old rule holds: the backend connection stops being read.
    a.data_received(GET)
    rig.proxy.end_of_pass()
    assert a.ex is not None and a.ex.up is not None and not a.ex.up.queue
    a.pause_writing()
    assert a.ex.up.paused


def test_gets_queued_behind_a_dead_connection_are_sent_again(loop) -> None:
    rig = Rig(loop)
    rig.warm()
    clients = [rig.client() for _ in range(3)]
    for c, _ in clients:
        c.data_received(GET)
    rig.proxy.end_of_pass()
    up, _ = rig.ups[0]
    up.data_received(RESPONSE)  # the first is answered, then the connection dies
    rig.proxy.end_of_pass()
    up.connection_lost(ConnectionResetError())
    rig.proxy.end_of_pass()
    assert up.closed
    # The two behind it went again, each on a connection of its own (a retry is never
    # pipelined: its pipeline may be what broke); nothing was answered with an error.
    retried = rig.ups[1:]
    assert len(retried) == 2 and not any(nup.queue for nup, _ in retried)
    for nup, _ in retried:
        while nup.ex is not None:
            nup.data_received(RESPONSE)
            rig.proxy.end_of_pass()
    for _, ct in clients:
        got = b"".join(ct.data)
        assert got.count(b"HTTP/1.1 200 OK") == 1 and b"502" not in got
    assert up.backend.stats.retries == 2


def test_responses_parsed_in_one_read_are_not_kept_under_the_first_ones_head(loop) -> None:
    """Pipelined answers parsed in one read: only the first one's raw head is known, so only it
    may be kept in the response memo. A later answer kept under that head (the backend's
    counter went from 9 to 10 and the body grew by a byte) made the next response with that
    head go out with the other's Content-Length: a client waiting for a byte that never came."""
    short = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    long_ = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nyes"
    rig = Rig(loop)
    rig.warm()
    up, _ = rig.ups[0]
    c, t = rig.client()
    c.data_received(GET)
    rig.proxy.end_of_pass()
    up.data_received(short)  # seen once: kept the next time it comes
    rig.proxy.end_of_pass()
    clients = [rig.client() for _ in range(2)]
    for cl, _ in clients:
        cl.data_received(GET)
    rig.proxy.end_of_pass()
    assert len(up.queue) == 1
    up.data_received(short + long_)  # both answers in one read: the first is parsed, so both
    rig.proxy.end_of_pass()
    assert b"".join(clients[0][1].data).endswith(b"Content-Length: 2\r\n\r\nok")
    assert b"".join(clients[1][1].data).endswith(b"Content-Length: 3\r\n\r\nyes")
    d, dt = rig.client()
    d.data_received(GET)
    rig.proxy.end_of_pass()
    up.data_received(short)  # its head is in the memo now: relayed from it
    rig.proxy.end_of_pass()
    got = b"".join(dt.data)
    assert b"Content-Length: 2\r\n" in got and got.endswith(b"\r\n\r\nok"), got
    assert up.ex is None and up in up.backend.idle


def test_an_interim_response_and_the_final_one_in_one_read_are_not_kept(loop) -> None:
    """A 100 Continue and the final answer in one read: the raw head seen first is the 100's.
    Kept as the head of the final answer, the next read that starts with a 100 went out as a
    200 whose body was the start of the real response's head."""
    rig = Rig(loop)
    rig.warm()
    up, _ = rig.ups[0]
    for _ in range(3):
        c, t = rig.client()
        c.data_received(GET)
        rig.proxy.end_of_pass()
        up.data_received(b"HTTP/1.1 100 Continue\r\n\r\n" + SLOW_OK)
        rig.proxy.end_of_pass()
        got = b"".join(t.data)
        assert got.count(b"HTTP/1.1 200 OK") == 1 and got.endswith(b"\r\n\r\nok"), got
    assert b"HTTP/1.1 100 Continue" not in rig.proxy.response_memo
