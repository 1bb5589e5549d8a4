"""The websocket protocol end to end: a real client (the websockets library, or raw sockets for
what a library will not send) against tests/ws_server.py, which parses the head with
prefork_lb.http.parser and hands the upgrade to prefork_lb.asgi.websocket.upgrade."""

from __future__ import annotations

import base64
import os
import socket

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from tests.ws_fixture import ws_servers


@pytest.fixture
def ws_server(tmp_path):
    yield from ws_servers(tmp_path)


def handshake(
    path: str = "/echo", *, key: bytes | None = None, version: bytes = b"13", extra: bytes = b""
) -> bytes:
    key = base64.b64encode(os.urandom(16)) if key is None else key
    lines = [
        b"GET " + path.encode() + b" HTTP/1.1",
        b"Host: 127.0.0.1",
        b"Upgrade: websocket",
        b"Connection: Upgrade",
    ]
    if key:
        lines.append(b"Sec-WebSocket-Key: " + key)
    if version:
        lines.append(b"Sec-WebSocket-Version: " + version)
    return b"\r\n".join(lines) + b"\r\n" + extra + b"\r\n"


def raw(port: int, data: bytes, until: bytes = b"\r\n\r\n") -> tuple[socket.socket, bytes]:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.sendall(data)
    got = b""
    while until not in got:
        chunk = sock.recv(65536)
        if not chunk:
            break
        got += chunk
    return sock, got


def read_to_close(sock: socket.socket, got: bytes = b"") -> bytes:
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return got
        got += chunk


def test_echo_text_and_binary(ws_server):
    srv = ws_server()
    with connect(srv.url("/echo"), open_timeout=10) as ws:
        ws.send("héllo")
        assert ws.recv(timeout=10) == "héllo"
        ws.send(b"\x00\x01\xff")
        assert ws.recv(timeout=10) == b"\x00\x01\xff"
        ws.ping()  # answered by the server: no error, the connection goes on
        ws.send("again")
        assert ws.recv(timeout=10) == "again"
    srv.wait_log("disconnect /echo 1000")
    srv.wait_log("finished /echo 101")


def test_big_fragmented_message_is_reassembled(ws_server):
    srv = ws_server()
    parts = [os.urandom(256 * 1024) for _ in range(12)]  # 3 MiB in 12 frames
    with connect(srv.url("/echo"), open_timeout=10, max_size=None) as ws:
        ws.send(iter(parts))
        assert ws.recv(timeout=20) == b"".join(parts)
        ws.send(iter(["ab", "cd", "é"]))
        assert ws.recv(timeout=10) == "abcdé"


def test_compressed_messages(ws_server):
    srv = ws_server()
    with connect(srv.url("/echo"), open_timeout=10, compression="deflate") as ws:
        assert "permessage-deflate" in (ws.response.headers.get("Sec-WebSocket-Extensions") or "")
        ws.send("z" * 100_000)
        assert ws.recv(timeout=10) == "z" * 100_000


def test_subprotocol_headers_and_scope(ws_server):
    srv = ws_server()
    url = srv.url("/subprotocol") + "?a=1"
    with connect(url, subprotocols=["one", "two"], open_timeout=10) as ws:
        assert ws.subprotocol == "two"
        assert ws.response.headers["x-chosen"] == "yes"
        assert ws.recv(timeout=10) == "ws /subprotocol a=1"


def test_close_before_accept_is_403(ws_server):
    srv = ws_server()
    with pytest.raises(InvalidStatus) as info:
        connect(srv.url("/reject"), open_timeout=10)
    assert info.value.response.status_code == 403
    srv.wait_log("finished /reject 403")


def test_denial_response(ws_server):
    srv = ws_server()
    with pytest.raises(InvalidStatus) as info:
        connect(srv.url("/deny"), open_timeout=10)
    response = info.value.response
    assert response.status_code == 401
    assert response.headers["x-why"] == "no token"
    assert response.body == b"token required"


def test_client_close_code_reaches_the_app(ws_server):
    srv = ws_server()
    with connect(srv.url("/echo"), open_timeout=10) as ws:
        ws.close(4321, "client leaves")
    srv.wait_log("disconnect /echo 4321 client leaves")


def test_app_close_code_and_reason(ws_server):
    srv = ws_server()
    with connect(srv.url("/close"), open_timeout=10) as ws:
        ws.send("hi")
        with pytest.raises(ConnectionClosed) as info:
            ws.recv(timeout=10)
    assert info.value.rcvd is not None
    assert (info.value.rcvd.code, info.value.rcvd.reason) == (4001, "bye now")
    srv.wait_log("disconnect /close 4001 bye now")


def test_too_big_message_closes_1009(ws_server):
    srv = ws_server("65536")
    with connect(srv.url("/echo"), open_timeout=10) as ws:
        ws.send(b"x" * 65536)  # exactly the limit: fine
        assert len(ws.recv(timeout=10)) == 65536
        with pytest.raises(ConnectionClosed) as info:
            # (The server's 1009 may come before the client has sent the message's last frame:
            # then send() raises it.)
            ws.send(iter([b"x" * 40000, b"y" * 40000]))
            ws.recv(timeout=10)
    assert info.value.rcvd is not None and info.value.rcvd.code == 1009
    srv.wait_log("disconnect /echo 1009")


def test_app_crash_is_1011_and_the_server_keeps_serving(ws_server):
    srv = ws_server()
    with connect(srv.url("/crash"), open_timeout=10) as ws:
        ws.send("go")
        with pytest.raises(ConnectionClosed) as info:
            ws.recv(timeout=10)
    assert info.value.rcvd is not None and info.value.rcvd.code == 1011
    log = srv.wait_log("RuntimeError: boom")
    assert "websocket app tests.apps_ws:app raised RuntimeError: boom (websocket /crash)" in log
    with connect(srv.url("/echo"), open_timeout=10) as ws:
        ws.send("still here")
        assert ws.recv(timeout=10) == "still here"


def test_app_crash_before_accept_is_500(ws_server):
    srv = ws_server()
    with pytest.raises(InvalidStatus) as info:
        connect(srv.url("/crash-early"), open_timeout=10)
    assert info.value.response.status_code == 500
    srv.wait_log("raised RuntimeError: boom before accept (websocket /crash-early)")


def test_invalid_event_is_one_line_and_1011(ws_server):
    srv = ws_server()
    with connect(srv.url("/invalid"), open_timeout=10) as ws:
        with pytest.raises(ConnectionClosed) as info:
            ws.recv(timeout=10)
    assert info.value.rcvd is not None and info.value.rcvd.code == 1011
    log = srv.wait_log("sent an invalid event")
    line = next(x for x in log.splitlines() if "invalid event" in x)
    assert line == (
        "[ERROR] websocket app tests.apps_ws:app sent an invalid event "
        "'websocket.send': needs exactly one of bytes and text (websocket /invalid)"
    )
    assert "Traceback" not in log


def test_client_vanishing_is_1006_for_the_app(ws_server):
    srv = ws_server()
    sock, got = raw(srv.port, handshake("/wait"), until=b"ready")
    assert got.startswith(b"HTTP/1.1 101 ")
    sock.close()  # no close frame
    srv.wait_log("disconnect /wait 1006")


@pytest.mark.parametrize(
    ("request_bytes", "why"),
    [
        (handshake(key=b""), b"missing Sec-WebSocket-Key"),
        (handshake(key=b"not-base64!!"), b"invalid Sec-WebSocket-Key"),
        (handshake(key=base64.b64encode(b"short")), b"invalid Sec-WebSocket-Key"),
        (handshake(version=b""), b"missing Sec-WebSocket-Version"),
        (handshake(version=b"8"), b"unsupported Sec-WebSocket-Version"),
        (handshake(extra=b"Sec-WebSocket-Version: 13\r\n"), b"more than one sec-websocket-version"),
    ],
)
def test_invalid_handshake_is_400_without_the_app(ws_server, request_bytes, why):
    srv = ws_server()
    sock, got = raw(srv.port, request_bytes)
    with sock:
        got = read_to_close(sock, got)
    assert got.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert why in got
    if b"Version" in why:
        assert b"Sec-WebSocket-Version: 13\r\n" in got
    assert "finished" not in srv.log_text()  # the app never ran


def test_server_pings_and_times_out_a_silent_peer(ws_server):
    srv = ws_server(str(1 << 20), "0.2", "0.5")
    sock, got = raw(srv.port, handshake("/wait"), until=b"ready")
    with sock:
        got = read_to_close(sock, got)  # pings (opcode 0x89) come; unanswered, the server closes
    frames = got.split(b"\r\n\r\n", 1)[1]
    assert b"\x89\x04" in frames
    assert b"\x88" in frames and b"keepalive ping timeout" in frames
    srv.wait_log("disconnect /wait 1011 keepalive ping timeout")


def test_a_client_that_answers_pings_stays(ws_server):
    srv = ws_server(str(1 << 20), "0.1", "0.3")
    with connect(srv.url("/echo"), open_timeout=10) as ws:
        with pytest.raises(TimeoutError):  # five ping timeouts go by: the client answers each ping
            ws.recv(timeout=1.5)
        ws.send("still open")
        assert ws.recv(timeout=10) == "still open"
    srv.wait_log("disconnect /echo 1000")
    assert "1011" not in srv.log_text()
