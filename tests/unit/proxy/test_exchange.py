"""prefork_lb.proxy.exchange, in process (fake transports, no sockets): what a client gets when
the way to a backend fails - a connect error, a backend that closes early, no answer in time, a
malformed answer - and when a failed try is sent again elsewhere."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from prefork_lb.balance import make
from prefork_lb.config import defaults
from prefork_lb.proxy.backend import Backend
from prefork_lb.proxy.exchange import Exchange
from prefork_lb.proxy.health import RetryBudget
from prefork_lb.proxy.server import ClientConn, Proxy
from prefork_lb.proxy.upstream import Upstream
from tests.unit.proxy.test_fuzz import FakeTransport

GET = b"GET /x HTTP/1.1\r\nHost: x\r\n\r\n"
POST = b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    lp = asyncio.new_event_loop()
    yield lp
    lp.close()


class Rig:
    """A proxy with ``backends`` backends; connects wait in ``connects`` until the test opens or
    refuses them, and every transport is fake."""

    def __init__(self, loop: asyncio.AbstractEventLoop, backends: int = 1, **settings: Any) -> None:
        cfg = defaults()
        cfg.values["require_host"] = False
        cfg.values.update(settings)
        self.proxy = Proxy(cfg, make("round_robin"), loop)
        self.backends = [Backend("127.0.0.1", 9000 + i) for i in range(backends)]
        for b in self.backends:
            self.proxy.add_backend(b)
        self.connects: list[tuple[Backend, Exchange]] = []
        self.proxy.connect = lambda b, ex: self.connects.append((b, ex))  # type: ignore[assignment,method-assign,arg-type,func-returns-value]

    def client(self) -> tuple[ClientConn, FakeTransport]:
        c = ClientConn(self.proxy, "http")
        t = FakeTransport()
        c.connection_made(t)
        return c, t

    def open(self) -> tuple[Upstream, FakeTransport]:
        """The oldest waiting connect succeeds."""
        b, ex = self.connects.pop(0)
        up = Upstream(b, self.proxy.response_memo)
        t = FakeTransport()
        up.connection_made(t)
        ex.connected(b, up, None)
        return up, t

    def refuse(self, exc: BaseException) -> None:
        """The oldest waiting connect fails with ``exc``."""
        b, ex = self.connects.pop(0)
        ex.connected(b, None, exc)

    def in_flight(self) -> list[int]:
        members = self.proxy.strategy.members
        return [members[b.key].in_flight for b in self.backends]


def got(t: FakeTransport) -> bytes:
    return b"".join(t.data)


def test_a_connect_error_is_tried_again_on_the_other_backend(loop) -> None:
    rig = Rig(loop, backends=2)
    c, t = rig.client()
    c.data_received(GET)
    first, ex = rig.connects[0]
    rig.refuse(ConnectionRefusedError("refused"))
    assert first.ejected_until > 0 and first.stats.errors == 1 and first.stats.retries == 1
    assert [b for b, _ in rig.connects] == [rig.backends[1]] and ex.tries == 2
    up, ut = rig.open()
    assert got(ut).startswith(b"GET /x HTTP/1.1")
    up.data_received(OK)
    assert got(t).startswith(b"HTTP/1.1 200 OK") and got(t).endswith(b"ok")
    assert rig.in_flight() == [0, 0] and not t.closed


@pytest.mark.parametrize(
    ("exc", "status"), [(ConnectionRefusedError("refused"), b"502"), (TimeoutError(), b"504")]
)
def test_a_connect_error_with_no_retry_left_is_502_or_504_when_it_timed_out(loop, exc, status) -> None:
    rig = Rig(loop, backends=2, retries=0)
    c, t = rig.client()
    c.data_received(GET)
    rig.refuse(exc)
    assert got(t).startswith(b"HTTP/1.1 " + status) and b"backend unreachable" in got(t)
    assert t.closed and not rig.connects and rig.in_flight() == [0, 0]


def test_a_retry_with_no_backend_left_is_503_with_retry_after(loop) -> None:
    rig = Rig(loop, backends=1)
    c, t = rig.client()
    c.data_received(GET)
    rig.refuse(ConnectionRefusedError("refused"))  # ejected: nothing left to try
    assert got(t).startswith(b"HTTP/1.1 503") and b"Retry-After: 1\r\n" in got(t) and t.closed


def test_no_retry_once_the_budget_is_spent(loop) -> None:
    rig = Rig(loop, backends=2)
    rig.proxy.budget = RetryBudget(ratio=0.0, min_per_second=0.0)
    c, t = rig.client()
    c.data_received(GET)
    rig.refuse(ConnectionRefusedError("refused"))
    assert got(t).startswith(b"HTTP/1.1 502") and not rig.connects
    assert rig.backends[0].stats.retries == 0


def test_a_backend_closing_before_any_byte_gets_an_idempotent_request_sent_again(loop) -> None:
    rig = Rig(loop, backends=2)
    c, t = rig.client()
    c.data_received(GET)
    up, _ = rig.open()
    up.connection_lost(None)
    b0 = rig.backends[0]
    assert b0.stats.errors == 1 and b0.stats.retries == 1 and not b0.ejector.failures
    up2, ut2 = rig.open()
    assert up2.backend is rig.backends[1] and got(ut2).startswith(b"GET /x")
    up2.data_received(OK)
    assert got(t).startswith(b"HTTP/1.1 200 OK") and b"502" not in got(t)


def test_a_backend_closing_before_answering_a_post_is_502_and_counts_against_it(loop) -> None:
    rig = Rig(loop, backends=2)
    c, t = rig.client()
    c.data_received(POST)
    up, ut = rig.open()
    assert got(ut).endswith(b"\r\n\r\nabc")
    up.connection_lost(ConnectionResetError())
    assert not rig.connects  # a POST that reached a backend is never sent twice
    assert got(t).startswith(b"HTTP/1.1 502") and b"backend closed the connection" in got(t)
    assert len(rig.backends[0].ejector.failures) == 1 and t.closed


def test_a_backend_closing_mid_response_cuts_the_client_off(loop) -> None:
    rig = Rig(loop)
    c, t = rig.client()
    c.data_received(GET)
    up, _ = rig.open()
    up.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
    up.connection_lost(None)
    assert got(t).startswith(b"HTTP/1.1 200 OK") and got(t).endswith(b"abc")
    assert t.closed and b"502" not in got(t) and rig.in_flight() == [0]
    assert rig.backends[0].stats.errors == 1


def test_a_close_delimited_response_ends_with_the_backend_connection(loop) -> None:
    rig = Rig(loop)
    c, t = rig.client()
    c.data_received(GET)
    up, _ = rig.open()
    up.data_received(b"HTTP/1.1 200 OK\r\n\r\nhello")
    up.connection_lost(None)
    out = got(t)
    assert b"Transfer-Encoding: chunked" in out and out.endswith(b"5\r\nhello\r\n0\r\n\r\n")
    assert not t.closed and c.ex is None and rig.backends[0].stats.errors == 0


def test_no_answer_in_time_is_504(loop) -> None:
    rig = Rig(loop)
    c, t = rig.client()
    c.data_received(GET)
    up, _ = rig.open()
    c.deadline = 0.0
    rig.proxy.sweep()
    assert got(t).startswith(b"HTTP/1.1 504") and t.closed and up.closed
    assert rig.backends[0].stats.errors == 1 and rig.in_flight() == [0]
    assert len(rig.backends[0].ejector.failures) == 1


def test_retry_on_timeout_sends_a_silent_get_to_the_other_backend(loop) -> None:
    rig = Rig(loop, backends=2, retry_on_timeout=True)
    c, t = rig.client()
    c.data_received(GET)
    up, _ = rig.open()
    c.deadline = 0.0
    rig.proxy.sweep()
    assert up.closed and not t.closed and b"504" not in got(t)
    assert [b for b, _ in rig.connects] == [rig.backends[1]] and rig.backends[0].stats.errors == 1
    up2, ut2 = rig.open()
    assert got(ut2).startswith(b"GET /x HTTP/1.1")
    up2.data_received(OK)
    assert got(t).startswith(b"HTTP/1.1 200 OK") and rig.in_flight() == [0, 0]


@pytest.mark.parametrize("case", ["post", "answer started", "off"])
def test_retry_on_timeout_never_retries_a_post_a_started_answer_or_when_off(loop, case) -> None:
    rig = Rig(loop, backends=2, retry_on_timeout=case != "off")
    c, t = rig.client()
    c.data_received(POST if case == "post" else GET)
    up, _ = rig.open()
    if case == "answer started":
        up.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
    c.deadline = 0.0
    rig.proxy.sweep()
    assert rig.connects == [] and up.closed and t.closed
    if case != "answer started":
        assert got(t).startswith(b"HTTP/1.1 504")


def test_a_stalled_response_closes_the_client(loop) -> None:
    rig = Rig(loop)
    c, t = rig.client()
    c.data_received(GET)
    up, _ = rig.open()
    up.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
    c.deadline = 0.0
    rig.proxy.sweep()
    assert t.closed and up.closed and b"504" not in got(t)


def test_a_malformed_response_is_502(loop) -> None:
    rig = Rig(loop)
    c, t = rig.client()
    c.data_received(GET)
    up, _ = rig.open()
    up.data_received(b"HTTP/1.1 2x0 What\r\n\r\n")
    assert got(t).startswith(b"HTTP/1.1 502") and b"malformed response" in got(t)
    assert up.closed and t.closed and len(rig.backends[0].ejector.failures) == 1


def test_a_head_not_yet_sent_is_taken_back_when_the_body_is_malformed(loop) -> None:
    rig = Rig(loop)
    c, t = rig.client()
    c.data_received(GET)
    up, _ = rig.open()
    up.data_received(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n")
    assert got(t).startswith(b"HTTP/1.1 502") and b"200 OK" not in got(t)


def test_a_malformed_body_after_the_head_went_out_closes_the_client(loop) -> None:
    rig = Rig(loop)
    c, t = rig.client()
    c.data_received(GET)
    up, _ = rig.open()
    up.data_received(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
    assert got(t).startswith(b"HTTP/1.1 200 OK")  # flushed at the end of that read
    up.data_received(b"zz\r\n")
    assert t.closed and b"502" not in got(t)


def test_a_101_to_a_request_without_upgrade_is_502(loop) -> None:
    rig = Rig(loop)
    c, t = rig.client()
    c.data_received(GET)
    up, _ = rig.open()
    # (Without an Upgrade header: with one, httptools also raises HttpParserUpgrade and
    # Exchange.upgraded trips on its assert after the 502 went out - a known wart, kept as is.)
    up.data_received(b"HTTP/1.1 101 Switching Protocols\r\n\r\n")
    assert got(t).startswith(b"HTTP/1.1 502") and up.closed and t.closed


def test_a_client_that_stops_sending_its_body_gets_408(loop) -> None:
    rig = Rig(loop)
    c, t = rig.client()
    c.data_received(b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc")
    up, _ = rig.open()
    c.deadline = 0.0
    rig.proxy.sweep()
    assert got(t).startswith(b"HTTP/1.1 408") and t.closed and up.closed
    assert rig.in_flight() == [0] and rig.backends[0].stats.errors == 0


def test_a_client_gone_mid_exchange_drops_its_backend_connection(loop) -> None:
    rig = Rig(loop)
    c, _ = rig.client()
    c.data_received(GET)
    up, _ = rig.open()
    ex = c.ex
    c.connection_lost(None)
    assert ex is not None and ex.done and up.closed and rig.in_flight() == [0]
    assert up not in rig.backends[0].idle


def test_a_connection_that_comes_after_the_exchange_ended_is_kept_for_later(loop) -> None:
    rig = Rig(loop)
    c, _ = rig.client()
    c.data_received(GET)
    c.connection_lost(None)  # gone while the connect was under way
    up, ut = rig.open()
    assert up in rig.backends[0].idle and not up.closed and not ut.data
