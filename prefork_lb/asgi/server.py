"""The ASGI worker's HTTP/1.1 server on one asyncio loop (uvloop in the worker): accepts
connections from listeners, takes handed-off ones, keeps time for them, admits requests and
drains. Each connection is a prefork_lb.asgi.http.HttpConnection.

Invariants:

* Accepting stops while ``worker_connections`` connections are open (or on their way in): the
  rest wait in the kernel's backlog, as with the WSGI engine.
* One ticker (every TICK seconds) refreshes ``now`` and the Date line, and fires the timeouts
  connections and cycles noted (``wait_until``, ``deadline``): no timer per request.
* An upgraded connection (a websocket) leaves ``connections`` for ``websockets`` until its app
  returned and its transport closed; it counts towards ``worker_connections`` all the while.
* A graceful drain sends every open websocket a close frame 1001 (going away), its app gets
  websocket.disconnect 1001, and the drain waits for its task within the same timeout.
* Admission (``max_concurrency`` / ``queue_size``): at most max_concurrency requests run in
  the app; queue_size more wait in order; past both a request is answered 503 with Retry-After
  (prefork_lb.admission's words) and its connection closed.
* The server never imports gevent, nor prefork_lb.worker (whose modules do).
"""

from __future__ import annotations

import asyncio
import contextvars
import errno
import logging
import socket
import time
from collections import deque
from typing import Any

from prefork_lb.asgi.accounting import request_target
from prefork_lb.asgi.core import ServerCore
from prefork_lb.asgi.cycle import ADMITTED, QUEUED, REFUSED
from prefork_lb.asgi.http import HttpConnection
from prefork_lb.asgi.options import AsgiOptions
from prefork_lb.http.parser import RequestMemo
from prefork_lb.http.response import refresh_date
from prefork_lb.sockets import accept_times, handoff_data_size

__all__ = ["AsgiServer"]

log = logging.getLogger("prefork_lb.error")

TICK = 0.25
ACCEPT_BATCH = 64  # connections accepted per readiness callback at most
HANDOFF_BATCH = 64  # descriptors per handoff message (as prefork_lb.worker.server)


def _websocket_upgrade() -> Any:
    try:
        from prefork_lb.asgi import websocket  # type: ignore[attr-defined,unused-ignore]
    except ImportError:
        return None
    return getattr(websocket, "upgrade", None)


def cut_request(cycle: Any) -> str:
    """How the graceful timeout's line names a request it cut: its method and target, and
    whether the client got a status line."""
    code = cycle.answered or (cycle.head.code if cycle.head is not None and cycle.head_sent else 0)
    got = f"cut after its {code} head" if code else "no response sent"
    return f"{cycle.req.method} {request_target(cycle.scope).decode('latin-1')} ({got})"


def app_name(app: Any) -> str:
    """How the log lines name the app: module:qualname, as it was given."""
    target = app if hasattr(app, "__qualname__") else type(app)
    module = getattr(target, "__module__", "") or ""
    name = getattr(target, "__qualname__", repr(app))
    return f"{module}:{name}" if module else str(name)


class AsgiServer(ServerCore):
    """Serves one ASGI app on listening sockets and/or connections handed to it (the fields its
    connections read per request are ServerCore's)."""

    def __init__(
        self,
        app: Any,
        options: AsgiOptions | None = None,
        loop: asyncio.AbstractEventLoop | None = None,
        *,
        hooks: Any = None,
        state: dict[str, Any] | None = None,
    ) -> None:
        self.app = app
        self.options = options or AsgiOptions()
        self.app_name = self.options.app_name or app_name(app)
        # How long a kept-alive connection waits for its next request (read once per request).
        self.idle_timeout = self.options.keepalive or self.options.header_timeout
        self.loop = loop or asyncio.get_event_loop()
        # Every request's task starts in a fresh copy of this context (the one the server was
        # made in), never in the context of the request before it on the connection (whose
        # task's end starts the next): a contextvar one request sets stays in that request.
        self.context = contextvars.copy_context()
        self.hooks = hooks
        self.hook_started = getattr(hooks, "request_started", None)
        self.hook_finished = getattr(hooks, "request_finished", None)
        # Whether request_finished reads the duration it is given (prefork_lb.asgi.accounting
        # says False without an access log): else the cycle skips two clock reads per request.
        self.hook_timed = self.hook_finished is not None and getattr(hooks, "timed", True)
        # The worker's load counters (prefork_lb.asgi.accounting): each optional.
        self.hook_opened = getattr(hooks, "connection_opened", None)
        self.hook_closed = getattr(hooks, "connection_closed", None)
        self.hook_received = getattr(hooks, "received", None)
        self.hook_queued = getattr(hooks, "request_queued", None)
        self.hook_shed = getattr(hooks, "shed", None)
        self.state = state if state is not None else {}
        self.connections: set[HttpConnection] = set()
        self.websockets: set[Any] = set()  # prefork_lb.asgi.websocket protocols, until finished
        self.in_flight = 0
        self.served = 0
        self.draining = False
        self.request_memo = RequestMemo()
        self.websocket = _websocket_upgrade()
        self.now = time.monotonic()
        self._date_line = refresh_date()
        self.date = self._date_line.encode("latin-1")
        # Serialised response heads by AsgiHead, for the current Date (prefork_lb.asgi.cycle).
        self.heads: dict[Any, tuple[Any, ...]] = {}
        self.admission_limit = self.options.max_concurrency
        self.admitted = 0
        self.waiters: deque[asyncio.Future[None]] = deque()
        self.refused = 0  # requests answered 503 by admission
        self.listeners: list[socket.socket] = []
        # Whether a drain accepts what is queued on the listeners: under our master a removed
        # reuseport slot's queue dies with its listener; gunicorn's arbiter keeps its listeners
        # for the next worker (prefork_lb.gunicorn turns this off). Handoff channels: always.
        self.drain_takes_listener_queue = True
        self.channels: list[socket.socket] = []
        self._accepting = False  # the listeners' readers are installed
        self._stopped = False
        self._pending = 0  # accepted connections whose transport is being made
        self._ticker: asyncio.TimerHandle | None = None
        self._empty: asyncio.Future[None] | None = None
        # The requests the last drain cut at its timeout, as cut_request names them.
        self.cut_requests: list[str] = []

    # -- time ---------------------------------------------------------------------------------

    def _ensure_ticker(self) -> None:
        if self._ticker is None:
            self._ticker = self.loop.call_later(TICK, self._tick)

    def _tick(self) -> None:
        self.now = now = time.monotonic()
        line = refresh_date()
        if line is not self._date_line:  # (the same str until the second changes)
            self._date_line = line
            self.date = line.encode("latin-1")
            self.heads.clear()
        for conn in list(self.connections):
            if conn.wait_until and now >= conn.wait_until:
                conn.timed_out()
            cycle = conn.cycle
            if cycle is not None and cycle.deadline and now >= cycle.deadline:
                cycle.cancel_late()
        self._ticker = self.loop.call_later(TICK, self._tick)

    def close(self) -> None:
        """Stop the ticker (the loop is about to end)."""
        if self._ticker is not None:
            self._ticker.cancel()
            self._ticker = None

    # -- connections in -----------------------------------------------------------------------

    def add_listener(self, sock: socket.socket) -> None:
        """Start accepting on ``sock`` (a listening socket)."""
        sock.setblocking(False)
        self.listeners.append(sock)
        self._ensure_ticker()
        if self._stopped:
            return
        if self._room():
            self.loop.add_reader(sock.fileno(), self._accept, sock)
            self._accepting = True

    def _room(self) -> bool:
        open_now = len(self.connections) + len(self.websockets) + self._pending
        return open_now < self.options.worker_connections

    def _pause_accepting(self) -> None:
        if self._accepting:
            self._accepting = False
            for sock in self.listeners:
                self.loop.remove_reader(sock.fileno())

    def _resume_accepting(self) -> None:
        if not self._accepting and not self._stopped and self.listeners:
            self._accepting = True
            for sock in self.listeners:
                self.loop.add_reader(sock.fileno(), self._accept, sock)

    def _accept(self, lsock: socket.socket) -> None:
        is_tcp = lsock.family in (socket.AF_INET, socket.AF_INET6)
        for _ in range(ACCEPT_BATCH):
            if not self._room():
                self._pause_accepting()
                return
            try:
                csock, _addr = lsock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    log.error("accept: %s; pausing accepts for 0.5 s", exc)
                    self._pause_accepting()
                    self.loop.call_later(0.5, self._resume_accepting)
                return
            self._take_accepted(csock, is_tcp)

    def _take_accepted(self, csock: socket.socket, is_tcp: bool) -> None:
        if is_tcp:
            try:
                csock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
        self.add_connection(csock, time.monotonic())

    def add_connection(self, sock: socket.socket, accepted_at: float = 0.0, handed: bool = False) -> None:
        """Serve an already-accepted connection; ``accepted_at``: when (CLOCK_MONOTONIC; 0: now);
        ``handed``: it came over a handoff channel (the received hook hears of it once it counts
        as open, or once it failed to)."""
        self._ensure_ticker()
        sock.setblocking(False)
        at = accepted_at or time.monotonic()
        self._pending += 1
        task = self.loop.create_task(
            self.loop.connect_accepted_socket(lambda: HttpConnection(self, at, handed), sock)
        )
        task.add_done_callback(lambda t: self._made(t, sock, handed))

    def _made(self, task: asyncio.Task[Any], sock: socket.socket, handed: bool = False) -> None:
        self._pending -= 1
        if task.cancelled() or task.exception() is not None:
            if handed and self.hook_received is not None:
                self.hook_received(1)  # (never opened: it is no load any more)
            exc = None if task.cancelled() else task.exception()
            if exc is not None and not isinstance(exc, OSError):
                log.error("connection setup failed: %s", exc)
            try:
                sock.close()
            except OSError:
                pass
            self._check_empty()

    def add_handoff_channel(self, sock: socket.socket) -> None:
        """Take connections a dispatcher passes over this channel (SCM_RIGHTS, as
        prefork_lb.worker.server.recv_handoff reads them)."""
        sock.setblocking(False)
        self.channels.append(sock)
        self._ensure_ticker()
        if not self._stopped:
            self.loop.add_reader(sock.fileno(), self._receive, sock)

    def _receive(self, ch: socket.socket) -> None:
        try:
            msg, fds, _, _ = socket.recv_fds(ch, handoff_data_size(HANDOFF_BATCH), HANDOFF_BATCH)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            log.error("handoff channel: %s", exc)
            self._drop_channel(ch)
            return
        if not msg and not fds:
            self._drop_channel(ch)  # the channel was closed
            return
        for fd, t in zip(fds, accept_times(msg, len(fds)), strict=True):
            self.add_connection(socket.socket(fileno=fd), t, handed=True)

    def _drop_channel(self, ch: socket.socket) -> None:
        if ch in self.channels:
            self.channels.remove(ch)
            self.loop.remove_reader(ch.fileno())

    def connection_closed(self, conn: Any) -> None:
        self.connections.discard(conn)
        self._gone(conn)

    def _gone(self, conn: Any) -> None:
        """A connection (HTTP or websocket) left: count it, make room, maybe end a drain."""
        if self.hook_closed is not None:
            self.hook_closed(conn)
        if not self._accepting and self._room():
            self._resume_accepting()
        self._check_empty()

    def upgraded(self, conn: Any, proto: Any) -> None:
        """``conn`` became the websocket ``proto`` (before its connection_made): it is tracked
        until it finished, and keeps what the hooks noted of the connection."""
        self.connections.discard(conn)
        self.websockets.add(proto)
        proto.accepted_at = conn.accepted_at
        proto.lb_fresh = conn.lb_fresh  # (prefork_lb.asgi.accounting's mark of a fresh connection)
        proto.on_finished = self._websocket_finished

    def _websocket_finished(self, proto: Any) -> None:
        if proto in self.websockets:
            self.websockets.discard(proto)
            self._gone(proto)

    def _busy(self) -> bool:
        return bool(self.connections or self.websockets or self._pending)

    def _check_empty(self) -> None:
        empty = self._empty
        if empty is not None and not self._busy() and not empty.done():
            empty.set_result(None)

    # -- admission ----------------------------------------------------------------------------

    async def admit(self, conn: Any = None) -> int:
        """A place in the app for a request of ``conn``: ADMITTED, QUEUED (it got one after
        waiting in the queue) or REFUSED (no room in the queue either: 503).

        The hooks hear of the queue: ``request_queued(conn, 1)`` when the request starts to
        wait, ``request_queued(conn, -1)`` if it stops waiting without a place; one that got its
        place is counted out of the queue by the request_started hook that follows (after it
        counts as in flight: the worker's load never misses it in between). ``shed()`` for a
        refusal."""
        if self.admitted < self.admission_limit:
            self.admitted += 1
            return ADMITTED
        if len(self.waiters) >= self.options.queue_size:
            self.refused += 1
            if self.hook_shed is not None:
                self.hook_shed()
            return REFUSED
        fut = self.loop.create_future()
        self.waiters.append(fut)
        queued = self.hook_queued
        if queued is not None:
            queued(conn, 1)
        try:
            await fut
        except asyncio.CancelledError:
            if queued is not None:
                queued(conn, -1)
            if fut.done() and not fut.cancelled():
                self.release()  # the place came with the cancellation: pass it on
            else:
                try:
                    self.waiters.remove(fut)
                except ValueError:
                    pass
            raise
        return QUEUED

    def release(self) -> None:
        """A request left the app: its place goes to the first one waiting."""
        waiters = self.waiters
        while waiters:
            fut = waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                return
        self.admitted -= 1

    # -- stopping -----------------------------------------------------------------------------

    def stop_accepting(self) -> None:
        """Accept nothing more, from listeners or handoff channels."""
        self._stopped = True
        self._pause_accepting()
        for ch in list(self.channels):
            self.loop.remove_reader(ch.fileno())

    async def _take_queued(self) -> None:
        """Serve what is already queued for this worker, on its listeners and its handoff
        channels, in this drain (Connection: close): a slot being removed (TTOU, a smaller
        autoscale) has no successor to take it, and leaving it would fail those clients."""
        if not (self.channels or (self.listeners and self.drain_takes_listener_queue)):
            return
        await asyncio.sleep(0.05)  # handshakes and handoffs in flight arrive
        for lsock in self.listeners if self.drain_takes_listener_queue else ():
            is_tcp = lsock.family in (socket.AF_INET, socket.AF_INET6)
            for _ in range(100_000):
                try:
                    csock, _addr = lsock.accept()
                except OSError:
                    break
                self._take_accepted(csock, is_tcp)
        for ch in list(self.channels):
            for _ in range(10_000):
                try:
                    msg, fds, _, _ = socket.recv_fds(ch, handoff_data_size(HANDOFF_BATCH), HANDOFF_BATCH)
                except OSError:
                    break
                if not fds:
                    break
                for fd, t in zip(fds, accept_times(msg, len(fds)), strict=True):
                    self.add_connection(socket.socket(fileno=fd), t, handed=True)

    async def drain(self, timeout: float) -> bool:
        """Stop accepting; busy connections finish their request (its response says
        Connection: close); idle kept-alive ones are closed; websockets are closed 1001 and
        their apps awaited. True: all finished in time."""
        deadline = time.monotonic() + timeout
        self.draining = True
        grace = min(self.options.idle_grace, timeout)
        if grace > 0:
            await asyncio.sleep(grace)
        self.stop_accepting()
        await self._take_queued()
        for conn in list(self.connections):
            if conn.idle:
                conn.close()
        for proto in list(self.websockets):
            proto.close(1001, "server shutting down")
        if self._busy():
            self._empty = self.loop.create_future()
            try:
                await asyncio.wait_for(asyncio.shield(self._empty), max(0.0, deadline - time.monotonic()))
            except asyncio.TimeoutError:
                pass
            finally:
                self._empty = None
        done = not self._busy()
        if not done:
            for conn in list(self.connections):
                cycle = conn.cycle
                if cycle is not None and cycle.task is not None:
                    self.cut_requests.append(cut_request(cycle))
                    cycle.task.cancel()
                if conn.transport is not None:
                    conn.transport.abort()
            for proto in list(self.websockets):
                proto.abort()
        self.close()
        return done
