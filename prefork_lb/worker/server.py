"""The worker's HTTP/1.1 server: accepts connections (or takes them from a handoff channel) and
serves each in its own greenlet, keeps the deadlines, and drains gracefully.

The connection itself (read loop, pipelining, sending) is prefork_lb.worker.connection; the WSGI
response writer is prefork_lb.worker.response; the options, and what a connection may use of its
server, are prefork_lb.worker.options (a leaf: the connection does not import this module).

Invariants:

* Timeouts are deadlines checked by one watchdog greenlet four times a second, not a timer per
  read: the keep-alive idle timeout while waiting for a request's first byte, the header
  timeout from that byte until the head is complete (408), and the same for each body read.
  A deadline is only ever thrown into a connection that is waiting to read, never into the app.
* A full worker (``worker_connections`` greenlets) stops accepting: connections wait in the
  kernel's backlog, or in the handoff channel, not in our memory.
* Graceful drain: stop accepting, close idle keep-alive connections at once, let in-flight
  requests finish (their responses carry Connection: close) until the deadline.
* Admission control (--max-concurrency): the loop accepts no more new connections than it has
  room for while those accepted a moment ago have not sent their request yet (``_gate``), so
  a view that blocks the loop leaves the rest queued on the listener, where the guard thread
  (prefork_lb.worker.guard) refuses them past the limits; connections it parks are served when
  the loop runs again (``_tick``).
"""

from __future__ import annotations

import errno
import logging
import socket
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import gevent
import gevent.event
import gevent.lock
import gevent.pool
import gevent.socket

from prefork_lb.admission import room
from prefork_lb.http.parser import Request, RequestMemo
from prefork_lb.http.response import refresh_date
from prefork_lb.request_id import RequestIds, environ_name
from prefork_lb.sockets import accept_times, handoff_data_size
from prefork_lb.worker.connection import Connection, ReadDeadline
from prefork_lb.worker.options import ServerOptions, WSGIApp

# ServerOptions and WSGIApp live in options.py (a leaf) and are imported from here as ever.
__all__ = ["Server", "ServerOptions", "WSGIApp"]

log = logging.getLogger("prefork_lb.error")

TICK = 0.05  # with admission control: how often the loop shows the guard thread it runs
GATE_AGE = 0.05  # a new connection's request arrives this soon after the accept, or it is slow
GATE_POLL = 0.001


HANDOFF_BATCH = 64  # descriptors per handoff message


def recv_handoff(channel: socket.socket) -> tuple[bytes, list[int]]:
    """One message of connections a dispatcher passed (SCM_RIGHTS): (data, descriptors).
    Both empty: the channel was closed."""
    msg, fds, _, _ = socket.recv_fds(channel, handoff_data_size(HANDOFF_BATCH), HANDOFF_BATCH)
    return msg, fds


class Server:
    """Serves one WSGI app on listening sockets and/or connections handed to it."""

    def __init__(
        self,
        app: WSGIApp,
        options: ServerOptions | None = None,
        access_log: Any = None,
        board: Any = None,
        shared_accept: bool = False,
    ) -> None:
        self.app = app
        self.options = options or ServerOptions()
        self.access_log = access_log
        self.board = board  # the worker's scoreboard entry (request_started/finished), or None
        # Called with (environ, request) before the app, or None (the gunicorn worker class
        # uses it for pre_request and forwarded_allow_ips).
        self.before_request: Callable[[dict[str, Any], Request], None] | None = None
        # A listener shared with other processes: yield after each accept, so a burst is
        # spread over the workers instead of drained by whichever woke first.
        self.shared_accept = shared_accept
        self.pool = gevent.pool.Pool(self.options.worker_connections)
        self.connections: set[Connection] = set()
        self.listeners: list[gevent.socket.socket] = []
        self.channels: list[gevent.socket.socket] = []  # handoff channels
        self._accepters: list[gevent.Greenlet] = []
        self.draining = False
        self.now = time.monotonic()
        self._watchdog: gevent.Greenlet | None = None
        self._stopped = gevent.event.Event()
        self.requests_served = 0
        self.cut = 0  # connections the last drain closed at its deadline, still busy
        # Bodiless request heads seen before, shared by this worker's connections (their
        # parsers have the same limits); each keeps the environ entries it gives.
        self.request_memo = RequestMemo()
        opts = self.options
        # Admission control: at most max_concurrency requests in the app, queue_size waiting.
        self.admission = gevent.lock.BoundedSemaphore(opts.max_concurrency) if opts.max_concurrency else None
        self.waiting = 0
        # With admission control: connections accepted a moment ago with no request yet (time,
        # connection), those the guard thread accepted for the loop, and the loop's last tick.
        self.young: list[tuple[float, Connection]] = []
        self.parked: deque[tuple[Any, Any, float]] = deque()
        self.tick = time.monotonic()
        self.guard: Any = None
        self._ticker: gevent.Greenlet | None = None
        header = opts.request_id_header
        self.rid_key = environ_name(header) if header else None
        self.rid_generate: Callable[[], str] | None = (
            RequestIds().new if header and opts.request_id_generate else None
        )
        self.rid_prefix = header + ": " if header and opts.request_id_echo else ""

    # -- admission control --------------------------------------------------------------------

    def held(self) -> int:
        """Requests in the app and waiting, and connections parked by the guard thread."""
        admission = self.admission
        if admission is None:
            return 0
        in_app = self.options.max_concurrency - int(admission.counter)
        return in_app + self.waiting + len(self.parked)

    def room_while_blocked(self) -> int:
        """The guard thread's question, asked while the loop is blocked: how many more may
        wait for the loop? New connections that have not sent their request yet count as
        requests (they were accepted just before the loop blocked)."""
        opts = self.options
        since = self.tick - TICK - GATE_AGE
        unread = sum(1 for t, c in list(self.young) if t >= since and not c.had_request)
        return room(opts.max_concurrency, opts.queue_size, self.held() + unread)

    def _gate(self) -> None:
        """Before an accept: while there is room for fewer requests than connections accepted
        in the last GATE_AGE that have not sent theirs, give them that long to do so. A full
        worker accepts at once (what comes is refused), and so does one with room left."""
        opts = self.options
        for _ in range(int(GATE_AGE / GATE_POLL) + 1):
            left = room(opts.max_concurrency, opts.queue_size, self.held())
            if left <= 0:
                return
            now = time.monotonic()
            young = self.young = [(t, c) for t, c in self.young if not c.had_request and now - t < GATE_AGE]
            if len(young) < left:
                return
            gevent.sleep(GATE_POLL)

    def _tick(self) -> None:
        """Show the guard thread that the loop runs; serve what it parked while it did not."""
        while True:
            self.tick = time.monotonic()
            self._take_parked()
            gevent.sleep(TICK)

    def _take_parked(self) -> None:
        parked = self.parked
        while parked:
            sock, addr, accepted = parked.popleft()
            gs = _cooperative(socket.socket(sock.family, sock.type, sock.proto, fileno=sock.detach()))
            if gs.family in (socket.AF_INET, socket.AF_INET6):
                gs.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.pool.spawn(self._handle, gs, addr, False, accepted)

    # -- sockets in ----------------------------------------------------------------------------

    def add_listener(self, sock: socket.socket) -> None:
        """Take a listening socket (ownership passes to the server) and accept on it."""
        gs = _cooperative(sock)
        self.listeners.append(gs)
        self._accepters.append(gevent.spawn(self._accept_loop, gs))
        self._ensure_watchdog()
        if self.admission is not None:
            if self.guard is None:
                from prefork_lb.worker.guard import AdmissionGuard

                self.guard = AdmissionGuard(self, shared=self.shared_accept)
                self._ticker = gevent.spawn(self._tick)
            self.guard.add(gs.fileno())

    def add_handoff_channel(self, sock: socket.socket) -> None:
        """Take connections a dispatcher passes over this channel (SCM_RIGHTS)."""
        gs = _cooperative(sock)
        self.channels.append(gs)
        self._accepters.append(gevent.spawn(self._receive_loop, gs))
        self._ensure_watchdog()

    def _receive_loop(self, ch: gevent.socket.socket) -> None:
        while not self.draining:
            self.pool.wait_available()
            try:
                msg, fds = recv_handoff(ch)
            except OSError as exc:
                if self.draining:
                    return
                log.error("handoff channel: %s", exc)
                gevent.sleep(0.1)
                continue
            if not msg and not fds:
                return  # the channel was closed
            self._take(fds, accept_times(msg, len(fds)))

    def _take(self, fds: list[int], accepted: list[float]) -> None:
        board = self.board
        for fd, t in zip(fds, accepted, strict=True):
            if board is not None:
                # Counted as open (load) before it counts as received: the dispatcher's load
                # (in flight + fresh + sent - received) never misses it in between.
                board.connection_opened()
            self.serve_connection(socket.socket(fileno=fd), opened=True, accepted=t)
        if board is not None:
            board.received(len(fds))

    def serve_connection(
        self, sock: socket.socket, addr: Any = None, opened: bool = False, accepted: float = 0.0
    ) -> gevent.Greenlet:
        """Serve an already-accepted connection (handoff dispatch); ``opened``: already
        counted in the scoreboard entry; ``accepted``: when (CLOCK_MONOTONIC; 0: now)."""
        self._ensure_watchdog()
        gs = _cooperative(sock)
        if addr is None:
            try:
                addr = gs.getpeername()
            except OSError:
                addr = ""
        return self.pool.spawn(self._handle, gs, addr, opened, accepted or time.monotonic())

    def _accept_loop(self, lsock: gevent.socket.socket) -> None:
        pool = self.pool
        is_tcp = lsock.family in (socket.AF_INET, socket.AF_INET6)
        gated = self.admission is not None
        while not self.draining:
            pool.wait_available()  # a full worker leaves connections in the backlog
            if gated:
                self._gate()
            try:
                csock, addr = lsock.accept()
            except OSError as exc:
                if self.draining or exc.errno in (errno.EBADF, errno.EINVAL):
                    return
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    log.error("accept: %s; pausing accepts for 0.5 s", exc)
                    gevent.sleep(0.5)
                continue
            if is_tcp:
                csock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            pool.spawn(self._handle, csock, addr, False, time.monotonic())
            if self.shared_accept or gated:
                # Shared: spread a burst over the workers. Gated: let it read its request
                # (and be admitted, queued or refused) before the next accept.
                gevent.sleep(0)

    def _handle(
        self, sock: gevent.socket.socket, addr: Any, opened: bool = False, accepted: float = 0.0
    ) -> None:
        conn = Connection(self, sock, addr, accepted)
        self.connections.add(conn)
        if self.guard is not None:  # accepted from a listener (or parked): the gate's
            self.young.append((time.monotonic(), conn))
        board = self.board
        if board is not None and not opened:
            board.connection_opened()
        try:
            conn.serve()
        finally:
            self.connections.discard(conn)
            if board is not None:
                board.connection_closed(not conn.counted_fresh)
            try:
                sock.close()
            except OSError:
                pass

    # -- timeouts -----------------------------------------------------------------------------

    def _ensure_watchdog(self) -> None:
        if self._watchdog is None:
            self._watchdog = gevent.spawn(self._watch)

    def _watch(self) -> None:
        while True:
            gevent.sleep(0.25)
            self.now = now = time.monotonic()
            refresh_date()
            for conn in list(self.connections):
                if conn.wait_until and now >= conn.wait_until:
                    self._interrupt(conn, idle_only=False)

    def _interrupt(self, conn: Connection, idle_only: bool, silent_too: bool = False) -> None:
        """Raise ReadDeadline in a connection that waits to read, from the hub's loop.

        The check is repeated inside the callback: by then the connection may have received
        its bytes and moved on into the app, where the exception must never land. Throwing
        from the hub (as gevent.kill does) keeps the calling greenlet scheduled.
        """

        def fire() -> None:
            g = conn.greenlet
            if g is None or g.dead:
                return
            if idle_only:
                # Idle keep-alive; with silent_too also a new connection that has sent nothing.
                waiting = conn.idle or (silent_too and not conn.had_request)
                if not waiting or conn.partial or not conn.wait_until:
                    return
            elif not conn.wait_until or self.now < conn.wait_until:
                return
            conn.wait_until = 0.0
            g.throw(ReadDeadline())

        gevent.get_hub().loop.run_callback(fire)

    # -- lifecycle ----------------------------------------------------------------------------

    def serve_forever(self) -> None:
        self._stopped.wait()

    def stop_accepting(self) -> None:
        """Stop taking connections. What is already queued on our listeners is accepted and
        served first: a listener whose last descriptor closes resets its queue, and for a
        reuseport slot being removed we may hold that last descriptor."""
        if self.draining:
            return
        self.draining = True
        if self.guard is not None:
            self.guard.stop()
            self._take_parked()  # served by this drain like the connections queued below
        for g in self._accepters:
            g.kill(block=False)
        if self.listeners or self.channels:
            gevent.sleep(0.05)  # handshakes (and handoffs) in flight arrive
        for ls in self.listeners:
            ls.settimeout(0.0)
            for _ in range(100_000):
                try:
                    csock, addr = ls.accept()
                except OSError:
                    break
                csock.settimeout(None)
                if ls.family in (socket.AF_INET, socket.AF_INET6):
                    csock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                self.pool.spawn(self._handle, csock, addr, False, time.monotonic())
            try:
                ls.close()
            except OSError:
                pass
        for ch in self.channels:
            # Connections already passed to this worker's slot: serve them rather than leave
            # them to a replacement that may never come (a slot being removed).
            ch.settimeout(0.0)
            for _ in range(10_000):
                try:
                    msg, fds = recv_handoff(ch)
                except OSError:
                    break
                if not fds:
                    break
                self._take(fds, accept_times(msg, len(fds)))

    def drain(self, timeout: float) -> bool:
        """Graceful stop: True when every connection finished within the timeout."""
        if self.options.idle_grace and timeout:
            gevent.sleep(min(self.options.idle_grace, timeout))
        self.stop_accepting()
        deadline = time.monotonic() + timeout
        # The pool, not self.connections: a connection accepted a moment ago may not have
        # started running yet, and killing it unstarted would reset a client we accepted.
        silent_grace = time.monotonic() + 1.0
        while len(self.pool):
            # A new connection gets a second to send its request; one that sends nothing
            # (a port probe, a client gone quiet) must not hold the drain for header_timeout.
            silent_too = time.monotonic() >= silent_grace
            for conn in list(self.connections):
                if conn.idle or silent_too:
                    self._interrupt(conn, idle_only=True, silent_too=silent_too)
            if time.monotonic() >= deadline:
                break
            gevent.sleep(0.05)
        # Counted before the kill: a killed connection leaves self.connections, so counting
        # afterwards said "0 still busy" of connections that had just been cut.
        self.cut = len(self.pool)
        clean = not self.cut
        self.pool.kill(block=True, timeout=1)
        if self._watchdog is not None:
            self._watchdog.kill(block=False)
        if self._ticker is not None:
            self._ticker.kill(block=False)
        self._stopped.set()
        return clean


def _cooperative(sock: socket.socket) -> gevent.socket.socket:
    """A gevent socket owning ``sock``'s descriptor, in cooperative blocking mode (timeout None:
    a timeout of 0 would make accept and recv fail at once instead of waiting)."""
    gs = (
        sock
        if isinstance(sock, gevent.socket.socket)
        else gevent.socket.socket(sock.family, sock.type, sock.proto, fileno=sock.detach())
    )
    gs.settimeout(None)
    return gs
