"""prefork_lb.asgi.websocket.WebSocketProtocol driven through a fake transport, with wsproto's
client side making and reading the frames: flow control both ways, early frames, closing,
what the app is told, timers."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from wsproto.connection import Connection, ConnectionType
from wsproto.events import BytesMessage, CloseConnection, Event, Ping, Pong, TextMessage
from wsproto.extensions import PerMessageDeflate

from prefork_lb.asgi import websocket as ws
from prefork_lb.asgi.options import AsgiOptions
from prefork_lb.asgi.websocket import (
    HandshakeRefused,
    WebSocketDisconnected,
    WebSocketProtocol,
    app_name,
    upgrade,
)
from prefork_lb.asgi.ws_handshake import Handshake, WsSettings
from prefork_lb.http.parser import RequestParser

KEY = b"dGhlIHNhbXBsZSBub25jZQ=="


class FakeTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.out = bytearray()
        self.paused = False
        self.pauses = 0
        self.closed = False
        self.aborted = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.out += data

    def pause_reading(self) -> None:
        self.paused = True
        self.pauses += 1

    def resume_reading(self) -> None:
        self.paused = False

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = self.closed = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default


class Peer:
    """The client end: wsproto frames to the protocol, the protocol's frames back as events."""

    def __init__(self, proto: WebSocketProtocol, transport: FakeTransport) -> None:
        self.proto = proto
        self.transport = transport
        self.conn = Connection(ConnectionType.CLIENT)
        self.read_at = 0

    def head(self) -> bytes:
        end = self.transport.out.find(b"\r\n\r\n") + 4
        self.read_at = max(self.read_at, end)
        return bytes(self.transport.out[:end])

    def send(self, event: Event) -> None:
        self.proto.data_received(self.conn.send(event))

    def events(self) -> list[Event]:
        self.head()
        self.conn.receive_data(bytes(self.transport.out[self.read_at :]))
        self.read_at = len(self.transport.out)
        return list(self.conn.events())


def make(
    app: Callable[..., Awaitable[None]],
    extra: bytes = b"",
    hooks: Any = None,
    offers: tuple[str, ...] = (),
    **settings: Any,
) -> tuple[WebSocketProtocol, FakeTransport, Peer]:
    scope = {"type": "websocket", "path": "/p", "subprotocols": ["chat"]}
    hs = Handshake(KEY, ["chat"], list(offers))
    proto = WebSocketProtocol(app, scope, hs, extra, WsSettings(**{"ping_interval": 0.0, **settings}), hooks)
    transport = FakeTransport()
    proto.connection_made(transport)
    return proto, transport, Peer(proto, transport)


async def settle(n: int = 10) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


def run(coro: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(coro())


def test_reading_pauses_while_the_app_does_not_read():
    go = None

    async def app(scope, receive, send):
        await receive()
        await send({"type": "websocket.accept"})
        await go.wait()
        got = [await receive() for _ in range(20)]
        assert [m["text"] for m in got] == [str(i) for i in range(20)]
        await send({"type": "websocket.close"})

    async def main():
        nonlocal go
        go = asyncio.Event()
        proto, transport, peer = make(app)
        await settle()
        for i in range(20):
            peer.send(TextMessage(data=str(i)))
        assert transport.paused  # 16 wait for the app
        go.set()
        await settle(60)
        assert not transport.paused
        assert proto.task.done() and proto.task.exception() is None

    run(main)


def test_frames_sent_before_accept_wait_for_it():
    client = Connection(ConnectionType.CLIENT)
    early = client.send(TextMessage(data="early")) + client.send(BytesMessage(data=b"\x01"))
    got: list[dict] = []

    async def app(scope, receive, send):
        await receive()
        await send({"type": "websocket.accept"})
        got.append(await receive())
        got.append(await receive())

    async def main():
        proto, transport, peer = make(app, extra=early[:3])
        proto.data_received(early[3:])
        await settle()
        assert [m.get("text") or m.get("bytes") for m in got] == ["early", b"\x01"]

    run(main)


def test_too_many_early_bytes_pause_reading(monkeypatch):
    monkeypatch.setattr(ws, "EARLY_MAX", 4)

    async def app(scope, receive, send):
        await asyncio.sleep(3600)

    async def main():
        proto, transport, peer = make(app, extra=b"12345")
        assert transport.paused
        proto2, transport2, _ = make(app)
        proto2.data_received(b"123")
        assert not transport2.paused
        proto2.data_received(b"45")
        assert transport2.paused
        proto.task.cancel()
        proto2.task.cancel()
        await settle()

    run(main)


def test_send_waits_while_the_transport_buffer_is_full():
    sent = []

    async def app(scope, receive, send):
        await receive()
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.send", "text": "one"})
        sent.append("one")
        await send({"type": "websocket.send", "text": "two"})
        sent.append("two")
        try:
            await send({"type": "websocket.send", "text": "three"})
        except WebSocketDisconnected:
            sent.append("refused")

    async def main():
        proto, transport, peer = make(app)
        proto.pause_writing()
        await settle()
        assert sent == []  # the accept's own write waits for the buffer
        proto.resume_writing()
        await settle()
        assert sent == ["one", "two"]
        proto.pause_writing()
        proto2, transport2, peer2 = make(app)
        proto2.pause_writing()
        await settle()
        proto2.connection_lost(None)  # a waiting send is released when the connection goes
        await settle()
        assert sent == ["one", "two"]  # its accept returned, its first send raised: not caught
        assert proto2.task.done() and proto2.task.exception() is None

    run(main)


def test_disconnect_is_repeated_and_protocol_errors_close_1002():
    got = []

    async def app(scope, receive, send):
        await receive()
        await send({"type": "websocket.accept"})
        got.append(await receive())
        got.append(await receive())
        with pytest.raises(WebSocketDisconnected):
            await send({"type": "websocket.send", "text": "late"})
        await send({"type": "websocket.close"})  # after the end: nothing happens

    async def main():
        proto, transport, peer = make(app)
        await settle()
        proto.data_received(b"\x81\x01x")  # an unmasked client frame
        await settle()
        assert got[0]["code"] == 1002 and got[0] == got[1]
        (close,) = peer.events()
        assert isinstance(close, CloseConnection) and close.code == 1002
        assert transport.closed
        proto.data_received(b"more")  # after the end: ignored
        assert proto.task.done() and proto.task.exception() is None

    run(main)


def test_pings_are_answered_and_client_close_is_echoed():
    got = []

    async def app(scope, receive, send):
        await receive()
        await send({"type": "websocket.accept"})
        got.append(await receive())

    async def main():
        proto, transport, peer = make(app)
        await settle()
        peer.send(Ping(payload=b"hey"))
        peer.send(Pong(payload=b"unasked"))  # ignored
        assert peer.events() == [Pong(payload=b"hey")]
        peer.send(CloseConnection(code=4000, reason="done"))
        await settle()
        assert got == [{"type": "websocket.disconnect", "code": 4000, "reason": "done"}]
        (echo,) = peer.events()
        assert isinstance(echo, CloseConnection) and echo.code == 4000
        assert transport.closed

    run(main)


def test_text_size_counts_utf8_bytes():
    got = []

    async def app(scope, receive, send):
        await receive()
        await send({"type": "websocket.accept"})
        got.append(await receive())

    async def main():
        proto, transport, peer = make(app, max_size=5)
        await settle()
        peer.send(TextMessage(data="ééé"))  # 3 characters, 6 bytes
        await settle()
        assert got[0]["code"] == 1009
        (close,) = peer.events()
        assert close.code == 1009
        proto.data_received(Connection(ConnectionType.CLIENT).send(TextMessage(data="x")))  # closing: dropped
        assert transport.closed  # at once

    run(main)


@pytest.mark.parametrize(
    ("body", "status", "line"),
    [
        ("return", b"HTTP/1.1 500 ", "returned without accepting or closing the websocket"),
        ("deny", b"HTTP/1.1 500 ", "returned before the end of its websocket.http.response.body"),
        ("raise", b"HTTP/1.1 500 ", "raised ValueError: bad"),
        ("open", b"HTTP/1.1 101 ", None),
    ],
)
def test_what_an_app_leaves_behind(caplog, body, status, line):
    async def app(scope, receive, send):
        await receive()
        if body == "deny":
            await send({"type": "websocket.http.response.start", "status": 401})
        elif body == "raise":
            raise ValueError("bad")
        elif body == "open":
            await send({"type": "websocket.accept"})

    async def main():
        proto, transport, peer = make(app)
        await settle()
        assert bytes(transport.out).startswith(status)
        if body == "open":
            (close,) = peer.events()
            assert close.code == 1000
            assert not transport.closed  # waits for the peer's close frame
            peer.send(CloseConnection(code=1000))
            assert transport.closed

    with caplog.at_level(logging.ERROR, "prefork_lb.error"):
        run(main)
    messages = [r.getMessage() for r in caplog.records]
    if line is None:
        assert messages == []
    else:
        assert messages == [f"websocket app {app_name(app)} {line} (websocket /p)"]


def test_the_error_line_names_the_app_as_the_user_gave_it(caplog):
    class Framework:
        async def __call__(self, scope, receive, send):
            await receive()
            raise ValueError("bad")

    async def main():
        make(Framework(), app_name="myapi:app")
        await settle()

    with caplog.at_level(logging.ERROR, "prefork_lb.error"):
        run(main)
    assert [r.getMessage() for r in caplog.records] == [
        "websocket app myapi:app raised ValueError: bad (websocket /p)"
    ]
    assert WsSettings.from_options(AsgiOptions(app_name="myapi:app")).app_name == "myapi:app"


def test_server_close_for_a_drain_and_the_close_timeout():
    got = []

    async def app(scope, receive, send):
        await receive()
        if scope["path"] == "/p":
            await send({"type": "websocket.accept"})
        got.append(await receive())

    async def main():
        proto, transport, peer = make(app, close_timeout=0.01)
        await settle()
        proto.close()
        await settle()
        assert got == [{"type": "websocket.disconnect", "code": 1001, "reason": "server shutting down"}]
        (close,) = peer.events()
        assert close.code == 1001
        await asyncio.sleep(0.05)  # the peer never answers: closed, then aborted
        assert transport.aborted
        proto.connection_lost(None)

    run(main)


def test_server_close_before_accept_is_503():
    async def app(scope, receive, send):
        await receive()
        await asyncio.sleep(3600)

    async def main():
        proto, transport, peer = make(app)
        await settle()
        proto.close()
        assert bytes(transport.out).startswith(b"HTTP/1.1 503 ")
        proto.close()  # again: nothing more
        proto.task.cancel()
        await settle()

    run(main)


def test_server_pings_time_out():
    got = []

    async def app(scope, receive, send):
        await receive()
        await send({"type": "websocket.accept"})
        got.append(await receive())

    async def main():
        proto, transport, peer = make(app, ping_interval=0.01, ping_timeout=0.05, close_timeout=1)
        await settle()
        for _ in range(100):
            await asyncio.sleep(0.01)
            if got:
                break
        pings = [e for e in peer.events() if isinstance(e, Ping)]
        assert len(pings) >= 2 and len({p.payload for p in pings}) == 1  # the same ping, unanswered
        assert got == [{"type": "websocket.disconnect", "code": 1011, "reason": "keepalive ping timeout"}]
        proto.connection_lost(None)

    run(main)


def test_a_pong_keeps_the_connection():
    async def app(scope, receive, send):
        await receive()
        await send({"type": "websocket.accept"})
        await receive()

    async def main():
        proto, transport, peer = make(app, ping_interval=0.01, ping_timeout=0.03)
        await settle()
        for _ in range(10):
            await asyncio.sleep(0.01)
            for event in peer.events():
                if isinstance(event, Ping):
                    peer.send(event.response())
        assert proto._final is None
        proto.connection_lost(None)
        await settle()
        assert proto._final["code"] == 1006

    run(main)


def test_hooks_get_the_transport_and_a_failing_hook_is_logged(caplog):
    calls = []

    class Hooks:
        def request_started(self, conn, scope):
            calls.append(("started", conn, scope["path"]))

        def request_finished(self, conn, scope, status, sent, seconds):
            raise RuntimeError("hook broke")

    async def app(scope, receive, send):
        await receive()
        await send({"type": "websocket.close"})

    async def main():
        proto, transport, peer = make(app, hooks=Hooks())
        await settle()
        assert calls == [("started", proto, "/p")]
        assert bytes(transport.out).startswith(b"HTTP/1.1 403 ")

    with caplog.at_level(logging.ERROR, "prefork_lb.error"):
        run(main)
    assert [r.getMessage() for r in caplog.records] == ["websocket request_finished hook failed"]


def test_upgrade_refuses_a_bad_handshake():
    parser = RequestParser()
    parser.feed(b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n")
    proto = upgrade(FakeTransport(), None, parser.requests[0], b"", {}, object(), None)  # type: ignore[arg-type]
    assert isinstance(proto, HandshakeRefused)
    transport = FakeTransport()
    proto.connection_made(transport)
    proto.data_received(b"ignored")
    assert bytes(transport.out).startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert bytes(transport.out).endswith(b"Bad Request: missing Sec-WebSocket-Version\n")
    assert transport.closed


def test_upgrade_with_deflate_offered():
    parser = RequestParser()
    parser.feed(
        b"GET /c?q HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: upgrade\r\nSec-WebSocket-Version: 13\r\n"
        b"Sec-WebSocket-Key: " + KEY + b"\r\nSec-WebSocket-Extensions: permessage-deflate\r\n\r\n"
    )

    async def app(scope, receive, send):
        await receive()
        await send({"type": "websocket.accept"})

    async def main():
        proto = upgrade(FakeTransport(), app, parser.requests[0], b"", {"scheme": "https"}, object(), None)
        assert isinstance(proto, WebSocketProtocol) and proto.scope["scheme"] == "wss"
        transport = FakeTransport()
        proto.connection_made(transport)
        await settle()
        assert b"Sec-WebSocket-Extensions: permessage-deflate" in bytes(transport.out)
        proto.connection_lost(None)

    run(main)


def test_app_name():
    class App:
        async def __call__(self, scope, receive, send):
            pass

    assert app_name(App()).endswith("test_websocket_protocol:test_app_name.<locals>.App")
    assert app_name(test_app_name) == f"{__name__}:test_app_name"


def masked(opcode: int, payload: bytes) -> bytes:
    """One client frame (FIN set, masked with a zero key), for what wsproto will not send."""
    assert len(payload) < 126
    return bytes([0x80 | opcode, 0x80 | len(payload)]) + b"\0\0\0\0" + payload


def test_text_that_is_not_utf8_closes_1007():
    got = []

    async def app(scope, receive, send):
        await receive()
        await send({"type": "websocket.accept"})
        got.append(await receive())

    async def main():
        proto, transport, peer = make(app)
        await settle()
        proto.data_received(masked(0x1, b"ok \xff"))
        await settle()
        assert got[0]["code"] == 1007
        (close,) = peer.events()
        assert close.code == 1007 and transport.closed

    run(main)


def test_a_compressed_bomb_stops_at_the_limit(monkeypatch):
    got = []
    inflated = []
    real = WebSocketProtocol._on_data

    def spy(self, event):
        inflated.append(len(event.data))
        real(self, event)

    monkeypatch.setattr(WebSocketProtocol, "_on_data", spy)

    async def app(scope, receive, send):
        await receive()
        await send({"type": "websocket.accept"})
        got.append(await receive())
        got.append(await receive())

    async def main():
        proto, transport, peer = make(app, offers=("permessage-deflate",), max_size=1 << 20)
        await settle()
        assert b"Sec-WebSocket-Extensions: permessage-deflate" in peer.head()
        ext = PerMessageDeflate()
        ext.finalize("permessage-deflate")
        client = Connection(ConnectionType.CLIENT, [ext])
        proto.data_received(client.send(TextMessage(data="small")))
        bomb = client.send(BytesMessage(data=bytes(64 << 20)))  # 64 MiB of zeros, ~64 KiB sent
        assert len(bomb) < 1 << 17
        proto.data_received(bomb)
        await settle()
        assert got[0]["text"] == "small"
        assert got[1]["code"] == 1009
        assert max(inflated) <= 4200 * 1032  # no slice inflated past ~4 MiB
        assert sum(inflated) < (1 << 20) + 4200 * 1032  # and inflating stopped at the limit

    run(main)


@pytest.mark.parametrize("what", ["invalid", "raise", "deny"])
def test_failures_after_accept_and_a_denial(caplog, what):
    async def app(scope, receive, send):
        await receive()
        if what == "deny":
            await send({"type": "websocket.http.response.start", "status": 404, "headers": [(b"x", b"y")]})
            await send({"type": "websocket.http.response.body", "body": b"no", "more_body": True})
            await send({"type": "websocket.http.response.body", "body": b"pe"})
            return
        await send({"type": "websocket.accept"})
        if what == "invalid":
            try:
                await send({"type": "websocket.send", "text": 5})
            except Exception:  # an app that swallows it: the connection is closed anyway
                pass
            return
        raise KeyError("k")

    async def main():
        proto, transport, peer = make(app)
        await settle()
        if what == "deny":
            assert bytes(transport.out) == (
                b"HTTP/1.1 404 Not Found\r\nServer: prefork_lb\r\nx: y\r\nContent-Length: 4\r\nConnection: close\r\n\r\nnope"
            )
            assert transport.closed and proto.status == 404
            return
        (close,) = peer.events()
        assert close.code == 1011

    with caplog.at_level(logging.ERROR, "prefork_lb.error"):
        run(main)
    lines = [r.getMessage() for r in caplog.records]
    want = {
        "invalid": [
            f"websocket app {app_name(app)} sent an invalid event 'websocket.send': text must be a str, not int (websocket /p)"
        ],
        "raise": [f"websocket app {app_name(app)} raised KeyError: 'k' (websocket /p)"],
        "deny": [],
    }
    assert lines == want[what]
