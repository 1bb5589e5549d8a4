"""Fuzzing the proxy's request path with hypothesis, in process (fake transports, no sockets).

Whatever bytes a client sends, in whatever pieces:

* nothing raises out of the protocol callbacks;
* every response the proxy writes on its own (not relayed from the backend) is a 4xx or 501:
  a client's error never gets a 5xx;
* what reaches the backend parses cleanly with the strict parser, one request per exchange,
  never with both Content-Length and Transfer-Encoding, and never with a hop-by-hop header;
* the exchange loop always ends (no hang): every forwarded request is answered and the
  connection either waits for more bytes or is closed.

The default run is bounded; the long one is behind the ``slow`` marker:
``PREFORK_LB_FUZZ_EXAMPLES=1000000 python -m pytest -m slow -o faulthandler_timeout=0 tests/unit/proxy/test_fuzz.py``
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from prefork_lb.balance import make
from prefork_lb.config import defaults
from prefork_lb.http.errors import HTTPError
from prefork_lb.http.parser import Limits, RequestParser
from prefork_lb.proxy.server import Backend, ClientConn, Proxy, Upstream
from tests.unit.http.test_parser_fuzz import FAST, LONG, _split, mutated, token_soup

RESPONSE = b"HTTP/1.1 200 OK\r\nX-From-Backend: 1\r\nContent-Length: 2\r\n\r\nok"
HOP = {"connection", "keep-alive", "proxy-connection", "te", "transfer-encoding", "upgrade", "trailer"}


class FakeTransport:
    def __init__(self) -> None:
        self.data: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        assert not self.closed or True  # asyncio drops writes after close; so do we
        self.data.append(bytes(data))

    def get_extra_info(self, name: str) -> Any:
        return ("127.0.0.1", 40000) if name == "peername" else None

    def set_write_buffer_limits(self, high: int) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True

    abort = close


@pytest.fixture(scope="module")
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    lp = asyncio.new_event_loop()
    yield lp
    lp.close()


def new_proxy(loop: asyncio.AbstractEventLoop) -> Proxy:
    cfg = defaults()
    cfg.values["require_host"] = False
    proxy = Proxy(cfg, make("round_robin"), loop)
    proxy.add_backend(Backend("127.0.0.1", 9))
    return proxy


def run_client(
    loop: asyncio.AbstractEventLoop, chunks: list[bytes], proxy: Proxy | None = None
) -> tuple[bytes, list[bytes]]:
    """Feed ``chunks`` to a proxy client connection; answer every forwarded request.
    Returns (what the client got, what each upstream connection got)."""
    proxy = proxy or new_proxy(loop)
    for b in proxy.backends.values():
        b.idle.clear()  # each run opens (and records) its own upstream connections
    upstreams: list[tuple[Upstream, FakeTransport]] = []

    def connect(b: Backend, ex: Any) -> None:
        up = Upstream(b, proxy.response_memo)
        t = FakeTransport()
        up.connection_made(t)
        upstreams.append((up, t))
        ex.attach(up)

    proxy.connect = connect  # type: ignore[method-assign]
    client = ClientConn(proxy, "http")
    ct = FakeTransport()
    client.connection_made(ct)
    answered = 0
    for chunk in chunks:
        if ct.closed:
            break
        client.data_received(chunk)
        proxy.end_of_pass()  # what the running loop would do once the pass is over
        # Answer whatever is waiting for a backend, as often as it takes (bounded).
        for _ in range(64):
            ex = client.ex
            if ex is None or ex.up is None or ct.closed:
                break
            ex.up.data_received(RESPONSE)
            proxy.end_of_pass()
            answered += 1
    assert answered <= 64 * len(chunks)
    return b"".join(ct.data), [b"".join(t.data) for _, t in upstreams]


def _undated(data: bytes) -> bytes:
    return b"\r\n".join(line for line in data.split(b"\r\n") if not line.startswith(b"Date: "))


def check(loop: asyncio.AbstractEventLoop, chunks: list[bytes]) -> None:
    proxy = new_proxy(loop)
    got, sent = run_client(loop, chunks, proxy)
    # Two more clients sending the same bytes: the second puts the heads in the proxy's memos
    # (they keep a head the second time it comes), the third is served from them. Each must
    # get exactly what the first got, and the backend exactly the same.
    for _ in range(2):
        again, sent_again = run_client(loop, chunks, proxy)
        assert _undated(again) == _undated(got)
        assert sent_again == sent
    # Responses the proxy made itself: every status line without the backend's marker.
    for part in got.split(b"HTTP/1.1 ")[1:]:
        status = int(part[:3])
        if b"X-From-Backend" not in part.split(b"\r\n\r\n", 1)[0]:
            assert 400 <= status < 500 or status == 501, (status, got)
    # What reached the backend parses strictly and carries no hop-by-hop header.
    for data in sent:
        parser = RequestParser(
            Limits(require_host=False, request_line=0, request_field_size=0, request_fields=1000)
        )
        try:
            parser.feed(data)
        except HTTPError as exc:  # pragma: no cover - a failure to report
            raise AssertionError(
                f"the proxy forwarded what a strict parser refuses: {exc}: {data!r}"
            ) from None
        assert parser.error is None, data
        for req in parser.requests:
            names = [n for n, _, _ in req.headers]
            assert not ("content-length" in names and "transfer-encoding" in names), data
            assert names.count("content-length") <= 1, data
            assert not HOP & (set(names) - {"transfer-encoding", "connection", "upgrade"}), data
            assert "transfer-encoding" not in names or req.chunked


@FAST
@given(data=mutated(), cuts=st.lists(st.integers(0, 10_000), max_size=4))
def test_mutated_corpus_through_the_proxy(
    loop: asyncio.AbstractEventLoop, data: bytes, cuts: list[int]
) -> None:
    check(loop, _split(data, cuts))


@FAST
@given(data=token_soup(), cuts=st.lists(st.integers(0, 10_000), max_size=4))
def test_token_soup_through_the_proxy(loop: asyncio.AbstractEventLoop, data: bytes, cuts: list[int]) -> None:
    check(loop, _split(data, cuts))


def test_a_valid_pipeline_is_forwarded_in_order(loop: asyncio.AbstractEventLoop) -> None:
    """The harness itself works: three requests in, three forwarded and answered in order."""
    reqs = b"".join(b"GET /%d HTTP/1.1\r\nHost: a\r\n\r\n" % i for i in range(3))
    got, sent = run_client(loop, [reqs])
    assert got.count(b"X-From-Backend") == 3
    assert b"".join(sent).count(b"GET /") == 3
    assert [line.split(b" ")[1] for line in b"".join(sent).split(b"\r\n") if line.startswith(b"GET")] == [
        b"/0",
        b"/1",
        b"/2",
    ]


def test_a_smuggling_attempt_never_reaches_the_backend(loop: asyncio.AbstractEventLoop) -> None:
    got, sent = run_client(
        loop,
        [
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /admin HTTP/1.1\r\n\r\n"
        ],
    )
    assert got.startswith(b"HTTP/1.1 400 ")
    assert sent == []


@pytest.mark.slow
@LONG
@given(data=mutated(), cuts=st.lists(st.integers(0, 10_000), max_size=4))
def test_long_mutated_corpus_through_the_proxy(
    loop: asyncio.AbstractEventLoop, data: bytes, cuts: list[int]
) -> None:
    check(loop, _split(data, cuts))


@pytest.mark.slow
@LONG
@given(data=token_soup(), cuts=st.lists(st.integers(0, 10_000), max_size=4))
def test_long_token_soup_through_the_proxy(
    loop: asyncio.AbstractEventLoop, data: bytes, cuts: list[int]
) -> None:
    check(loop, _split(data, cuts))
