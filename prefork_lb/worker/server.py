"""The worker's HTTP/1.1 server: a greenlet per connection, WSGI on each request.

Invariants:

* The server reads from a socket only when it needs bytes: a request head, or body bytes the
  app asked for. So a pipelining or uploading client is held back by TCP, not by our memory.
* Responses go out in request order; the next pipelined request is not touched before the
  current response is complete.
* Timeouts are deadlines checked by one watchdog greenlet four times a second, not a timer per
  read: the keep-alive idle timeout while waiting for a request's first byte, the header
  timeout from that byte until the head is complete (408), and the same for each body read.
* A connection closes after any error it cannot recover from cleanly: a malformed request
  (4xx, the app never called), an app exception (500 if nothing was sent yet), a body the
  app did not read that is too big to skip, a response with fewer bytes than announced.
* Graceful drain: stop accepting, close idle keep-alive connections at once, let in-flight
  requests finish (their responses carry Connection: close) until the deadline.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import stat
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote_to_bytes

import gevent
import gevent.event
import gevent.lock
import gevent.pool
import gevent.socket

from prefork_lb.http import response as _resp
from prefork_lb.http.errors import HTTPError, RequestTimeout, ServiceUnavailable
from prefork_lb.http.parser import Limits, Request, RequestMemo, RequestParser
from prefork_lb.http.response import CONTINUE, SERVER_LINE, app_head, refresh_date, simple_response
from prefork_lb.worker.wsgi import (
    EMPTY_INPUT,
    ENV_KEYS,
    BodySource,
    ClientDisconnected,
    FileWrapper,
    Input,
    base_environ,
    environ_key,
)

log = logging.getLogger("prefork_lb.error")

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]

RECV_SIZE = 65536
HANDOFF_BATCH = 64  # descriptors per handoff message
# Unread request body we are willing to read and throw away to keep a connection alive.
MAX_DRAIN = 1 << 20


@dataclass
class ServerOptions:
    limits: Limits = field(default_factory=Limits)
    keepalive: float = 5.0
    header_timeout: float = 10.0
    root_path: str = ""
    worker_connections: int = 1000
    server_header: bool = True
    url_scheme: str = "http"
    extra_environ: dict[str, Any] = field(default_factory=dict)  # added to every request's environ
    max_concurrency: int = 0  # 0: unlimited
    queue_size: int = 100
    request_timeout: float = 0.0  # 0: none
    # Seconds a drain first goes on serving as usual, accepting included. Behind our own proxy
    # (--dispatch proxy) requests keep coming until the proxy reads on the scoreboard that we
    # drain (every 0.1 s): they must find a worker, not a closed connection or a dead backlog.
    idle_grace: float = 0.0

    @classmethod
    def from_config(cls, cfg: Any) -> ServerOptions:
        return cls(
            limits=Limits(
                cfg.limit_request_line,
                cfg.limit_request_fields,
                cfg.limit_request_field_size,
                cfg.limit_request_body,
                cfg.require_host,
            ),
            keepalive=cfg.keepalive,
            header_timeout=cfg.header_timeout,
            root_path=cfg.root_path.rstrip("/"),
            worker_connections=cfg.worker_connections,
            server_header=cfg.server_header,
            max_concurrency=cfg.max_concurrency,
            queue_size=cfg.queue_size,
            request_timeout=cfg.request_timeout,
            idle_grace=1.0 if getattr(cfg, "dispatch", "") == "proxy" else 0.0,
        )


class _RequestDeadline(BaseException):
    """Raised in a request's greenlet past --request-timeout (BaseException: an app's
    ``except Exception`` must not swallow it)."""


class _Deadline(Exception):
    """Thrown into a connection greenlet by the watchdog (or by drain) while it waits to read."""


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
        # Bodiless request heads seen before, shared by this worker's connections (their
        # parsers have the same limits); each keeps the environ entries it gives.
        self.request_memo = RequestMemo()
        opts = self.options
        # Admission control: at most max_concurrency requests in the app, queue_size waiting.
        self.admission = gevent.lock.BoundedSemaphore(opts.max_concurrency) if opts.max_concurrency else None
        self.waiting = 0

    # -- sockets in ----------------------------------------------------------------------------

    def add_listener(self, sock: socket.socket) -> None:
        """Take a listening socket (ownership passes to the server) and accept on it."""
        gs = _cooperative(sock)
        self.listeners.append(gs)
        self._accepters.append(gevent.spawn(self._accept_loop, gs))
        self._ensure_watchdog()

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
                msg, fds, _, _ = socket.recv_fds(ch, 64, HANDOFF_BATCH)
            except OSError as exc:
                if self.draining:
                    return
                log.error("handoff channel: %s", exc)
                gevent.sleep(0.1)
                continue
            if not msg and not fds:
                return  # the channel was closed
            self._take(fds)

    def _take(self, fds: list[int]) -> None:
        if self.board is not None:
            self.board.received(len(fds))
        for fd in fds:
            self.serve_connection(socket.socket(fileno=fd))

    def serve_connection(self, sock: socket.socket, addr: Any = None) -> gevent.Greenlet:
        """Serve an already-accepted connection (handoff dispatch)."""
        self._ensure_watchdog()
        gs = _cooperative(sock)
        if addr is None:
            try:
                addr = gs.getpeername()
            except OSError:
                addr = ""
        return self.pool.spawn(self._handle, gs, addr)

    def _accept_loop(self, lsock: gevent.socket.socket) -> None:
        pool = self.pool
        is_tcp = lsock.family in (socket.AF_INET, socket.AF_INET6)
        while not self.draining:
            pool.wait_available()  # a full worker leaves connections in the backlog
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
            pool.spawn(self._handle, csock, addr)
            if self.shared_accept:
                gevent.sleep(0)

    def _handle(self, sock: gevent.socket.socket, addr: Any) -> None:
        conn = Connection(self, sock, addr)
        self.connections.add(conn)
        board = self.board
        if board is not None:
            board.connection_opened()
        try:
            conn.serve()
        finally:
            self.connections.discard(conn)
            if board is not None:
                board.connection_closed(conn.had_request)
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
        """Raise _Deadline in a connection that waits to read, from the hub's loop.

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
            g.throw(_Deadline())

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
                self.pool.spawn(self._handle, csock, addr)
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
                    _, fds, _, _ = socket.recv_fds(ch, 64, HANDOFF_BATCH)
                except OSError:
                    break
                if not fds:
                    break
                self._take(fds)

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
        clean = not len(self.pool)
        self.pool.kill(block=True, timeout=1)
        if self._watchdog is not None:
            self._watchdog.kill(block=False)
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


CORK_MAX = 16  # responses held at most for one write (_reply)
ENVIRON = "environ"  # the key of a memoised request's environ entries in Request.memo


def _decode_path(path: bytes) -> str:
    if b"%" in path:
        path = unquote_to_bytes(path)
    return path.decode("latin-1")


class Connection(BodySource):
    __slots__ = (
        "server",
        "sock",
        "app",
        "parser",
        "base_env",
        "greenlet",
        "wait_until",
        "idle",
        "status",
        "out_headers",
        "headers_sent",
        "chunked",
        "close_after",
        "bytes_sent",
        "req",
        "is_head",
        "resp_length",
        "continue_sent",
        "partial",
        "raw",
        "read_event",
        "hub",
        "had_request",
        "cork",
    )

    def __init__(self, server: Server, sock: gevent.socket.socket, addr: Any) -> None:
        self.server = server
        self.sock = sock
        self.app = server.app
        opts = server.options
        self.parser = RequestParser(opts.limits, server.request_memo)
        self.greenlet = gevent.getcurrent()
        self.wait_until = 0.0
        self.idle = False  # True only between requests on a kept-alive connection
        self.had_request = False
        self.partial = False
        self.cork: list[bytes] = []  # whole responses held to go out with the next one (_reply)
        # The per-request path calls the underlying socket directly and waits on gevent's own
        # read watcher: one syscall fewer per request than gevent's recv (which tries first),
        # and no Python-level wrappers around send.
        self.raw = getattr(sock, "_sock", None)
        self.read_event = getattr(sock, "_read_event", None)
        self.hub = sock.hub
        if self.raw is None or self.read_event is None:  # an unfamiliar gevent: stay generic
            self.raw = None
        if isinstance(addr, tuple):
            remote_addr, remote_port = str(addr[0]), str(addr[1])
        else:
            remote_addr, remote_port = "", ""
        try:
            local = sock.getsockname()
        except OSError:
            local = ""
        if isinstance(local, tuple):
            server_name, server_port = str(local[0]), str(local[1])
        else:
            server_name, server_port = str(local or "localhost"), ""
        self.base_env = base_environ(
            server_name, server_port, remote_addr, remote_port, opts.root_path, opts.url_scheme, sys.stderr
        )
        if opts.extra_environ:
            self.base_env.update(opts.extra_environ)
        self._reset(None)

    def _reset(self, req: Request | None) -> None:
        self.req = req
        self.status: str | None = None
        self.out_headers: list[tuple[str, str]] | None = None
        self.headers_sent = False
        self.chunked = False
        self.close_after = False
        self.bytes_sent = 0
        self.is_head = False
        self.resp_length: int | None = None
        self.continue_sent = False

    # -- reading ------------------------------------------------------------------------------

    def serve(self) -> None:
        parser = self.parser
        requests = parser.requests
        opts = self.server.options
        fresh = True
        try:
            while True:
                if not requests:
                    # Wait for a complete head: the keep-alive timeout until the first byte
                    # (the header timeout on a new connection), then the header timeout for
                    # the whole head. Only a connection that has had a response counts as
                    # idle: a new one has a request on its way, which a drain must serve.
                    self.partial = False
                    if fresh:
                        self.wait_until = self.server.now + opts.header_timeout
                    else:
                        if self.server.draining:
                            return
                        self.idle = True
                        self.wait_until = self.server.now + (opts.keepalive or opts.header_timeout)
                    while not requests:
                        if parser.stopped:
                            if parser.error is not None:
                                raise parser.error
                            return
                        try:
                            data = self._recv()
                        except _Deadline:
                            if self.partial:
                                self._send_error(RequestTimeout())
                            return
                        if not data:
                            return
                        if not self.partial:
                            self.partial = True
                            self.idle = False
                            self.wait_until = self.server.now + opts.header_timeout
                        parser.feed(data)
                    self.wait_until = 0.0
                    self.idle = False
                req = requests[0]
                if fresh:
                    fresh = False
                    self.had_request = True
                    board = self.server.board
                    if board is not None:
                        board.first_request()
                if not self._handle_request(req):
                    return
                requests.popleft()
                if not req.keep_alive or not opts.keepalive:
                    return
        except HTTPError as exc:
            self.wait_until = 0.0
            self._send_error(exc)
        except (ClientDisconnected, ConnectionError, _Deadline):
            pass
        except OSError as exc:
            if exc.errno not in (errno.EPIPE, errno.ECONNRESET, errno.EBADF, errno.ENOTCONN):
                log.exception("connection error")
        finally:
            if self.cork:
                try:
                    self._send(b"")
                except OSError:
                    pass

    def _recv(self) -> bytes:
        """Wait until the socket is readable, then read. Waiting first saves the recv that
        would fail with EAGAIN: after a response, the next request is rarely there yet."""
        raw = self.raw
        if raw is None:
            return self.sock.recv(RECV_SIZE)
        if self.cork:
            self._send(b"")  # never wait for a request with responses held back
        while True:
            self.hub.wait(self.read_event)
            try:
                return raw.recv(RECV_SIZE)
            except BlockingIOError:
                continue

    def _reply(self, data: bytes) -> None:
        """Send a whole response. When the next pipelined request is already here, hold it to
        go in one write with the next one's (a proxy pipelining GETs gets them in one read);
        held bytes go out at the latest when this greenlet next waits (the hub runs _uncork)."""
        requests = self.parser.requests
        if self.raw is not None and len(requests) > 1 and requests[1].complete and len(self.cork) < CORK_MAX:
            if not self.cork:
                self.hub.loop.run_callback(self._uncork)
            self.cork.append(data)
            return
        self._send(data)

    def _uncork(self) -> None:
        """In the hub: this connection's greenlet waits (the app yielded); send what it holds
        without blocking. What the socket does not take now goes ahead of its next send."""
        cork = self.cork
        if not cork or self.raw is None:
            return
        data = b"".join(cork)
        cork.clear()
        try:
            n = self.raw.send(data)
        except BlockingIOError:
            n = 0
        except OSError:
            return  # the connection is gone: its greenlet finds out on its next call
        if n < len(data):
            cork.append(data[n:])

    def _send(self, data: bytes) -> None:
        cork = self.cork
        if cork:
            cork.append(data)
            data = b"".join(cork)
            cork.clear()
        raw = self.raw
        if raw is None:
            self.sock.sendall(data)
            return
        try:
            n = raw.send(data)
        except BlockingIOError:
            n = 0
        if n < len(data):
            self.sock.sendall(memoryview(data)[n:])

    def pull(self, req: Request) -> None:
        """Read more of ``req``'s body from the socket (wsgi.input asked for it)."""
        parser = self.parser
        if parser.stopped:  # the body will never complete
            if parser.error is not None:
                raise parser.error
            raise ClientDisconnected("the request body ended early")
        if req.expect_continue and not self.continue_sent and not self.headers_sent:
            self.continue_sent = True
            self._send(CONTINUE)
        self.wait_until = self.server.now + self.server.options.header_timeout
        try:
            data = self._recv()
        except _Deadline:
            raise ClientDisconnected("timed out reading the request body") from None
        finally:
            self.wait_until = 0.0
        if not data:
            raise ClientDisconnected("client closed the connection during the body")
        self.parser.feed(data)

    def _will_drain(self, req: Request) -> bool:
        """Will we read and discard the body the app left unread (True), or close (False)?"""
        if req.expect_continue and not self.continue_sent:
            return False  # the client may or may not send it: the stream is ambiguous
        if req.content_length is None:
            return False  # chunked, of unknown size
        return req.content_length - req.body_size <= MAX_DRAIN

    def _skip_body(self, req: Request) -> bool:
        """After the response: make sure the rest of the body is off the wire. False: close."""
        if req.complete:
            return True
        if req.expect_continue and not self.continue_sent:
            return False  # the client may or may not send it: the stream is ambiguous
        req.discard = True
        req.chunks.clear()
        limit = req.body_size + MAX_DRAIN
        try:
            while not req.complete:
                if req.body_size > limit:
                    return False
                self.pull(req)
        except (ClientDisconnected, OSError, HTTPError):
            return False
        return True

    # -- the request --------------------------------------------------------------------------

    def _environ(self, req: Request) -> dict[str, Any]:
        memo = req.memo
        if memo is not None:
            # A request the parser has seen before (no body): what it adds to the connection's
            # keys was worked out the first time.
            part = memo.get(ENVIRON)
            if part is not None:
                env = self.base_env.copy()
                env.update(part)
                return env
        env = self.base_env.copy()
        target = req.target
        raw_uri = target.decode("latin-1")
        if target[:1] != b"/" or b"?" in target or b"%" in target or b"#" in target:
            path, query = req.split_target()
            path_info = _decode_path(path)
            env["QUERY_STRING"] = query.decode("latin-1")
        else:
            path_info = raw_uri
            env["QUERY_STRING"] = ""
        script = env["SCRIPT_NAME"]
        if script and (path_info == script or path_info.startswith(script + "/")):
            path_info = path_info[len(script) :]
        env["REQUEST_METHOD"] = req.method
        env["PATH_INFO"] = path_info
        env["RAW_URI"] = raw_uri
        env["SERVER_PROTOCOL"] = req.version
        keys = ENV_KEYS
        for lname, _raw, value in req.headers:
            key = keys.get(lname)
            if key is None:
                key = environ_key(lname)
            if not key:
                continue  # a name with '_': dropped
            if key in env:
                env[key] += ("; " if key == "HTTP_COOKIE" else ",") + value.decode("latin-1")
            else:
                env[key] = value.decode("latin-1")
        env["wsgi.input"] = EMPTY_INPUT if req.complete and not req.chunks else Input(self, req)
        if memo is not None:
            base = self.base_env
            if all(env[k] is v for k, v in base.items()):  # no header merged into a connection key
                memo[ENVIRON] = {k: v for k, v in env.items() if k not in base}
        return env

    def start_response(
        self, status: str, headers: list[tuple[str, str]], exc_info: Any = None
    ) -> Callable[[bytes], None]:
        if exc_info:
            try:
                if self.headers_sent:
                    raise exc_info[1].with_traceback(exc_info[2])
            finally:
                exc_info = None
        elif self.status is not None:
            raise AssertionError("start_response called twice without exc_info")
        if type(headers) is not list:
            raise TypeError("headers must be a list")
        self.status = status
        self.out_headers = headers
        return self.write

    def _head(self, known_length: int | None) -> bytes:
        """Serialise the response head; decide the framing of the body."""
        status = self.status
        if status is None:
            raise AssertionError("the app returned without calling start_response")
        ah = app_head(status, self.out_headers or [])
        req = self.req
        assert req is not None
        code = ah.code
        bodiless_status = code < 200 or code == 204 or code == 304
        no_body = self.is_head or bodiless_status
        length = ah.length
        out = ah.prefix
        if length is None and known_length is not None and not bodiless_status:
            length = known_length
            out += f"Content-Length: {known_length}\r\n"
        self.resp_length = None if no_body else length
        if length is None and not no_body:
            if req.version == "HTTP/1.1":
                self.chunked = True
                out += "Transfer-Encoding: chunked\r\n"
            else:
                self.close_after = True
        if not ah.has_date:
            out += _resp.current_date_line or refresh_date()
        server = self.server
        if not ah.has_server and server.options.server_header:
            out += SERVER_LINE
        if ah.close or server.draining or not server.options.keepalive or not req.keep_alive:
            self.close_after = True
        elif not req.complete and not self._will_drain(req):
            self.close_after = True  # say so now: a client must not reuse this connection
        if self.close_after:
            out += "Connection: close\r\n\r\n"
        elif req.version == "HTTP/1.0":
            out += "Connection: keep-alive\r\n\r\n"
        else:
            out += "\r\n"
        self.headers_sent = True
        return out.encode("latin-1")

    def write(self, data: bytes) -> None:
        """The write() callable of start_response, and the path for iterated bodies."""
        if not self.headers_sent:
            head = self._head(None)
            if self.is_head:
                self._send(head)
                return
            if self.chunked:
                self._send(head + b"%x\r\n" % len(data) + data + b"\r\n" if data else head)
            else:
                self._send(head + self._clip(data))
            self.bytes_sent += len(data)
            return
        if not data or self.is_head:
            return
        if self.chunked:
            self._send(b"%x\r\n%b\r\n" % (len(data), data))
        else:
            self._send(self._clip(data))
        self.bytes_sent += len(data)

    def _clip(self, data: bytes) -> bytes:
        """Never send more than the announced Content-Length."""
        n = self.resp_length
        if n is not None and self.bytes_sent + len(data) > n:
            self.close_after = True
            return data[: max(0, n - self.bytes_sent)]
        return data

    def _finish(self) -> None:
        if not self.headers_sent:
            self._send(self._head(0))
        elif self.chunked:
            self._send(b"0\r\n\r\n")
        if self.resp_length is not None and self.bytes_sent < self.resp_length:
            self.close_after = True  # the app sent less than it announced: framing is broken

    def _sendfile(self, wrapper: FileWrapper) -> bool:
        """Serve a file_wrapper of a regular file with os.sendfile. False: not possible."""
        f = wrapper.filelike
        try:
            fd = f.fileno()
            st = os.fstat(fd)
        except (AttributeError, OSError, ValueError):
            return False
        if not stat.S_ISREG(st.st_mode) or self.chunked:
            return False
        try:
            offset = f.tell()
        except (AttributeError, OSError):
            offset = 0
        size = max(0, st.st_size - offset)
        head = self._head(size if not self.headers_sent else None)
        self._send(head)
        if self.is_head:
            return True
        count = size if self.resp_length is None else min(size, self.resp_length - self.bytes_sent)
        sock = self.sock
        out = sock.fileno()
        while count > 0:
            try:
                sent = os.sendfile(out, fd, offset, min(count, 1 << 20))
            except BlockingIOError:
                gevent.socket.wait_write(out)
                continue
            if sent == 0:
                break
            offset += sent
            count -= sent
            self.bytes_sent += sent
        return True

    def _handle_request(self, req: Request) -> bool:
        """Run the app for one request and send its response. False: close the connection."""
        self._reset(req)
        if req.method == "HEAD":
            self.is_head = True
        env = self._environ(req)
        server = self.server
        if server.before_request is not None:
            server.before_request(env, req)
        access = server.access_log
        t0 = time.time() if access is not None else 0.0
        admission = server.admission
        if admission is not None and not self._admit(admission):
            return False
        board = server.board
        if board is not None:
            board.request_started(req.method, req.target)
        result: Any = None
        deadline = None
        if server.options.request_timeout:
            deadline = gevent.Timeout(server.options.request_timeout, _RequestDeadline())
            deadline.start()
        try:
            result = self.app(env, self.start_response)
            rtype = type(result)
            if rtype is list or rtype is tuple:
                if len(result) == 1:
                    body = result[0]
                else:
                    body = b"".join(result)
                if self.headers_sent:
                    self.write(body)
                    self._finish()
                else:
                    head = self._head(len(body))
                    if self.is_head:
                        self._reply(head)
                    else:
                        self._reply(head + self._clip(body))
                        self.bytes_sent += len(body)
                    if self.resp_length is not None and self.bytes_sent < self.resp_length:
                        self.close_after = True
            elif rtype is FileWrapper and self._sendfile(result):
                self._finish_sendfile()
            else:
                for chunk in result:
                    if chunk:
                        self.write(chunk)
                self._finish()
        except HTTPError as exc:
            # The body the app was reading turned out malformed or too large.
            if not self.headers_sent:
                self._send_error(exc)
            return False
        except (ClientDisconnected, ConnectionError, _Deadline):
            return False
        except _RequestDeadline:
            log.error("Request past --request-timeout: %s %s", req.method, env.get("PATH_INFO", ""))
            if not self.headers_sent:
                try:
                    self._send(simple_response(504, "the request took too long"))
                except OSError:
                    pass
            return False
        except Exception:
            path = env.get("PATH_INFO", "")
            log.exception("Error handling request %s %s", req.method, path)
            if not self.headers_sent:
                self.status = None
                try:
                    self._send(simple_response(500))
                except OSError:
                    pass
                if access is not None:
                    self.status = "500 Internal Server Error"
                    self.out_headers = []
                    access.log(env, self, time.time() - t0)
            return False
        finally:
            close = None if type(result) is list else getattr(result, "close", None)
            if close is not None:
                try:
                    close()
                except Exception:
                    log.exception("Error closing the response iterable")
            if deadline is not None:
                deadline.cancel()
            if admission is not None:
                admission.release()
            if board is not None:
                board.request_finished()
        server.requests_served += 1
        if access is not None:
            access.log(env, self, time.time() - t0)
        if self.close_after:
            return False
        if not req.complete:
            return self._skip_body(req)
        return True

    def _admit(self, admission: gevent.lock.BoundedSemaphore) -> bool:
        """Take a place in the app, waiting in the queue if there is room there; else 503."""
        if admission.acquire(blocking=False):
            return True
        server = self.server
        if server.waiting >= server.options.queue_size:
            self._send_error(ServiceUnavailable("server busy, try again"), retry_after=1)
            return False
        server.waiting += 1
        try:
            admission.acquire()
        finally:
            server.waiting -= 1
        return True

    def _finish_sendfile(self) -> None:
        if self.resp_length is not None and self.bytes_sent < self.resp_length and not self.is_head:
            self.close_after = True

    def _send_error(self, exc: HTTPError, retry_after: int = 0) -> None:
        extra = f"Retry-After: {retry_after}\r\n" if retry_after else ""
        try:
            self._send(simple_response(exc.status, exc.detail, extra=extra))
        except OSError:
            pass
