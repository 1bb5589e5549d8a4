"""A connection of the worker's server: the read loop, pipelining, sending (with corking), the
request body for wsgi.input, and the run of the app for each request. The response writer it
mixes in is prefork_lb.worker.response; the server that owns it, prefork_lb.worker.server.

Invariants:

* The connection reads from its socket only when it needs bytes: a request head, or body bytes
  the app asked for. So a pipelining or uploading client is held back by TCP, not by our memory.
* Responses go out in request order; the next pipelined request is not touched before the
  current response is complete. Whole responses may be held (corked) to leave in one write with
  the next pipelined one's, but never while the connection waits to read.
* The connection does not keep time: it sets ``wait_until`` before each read, and the server's
  watchdog throws ``ReadDeadline`` into it when that passes.
* A connection closes after any error it cannot recover from cleanly: a malformed request
  (4xx, the app never called), an app exception or a body chunk that is not bytes (500 if
  nothing was sent yet), a body the app did not read that is too big to skip, a response with
  fewer bytes than announced.
"""

from __future__ import annotations

import errno
import logging
import socket
import sys
import time
import traceback
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote_to_bytes

import gevent
import gevent.lock
import gevent.socket

from prefork_lb.http.errors import ClientDisconnected, HTTPError, RequestTimeout
from prefork_lb.http.forwarded import forwarded_scheme
from prefork_lb.http.parser import Request, RequestParser
from prefork_lb.http.response import CONTINUE, simple_response
from prefork_lb.request_id import ENVIRON_KEY, valid_request_id
from prefork_lb.worker.admit import AdmissionPlace
from prefork_lb.worker.response import LISTED, YIELDED, BodyNotBytes, ResponseWriter, is_bytes
from prefork_lb.worker.wsgi import (
    EMPTY_INPUT,
    ENV_KEYS,
    BodySource,
    FileWrapper,
    Input,
    base_environ,
    environ_key,
)

if TYPE_CHECKING:
    from prefork_lb.worker.options import ServerView

log = logging.getLogger("prefork_lb.error")

RECV_SIZE = 65536
# Unread request body we are willing to read and throw away to keep a connection alive.
MAX_DRAIN = 1 << 20
CORK_MAX = 16  # responses held at most for one write (_reply)
ENVIRON = "environ"  # the key of a memoised request's environ entries in Request.memo
# The same for a connection from a trusted peer (--forwarded-allow-ips): its entries may hold
# the wsgi.url_scheme its X-Forwarded-Proto / Forwarded said, which no other peer may get.
ENVIRON_FORWARDED = "environ forwarded"


class _RequestDeadline(BaseException):
    """Raised in a request's greenlet past --request-timeout (BaseException: an app's
    ``except Exception`` must not swallow it). Its one argument: when the deadline started
    (in ``args``: no ``__init__`` of ours to run per request)."""


class ReadDeadline(Exception):
    """Thrown into a connection greenlet by the watchdog (or by drain) while it waits to read."""


def _decode_path(path: bytes) -> str:
    if b"%" in path:
        path = unquote_to_bytes(path)
    return path.decode("latin-1")


class Connection(ResponseWriter, BodySource, AdmissionPlace):
    """One client connection: reads requests, runs the app, sends responses in order."""

    __slots__ = (
        "server",
        "sock",
        "app",
        "parser",
        "base_env",
        "greenlet",
        "wait_until",
        "idle",
        "req",
        "continue_sent",
        "partial",
        "raw",
        "read_event",
        "hub",
        "had_request",
        "counted_fresh",
        "cork",
        "forwarded",
        "env_memo",
        "arrived",  # the accept (CLOCK_MONOTONIC): the first request's queue wait counts from it
    )

    raw: socket.socket | None  # the plain socket under gevent's, or None (see __init__)

    def __init__(self, server: ServerView, sock: gevent.socket.socket, addr: Any, at: float = 0.0) -> None:
        self.server = server
        self.arrived = at
        self.sock = sock
        self.app = server.app
        opts = server.options
        self.parser = RequestParser(opts.limits, server.request_memo)
        self.greenlet = gevent.getcurrent()
        self.wait_until = 0.0
        self.idle = False  # True only between requests on a kept-alive connection
        self.had_request = False
        # Whether the scoreboard still counts this connection as fresh (connection_opened): it
        # stops only once its first request counts as in flight, queued or refused, so the
        # handoff dispatcher's load never misses it in between (see _unfresh).
        self.counted_fresh = True
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
        # Whether this peer's forwarding headers set wsgi.url_scheme: decided once, per peer.
        peers = opts.trusted_peers
        self.forwarded = peers is not None and remote_addr in peers
        self.env_memo = ENVIRON_FORWARDED if self.forwarded else ENVIRON
        self._reset(None)

    def _reset(self, req: Request | None) -> None:
        self.req = req
        self.status = None
        self.out_headers = None
        self.headers_sent = False
        self.chunked = False
        self.close_after = False
        self.bytes_sent = 0
        self.is_head = False
        self.resp_length = None
        self.continue_sent = False
        self.rid_line = ""

    # -- reading ------------------------------------------------------------------------------

    def serve(self) -> None:
        parser = self.parser
        requests = parser.requests
        opts = self.server.options
        fresh = True
        batch = 0.0  # when pipelined requests (several in one read) came; 0.0: one, it did not wait
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
                        except ReadDeadline:
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
                    batch = time.monotonic() if len(requests) > 1 else 0.0
                req = requests[0]
                arrived = batch
                if fresh:
                    arrived = self.arrived or batch
                    fresh = False
                    self.had_request = True
                if not self._handle_request(req, arrived):
                    return
                requests.popleft()
                if not req.keep_alive or not opts.keepalive:
                    return
        except HTTPError as exc:
            self.wait_until = 0.0
            self._send_error(exc)
        except (ClientDisconnected, ConnectionError, ReadDeadline):
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
            data: bytes = self.sock.recv(RECV_SIZE)  # an unfamiliar gevent: not the fast path
            return data
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
        except ReadDeadline:
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
            part = memo.get(self.env_memo)
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
        scheme = None
        if self.forwarded:
            scheme = forwarded_scheme(env.get("HTTP_X_FORWARDED_PROTO"), env.get("HTTP_FORWARDED"))
        if memo is not None:
            base = self.base_env
            if all(env[k] is v for k, v in base.items()):  # no header merged into a connection key
                part = {k: v for k, v in env.items() if k not in base}
                if scheme is not None:
                    part["wsgi.url_scheme"] = scheme
                memo[self.env_memo] = part
        if scheme is not None:
            env["wsgi.url_scheme"] = scheme
        return env

    def _handle_request(self, req: Request, arrived: float = 0.0) -> bool:
        """Run the app for one request and send its response (False: close the connection);
        ``arrived``: when it came, if it may have waited (0.0: it did not, see serve)."""
        self._reset(req)
        if req.method == "HEAD":
            self.is_head = True
        env = self._environ(req)
        server = self.server
        rid_key = server.rid_key
        if rid_key is not None:
            rid = env.get(rid_key)
            if rid is not None or server.rid_generate is not None:
                self._request_id(env, rid)
        if server.before_request is not None:
            server.before_request(env, req)
        access = server.access_log
        t0 = time.time() if access is not None else 0.0
        admission = server.admission
        waited = 0.0
        if admission is not None:
            waited = self._admit(admission)
            if waited < 0:
                return False
            arrived = arrived or waited
        board = server.board
        if board is not None:
            board.request_started(req.method, req.target, arrived)
            if self.counted_fresh:
                self._unfresh()
            if waited:
                board.queued(-1)  # after it counts as in flight: never counted as neither
        result: Any = None
        failed = 0  # the status class of an error response we sent (for the metrics)
        deadline = None
        if server.options.request_timeout:
            deadline = gevent.Timeout(server.options.request_timeout, _RequestDeadline(time.monotonic()))
            deadline.start()
        try:
            result = self.app(env, self.start_response)
            rtype = type(result)
            if rtype is list or rtype is tuple:
                if len(result) == 1:
                    body = result[0]
                else:
                    try:
                        body = b"".join(result)
                    except TypeError:
                        raise BodyNotBytes.in_list(result) from None
                if self.headers_sent:
                    self.write(body)
                    self._finish()
                else:
                    head = self._head(len(body))
                    if self.is_head:
                        self._reply(head)
                    else:
                        try:
                            self._reply(head + self._clip(body))
                        except TypeError:
                            if is_bytes(body):
                                raise
                            self.headers_sent = False  # nothing went out: the error is a 500
                            raise BodyNotBytes(body, LISTED) from None
                        self.bytes_sent += len(body)
                    if self.resp_length is not None and self.bytes_sent < self.resp_length:
                        self.close_after = True
            elif rtype is FileWrapper and self._sendfile(result):
                self._finish_sendfile()
            else:
                try:
                    for chunk in result:
                        if chunk:
                            self.write(chunk)
                except BodyNotBytes as exc:
                    raise BodyNotBytes(exc.data, YIELDED) from None
                self._finish()
        except HTTPError as exc:
            # The body the app was reading turned out malformed or too large.
            if not self.headers_sent:
                failed = exc.status // 100
                self._send_error(exc)
            return False
        except (ClientDisconnected, ConnectionError, ReadDeadline):
            return False
        except _RequestDeadline as exc:
            failed = 0 if self.headers_sent else 5
            if board is not None:
                board.deadline_passed()
            self._timed_out(req, env, exc)
            return False
        except Exception:
            failed = 0 if self.headers_sent else 5
            self._app_failed(req, env, access, t0)
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
                if not failed:
                    status = self.status  # "200 OK"; None: no response went out
                    failed = ord(status[0]) - 48 if status and self.headers_sent else 0
                board.request_finished(req.method, failed if 0 < failed < 6 else 0)
        server.requests_served += 1
        if access is not None:
            access.log(env, self, time.time() - t0)
        if self.close_after:
            return False
        if not req.complete:
            return self._skip_body(req)
        return True

    def _request_id(self, env: dict[str, Any], rid: str | None) -> None:
        """The request's id: the one that came (from a client, or our proxy) when valid, else
        a new one when --request-id says so; into the environ, and the response's head."""
        server = self.server
        if rid is None or not valid_request_id(rid):
            gen = server.rid_generate
            if gen is None:
                return
            rid = gen()
        env[ENVIRON_KEY] = rid
        if server.rid_prefix:
            self.rid_line = server.rid_prefix + rid + "\r\n"

    def _timed_out(self, req: Request, env: dict[str, Any], exc: _RequestDeadline) -> None:
        """The app ran past --request-timeout (its greenlet waited: a blocked loop is the
        master's business, prefork_lb.request_deadline): the line with the stack where the
        greenlet was waiting, and 504 if nothing was sent yet."""
        stack = "".join(traceback.format_tb(exc.__traceback__)).rstrip()
        log.error(
            "Request past --request-timeout: %s %s (%.1f s over %gs); the request's greenlet was at:\n%s",
            req.method,
            env.get("PATH_INFO", ""),
            time.monotonic() - exc.args[0],
            self.server.options.request_timeout,
            stack,
        )
        if not self.headers_sent:
            try:
                self._send(simple_response(504, "the request took too long"))
            except OSError:
                pass

    def _app_failed(self, req: Request, env: dict[str, Any], access: Any, t0: float) -> None:
        """The app raised (called in the except clause: the traceback is logged): 500 if
        nothing was sent yet, and an access log line saying so."""
        path = env.get("PATH_INFO", "")
        exc = sys.exc_info()[1]
        if isinstance(exc, BodyNotBytes):  # the app's mistake, said in one line: our frames would not help
            log.error("Error handling request %s %s: %s", req.method, path, exc)
        else:
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

    def _unfresh(self) -> None:
        """The connection's first request counts as in flight or queued now: it stops counting
        as fresh (always after that other count went up: see prefork_lb.worker.admit)."""
        self.counted_fresh = False
        board = self.server.board
        if board is not None:
            board.first_request()

    def _send_error(self, exc: HTTPError, retry_after: int = 0) -> None:
        extra = f"Retry-After: {retry_after}\r\n" if retry_after else ""
        try:
            self._send(simple_response(exc.status, exc.detail, extra=extra))
        except OSError:
            pass
