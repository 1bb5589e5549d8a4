"""The ASGI ``websocket`` scope on asyncio, with wsproto for the frames (RFC 6455).

The HTTP side (``asgi.server``) parses the upgrade request and calls :func:`upgrade`, which
returns the protocol that takes the transport over: :class:`HandshakeRefused` answers a bad
handshake 400 without calling the app; :class:`WebSocketProtocol` runs the app as one task and
carries out what it sends (``asgi.ws_events`` checks each event; ``asgi.ws_handshake`` writes
the heads).

Invariants:

* the app receives ``websocket.connect`` first and exactly one ``websocket.disconnect`` (again
  on every later receive): the peer's close code, 1006 when the connection is lost, 1009 for a
  message over ``max_size``, the app's own code after it closed, 1011 after a ping timeout;
* a message reaches the app whole (fragments are joined here) and never past ``max_size``;
* reading pauses while ``INBOX_HIGH`` messages wait for the app (and before accept, once
  ``EARLY_MAX`` bytes came), so a client that sends faster than the app reads waits in TCP;
  ``send`` waits while the transport's write buffer is above its high-water mark;
* pings are answered at once; the server pings every ``ping_interval`` and closes 1011 when a
  pong is ``ping_timeout`` late;
* an app that raises or sends an invalid event gets one log line naming it and the event; the
  client gets close 1011 (500 before accept); the worker goes on serving.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, cast

from wsproto.connection import Connection, ConnectionState, ConnectionType
from wsproto.events import BytesMessage, CloseConnection, Event, Message, Ping, Pong, TextMessage
from wsproto.extensions import Extension, PerMessageDeflate
from wsproto.handshake import server_extensions_handshake

from prefork_lb.asgi.ws_events import (
    CONNECTING,
    RESPONDING,
    Accept,
    AppEventError,
    AppSide,
    Close,
    Deny,
    DenyBody,
    Send,
    disconnect,
    message_frame,
)
from prefork_lb.asgi.ws_handshake import (
    Handshake,
    HandshakeError,
    WsSettings,
    accept_head,
    build_scope,
    check_handshake,
    response_head,
)
from prefork_lb.http.request import Request

__all__ = ["HandshakeRefused", "WebSocketDisconnected", "WebSocketProtocol", "upgrade"]

log = logging.getLogger("prefork_lb.error")

INBOX_HIGH = 16  # messages waiting for the app before reading pauses
INBOX_LOW = 4  # ... and resumes
EARLY_MAX = 65536  # bytes read before accept (frames a client sent too soon) before reading pauses
INFLATE_SLICE = 4096  # compressed bytes fed to wsproto at once (at most ~4 MiB once inflated)

ASGIApp = Callable[..., Awaitable[None]]


class WebSocketDisconnected(OSError):
    """``send`` on a websocket that is closed (the ASGI spec asks for an OSError subclass)."""


def upgrade(
    transport: asyncio.BaseTransport,
    app: ASGIApp,
    request: Request,
    extra: bytes,
    scope_base: dict[str, Any],
    options: Any,
    hooks: Any = None,
) -> asyncio.Protocol:
    """The protocol that serves the websocket ``request`` on ``transport`` once the caller hands
    it over (``transport.set_protocol(p); p.connection_made(transport)``). ``extra``: bytes
    already read past the request's head."""
    settings = WsSettings.from_options(options)
    try:
        handshake = check_handshake(request)
    except HandshakeError as exc:
        return HandshakeRefused(str(exc), exc.headers, settings)
    return WebSocketProtocol(app, build_scope(scope_base, handshake), handshake, extra, settings, hooks)


class HandshakeRefused(asyncio.Protocol):
    """Answers an invalid handshake 400, saying why, and closes."""

    def __init__(self, why: str, headers: tuple[tuple[bytes, bytes], ...], settings: WsSettings) -> None:
        self.why = why
        self.headers = list(headers)
        self.settings = settings
        self.transport: asyncio.WriteTransport | None = None
        self.on_finished: Callable[[Any], None] | None = None  # (the server's, as WebSocketProtocol's)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = out = cast(asyncio.WriteTransport, transport)  # (uvloop's: same methods)
        body = f"Bad Request: {self.why}\n".encode()
        out.write(response_head(400, self.settings, len(body), self.headers) + body)
        out.close()

    def data_received(self, data: bytes) -> None:
        pass

    def connection_lost(self, exc: Exception | None) -> None:
        if self.on_finished is not None:
            self.on_finished(self)

    def close(self, code: int = 1001, reason: str = "") -> None:
        pass  # (already closing)

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()


def app_name(app: object) -> str:
    """``module:qualname`` of the app (or of its class) for log lines, as asgi.server names it."""
    target = app if hasattr(app, "__qualname__") else type(app)
    module = getattr(target, "__module__", "") or ""
    name = getattr(target, "__qualname__", "") or repr(app)
    return f"{module}:{name}" if module else name


class WebSocketProtocol(asyncio.Protocol):
    """One websocket connection: the app's task, its inbox, and the wsproto connection."""

    def __init__(
        self,
        app: ASGIApp,
        scope: dict[str, Any],
        handshake: Handshake,
        extra: bytes,
        settings: WsSettings,
        hooks: Any = None,
    ) -> None:
        self.app = app
        self.scope = scope
        self.handshake = handshake
        self.settings = settings
        self.hooks = hooks
        self.side = AppSide(handshake.subprotocols)
        self.transport: asyncio.Transport | None = None
        self.conn: Connection | None = None  # after accept
        self.client = scope.get("client")  # (for the hooks, which get this protocol as conn)
        self.status = 0  # what the handshake was answered: 101, 403, 500, the app's denial
        self.sent_bytes = 0
        self.task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._started = 0.0
        self._early = bytearray(extra)
        self._inbox: deque[dict[str, Any]] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._connect_sent = False
        self._final: dict[str, Any] | None = None  # the websocket.disconnect, once queued
        self._final_taken = False  # ... and once the app has received it
        self._lost = False
        self._read_paused = False
        self._write_paused = False
        self._drainers: list[asyncio.Future[None]] = []
        self._parts: list[Any] = []
        self._size = 0
        self._deny: Deny | None = None
        self._deny_body = bytearray()
        self._ping_payload = b""
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._deflate = False  # permessage-deflate was agreed
        self._hung_up = False  # the transport is being closed: what still comes is not read
        # Called once the app returned and the transport closed (the server's drain waits for it).
        self.on_finished: Callable[[WebSocketProtocol], None] | None = None

    # -- asyncio.Protocol ------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # (uvloop's transports are not asyncio.Transport subclasses, but have its methods)
        self.transport = cast(asyncio.Transport, transport)
        self._loop = loop = asyncio.get_running_loop()
        self._started = time.monotonic()
        if len(self._early) >= EARLY_MAX:
            self._pause_reading()
        self._hook("request_started", self.scope)
        self.task = loop.create_task(self._run())

    def data_received(self, data: bytes) -> None:
        if self.conn is None:
            if self.side.state == CONNECTING:
                self._early += data
                if len(self._early) >= EARLY_MAX:
                    self._pause_reading()
            return  # after a refusal: ignored
        conn = self.conn
        # Compressed, a read can inflate a thousandfold before the size check sees it: with
        # permessage-deflate on, wsproto gets it in slices, each checked (see _on_data).
        step = INFLATE_SLICE if self._deflate else len(data) or 1
        for at in range(0, len(data), step):
            if conn.state is ConnectionState.CLOSED or self._hung_up:
                return
            conn.receive_data(data[at : at + step])
            for event in conn.events():
                self._on_event(event)
        if len(self._inbox) >= INBOX_HIGH:
            self._pause_reading()

    def eof_received(self) -> bool:
        return False  # close: connection_lost reports 1006 unless a close frame came first

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        self._deliver_disconnect(1006, "")
        self._wake_drainers()
        self._maybe_finished()

    def _maybe_finished(self) -> None:
        task = self.task
        if self._lost and (task is None or task.done()) and self.on_finished is not None:
            on_finished, self.on_finished = self.on_finished, None
            on_finished(self)

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        self._wake_drainers()

    # -- incoming frames -------------------------------------------------------------------------

    def _on_event(self, event: Event) -> None:
        if isinstance(event, (TextMessage, BytesMessage)):
            self._on_data(event)
        elif isinstance(event, Ping):
            if self._conn.state is ConnectionState.OPEN:
                self._write(self._conn.send(event.response()))
        elif isinstance(event, Pong):
            if self._ping_payload and event.payload == self._ping_payload:
                self._ping_payload = b""
                self._cancel("pong")
        elif isinstance(event, CloseConnection):
            self._on_close(event)

    def _on_data(self, event: Message[Any]) -> None:
        if self._final is not None:
            return  # closing: the app gets nothing more
        data = event.data
        self._parts.append(data)
        self._size += len(data) if isinstance(data, bytes) or data.isascii() else len(data.encode())
        if self._size > self.settings.max_size:
            self._parts, self._size = [], 0
            reason = f"message bigger than {self.settings.max_size} bytes"
            self._close(1009, reason)
            self._deliver_disconnect(1009, reason)
            self._hang_up()  # at once: the rest of the message is not even read
            return
        if event.message_finished:
            parts, self._parts, self._size = self._parts, [], 0
            if isinstance(data, str):
                self._deliver({"type": "websocket.receive", "text": "".join(parts), "bytes": None})
            else:
                self._deliver({"type": "websocket.receive", "bytes": b"".join(parts), "text": None})

    def _on_close(self, event: CloseConnection) -> None:
        conn = self._conn
        if conn.state is ConnectionState.REMOTE_CLOSING:
            self._write(conn.send(event.response()))  # the peer closed: echo its code
        elif conn.state is ConnectionState.OPEN:
            # wsproto found a protocol error (ParseFailed): tell the peer why, then hang up.
            self._write(conn.send(CloseConnection(code=event.code, reason=event.reason)))
        self._deliver_disconnect(int(event.code), event.reason or "")
        self._hang_up()

    # -- what the app receives -------------------------------------------------------------------

    def _deliver(self, message: dict[str, Any]) -> None:
        self._inbox.append(message)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _deliver_disconnect(self, code: int, reason: str) -> None:
        if self._final is None:
            self._final = disconnect(code, reason)
            self._deliver(self._final)  # after the messages that came before it
            self._cancel("ping")
            self._cancel("pong")
            self._resume_reading()  # (the close frame or the EOF still has to be read)

    async def receive(self) -> dict[str, Any]:
        if not self._connect_sent:
            self._connect_sent = True
            return {"type": "websocket.connect"}
        while not self._inbox:
            if self._final_taken:
                assert self._final is not None
                return self._final  # already received once: the same again
            assert self._loop is not None
            self._waiter = self._loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        message = self._inbox.popleft()
        if message is self._final:
            self._final_taken = True
        if len(self._inbox) <= INBOX_LOW:
            self._resume_reading()
        return message

    # -- what the app sends ----------------------------------------------------------------------

    async def send(self, message: dict[str, Any]) -> None:
        if self._lost and message.get("type") != "websocket.close":
            raise WebSocketDisconnected("the websocket connection is closed")
        try:
            action = self.side.step(message)
        except AppEventError as exc:
            self._app_failed(f"sent an invalid event {exc}")
            raise
        if isinstance(action, Send):
            if self._final is not None or self._conn.state is not ConnectionState.OPEN:
                raise WebSocketDisconnected("the websocket connection is closed")
            data = action.data
            if self._deflate:
                frame = TextMessage(data=data) if isinstance(data, str) else BytesMessage(data=data)
                self._write(self._conn.send(frame))
            else:  # (per message: the frame wsproto would write, without its objects)
                self._write(message_frame(data))
        elif isinstance(action, Accept):
            self._accept(action)
        elif isinstance(action, Close):
            if action.before_accept:
                self._respond(403, [], b"")
            else:
                self._close(action.code, action.reason)
                self._deliver_disconnect(action.code, action.reason)
        elif isinstance(action, Deny):
            self._deny = action
        elif isinstance(action, DenyBody):
            self._deny_body += action.body
            if not action.more:
                assert self._deny is not None
                self._respond(self._deny.status, self._deny.headers, bytes(self._deny_body))
        await self._drain()

    def _accept(self, action: Accept) -> None:
        extensions: list[Extension] = []
        agreed = None
        if self.settings.per_message_deflate and self.handshake.extensions:
            offered: list[Extension] = [PerMessageDeflate()]
            agreed = server_extensions_handshake(self.handshake.extensions, offered)
            extensions = [e for e in offered if e.enabled()] if agreed else []
        self._write(accept_head(self.handshake, self.settings, action.subprotocol, action.headers, agreed))
        self.status = 101
        self.conn = Connection(ConnectionType.SERVER, extensions)
        self._deflate = bool(extensions)
        early, self._early = bytes(self._early), bytearray()
        self._resume_reading()
        if early:
            self.data_received(early)
        self._schedule_ping()

    def _respond(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        """Refuse the handshake with a plain response, and close."""
        self.status = status
        self._write(response_head(status, self.settings, len(body), headers) + body)
        self._deliver_disconnect(1006, "")
        if self.transport is not None:
            self.transport.close()

    @property
    def _conn(self) -> Connection:
        assert self.conn is not None
        return self.conn

    def _write(self, data: bytes) -> None:
        transport = self.transport
        if data and transport is not None and not transport.is_closing():
            transport.write(data)
            self.sent_bytes += len(data)

    async def _drain(self) -> None:
        if self._write_paused and not self._lost:
            assert self._loop is not None
            fut: asyncio.Future[None] = self._loop.create_future()
            self._drainers.append(fut)
            await fut

    def _wake_drainers(self) -> None:
        drainers, self._drainers = self._drainers, []
        for fut in drainers:
            if not fut.done():
                fut.set_result(None)

    # -- closing ---------------------------------------------------------------------------------

    def _close(self, code: int, reason: str) -> None:
        """Start the closing handshake (if the connection is still open): the transport closes
        when the peer's close frame comes, or after ``close_timeout``."""
        conn = self.conn
        if conn is None or self._lost:
            return
        if conn.state in (ConnectionState.OPEN, ConnectionState.REMOTE_CLOSING):
            self._write(conn.send(CloseConnection(code=code, reason=reason or None)))
        if conn.state is ConnectionState.CLOSED:
            self._hang_up()
        else:
            self._later("close", self.settings.close_timeout, self._hang_up)

    def _hang_up(self) -> None:
        self._hung_up = True
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()
        self._later("abort", self.settings.close_timeout, self._abort)

    def _abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()  # the peer does not read what is left in the buffer

    def abort(self) -> None:
        """For the end of a drain that ran out of time: cancel the app, drop the connection."""
        if self.task is not None and not self.task.done():
            self.task.cancel()
        self._abort()

    def close(self, code: int = 1001, reason: str = "server shutting down") -> None:
        """For the server's drain: close an open websocket with ``code``; the app receives
        websocket.disconnect with it."""
        if self.conn is None:
            if self.transport is not None and self.status == 0:
                self._respond(503, [], b"")
            return
        self._close(code, reason)
        self._deliver_disconnect(code, reason)

    # -- timers ----------------------------------------------------------------------------------

    def _later(self, name: str, delay: float, callback: Callable[[], None]) -> None:
        if self._loop is None or self._lost or name in self._timers:
            return
        self._timers[name] = self._loop.call_later(delay, self._fire, name, callback)

    def _fire(self, name: str, callback: Callable[[], None]) -> None:
        self._timers.pop(name, None)
        callback()

    def _cancel(self, name: str) -> None:
        timer = self._timers.pop(name, None)
        if timer is not None:
            timer.cancel()

    def _schedule_ping(self) -> None:
        if self.settings.ping_interval > 0 and self._final is None:
            self._later("ping", self.settings.ping_interval, self._ping)

    def _ping(self) -> None:
        if self._final is not None or self.conn is None or self.conn.state is not ConnectionState.OPEN:
            return
        if not self._ping_payload:  # (the last one is still unanswered: it keeps its deadline)
            self._ping_payload = os.urandom(4)
            if self.settings.ping_timeout > 0:
                self._later("pong", self.settings.ping_timeout, self._ping_timed_out)
        self._write(self.conn.send(Ping(payload=self._ping_payload)))
        self._schedule_ping()

    def _ping_timed_out(self) -> None:
        reason = "keepalive ping timeout"
        self._close(1011, reason)
        self._deliver_disconnect(1011, reason)

    # -- the app ---------------------------------------------------------------------------------

    async def _run(self) -> None:
        try:
            await self.app(self.scope, self.receive, self.send)
        except (WebSocketDisconnected, AppEventError):
            pass  # the app did not catch it: the connection is over (and any error logged)
        except Exception as exc:
            self._app_failed(f"raised {type(exc).__name__}: {exc}", exc_info=True)
        else:
            self._app_returned()
        finally:
            self._hook(
                "request_finished", self.scope, self.status, self.sent_bytes, time.monotonic() - self._started
            )
            if self._loop is not None:  # (once the task is done: see _maybe_finished)
                self._loop.call_soon(self._maybe_finished)

    def _app_returned(self) -> None:
        state = self.side.state
        if state == CONNECTING:
            self._app_failed("returned without accepting or closing the websocket")
        elif state == RESPONDING:
            self._app_failed("returned before the end of its websocket.http.response.body")
        elif self._final is None:
            self._close(1000, "")
            self._deliver_disconnect(1000, "")

    def _app_failed(self, what: str, exc_info: bool = False) -> None:
        """One log line naming the app and what it did; 500 before accept, 1011 after."""
        path = self.scope.get("path", "")
        name = self.settings.app_name or app_name(self.app)  # as the user gave it, else the object's
        if exc_info:
            log.exception("websocket app %s %s (websocket %s)", name, what, path)
        else:
            log.error("websocket app %s %s (websocket %s)", name, what, path)
        if self.conn is None:
            if self.status == 0 and not self._lost:
                self._respond(
                    500, [(b"content-type", b"text/plain; charset=utf-8")], b"Internal Server Error"
                )
        else:
            self._close(1011, "internal error")
            self._deliver_disconnect(1011, "internal error")

    def _hook(self, name: str, *args: Any) -> None:
        fn = getattr(self.hooks, name, None) if self.hooks is not None else None
        if fn is None:
            return
        try:
            fn(self, *args)
        except Exception:
            log.exception("websocket %s hook failed", name)

    # -- flow control ----------------------------------------------------------------------------

    def _pause_reading(self) -> None:
        if not self._read_paused and self.transport is not None and not self.transport.is_closing():
            self._read_paused = True
            self.transport.pause_reading()

    def _resume_reading(self) -> None:
        if self._read_paused and self.transport is not None and not self.transport.is_closing():
            self._read_paused = False
            self.transport.resume_reading()
