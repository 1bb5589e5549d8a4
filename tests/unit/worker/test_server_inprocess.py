"""The engine in this process (no monkey-patching): already-accepted connections handed to
Server.serve_connection, the entry point the handoff dispatcher uses."""

from __future__ import annotations

import socket

import gevent
import gevent.event
import gevent.socket
import pytest

from prefork_lb.proxy.peers import TrustedPeers
from prefork_lb.worker.server import Server, ServerOptions


def app(environ, start_response):
    body = (
        f"{environ['REQUEST_METHOD']} {environ['PATH_INFO']} {environ['wsgi.input'].read().decode()}".encode()
    )
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [body]


def _read_response(sock: gevent.socket.socket) -> bytes:
    data = b""
    with gevent.Timeout(5):
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            assert chunk, "connection closed before a response"
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
        while len(body) < length:
            body += sock.recv(65536)
    return head + b"\r\n\r\n" + body


@pytest.fixture
def pair():
    a, b = socket.socketpair()
    client = gevent.socket.socket(fileno=b.detach())
    yield a, client
    client.close()


def test_serve_connection_keep_alive_and_drain(pair) -> None:
    server_side, client = pair
    server = Server(app, ServerOptions(keepalive=30))
    glet = server.serve_connection(server_side, ("127.0.0.1", 1234))
    client.sendall(b"POST /one HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc")
    first = _read_response(client)
    assert first.startswith(b"HTTP/1.1 200 OK\r\n")
    assert first.endswith(b"POST /one abc")
    client.sendall(b"GET /two HTTP/1.1\r\nHost: x\r\n\r\n")
    assert _read_response(client).endswith(b"GET /two ")
    # The connection is idle now: a graceful drain closes it at once.
    assert server.drain(timeout=5)
    with gevent.Timeout(5):
        assert client.recv(10) == b""
    glet.join(timeout=5)
    assert glet.dead
    assert server.requests_served == 2


def test_bad_request_on_handed_connection_gets_400_and_close(pair) -> None:
    server_side, client = pair
    server = Server(app)
    server.serve_connection(server_side)
    client.sendall(b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n")
    with gevent.Timeout(5):
        data = b""
        while True:
            chunk = client.recv(65536)
            if not chunk:
                break
            data += chunk
    assert data.startswith(b"HTTP/1.1 400 ")
    assert server.requests_served == 0
    server.drain(timeout=1)


def test_drain_closes_a_silent_new_connection_after_a_grace(pair) -> None:
    server_side, client = pair
    server = Server(app, ServerOptions(header_timeout=60))
    server.serve_connection(server_side)
    gevent.sleep(0.05)  # the connection is being served: fresh, nothing sent
    with gevent.Timeout(10):
        assert server.drain(timeout=30)  # well before the 60 s header timeout
        assert client.recv(10) == b""


def environ_app(environ, start_response):
    keys = sorted(k for k in environ if k.isupper())
    body = "\n".join(f"{k}={environ[k]}" for k in keys).encode()
    environ["HTTP_HOST"] = "changed by the app"  # must not leak into the next request
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [body]


def _environ_of(client) -> dict[str, str]:
    body = _read_response(client).partition(b"\r\n\r\n")[2].decode()
    return dict(line.split("=", 1) for line in body.splitlines())


def test_a_repeated_request_gets_the_same_environ_with_its_own_connection_keys() -> None:
    server = Server(environ_app, ServerOptions(keepalive=30))
    request = b"GET /p?q=1 HTTP/1.1\r\nHost: h\r\nX-Forwarded-For: 10.0.0.1\r\nAccept: a\r\nAccept: b\r\n\r\n"
    seen = []
    for port in (1111, 2222):
        a, b = socket.socketpair()
        client = gevent.socket.socket(fileno=b.detach())
        server.serve_connection(a, ("127.0.0.1", port))
        for _ in range(3):  # the first parses, the others come from the memo
            client.sendall(request)
            seen.append(_environ_of(client))
        client.close()
    assert len(server.request_memo) == 1
    first = seen[0]
    assert first["PATH_INFO"] == "/p" and first["QUERY_STRING"] == "q=1" and first["HTTP_HOST"] == "h"
    assert first["HTTP_ACCEPT"] == "a,b" and first["HTTP_X_FORWARDED_FOR"] == "10.0.0.1"
    for env in seen:
        assert {k: v for k, v in env.items() if k != "REMOTE_PORT"} == {
            k: v for k, v in first.items() if k != "REMOTE_PORT"
        }
    assert [env["REMOTE_PORT"] for env in seen] == ["1111"] * 3 + ["2222"] * 3
    server.drain(timeout=1)


def test_a_header_merged_into_a_connection_key_is_not_cached() -> None:
    opts = ServerOptions(keepalive=30, extra_environ={"HTTP_X_EXTRA": "base"})
    server = Server(environ_app, opts)
    a, b = socket.socketpair()
    client = gevent.socket.socket(fileno=b.detach())
    server.serve_connection(a, ("127.0.0.1", 1))
    for _ in range(2):
        client.sendall(b"GET / HTTP/1.1\r\nHost: h\r\nX-Extra: sent\r\n\r\n")
        assert _environ_of(client)["HTTP_X_EXTRA"] == "base,sent"
    client.close()
    server.drain(timeout=1)


def scheme_app(environ, start_response):
    body = environ["wsgi.url_scheme"].encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


def test_url_scheme_follows_forwarding_headers_from_trusted_peers_only() -> None:
    """--forwarded-allow-ips: a trusted peer's X-Forwarded-Proto / Forwarded proto= set
    wsgi.url_scheme; another peer sending the very same bytes (the same memoised request) gets
    http, before and after a trusted one."""
    server = Server(scheme_app, ServerOptions(keepalive=30, trusted_peers=TrustedPeers("10.0.0.0/24")))
    xfp = b"GET / HTTP/1.1\r\nHost: h\r\nX-Forwarded-Proto: https\r\n\r\n"
    fwd = b"GET /f HTTP/1.1\r\nHost: h\r\nForwarded: for=192.0.2.7;proto=https\r\n\r\n"
    plain = b"GET / HTTP/1.1\r\nHost: h\r\n\r\n"
    cases = [
        ("10.0.0.1", xfp, b"https"),
        ("192.0.2.9", xfp, b"http"),
        ("10.0.0.2", xfp, b"https"),
        ("10.0.0.1", fwd, b"https"),
        ("192.0.2.9", fwd, b"http"),
        ("10.0.0.1", plain, b"http"),
        ("", xfp, b"http"),  # not an IP address (a unix socket peer): not trusted
    ]
    for peer, request, want in cases:
        a, b = socket.socketpair()
        client = gevent.socket.socket(fileno=b.detach())
        server.serve_connection(a, (peer, 1) if peer else "")
        for _ in range(3):  # the first parses, the others come from the memo
            client.sendall(request)
            assert _read_response(client).partition(b"\r\n\r\n")[2] == want, (peer, request)
        client.close()
    server.drain(timeout=1)


SLOW_MAY_FINISH = gevent.event.Event()


def sleepy_app(environ, start_response):
    if environ["PATH_INFO"] == "/slow":
        SLOW_MAY_FINISH.wait()  # yields to the hub until the test lets it finish
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [environ["PATH_INFO"].encode()]


def test_pipelined_responses_are_held_only_while_the_worker_runs(pair) -> None:
    server_side, client = pair
    server = Server(sleepy_app, ServerOptions(keepalive=30))
    server.serve_connection(server_side, ("127.0.0.1", 1))
    SLOW_MAY_FINISH.clear()
    # Four requests in one write: the answers to /a and /b may travel together, but they must
    # not wait for /slow, which waits (in the hub) until both have arrived; /c comes after it.
    client.sendall(b"".join(b"GET /%s HTTP/1.1\r\nHost: x\r\n\r\n" % p for p in (b"a", b"b", b"slow", b"c")))
    data = b""
    try:
        with gevent.Timeout(10, AssertionError("the answers before /slow waited for it")):
            while data.count(b"HTTP/1.1 200") < 2:
                chunk = client.recv(65536)
                assert chunk
                data += chunk
        assert b"/slow" not in data
    finally:
        SLOW_MAY_FINISH.set()
    with gevent.Timeout(5):
        while data.count(b"HTTP/1.1 200") < 4:
            chunk = client.recv(65536)
            assert chunk
            data += chunk
    bodies = [part.split(b"\r\n\r\n", 1)[1][:5] for part in data.split(b"HTTP/1.1 200 OK\r\n")[1:]]
    assert bodies == [b"/a", b"/b", b"/slow", b"/c"]
    server.drain(timeout=1)


def _read_head_and_body(sock: gevent.socket.socket, head_request: bool = False) -> tuple[bytes, bytes]:
    """One response: its head, and its body read by its own framing (length or chunked)."""
    data = b""
    with gevent.Timeout(5):
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            assert chunk, "connection closed before a response"
            data += chunk
        head, _, rest = data.partition(b"\r\n\r\n")
        if head_request:
            pass  # no body, whatever the head says
        elif b"Transfer-Encoding: chunked" in head:
            while not rest.endswith(b"0\r\n\r\n"):
                rest += sock.recv(65536)
        elif b"Content-Length: " in head and not head.startswith(b"HTTP/1.1 204"):
            length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
            while len(rest) < length:
                rest += sock.recv(65536)
    return head, rest


def varied_app(environ, start_response):
    """The same request answered with heads that frame differently, by what the query says."""
    kind = environ["QUERY_STRING"]
    if kind == "drain":
        if SERVERS:
            SERVERS[0].draining = True  # a drain that starts while this request runs
        kind = "list"
    if kind == "stream":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return iter([b"abc"])
    if kind == "empty":
        start_response("204 No Content", [])
        return []
    if kind == "unique":
        start_response("200 OK", [("X-N", str(next(COUNTER)))])
        return [b"u"]
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"abc"]


SERVERS: list[Server] = []
COUNTER = iter(range(1_000_000))


def test_a_memoised_request_is_framed_by_each_response_it_gets() -> None:
    # The framing of a request from the memo is kept per app head: each kind of answer must
    # still be framed as its own, whatever the same request got before.
    server = Server(varied_app, ServerOptions(keepalive=30))
    a, b = socket.socketpair()
    client = gevent.socket.socket(fileno=b.detach())
    server.serve_connection(a, ("127.0.0.1", 1))
    for kind, expect in [
        (b"list", b"Content-Length: 3"),
        (b"stream", b"Transfer-Encoding: chunked"),
        (b"empty", b"HTTP/1.1 204 No Content"),
    ]:
        request = b"GET /?%s HTTP/1.1\r\nHost: h\r\n\r\n" % kind
        for _ in range(4):  # the first two parse; the others come from the memo
            client.sendall(request)
            head, body = _read_head_and_body(client)
            assert expect in head and b"Connection:" not in head
            assert body == {b"list": b"abc", b"stream": b"3\r\nabc\r\n0\r\n\r\n", b"empty": b""}[kind]
    for _ in range(3):
        client.sendall(b"HEAD /?list HTTP/1.1\r\nHost: h\r\n\r\n")
        head, body = _read_head_and_body(client, head_request=True)
        assert b"Content-Length: 3" in head and body == b""
    assert len(server.request_memo) == 4
    client.close()
    server.drain(timeout=1)


def test_a_memoised_request_says_close_when_a_drain_started() -> None:
    server = Server(varied_app, ServerOptions(keepalive=30))
    SERVERS.clear()
    a, b = socket.socketpair()
    client = gevent.socket.socket(fileno=b.detach())
    server.serve_connection(a, ("127.0.0.1", 1))
    request = b"GET /?drain HTTP/1.1\r\nHost: h\r\n\r\n"
    try:
        for _ in range(4):  # from the memo after two, its framing kept after three
            client.sendall(request)
            head, _ = _read_head_and_body(client)
            assert b"Connection: close" not in head
        SERVERS.append(server)  # the app now starts a drain while it runs
        client.sendall(request)
        head, _ = _read_head_and_body(client)
        assert b"Connection: close" in head
        with gevent.Timeout(5):
            assert client.recv(10) == b""
    finally:
        SERVERS.clear()
    client.close()
    server.drain(timeout=1)


def test_framings_kept_in_a_request_memo_are_bounded() -> None:
    from prefork_lb.worker.response import FRAMINGS_MAX

    server = Server(varied_app, ServerOptions(keepalive=30))
    a, b = socket.socketpair()
    client = gevent.socket.socket(fileno=b.detach())
    server.serve_connection(a, ("127.0.0.1", 1))
    for _ in range(3 * FRAMINGS_MAX):  # a new app head each time
        client.sendall(b"GET /?unique HTTP/1.1\r\nHost: h\r\n\r\n")
        head, body = _read_head_and_body(client)
        assert b"Content-Length: 1" in head and body == b"u"
    (req,) = [r for r in server.request_memo.values() if r is not None]
    assert req.memo is not None and len(req.memo) <= FRAMINGS_MAX
    client.close()
    server.drain(timeout=1)


def test_the_graceful_timeout_line_counts_the_connections_it_cut(pair, caplog) -> None:
    import logging

    from prefork_lb.worker.child import stop_server

    entered, release = gevent.event.Event(), gevent.event.Event()

    def stuck(environ, start_response):
        entered.set()
        release.wait()  # a request that outlives the graceful timeout
        start_response("200 OK", [("Content-Length", "0")])
        return [b""]

    server_side, client = pair
    server = Server(stuck)
    server.serve_connection(server_side)
    client.sendall(b"GET /stuck HTTP/1.1\r\nHost: x\r\n\r\n")
    with gevent.Timeout(5):
        entered.wait()
        with caplog.at_level(logging.WARNING, "prefork_lb.error"):
            stop_server(server, graceful=True, timeout=0.2)
    assert "Graceful timeout: closed 1 connection(s) still busy" in caplog.text
    release.set()
