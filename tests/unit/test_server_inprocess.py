"""The engine in this process (no monkey-patching): already-accepted connections handed to
Server.serve_connection, the entry point the handoff dispatcher uses."""

from __future__ import annotations

import socket

import gevent
import gevent.socket
import pytest

from prefork_lb.worker.server import Server, ServerOptions


def app(environ, start_response):
    body = f"{environ['REQUEST_METHOD']} {environ['PATH_INFO']} {environ['wsgi.input'].read().decode()}".encode()
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
    gevent.sleep(0.05)   # the connection is being served: fresh, nothing sent
    with gevent.Timeout(10):
        assert server.drain(timeout=30)   # well before the 60 s header timeout
        assert client.recv(10) == b""
