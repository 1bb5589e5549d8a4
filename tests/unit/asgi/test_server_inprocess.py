"""AsgiServer in this process, on socketpairs and loopback sockets, with the standard asyncio
loop (the worker runs uvloop; nothing may depend on it): framing decisions, the app's wrong
events, hooks, bad bodies, timeouts, handoff, the connection limit, the websocket hand-over."""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from prefork_lb.asgi.options import AsgiOptions
from prefork_lb.asgi.server import TICK, AsgiServer, app_name
from prefork_lb.config import build
from prefork_lb.http.parser import Limits
from prefork_lb.sockets import handoff_message
from tests.server import parse_responses

App = Callable[[dict[str, Any], Any, Any], Awaitable[None]]
GET = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"


async def read_all(sock: socket.socket, timeout: float = 5.0) -> bytes:
    loop = asyncio.get_running_loop()
    out = b""
    while True:
        chunk = await asyncio.wait_for(loop.sock_recv(sock, 65536), timeout)
        if not chunk:
            return out
        out += chunk


async def talk(server: AsgiServer, data: bytes, eof: bool = True) -> bytes:
    a, b = socket.socketpair()
    b.setblocking(False)
    with b:
        server.add_connection(a)
        await asyncio.get_running_loop().sock_sendall(b, data)
        if eof:
            b.shutdown(socket.SHUT_WR)
        return await read_all(b)


async def talk_later(server: AsgiServer, first: bytes, ready: asyncio.Event, then: bytes) -> bytes:
    """``first``; once the app set ``ready``, ``then``."""
    loop = asyncio.get_running_loop()
    a, b = socket.socketpair()
    b.setblocking(False)
    with b:
        server.add_connection(a)
        await loop.sock_sendall(b, first)
        await asyncio.wait_for(ready.wait(), 5)
        await loop.sock_sendall(b, then)
        return await read_all(b)


def exchange(app: App, data: bytes, eof: bool = True, **opts: Any) -> bytes:
    async def go() -> bytes:
        server = AsgiServer(app, AsgiOptions(**opts), asyncio.get_running_loop())
        try:
            return await talk(server, data, eof)
        finally:
            server.close()

    return asyncio.run(go())


def responses(data: bytes, heads: tuple[bool, ...] = ()) -> list[Any]:
    got, rest = parse_responses(data, heads)
    assert rest == b"", rest
    return got


def sender(*events: dict[str, Any], read: bool = False) -> App:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if read:
            while (await receive()).get("more_body"):
                pass
        for event in events:
            await send(event)

    return app


START = {"type": "http.response.start", "status": 200, "headers": []}


def body(data: bytes = b"", more: bool = False) -> dict[str, Any]:
    return {"type": "http.response.body", "body": data, "more_body": more}


def test_app_name() -> None:
    assert app_name(sender) == f"{__name__}:sender"

    class Callable_:
        async def __call__(self, scope: Any, receive: Any, send: Any) -> None: ...

    assert app_name(Callable_()).endswith("test_app_name.<locals>.Callable_")


def test_error_lines_name_the_app_as_the_user_gave_it(caplog: pytest.LogCaptureFixture) -> None:
    class Framework:  # an instance, as FastAPI's app: its class is no name the user gave
        async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
            raise ValueError("boom")

    with caplog.at_level(logging.ERROR, "prefork_lb.error"):
        exchange(Framework(), GET, app_name="myapi:app")
    assert "ASGI app myapi:app, GET /" in caplog.text and "Framework" not in caplog.text
    options = AsgiOptions.from_config(build({}, environ={}, app_uri="myapi:app"))
    assert options.app_name == "myapi:app"


def test_announced_length_sent_short_closes_and_too_much_is_clipped() -> None:
    short = sender({**START, "headers": [(b"content-length", b"10")]}, body(b"abc"))
    out = exchange(short, GET + GET)
    assert out.count(b"HTTP/1.1") == 1 and out.endswith(b"abc")  # then closed: framing broken
    long = sender({**START, "headers": [(b"content-length", b"2")]}, body(b"ab", True), body(b"cdef"))
    r = responses(exchange(long, GET + GET))
    assert len(r) == 1 and r[0].body == b"ab"  # and then closed: the app offered more
    over = sender({**START, "headers": [(b"content-length", b"2")]}, body(b"abcd"))
    assert responses(exchange(over, GET))[0].body == b"ab"


def test_http10_stream_is_close_delimited_and_trailers_dropped() -> None:
    app = sender(
        {**START, "trailers": True},
        body(b"a", True),
        body(b"b"),
        {"type": "http.response.trailers", "headers": [(b"x", b"1")]},
    )
    out = exchange(app, b"GET / HTTP/1.0\r\n\r\n")
    assert out.endswith(b"\r\n\r\nab") and b"Transfer-Encoding" not in out
    r = responses(exchange(app, GET))[0]
    assert r.framing == "chunked" and r.body == b"ab" and r.trailers == [("x", "1")]


def test_trailers_in_several_events_and_head() -> None:
    tr = {"type": "http.response.trailers", "headers": [(b"x-a", b"1")], "more_trailers": True}
    app = sender(
        {**START, "trailers": True},
        body(b"ab"),
        tr,
        {"type": "http.response.trailers", "headers": [(b"x-b", b"2")]},
    )
    r = responses(exchange(app, GET))[0]
    assert r.trailers == [("x-a", "1"), ("x-b", "2")]
    out = exchange(app, b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n" + GET)
    assert out.count(b"HTTP/1.1 200") == 2 and out.count(b"Transfer-Encoding") == 1


def test_keepalive_off_and_draining_say_close() -> None:
    app = sender(START, body(b"x"))
    assert responses(exchange(app, GET + GET, keepalive=0.0))[0].header("connection") == "close"

    async def go() -> bytes:
        server = AsgiServer(app, AsgiOptions(), asyncio.get_running_loop())
        server.draining = True
        try:
            return await talk(server, GET + GET)
        finally:
            server.close()

    r = responses(asyncio.run(go()))
    assert len(r) == 1 and r[0].header("connection") == "close"


def test_app_date_and_server_headers_win() -> None:
    app = sender({**START, "headers": [(b"date", b"yesterday"), (b"server", b"mine")]}, body())
    r = responses(exchange(app, GET))[0]
    assert r.header_list("date") == ["yesterday"] and r.header_list("server") == ["mine"]
    r = responses(exchange(sender(START, body()), GET, server_header=False))[0]
    assert r.header("server") is None


@pytest.mark.parametrize(
    ("events", "words", "status"),
    [
        ([START, body(b"a"), body(b"b")], "http.response.body after the body ended", 200),
        ([START, body(b"a"), {"type": "http.response.trailers"}], "did not announce", 200),
        (
            [START, body(b"a", True), {"type": "http.response.pathsend", "path": "/etc/hostname"}],
            "pathsend after the body began",
            200,
        ),
        ([START, {"type": "http.response.pathsend", "path": 5}], "with path 5, not a str", 500),
        ([START, {"type": "http.response.pathsend", "path": "/nonexistent/x"}], "No such file", 500),
        (["not an event"], "not an event", 500),
        ([{"type": "http.response.trailers"}], "http.response.trailers before http.response.start", 500),
        ([{"type": "x"}], "unknown event type 'x'", 500),
        ([START, {"type": "x"}], "unknown event type 'x'", 500),
        ([{**START, "status": "200"}], "invalid status '200'", 500),
        ([START, body("text")], "str body", 500),  # type: ignore[arg-type]
        ([START, body(b"a", True)], "returned before the response body ended", 200),
    ],
)
def test_wrong_events(events: list[Any], words: str, status: int, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, "prefork_lb.error"):
        out = exchange(sender(*events), GET + GET)
    got = responses(out)
    assert len(got) == 1 and got[0].status == status
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and words in lines[0] and f"{__name__}:sender" in lines[0] and "GET /" in lines[0]


def test_an_error_the_app_swallowed_after_a_whole_response_still_closes(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send(START)
        await send(body(b"ok"))
        try:
            await send(body(b"again"))
        except RuntimeError:
            pass

    with caplog.at_level(logging.ERROR, "prefork_lb.error"):
        got = responses(exchange(app, GET + GET))
    assert [r.body for r in got] == [b"ok"]
    assert "after the body ended" in caplog.text


class Hooks:
    def __init__(self, fail: bool = False) -> None:
        self.rows: list[Any] = []
        self.fail = fail

    def request_started(self, conn: Any, scope: Any) -> None:
        self.rows.append(("started", scope["path"]))
        if self.fail:
            raise ValueError("hook")

    def request_finished(self, conn: Any, scope: Any, status: int, sent: int, seconds: float) -> None:
        self.rows.append(("finished", scope["path"], status, sent, seconds >= 0))
        if self.fail:
            raise ValueError("hook")


@pytest.mark.parametrize("fail", [False, True])
def test_hooks(fail: bool, caplog: pytest.LogCaptureFixture) -> None:
    hooks = Hooks(fail)

    async def go() -> tuple[bytes, AsgiServer]:
        server = AsgiServer(sender(START, body(b"four")), None, asyncio.get_running_loop(), hooks=hooks)
        try:
            return await talk(server, GET + b"GET /b HTTP/1.1\r\nHost: x\r\n\r\n"), server
        finally:
            server.close()

    out, server = asyncio.run(go())
    assert len(responses(out)) == 2 and server.served == 2 and server.in_flight == 0
    assert hooks.rows == [
        ("started", "/"),
        ("finished", "/", 200, 4, True),
        ("started", "/b"),
        ("finished", "/b", 200, 4, True),
    ]
    assert ("hook failed" in caplog.text) is fail


async def _raises(scope: Any, receive: Any, send: Any) -> None:
    raise RuntimeError("boom")


async def _start_then_raise(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 201, "headers": []})
    raise RuntimeError("boom")


async def _too_slow(scope: Any, receive: Any, send: Any) -> None:
    await asyncio.sleep(30)


@pytest.mark.parametrize(
    ("app", "opts", "status"),
    [(_raises, {}, 500), (_start_then_raise, {}, 500), (_too_slow, {"request_timeout": TICK}, 504)],
)
def test_the_finished_hook_gets_the_status_the_server_answered_for_the_app(
    app: App, opts: dict[str, Any], status: int
) -> None:
    """A 500/504 the server wrote for the app is what the access log and the metrics count,
    not 0 ("no response") nor the status of a head the app began and never sent."""
    hooks = Hooks()

    async def go() -> bytes:
        server = AsgiServer(app, AsgiOptions(**opts), asyncio.get_running_loop(), hooks=hooks)
        try:
            return await talk(server, GET, eof=False)
        finally:
            server.close()

    (r,) = responses(asyncio.run(go()))
    assert r.status == status
    assert [row[:3] for row in hooks.rows] == [("started", "/"), ("finished", "/", status)]


HEAD_CHUNKED = b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n"


def run_later(
    app_factory: Callable[[asyncio.Event, list[Any]], App], then: bytes, **opts: Any
) -> tuple[bytes, list[Any]]:
    seen: list[Any] = []

    async def go() -> bytes:
        ready = asyncio.Event()
        server = AsgiServer(app_factory(ready, seen), AsgiOptions(**opts), asyncio.get_running_loop())
        try:
            return await talk_later(server, HEAD_CHUNKED, ready, then)
        finally:
            server.close()

    return asyncio.run(go()), seen


def reading_app(begin: bool) -> Callable[[asyncio.Event, list[Any]], App]:
    def factory(ready: asyncio.Event, seen: list[Any]) -> App:
        async def app(scope: Any, receive: Any, send: Any) -> None:
            if begin:
                await send(START)
                await send(body(b"begun", True))
            while True:
                msg = await receive()
                seen.append(msg["type"])
                ready.set()
                if msg["type"] == "http.disconnect":
                    break
            await send(START)
            await send(body(b"late"))

        return app

    return factory


def test_malformed_body_is_answered_and_the_app_told() -> None:
    out, seen = run_later(reading_app(False), b"ZZ\r\n")
    assert [r.status for r in responses(out)] == [400] and seen == ["http.request", "http.disconnect"]
    out, seen = run_later(reading_app(False), b"5\r\nabcde\r\n", limits=Limits(request_body=5))
    assert [(r.status, r.body) for r in responses(out)] == [(413, b"request body too large\n")]


def test_malformed_body_after_the_response_began_closes() -> None:
    out, seen = run_later(reading_app(True), b"ZZ\r\n")
    assert out.count(b"HTTP/1.1") == 1 and out.endswith(b"5\r\nbegun\r\n")
    assert seen == ["http.request", "http.disconnect"]


def test_unread_bodies_that_cannot_be_skipped_close() -> None:
    app = sender(START, body(b"k"))
    chunked = b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n"
    r = responses(exchange(app, chunked, eof=False))  # unfinished, of unknown size
    assert len(r) == 1 and r[0].header("connection") == "close"
    expect = b"POST / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n"
    r = responses(exchange(app, expect))
    assert len(r) == 1 and r[0].header("connection") == "close"
    huge = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999\r\n\r\n"
    assert responses(exchange(app, huge))[0].header("connection") == "close"
    skip = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nab"
    out = exchange(app, skip)  # skipping, then the client gives up: closed
    assert out.count(b"HTTP/1.1 200") == 1


def test_body_read_timeout_and_request_timeout_after_the_head(caplog: pytest.LogCaptureFixture) -> None:
    async def reader(scope: Any, receive: Any, send: Any) -> None:
        while (await receive()).get("more_body"):
            pass
        await send(START)
        await send(body(b"read"))

    partial = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc"
    assert exchange(reader, partial, eof=False, header_timeout=TICK) == b""

    async def streaming(scope: Any, receive: Any, send: Any) -> None:
        await send(START)
        await send(body(b"begun", True))
        await asyncio.sleep(30)

    with caplog.at_level(logging.ERROR, "prefork_lb.error"):
        out = exchange(streaming, GET, eof=False, request_timeout=TICK)
    assert out.endswith(b"5\r\nbegun\r\n") and "past --request-timeout" in caplog.text


def test_pathsend_head_and_chunked(tmp_path: Path) -> None:
    f = tmp_path / "f"
    f.write_bytes(b"0123456789")
    ps = {"type": "http.response.pathsend", "path": str(f)}
    out = exchange(sender(START, ps), b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert b"Content-Length: 10\r\n" in out and out.endswith(b"\r\n\r\n")
    r = responses(exchange(sender({**START, "trailers": True}, ps), GET))[0]
    assert r.framing == "chunked" and r.body == b"0123456789"
    r = responses(exchange(sender({**START, "headers": [(b"content-length", b"4")]}, ps), GET))[0]
    assert r.body == b"0123"


def test_handoff_channel_and_listener_limit() -> None:
    async def go() -> list[bytes]:
        loop = asyncio.get_running_loop()
        server = AsgiServer(sender(START, body(b"hi")), AsgiOptions(worker_connections=1), loop)
        ours, theirs = socket.socketpair()
        server.add_handoff_channel(ours)
        a, b = socket.socketpair()
        socket.send_fds(theirs, [handoff_message([0.0])], [a.fileno()])
        a.close()
        b.setblocking(False)
        await loop.sock_sendall(b, GET)
        b.shutdown(socket.SHUT_WR)
        out = [await read_all(b)]
        b.close()
        lsock = socket.socket()
        lsock.bind(("127.0.0.1", 0))
        lsock.listen(8)
        server.add_listener(lsock)
        port = lsock.getsockname()[1]
        c1 = socket.create_connection(("127.0.0.1", port))
        c2 = socket.create_connection(("127.0.0.1", port))
        for c in (c1, c2):
            c.setblocking(False)
            await loop.sock_sendall(c, GET)
            c.shutdown(socket.SHUT_WR)
        out += [await read_all(c1), await read_all(c2)]  # the second waited for the first
        theirs.close()  # the channel closes: dropped
        await asyncio.sleep(TICK)
        assert server.channels == []
        for s in (c1, c2, lsock, ours):
            s.close()
        server.close()
        return out

    out = asyncio.run(go())
    assert [responses(o)[0].body for o in out] == [b"hi", b"hi", b"hi"]


def test_websocket_requests_go_to_the_upgrade_function() -> None:
    calls: list[Any] = []

    class Proto(asyncio.Protocol):
        def connection_made(self, transport: Any) -> None:
            transport.write(b"HTTP/1.1 101 Switching Protocols\r\n\r\n")
            transport.close()

    def upgrade(
        transport: Any, app: Any, request: Any, extra: bytes, base: dict[str, Any], options: Any, hooks: Any
    ) -> Any:
        calls.append((request.method, extra, "type" in base, base["path"]))
        return Proto()

    async def go() -> bytes:
        server = AsgiServer(sender(START, body()), None, asyncio.get_running_loop())
        server.websocket = upgrade
        try:
            return await talk(
                server,
                b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\nframe",
                eof=False,
            )
        finally:
            server.close()

    assert asyncio.run(go()).startswith(b"HTTP/1.1 101")
    assert calls == [("GET", b"frame", False, "/ws")]


def test_drain_gives_up_on_a_stuck_app() -> None:
    async def stuck(scope: Any, receive: Any, send: Any) -> None:
        await asyncio.sleep(30)

    async def go() -> bool:
        loop = asyncio.get_running_loop()
        server = AsgiServer(stuck, None, loop)
        a, b = socket.socketpair()
        server.add_connection(a)
        b.setblocking(False)
        await loop.sock_sendall(b, GET)
        for _ in range(200):
            if server.in_flight:
                break
            await asyncio.sleep(0.01)
        done = await server.drain(TICK)
        assert await read_all(b) == b""
        assert server.cut_requests == ["GET / (no response sent)"]  # the stop's error line names it
        b.close()
        return done

    assert asyncio.run(go()) is False


WS_GET = (
    b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


class ConnectionCount:
    """Hooks that count connections opened and closed (as prefork_lb.asgi.accounting's)."""

    def __init__(self) -> None:
        self.opened: list[Any] = []
        self.closed: list[Any] = []

    def connection_opened(self, conn: Any) -> None:
        self.opened.append(conn)

    def connection_closed(self, conn: Any) -> None:
        self.closed.append(conn)


async def _ws_drain(app: App, timeout: float) -> tuple[bool, bytes, AsgiServer]:
    """Open a websocket to ``app``, drain the server: (drain's answer, the bytes after the 101
    head, the server)."""
    loop = asyncio.get_running_loop()
    server = AsgiServer(app, AsgiOptions(ws_ping_interval=0), loop, hooks=ConnectionCount())
    a, b = socket.socketpair()
    b.setblocking(False)
    with b:
        server.add_connection(a)
        await loop.sock_sendall(b, WS_GET)
        got = b""
        while b"\r\n\r\n" not in got:
            got += await asyncio.wait_for(loop.sock_recv(b, 65536), 5)
        assert got.startswith(b"HTTP/1.1 101") and server.websockets and not server.connections
        drained = loop.create_task(server.drain(timeout))
        frame = await asyncio.wait_for(loop.sock_recv(b, 65536), 5)
        b.close()  # (the client hangs up instead of answering the close frame)
        return await drained, frame, server


def test_drain_closes_websockets_1001_and_awaits_their_app() -> None:
    got: list[Any] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        got.append(await receive())
        await asyncio.sleep(0.05)  # the drain waits for the app, not just for the close frame
        got.append("returned")

    done, frame, server = asyncio.run(_ws_drain(app, 5))
    assert frame[:4] == b"\x88\x16\x03\xe9"  # close, unmasked, code 1001 ...
    assert frame[4:] == b"server shutting down"
    assert got == [
        {"type": "websocket.disconnect", "code": 1001, "reason": "server shutting down"},
        "returned",
    ]
    assert done is True and not server.websockets
    hooks = server.hooks
    assert len(hooks.opened) == 1 and len(hooks.closed) == 1, "the upgraded connection is counted closed"


def test_drain_cancels_a_websocket_app_that_does_not_return() -> None:
    cancelled: list[bool] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        try:
            await asyncio.sleep(30)  # never reads its disconnect
        except asyncio.CancelledError:
            cancelled.append(True)
            raise

    done, frame, _ = asyncio.run(_ws_drain(app, TICK))
    assert frame[:4] == b"\x88\x16\x03\xe9"
    assert done is False and cancelled == [True]


class FrameworkDisconnect(Exception):
    """What Starlette's StreamingResponse raises (ClientDisconnect) on our OSError: a plain
    Exception."""


@pytest.mark.parametrize("catch", ["raised", "caught", "converted"])
def test_send_after_the_client_left_raises_an_oserror(catch: str, caplog: pytest.LogCaptureFixture) -> None:
    from prefork_lb.http.errors import ClientDisconnected

    raised: list[BaseException] = []
    finished: asyncio.Event | None = None

    async def app(scope: Any, receive: Any, send: Any) -> None:
        assert finished is not None
        try:
            await receive()  # http.request
            assert (await receive())["type"] == "http.disconnect"
            for event in (START, body(b"late")):
                try:
                    await send(event)
                except OSError as exc:
                    raised.append(exc)
                    if catch == "raised":
                        raise
                    if catch == "converted":
                        raise FrameworkDisconnect() from exc
        finally:
            finished.set()

    async def go() -> AsgiServer:
        nonlocal finished
        finished = asyncio.Event()
        loop = asyncio.get_running_loop()
        server = AsgiServer(app, None, loop)
        with socket.create_server(("127.0.0.1", 0)) as lsock:
            b = socket.create_connection(lsock.getsockname())
            a, _ = lsock.accept()
        server.add_connection(a)
        b.sendall(GET)
        # The client leaves before the response: a reset (a shut sending side, a plain close,
        # could still read the answer).
        b.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        b.close()
        await asyncio.wait_for(finished.wait(), 5)
        await asyncio.sleep(0)  # (the cycle's own ending, after the app's)
        server.close()
        return server

    with caplog.at_level(logging.INFO, logger="prefork_lb.error"):
        server = asyncio.run(go())
    assert all(isinstance(e, ClientDisconnected) for e in raised)
    assert len(raised) == (2 if catch == "caught" else 1)
    assert "http.response.start not sent" in str(raised[0])
    assert caplog.records == [], "the client leaving is not the app's error"
    assert server.served == 0


def test_memoised_heads_follow_the_date_and_draining(monkeypatch: pytest.MonkeyPatch) -> None:
    """The usual head is serialised once per Date line: a new Date empties the memo, and a
    server that starts draining between two requests says close on the second."""
    app = sender(START, body(b"x"))

    async def go() -> list[bytes]:
        server = AsgiServer(app, AsgiOptions(), asyncio.get_running_loop())
        out = []
        try:
            out.append(await talk(server, GET + GET))
            assert server.heads, "the usual head is memoised"
            # A new second: a new Date line (the clock, not refresh_date: a compiled module calls
            # that directly, past a patched module attribute).
            monkeypatch.setattr(time, "time", lambda: 1767225600.0)  # 2026-01-01 00:00:00 UTC
            server._tick()
            out.append(await talk(server, GET))
            server.draining = True
            out.append(await talk(server, GET))
        finally:
            server.close()
        return out

    first, dated, drained = (responses(x) for x in asyncio.run(go()))
    assert len(first) == 2 and first[0].header("date") == first[1].header("date")
    assert [r.header("connection") for r in first] == [None, None]
    assert dated[0].header("date") == "Thu, 01 Jan 2026 00:00:00 GMT"
    assert drained[0].header("connection") == "close"


def test_the_request_timeout_never_fires_before_it_has_passed() -> None:
    """The ticker's ``now`` may be up to TICK old when a request starts: a deadline taken from
    it fired early (0.84 s for --request-timeout 1). Here ``now`` is made 10 s stale: a request
    well inside its timeout must still get its 200."""

    async def slow(scope: Any, receive: Any, send: Any) -> None:
        await asyncio.sleep(2 * TICK)  # at least one tick runs while the app works
        await send(START)
        await send(body(b"in time"))

    async def go() -> bytes:
        server = AsgiServer(slow, AsgiOptions(request_timeout=5.0), asyncio.get_running_loop())
        server.now -= 10.0
        try:
            return await talk(server, GET)
        finally:
            server.close()

    (r,) = responses(asyncio.run(go()))
    assert r.status == 200 and r.body == b"in time", r


def test_a_drain_serves_what_was_queued_for_this_worker() -> None:
    """A slot being removed (TTOU) has no successor: a connection the dispatcher already
    handed over, or one queued on the worker's listener, is served by the drain (with
    Connection: close), not left to time out (CI saw one in handoff mode under TTOU)."""
    app = sender(START, body(b"served"))

    async def go() -> list[bytes]:
        loop = asyncio.get_running_loop()
        server = AsgiServer(app, AsgiOptions(idle_grace=0.0), loop)
        ours, theirs = socket.socketpair()
        server.add_handoff_channel(ours)
        lsock = socket.create_server(("127.0.0.1", 0))
        server.add_listener(lsock)
        # Both arrive before the loop runs again: only the drain can take them.
        a, handed = socket.socketpair()
        socket.send_fds(theirs, [handoff_message([0.0])], [a.fileno()])
        a.close()
        queued = socket.create_connection(lsock.getsockname())
        for c in (handed, queued):
            c.sendall(GET)
            c.shutdown(socket.SHUT_WR)
            c.setblocking(False)
        assert await server.drain(5.0)
        try:
            return [await read_all(handed), await read_all(queued)]
        finally:
            for s in (handed, queued, theirs, ours, lsock):
                s.close()
            server.close()

    for out in asyncio.run(go()):
        (r,) = responses(out)
        assert r.status == 200 and r.body == b"served", r
