"""prefork_lb.proxy.upstream, in process (fake transports, no sockets): the response memo's fast
path, a backend that sends what was not asked for, the pass's gathered write, backpressure and
tunnels, and what a lost connection leaves behind."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from prefork_lb.proxy.memo import ResponseMemo
from prefork_lb.proxy.upstream import Upstream
from tests.unit.proxy.test_exchange import GET, OK, Rig, got
from tests.unit.proxy.test_fuzz import FakeTransport


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    lp = asyncio.new_event_loop()
    yield lp
    lp.close()


class NoParse:
    """Stands in for the httptools parser where nothing may be parsed."""

    def feed_data(self, data: bytes) -> None:
        raise AssertionError(f"parsed {data!r}")


def warm(rig: Rig) -> Upstream:
    """Two GETs answered the same way on one connection: the second time, the head is kept."""
    c, t = rig.client()
    c.data_received(GET)
    up, _ = rig.open()
    up.data_received(OK)
    rig.proxy.end_of_pass()
    for _ in range(1):
        c.data_received(GET)
        rig.proxy.end_of_pass()
        up.data_received(OK)
        rig.proxy.end_of_pass()
    assert got(t).count(b"HTTP/1.1 200 OK") == 2 and up in rig.backends[0].idle
    return up


def test_a_head_seen_twice_is_relayed_from_the_memo_without_parsing(loop) -> None:
    rig = Rig(loop)
    up = warm(rig)
    memo = rig.proxy.response_memo[OK[: OK.index(b"\r\n\r\n")]]
    assert isinstance(memo, ResponseMemo) and memo.status == 200 and memo.length == 2
    c, t = rig.client()
    c.data_received(GET)
    rig.proxy.end_of_pass()
    up.parser = NoParse()  # type: ignore[assignment]
    up.data_received(OK)
    rig.proxy.end_of_pass()
    assert got(t).startswith(b"HTTP/1.1 200 OK") and got(t).endswith(b"\r\n\r\nok")
    assert up.ex is None and up in rig.backends[0].idle and c.ex is None


def test_more_responses_than_requests_close_the_connection(loop) -> None:
    rig = Rig(loop)
    up = warm(rig)
    c, t = rig.client()
    c.data_received(GET)
    rig.proxy.end_of_pass()
    up.data_received(OK * 2)
    rig.proxy.end_of_pass()
    assert got(t).count(b"HTTP/1.1 200 OK") == 1
    assert up.closed and up not in rig.backends[0].idle


def test_bytes_from_an_idle_backend_close_the_connection(loop) -> None:
    rig = Rig(loop)
    up = warm(rig)
    up.data_received(b"HTTP/1.1 200 OK\r\n")
    assert up.closed and up not in rig.backends[0].idle


def test_a_pass_of_the_loop_makes_one_write_and_closes_the_batch(loop) -> None:
    rig = Rig(loop)
    b = rig.backends[0]
    up = Upstream(b, rig.proxy.response_memo)
    t = FakeTransport()
    up.connection_made(t)
    b.batch = up
    up.out.extend([b"a", b"b", b"c"])
    up.flush()
    assert t.data == [b"abc"] and not up.out and b.batch is None
    up.close()
    up.out.append(b"late")
    up.flush()
    assert t.data == [b"abc"] and not up.out  # a closed connection writes nothing


def test_a_backend_that_does_not_read_pauses_its_client(loop) -> None:
    rig = Rig(loop)
    c, _ = rig.client()
    c.data_received(b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc")
    up, _ = rig.open()
    up.pause_writing()
    assert "upstream" in c.paused_by
    up.resume_writing()
    assert not c.paused_by


def test_a_tunnel_relays_bytes_and_closes_both_ends(loop) -> None:
    rig = Rig(loop)
    c, t = rig.client()
    up = Upstream(rig.backends[0], rig.proxy.response_memo)
    up.connection_made(FakeTransport())
    up.tunnel_to = c
    up.data_received(b"\x81\x02hi")
    assert t.data == [b"\x81\x02hi"]
    up.pause_writing()
    assert "upstream" in c.paused_by
    up.connection_lost(None)
    assert t.closed and up.tunnel_to is None


def test_a_lost_connection_leaves_the_pool_and_the_batch(loop) -> None:
    rig = Rig(loop)
    up = warm(rig)
    b = rig.backends[0]
    b.batch = up
    up.connection_lost(ConnectionResetError())
    assert up.closed and up not in b.idle and b.batch is None
