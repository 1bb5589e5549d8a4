"""prefork_lb.asgi.ws_handshake: handshake checks, the scope, the heads, the settings."""

from __future__ import annotations

import base64
from types import SimpleNamespace

import pytest

from prefork_lb.asgi.ws_handshake import (
    Handshake,
    HandshakeError,
    WsSettings,
    accept_head,
    accept_token,
    build_scope,
    check_handshake,
    header_values,
    response_head,
    valid_header,
)
from prefork_lb.http.parser import RequestParser

KEY = b"dGhlIHNhbXBsZSBub25jZQ=="  # RFC 6455 section 1.3's example


def parse(*fields: str, method: str = "GET", version: str = "1.1") -> object:
    head = f"{method} /chat HTTP/{version}\r\nHost: x\r\n" + "".join(f + "\r\n" for f in fields) + "\r\n"
    parser = RequestParser()
    parser.feed(head.encode())
    return parser.requests[0]


GOOD = (
    "Upgrade: websocket",
    "Connection: keep-alive, Upgrade",
    f"Sec-WebSocket-Key: {KEY.decode()}",
    "Sec-WebSocket-Version: 13",
)


def test_rfc_accept_token():
    assert accept_token(KEY) == b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


def test_good_handshake_with_protocols_and_extensions():
    req = parse(
        *GOOD,
        "Sec-WebSocket-Protocol: chat, superchat",
        "Sec-WebSocket-Protocol: v3",
        "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits",
    )
    hs = check_handshake(req)  # type: ignore[arg-type]
    assert hs == Handshake(KEY, ["chat", "superchat", "v3"], ["permessage-deflate; client_max_window_bits"])


@pytest.mark.parametrize(
    ("fields", "method", "version", "why"),
    [
        (GOOD, "POST", "1.1", "must be a GET"),
        (GOOD, "GET", "1.0", "needs HTTP/1.1"),
        (("Upgrade: h2c",) + GOOD[1:], "GET", "1.1", "Upgrade header"),
        (GOOD[:1] + ("Connection: keep-alive",) + GOOD[2:], "GET", "1.1", "Connection header"),
        (GOOD[:3], "GET", "1.1", "missing Sec-WebSocket-Version"),
        (GOOD[:3] + ("Sec-WebSocket-Version: 8",), "GET", "1.1", "unsupported Sec-WebSocket-Version"),
        (GOOD + ("Sec-WebSocket-Version: 13",), "GET", "1.1", "more than one sec-websocket-version"),
        (GOOD[:2] + GOOD[3:], "GET", "1.1", "missing Sec-WebSocket-Key"),
        (GOOD[:2] + ("Sec-WebSocket-Key: !!!!",) + GOOD[3:], "GET", "1.1", "invalid Sec-WebSocket-Key"),
        (
            GOOD[:2] + ("Sec-WebSocket-Key: " + base64.b64encode(b"x" * 15).decode(),) + GOOD[3:],
            "GET",
            "1.1",
            "invalid",
        ),
    ],
)
def test_bad_handshakes(fields, method, version, why):
    req = parse(*fields, method=method, version=version)
    with pytest.raises(HandshakeError, match=why) as info:
        check_handshake(req)  # type: ignore[arg-type]
    if "Version" in why:
        assert info.value.headers == ((b"Sec-WebSocket-Version", b"13"),)


def test_header_values_split_and_strip():
    req = parse("Connection: a , ,b", "Connection: c")
    assert header_values(req, "connection") == [b"a", b"b", b"c"]  # type: ignore[arg-type]


@pytest.mark.parametrize(("scheme", "want"), [("http", "ws"), ("https", "wss"), ("wss", "wss"), (None, "ws")])
def test_scope(scheme, want):
    base = {"asgi": {"version": "3.0"}, "method": "GET", "path": "/chat", "extensions": {"other": {}}}
    if scheme:
        base["scheme"] = scheme
    scope = build_scope(base, Handshake(KEY, ["a", "b"]))
    assert scope["type"] == "websocket" and "method" not in scope
    assert scope["scheme"] == want and scope["subprotocols"] == ["a", "b"]
    assert scope["asgi"] == {"version": "3.0", "spec_version": "2.4"}
    assert scope["extensions"] == {"other": {}, "websocket.http.response": {}}
    assert scope["http_version"] == "1.1"
    assert "type" not in base and base["asgi"] == {"version": "3.0"}  # the base is not changed


def test_scope_from_a_bare_base():
    scope = build_scope({}, Handshake(KEY))
    assert scope["asgi"] == {"version": "3.0", "spec_version": "2.4"} and scope["subprotocols"] == []


@pytest.mark.parametrize(
    ("name", "value", "ok"),
    [
        (b"x-a", b"1", True),
        (b"x a", b"1", False),
        (b"x-a", b"1\r\nevil: 1", False),
        ("x-a", b"1", False),
        (b"x-a", "1", False),
        (b"", b"", False),
    ],
)
def test_valid_header(name, value, ok):
    assert valid_header(name, value) is ok


def test_accept_head():
    head = accept_head(
        Handshake(KEY),
        WsSettings(),
        "chat",
        [(b"X-A", b"1"), (b"Content-Length", b"9"), (b"sec-websocket-accept", b"x")],
        b"permessage-deflate",
    )
    assert head == (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\nServer: prefork_lb\r\n"
        b"Sec-WebSocket-Protocol: chat\r\nSec-WebSocket-Extensions: permessage-deflate\r\nX-A: 1\r\n\r\n"
    )
    bare = accept_head(Handshake(KEY), WsSettings(server_header=False))
    assert b"Server" not in bare and b"Sec-WebSocket-Protocol" not in bare and b"Extensions" not in bare


def test_response_head():
    head = response_head(
        401,
        WsSettings(),
        5,
        [(b"x-why", b"no"), (b"connection", b"keep-alive"), (b"Transfer-Encoding", b"chunked")],
    )
    assert (
        head
        == b"HTTP/1.1 401 Unauthorized\r\nServer: prefork_lb\r\nx-why: no\r\nContent-Length: 5\r\nConnection: close\r\n\r\n"
    )
    assert response_head(599, WsSettings(server_header=False), 0).startswith(
        b"HTTP/1.1 599 \r\nContent-Length: 0"
    )


def test_settings_from_options():
    assert WsSettings.from_options(object()) == WsSettings()
    opts = SimpleNamespace(
        ws_max_size=10,
        ws_ping_interval=None,
        ws_ping_timeout=0,
        ws_per_message_deflate=False,
        ws_close_timeout=1,
        server_header=False,
    )
    assert WsSettings.from_options(opts) == WsSettings(10, 0.0, 0.0, False, 1.0, False)


def test_settings_from_the_command_line():
    from prefork_lb.asgi.options import AsgiOptions
    from prefork_lb.cli import parse

    argv = [
        "app:app",
        "--ws-max-size",
        "1024",
        "--ws-ping-interval",
        "0",
        "--ws-ping-timeout",
        "3",
        "--ws-per-message-deflate",
        "false",
    ]
    cfg = parse(argv, environ={})
    got = WsSettings.from_options(AsgiOptions.from_config(cfg))
    assert (got.max_size, got.ping_interval, got.ping_timeout, got.per_message_deflate) == (
        1024,
        0.0,
        3.0,
        False,
    )
    assert WsSettings.from_options(AsgiOptions.from_config(parse(["app:app"], environ={}))) == WsSettings(
        app_name="app:app"
    )
