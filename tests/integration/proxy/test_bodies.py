"""Bodies and framing: large uploads and downloads, backpressure, 100-continue, HEAD, bodiless
statuses, close-delimited and chunked responses. See tests/integration/proxy/driver.py for the
processes and clients; conftest.py for the fixtures.
"""

from __future__ import annotations

import hashlib
import os
import socket
import time
from collections import Counter

import psutil
import pytest

from tests.helpers import HOST, wait_for
from tests.integration.proxy.driver import Client, by_name, connect, http_request
from tests.server import HTTPStream, build_request


def test_chunked_upload_of_20_mb_arrives_intact(start_proxy, backends) -> None:
    b = backends(1)[0]
    p = start_proxy([b], "--health-check-interval", "0")
    block = os.urandom(65536)
    digest = hashlib.sha256()
    with connect(p.port, 20) as sock:
        sock.sendall(b"POST /sha HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n")
        for i in range(320):  # 20 MiB
            part = block[i % 7 :] + block[: i % 7]
            digest.update(part)
            sock.sendall(b"%x\r\n%b\r\n" % (len(part), part))
        sock.sendall(b"0\r\n\r\n")
        r = HTTPStream(sock, 20).read_response()
    assert r.status == 200, r
    assert r.body.decode() == digest.hexdigest()
    seen = b.seen()[-1]
    assert len(seen.body) == 320 * 65536
    assert seen.chunked or seen.header("content-length") == str(320 * 65536)
    b.clear()


def test_content_length_upload_and_body_echo(start_proxy, backends) -> None:
    b = backends(1)[0]
    p = start_proxy([b], "--health-check-interval", "0")
    body = os.urandom(300_000)
    r = http_request(p.port, "PUT", "/sha", body=body)
    assert r.status == 200 and r.body.decode() == hashlib.sha256(body).hexdigest()
    seen = b.seen()[-1]
    assert seen.header("content-length") == str(len(body)) and not seen.chunked


def test_slow_reader_of_a_20_mb_response_does_not_grow_the_proxy(start_proxy, backends) -> None:
    b = backends(1)[0]
    p = start_proxy([b], "--health-check-interval", "0")
    proxy = psutil.Process(wait_for(p.proxy_pid, 5, "the proxy process"))
    assert http_request(p.port, "GET", "/big?bytes=100000").status == 200  # warm up
    base = proxy.memory_info().rss
    size = 20 * 1024 * 1024
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    sock.settimeout(10)
    with sock:
        sock.connect((HOST, p.port))
        sock.sendall(build_request("GET", f"/big?bytes={size}"))
        head = b""
        while b"\r\n\r\n" not in head:
            head += sock.recv(1024)
        got = len(head.split(b"\r\n\r\n", 1)[1])
        # Not reading for a while: without backpressure the proxy would take it all from the backend.
        peak = base
        for _ in range(15):
            time.sleep(0.05)
            peak = max(peak, proxy.memory_info().rss)
        # Then read slowly for a moment, then quickly to the end.
        for _ in range(20):
            got += len(sock.recv(16384))
            time.sleep(0.01)
            peak = max(peak, proxy.memory_info().rss)
        for _ in range(100_000):
            if got >= size:
                break
            data = sock.recv(1 << 20)
            if not data:
                break
            got += len(data)
    assert got == size
    print(f"proxy RSS growth while relaying 20 MiB to a slow reader: {(peak - base) / 2**20:.1f} MiB")
    assert peak - base < 20 * 1024 * 1024, f"proxy RSS grew by {(peak - base) / 2**20:.1f} MiB"


def test_expect_100_continue(start_proxy, backends) -> None:
    b = backends(1)[0]
    p = start_proxy([b], "--health-check-interval", "0")
    with connect(p.port) as sock:
        stream = HTTPStream(sock)
        sock.sendall(b"PUT /sha HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
        interim = stream.read_response(timeout=3)
        assert interim.status == 100, interim
        sock.sendall(b"hello")
        r = stream.read_response()
    assert r.status == 200 and r.body.decode() == hashlib.sha256(b"hello").hexdigest(), r


def test_backend_answering_before_the_upload_ends(start_proxy, backends) -> None:
    """The backend refuses an upload after its head (403, close) while the client still sends:
    the client gets the 403, and the proxy does not hang on the rest of the body."""
    b = backends(1)[0]
    p = start_proxy([b], "--health-check-interval", "0")
    size = 8 * 1024 * 1024
    with connect(p.port, 10) as sock:
        sock.sendall(b"POST /early HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % size)
        stream = HTTPStream(sock, 10)
        sent = 0
        block = b"z" * 65536
        try:
            while sent < size and not stream.buf:
                sock.settimeout(0.5)
                sock.sendall(block)
                sent += len(block)
                sock.setblocking(False)
                try:
                    stream.buf += sock.recv(65536)
                except BlockingIOError:
                    pass
                sock.setblocking(True)
        except (TimeoutError, OSError):
            pass  # the proxy stopped reading or closed: what it answered is still to be read
        sock.settimeout(10)
        r = stream.read_response(timeout=5)
    assert r.status == 403 and r.body == b"nope", r
    assert [rec.target for rec in b.seen()] == ["/early"]


def test_head_then_get_on_one_connection(start_proxy, backends) -> None:
    b = backends(1)[0]
    p = start_proxy([b], "--health-check-interval", "0")
    with Client(p.port) as c:
        for _ in range(2):  # twice: the second time the heads are ones the proxy has seen
            h = c.request("HEAD", "/")
            assert h.status == 200 and h.header("content-length") == "2" and h.body == b"", h
            g = c.request("GET", "/")
            assert g.status == 200 and g.body == b"b0", g
    assert [r.method for r in b.seen()] == ["HEAD", "GET", "HEAD", "GET"]


@pytest.mark.parametrize("status", [204, 304])
def test_bodiless_statuses(start_proxy, backends, status: int) -> None:
    b = backends(1)[0]
    p = start_proxy([b], "--health-check-interval", "0")
    with Client(p.port) as c:
        for _ in range(2):
            r = c.request("GET", f"/status/{status}")
            assert r.status == status and r.body == b"" and r.header("transfer-encoding") is None, r
        assert c.request().body == b"b0"


def test_backend_closing_after_each_response(start_proxy, backends) -> None:
    """A backend's Connection: close: that upstream connection is not pooled and reused."""
    b = backends(1)[0]
    p = start_proxy([b], "--health-check-interval", "0")
    with Client(p.port) as c:
        for _ in range(5):
            r = c.request("GET", "/close")
            assert r.status == 200 and r.body == b"b0", r
        assert c.request("POST", "/close", body=b"x").status == 200
    assert b.accepted >= 6


def test_close_delimited_backend_body_is_reframed(start_proxy, backends) -> None:
    b = backends(1)[0]
    p = start_proxy([b], "--health-check-interval", "0")
    want = ("b0:" + "y" * 5000).encode()
    with Client(p.port) as c:
        r = c.request("GET", "/eof-body")
        assert r.status == 200 and r.body == want and r.complete, r
        assert r.framing in ("chunked", "close"), r
        if r.framing == "chunked":  # the client connection survives
            assert c.request().body == b"b0"
    # an HTTP/1.0 client never gets chunked
    r10 = http_request(p.port, "GET", "/eof-body", version="HTTP/1.0")
    assert r10.status == 200 and r10.body == want and r10.framing != "chunked", r10


def test_chunked_backend_response(start_proxy, backends) -> None:
    b = backends(1)[0]
    p = start_proxy([b], "--health-check-interval", "0")
    with Client(p.port) as c:
        r = c.request("GET", "/chunked")
        assert r.status == 200 and r.body == b"hello world", r
        assert c.request().body == b"b0"
    r10 = http_request(p.port, "GET", "/chunked", version="HTTP/1.0")
    assert r10.status == 200 and r10.body == b"hello world" and r10.framing != "chunked", r10


def test_http_1_0_client_keep_alive(start_proxy, backends) -> None:
    b = backends(1)[0]
    p = start_proxy([b], "--health-check-interval", "0")
    with connect(p.port) as sock:
        stream = HTTPStream(sock)
        sock.sendall(build_request(version="HTTP/1.0", headers=[("Connection", "keep-alive")]))
        r = stream.read_response()
        assert r.status == 200 and r.body == b"b0", r
        assert r.version == "HTTP/1.1", r  # our version, as the workers answer (RFC 9110 2.5)
        assert (r.header("connection") or "").lower() == "keep-alive", r
        if (r.header("connection") or "").lower() == "keep-alive":
            sock.sendall(build_request(version="HTTP/1.0"))
            assert stream.read_response().body == b"b0"
            assert stream.closed_by_server(3), "HTTP/1.0 without keep-alive: the proxy must close"
        else:
            assert stream.closed_by_server(3)


def test_repeated_identical_exchanges(start_proxy, backends) -> None:
    """The same request bytes and the same response head many times over: every response
    right, the counts right, and a connection idle past --upstream-timeout gets no stray bytes."""
    bs = backends(2)
    p = start_proxy(
        bs,
        "--strategy",
        "round_robin",
        "--health-check-interval",
        "0",
        "--upstream-timeout",
        "1",
        "--keep-alive",
        "10",
    )
    with Client(p.port) as c:
        got = [c.request("GET", "/const") for _ in range(20)]
        assert [r.status for r in got] == [200] * 20
        assert Counter(r.body for r in got) == {b"b0": 10, b"b1": 10}
        assert all(r.header("x-backend-server") == by_name(bs)[r.body.decode()].addr for r in got)
        assert not c.stream.wait_bytes(b"\r\n", 1.5), f"unsolicited bytes: {c.stream.buf!r}"
        assert not c.stream.eof, "the idle keep-alive connection was closed"
        r = c.request("GET", "/const")
        assert r.status == 200, r
    # the same bytes from another client address: its own X-Forwarded-For
    r = http_request(p.port, "GET", "/const", source="127.0.0.3")
    assert r.status == 200
    xffs = {rec.header("x-forwarded-for") for b in bs for rec in b.seen()}
    assert xffs == {"127.0.0.1", "127.0.0.3"}, xffs
    stats = p.stats()
    assert stats["requests"] == 22
    assert sum(s["responses"]["2xx"] for s in stats["backends"]) == 22
    assert all(b["in_flight"] == 0 for b in p.health()[1]["backends"])
