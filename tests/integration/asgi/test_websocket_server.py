"""Websockets through the ASGI engine itself (prefork_lb.asgi.server.AsgiServer, run by
tests/asgi_server.py): the HTTP side hands ``Upgrade: websocket`` requests to
prefork_lb.asgi.websocket.upgrade, and plain requests on the same server still work."""

from __future__ import annotations

import base64
import os
import socket

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from tests.helpers import http_get

APP = "tests.apps_ws:app"


def url(srv, path: str) -> str:
    return f"ws://127.0.0.1:{srv.port}{path}"


def open_ws(srv, path: str, **kw) -> ClientConnection:
    return connect(url(srv, path), open_timeout=10, **kw)


def test_echo_and_http_side_by_side(asgi_shared):
    srv = asgi_shared(APP)
    with open_ws(srv, "/echo") as ws:
        ws.send("hello")
        assert ws.recv(timeout=10) == "hello"
        assert http_get(srv.port, "/") == (200, b"ok")
        ws.send(iter([b"a" * 70000, b"b" * 70000]))
        assert ws.recv(timeout=10) == b"a" * 70000 + b"b" * 70000
    srv.wait_log("disconnect /echo 1000")


def test_reject_deny_and_crash(asgi_shared):
    srv = asgi_shared(APP)
    with pytest.raises(InvalidStatus) as info:
        open_ws(srv, "/reject")
    assert info.value.response.status_code == 403
    with pytest.raises(InvalidStatus) as info:
        open_ws(srv, "/deny")
    assert (info.value.response.status_code, info.value.response.body) == (401, b"token required")
    with open_ws(srv, "/crash") as ws:
        ws.send("go")
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=10)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1011
    srv.wait_log("raised RuntimeError: boom (websocket /crash)")
    with open_ws(srv, "/subprotocol", subprotocols=["x"]) as ws:  # the worker goes on serving
        assert ws.subprotocol == "x"
        assert ws.recv(timeout=10) == "ws /subprotocol "


def test_frames_in_the_same_packet_as_the_handshake(asgi_shared):
    srv = asgi_shared(APP)
    key = base64.b64encode(os.urandom(16))
    head = (
        b"GET /echo HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: " + key + b"\r\n\r\n"
    )
    mask = b"\x01\x02\x03\x04"
    payload = bytes(c ^ mask[i % 4] for i, c in enumerate(b"early"))
    frame = b"\x81\x85" + mask + payload
    with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as sock:
        sock.sendall(head + frame)
        got = b""
        while b"early" not in got:
            chunk = sock.recv(65536)
            assert chunk, got
            got += chunk
    assert got.startswith(b"HTTP/1.1 101 Switching Protocols\r\n")
    assert got.endswith(b"\x81\x05early")
    srv.wait_log("disconnect /echo 1006")  # we left without a close frame


def test_bad_handshake_is_400_from_the_engine(asgi_shared):
    srv = asgi_shared(APP)
    req = b"GET /echo HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\r\n"
    with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as sock:
        sock.sendall(req)
        got = b""
        while chunk := sock.recv(65536):
            got += chunk
    assert got.startswith(b"HTTP/1.1 400 Bad Request\r\n") and got.endswith(b"missing Sec-WebSocket-Key\n")
