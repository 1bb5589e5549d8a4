"""The proxy engine: asyncio protocols for the client side and the upstream side, over httptools.

This module holds the client side (:class:`ClientConn`) and the proxy process's object
(:class:`Proxy`: the shared state of ``state`` plus admission, the sweep and the access log);
``backend`` has the backends, ``upstream`` the connections to them, ``memo`` the response
memo and ``exchange`` one request's way through. The imports go one way, from here down
(server -> exchange -> client_side -> state -> backend -> upstream -> memo); a module sees
those above it only through protocols (``Exchange.client`` is a
:class:`~prefork_lb.proxy.client_side.ClientSide`, ``Upstream.ex`` a ``Responder``).

One :class:`ClientConn` per client connection parses requests strictly (the workers' own
:class:`~prefork_lb.http.parser.RequestParser`), so a malformed request is answered here and
never reaches a backend. Each request becomes an :class:`Exchange`: a backend is picked by the
balancing strategy, an idle keep-alive :class:`Upstream` connection is taken from that backend's
pool (or a new one is opened), the request head is rewritten and re-framed, the body streams
through, and the response comes back re-framed for the client.

Invariants:

* a client connection has at most one exchange at a time; pipelined requests wait in the
  parser's queue, and reading from the client pauses while more than one is queued;
* an upstream connection answers one exchange at a time; up to ``--upstream-pipeline`` GETs
  may be queued on it behind that one (only bodiless GETs whose head was answered before,
  quickly, small and keeping the connection; see Exchange.route). It goes back to its pool
  only after complete responses to completely sent requests, with both sides willing to keep
  it alive;
* writes are gathered: a client's per event handler (``ClientConn.flush``), and every bodiless
  request and fast-path response until the end of the current pass of the event loop
  (``Proxy.at_end_of_pass``), so each connection gets one ``transport.write`` per pass;
* backpressure both ways: a client that does not read pauses its upstream's reading (or, when
  that connection carries other clients' pipelined answers, its own reading), and an upstream
  that does not read pauses the client's; nothing is buffered without bound;
* a request is retried on another backend only while no byte of it reached a backend, or when
  it is idempotent, its body is still held, and the failure came before any response byte.

Time: no timer per request. One sweep every :data:`SWEEP` seconds checks every connection's
single deadline (head, body, idle, queue, upstream), so the hot path only stores a float.
"""

from __future__ import annotations

import asyncio
import logging
import select
import socket
from collections import deque
from collections.abc import Callable
from functools import partial
from time import monotonic as _now
from typing import Any

from prefork_lb.http.errors import HTTPError
from prefork_lb.http.parser import Limits, Request, RequestMemo, RequestParser
from prefork_lb.http.response import simple_response
from prefork_lb.logs import AccessLog
from prefork_lb.proxy.access_lines import exchange_line, hit_line
from prefork_lb.proxy.backend import Backend
from prefork_lb.proxy.cache_refresh import start_refresh
from prefork_lb.proxy.client_side import D_BODY, D_HEAD, D_IDLE, D_NONE, D_QUEUE, D_UPSTREAM
from prefork_lb.proxy.exchange import Exchange, request_id_of
from prefork_lb.proxy.state import ProxyState
from prefork_lb.proxy.upstream import HIGH_WATER, Upstream

__all__ = ["SWEEP", "Backend", "ClientConn", "Exchange", "Proxy", "Upstream"]

log = logging.getLogger("prefork_lb.error")

SWEEP = 0.1  # seconds between deadline sweeps
# poll events of a client that is gone: the end of its sending side (Linux), a hang-up, a reset
GONE = getattr(select, "POLLRDHUP", 0) | select.POLLHUP | select.POLLERR


class ClientConn(asyncio.Protocol):
    """A client connection: strict parsing, one exchange at a time, pipelining in order."""

    __slots__ = (
        "proxy",
        "transport",
        "write",
        "parser",
        "peer_ip",
        "scheme",
        "ex",
        "wbuf",
        "keep_alive",
        "deadline",
        "deadline_kind",
        "paused_by",
        "closed",
        "tunnel",
        "queued",
        "early",
        "eof",
        "flushes",
    )

    def __init__(self, proxy: Proxy, scheme: str) -> None:
        self.proxy = proxy
        self.transport: Any = None
        self.parser = RequestParser(proxy.limits, proxy.request_memo)
        self.peer_ip = ""
        self.scheme = scheme
        self.ex: Exchange | None = None
        self.wbuf: list[bytes] = []
        # Gather a write for the next flush: the list's own append, bound once per connection,
        # so that a write on the hot path is one C call and no Python frame.
        self.write: Callable[[bytes], None] = self.wbuf.append
        self.keep_alive = True
        self.deadline = 0.0
        self.deadline_kind = D_NONE
        self.paused_by: set[str] = set()
        self.closed = False
        self.tunnel: Upstream | None = None
        self.queued = False
        self.early: list[bytes] = []  # bytes that came before we read: a WebSocket's, a queued client's
        self.eof = False
        self.flushes = 0

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self.peer_ip = peer[0] if isinstance(peer, tuple) else ""
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        transport.set_write_buffer_limits(HIGH_WATER)
        proxy = self.proxy
        proxy.clients.add(self)
        proxy.connections += 1
        if proxy.max_connections and proxy.active >= proxy.max_connections:
            self.queued = True
            self.pause("queue")
            proxy.waiting.append(self)
            self.deadline_kind, self.deadline = D_QUEUE, _now() + proxy.queue_timeout
            return
        proxy.active += 1
        self.deadline_kind, self.deadline = D_HEAD, _now() + proxy.header_timeout

    def left_while_queued(self) -> bool:
        """Whether the client closed, shut its sending side or reset its connection while it
        waited in the queue, where it is not read: the socket is asked (poll, not read), so
        an end that comes after bytes not read yet is seen too."""
        try:
            fd = self.transport.get_extra_info("socket").fileno()
            poller = select.poll()
            poller.register(fd, GONE)
            return any(ev & GONE for _, ev in poller.poll(0))
        except (AttributeError, OSError, TypeError, ValueError):
            return False

    def admitted(self) -> None:
        """A place under --max-connections came free for this queued connection."""
        self.queued = False
        self.proxy.active += 1
        self.deadline_kind, self.deadline = D_HEAD, _now() + self.proxy.header_timeout
        self.resume("queue")
        held, self.early = self.early, []
        for data in held:
            self.data_received(data)

    def data_received(self, data: bytes) -> None:
        tunnel = self.tunnel
        if tunnel is not None:
            tunnel.transport.write(data)
            return
        if self.queued:
            # Not admitted yet (uvloop may start reading despite the pause in connection_made).
            self.early.append(data)
            self.transport.pause_reading()
            return
        parser = self.parser
        if parser.stopped:
            if self.ex is not None and self.ex.websocket:
                self.early.append(data)  # sent before the 101: held for the tunnel
            return
        try:
            parser.feed(data)
        except HTTPError as exc:
            self.refuse(exc)
            return
        if parser.tail:  # sent along with an Upgrade request: the tunnel's, if one is made
            self.early.append(parser.tail)
            parser.tail = b""
        ex = self.ex
        if ex is None:
            if parser.requests:
                self.next_request()
            elif self.deadline_kind == D_IDLE:
                self.deadline_kind, self.deadline = D_HEAD, _now() + self.proxy.header_timeout
        elif not ex.body_done:
            ex.pump_body()
            if ex.up is None and ex.req.body_size > HIGH_WATER:
                self.pause("connect")  # the body waits for a backend connection: bounded
            if self.deadline_kind == D_BODY:
                self.deadline = _now() + self.proxy.body_timeout
        if len(parser.requests) > 1:
            self.pause("pipeline")
        if self.wbuf:
            self.flush()

    def next_request(self) -> None:
        parser = self.parser
        while parser.requests and self.ex is None and not self.closed:
            req = parser.requests[0]
            if req.method == "CONNECT":
                self.refuse_status(405, "CONNECT is not supported")
                return
            proxy = self.proxy
            if proxy.admin_public and req.target.split(b"?", 1)[0] in (b"/lb-health", b"/lb-stats"):
                parser.requests.popleft()
                self.write(proxy.admin_response(req))
                if not req.keep_alive:
                    self.keep_alive = False
                    break
                continue
            cache = proxy.cache
            plan = None
            rid = None
            if cache is not None:
                rid = request_id_of(proxy, req)
                started = _now() if proxy.access is not None else 0.0
                answer = cache.answer(
                    req, self.scheme, proxy.stopping, self, b"" if rid is None else proxy.rid_line(rid)
                )
                if isinstance(answer, bytes):
                    parser.requests.popleft()
                    self.write(answer)
                    proxy.requests += 1  # counted and logged as a forwarded request is
                    if proxy.access is not None:
                        proxy.log_hit(self, req, answer, rid, started)
                    if not req.keep_alive:
                        self.keep_alive = False
                        break
                    continue
                plan = answer
            if req.complete:
                self.deadline_kind = D_NONE
            else:
                self.deadline_kind, self.deadline = D_BODY, _now() + proxy.body_timeout
            ex = self.ex = Exchange(self, req)
            ex.cache_plan = plan
            ex.request_id = rid
            ex.start()
        if self.ex is None:
            self.after_exchanges()

    def exchange_done(self, ex: Exchange) -> None:
        """``ex`` is over: on to the next request, or close. Whatever it left to write goes at
        the end of this pass of the loop, together with what else is answered in it."""
        if self.ex is not ex:
            if self.wbuf:
                self.proxy.at_end_of_pass(self)
            return
        self.ex = None
        if self.proxy.access is not None:
            self.proxy.log_access(self, ex)
        parser = self.parser
        if parser.requests and parser.requests[0] is ex.req:
            parser.requests.popleft()
        if not self.keep_alive or ex.framing == "closed":
            self.flush()
            self.close_after_write()
            return
        if not ex.req.complete:
            # The response came before the whole body (an early error or redirect): the rest
            # of the body cannot be told from the next request without reading it all.
            self.flush()
            self.close_after_write()
            return
        if len(parser.requests) <= 1:
            self.resume("pipeline")
        if parser.requests:
            self.next_request()
        else:
            self.after_exchanges()
        if self.wbuf:
            self.proxy.at_end_of_pass(self)

    def after_exchanges(self) -> None:
        """No exchange is running and no request is queued."""
        if self.closed:
            return
        parser = self.parser
        if parser.error is not None and not parser.requests:
            exc, parser.error = parser.error, None
            self.refuse(exc)
            return
        if parser.stopped or not self.keep_alive or self.eof:
            self.flush()
            self.close_after_write()
            return
        proxy = self.proxy
        if proxy.stopping:
            self.flush()
            self.close_after_write()
            return
        self.deadline_kind, self.deadline = D_IDLE, _now() + proxy.keepalive

    def start_tunnel(self, up: Upstream) -> None:
        self.ex = None
        self.tunnel = up
        up.tunnel_to = self
        self.deadline_kind = D_NONE
        self.resume("pipeline")
        self.flush()
        for data in self.early:
            up.transport.write(data)
        self.early.clear()

    # -- what the exchange tells its client (prefork_lb.proxy.client_side.ClientSide) ----------------

    def local_authority(self) -> bytes:
        local = self.transport.get_extra_info("sockname") if self.transport is not None else None
        if not isinstance(local, tuple):
            return b"localhost"  # a unix socket: no address to name
        host = str(local[0])
        return (f"[{host}]:{local[1]}" if ":" in host else f"{host}:{local[1]}").encode("ascii")

    def sending(self) -> None:
        """The exchange's request went on a backend connection: read on if the body waited for
        it; the upstream deadline runs from now unless the body's still does."""
        if "connect" in self.paused_by:
            self.resume("connect")
        if self.deadline_kind == D_NONE:  # (D_BODY stays until the body is in)
            self.deadline_kind, self.deadline = D_UPSTREAM, _now() + self.proxy.upstream_timeout

    def body_sent(self) -> None:
        """The whole request body went to the backend: now the response is waited for."""
        if self.deadline_kind == D_BODY:
            self.deadline_kind, self.deadline = D_UPSTREAM, _now() + self.proxy.upstream_timeout

    def responding(self, keep_alive: bool) -> None:
        """A response head is on its way: whether the connection stays open after it, and the
        upstream deadline, pushed on by each part of the body (``deadline``)."""
        self.keep_alive = keep_alive
        self.deadline_kind, self.deadline = D_UPSTREAM, _now() + self.proxy.upstream_timeout

    def retrying(self) -> None:
        """The exchange tries another backend: no deadline until its request is sent again."""
        self.deadline_kind = D_NONE

    def mark(self) -> tuple[int, int]:
        """Where the output stands, for :meth:`take_back`."""
        return self.flushes, len(self.wbuf)

    def take_back(self, mark: tuple[int, int]) -> bool:
        """Drop what was written since ``mark``, if none of it has been sent yet."""
        flushes, at = mark
        if flushes != self.flushes:
            return False
        del self.wbuf[at:]
        return True

    def end_with(self, response: bytes) -> None:
        """The exchange is given up with ``response`` of our own; the connection closes."""
        self.write(response)
        self.keep_alive = False
        self.ex = None
        self.flush()
        self.close_after_write()

    # -- writing and closing ----------------------------------------------------------------------

    def flush(self) -> None:
        buf = self.wbuf
        if buf and not self.closed:
            self.transport.write(b"".join(buf) if len(buf) > 1 else buf[0])
            self.flushes += 1
        buf.clear()

    def refuse(self, exc: HTTPError) -> None:
        self.refuse_status(exc.status, exc.detail)

    def refuse_status(self, status: int, why: str) -> None:
        if self.ex is not None or self.closed:
            self.close()
            return
        self.write(simple_response(status, why, close=True))
        self.flush()
        self.close_after_write()

    def close_after_write(self) -> None:
        if not self.closed:
            self.closed = True
            self.transport.close()  # asyncio sends what is buffered first

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.transport.abort() if self.ex is not None else self.transport.close()

    def pause(self, why: str) -> None:
        if not self.paused_by and not self.closed:
            self.transport.pause_reading()
        self.paused_by.add(why)

    def resume(self, why: str) -> None:
        if why in self.paused_by:
            self.paused_by.discard(why)
            if not self.paused_by and not self.closed:
                self.transport.resume_reading()

    # -- asyncio callbacks ------------------------------------------------------------------------

    def pause_writing(self) -> None:
        # The client does not read fast enough: stop reading from its backend.
        ex = self.ex
        up = ex.up if ex is not None else self.tunnel
        if up is not None and not up.closed and (up.queue or (ex is not None and up.ex is not ex)):
            # That connection carries other clients' pipelined answers too (small ones): take
            # this one's answer in full and read no further request from this client instead.
            self.pause("writing")
            return
        if up is not None and not up.closed and not up.paused:
            up.paused = True
            up.transport.pause_reading()

    def resume_writing(self) -> None:
        self.resume("writing")
        ex = self.ex
        up = ex.up if ex is not None else self.tunnel
        if up is not None and up.paused and not up.closed:
            up.paused = False
            up.transport.resume_reading()

    def eof_received(self) -> bool:
        # A half-closed client may still want its response (HTTP/1.0 style): keep writing, and
        # close once what it sent is answered.
        self.eof = True
        if self.tunnel is not None:
            # A websocket's client went without a close frame (its process killed, say): close
            # the tunnel (connection_lost closes the backend side), so that the app hears of it
            # (1006) as it would straight from its worker.
            return False
        return self.ex is not None or bool(self.parser.requests)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        proxy = self.proxy
        proxy.clients.discard(self)
        if self.queued:
            try:
                proxy.waiting.remove(self)
            except ValueError:
                pass
        else:
            proxy.active -= 1
            proxy.admit_next()
        ex = self.ex
        if ex is not None and not ex.done:
            ex.client_gone()
        tunnel = self.tunnel
        if tunnel is not None:
            self.tunnel = None
            tunnel.tunnel_to = None
            tunnel.close()

    def expire(self, now: float) -> None:
        """The sweep found this connection's deadline passed."""
        kind = self.deadline_kind
        self.deadline_kind = D_NONE
        if kind == D_IDLE:
            self.close()
        elif kind == D_HEAD:
            self.refuse_status(408, "request head not received in time")
        elif kind == D_BODY:
            if self.ex is not None and self.ex.responded:
                self.close()
            elif self.ex is not None:
                self.ex.timed_out_client()
            else:
                self.refuse_status(408, "request body not received in time")
        elif kind == D_QUEUE:
            self.write(simple_response(503, "too many connections", close=True, extra="Retry-After: 1\r\n"))
            self.flush()
            self.close_after_write()
        elif kind == D_UPSTREAM:
            ex = self.ex
            if ex is not None:
                ex.timed_out()
                self.flush()


class Proxy(ProxyState):
    """One proxy process: the shared state (:class:`~prefork_lb.proxy.state.ProxyState`) and
    the client side: admission under --max-connections, the deadline sweep, the access log."""

    def __init__(self, cfg: Any, strategy: Any, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(cfg, strategy, loop)
        if self.cache is not None:
            self.cache.start_refresh = partial(start_refresh, self)
        self.limits = Limits(
            cfg.limit_request_line,
            cfg.limit_request_fields,
            cfg.limit_request_field_size,
            cfg.limit_request_body,
            cfg.require_host,
        )
        self.header_timeout = cfg.header_timeout or 86400.0
        self.body_timeout = cfg.client_body_timeout or 86400.0
        self.keepalive = cfg.keepalive
        self.max_connections = cfg.max_connections
        self.queue_timeout = cfg.queue_timeout
        self.admin_public = cfg.stats_bind == "public"
        self.clients: set[ClientConn] = set()
        self.waiting: deque[ClientConn] = deque()
        self.active = 0
        self.connections = 0  # accepted, in total
        self.admin_response: Any = None  # set by the process: (Request) -> bytes
        self.request_memo = RequestMemo()
        self.access: AccessLog | None = None
        if cfg.access_logfile:
            self.access = AccessLog(cfg.access_log_format, cfg.access_logfile, cfg.request_id_header)

    def log_access(self, client: ClientConn, ex: Exchange) -> None:
        assert self.access is not None
        exchange_line(self.access, client, ex)

    def log_hit(
        self, client: ClientConn, req: Request, answer: bytes, rid: bytes | None, started: float
    ) -> None:
        assert self.access is not None
        hit_line(self.access, client, req, answer, rid, started)

    # -- the sweep ----------------------------------------------------------------------------------

    def sweep(self) -> None:
        now = _now()
        for c in list(self.clients):
            if c.deadline_kind and now >= c.deadline and not c.closed:
                c.expire(now)
                if c.wbuf:
                    c.flush()
        self.check_ejections(now)
        if self.cache is not None:
            self.cache.sweep(now)  # coalescing waits and background revalidations

    def admit_next(self) -> None:
        waiting = self.waiting
        while waiting and (not self.max_connections or self.active < self.max_connections):
            c = waiting.popleft()
            if c.closed:
                continue
            if c.left_while_queued():
                # Gone before its request was read: nothing it sent goes to a backend.
                c.close()
                continue
            c.admitted()

    def busy(self) -> int:
        """Exchanges in progress (for a graceful stop)."""
        return sum(1 for c in self.clients if c.ex is not None or c.tunnel is not None)

    def tunnels_only(self) -> bool:
        """True when every client connection left is a tunnel (a websocket), or none is left:
        what a graceful stop waits for before the workers are told to stop."""
        return all(c.tunnel is not None for c in self.clients)

    def close_idle(self, min_idle: float = 0.0) -> None:
        """Close keep-alive connections idle for at least ``min_idle`` seconds. A client that
        just got a response may have its next request on the wire: closing under it would fail
        that request, so a graceful stop leaves recently used connections to the
        ``Connection: close`` of their next response."""
        now = _now()
        for c in list(self.clients):
            if (
                c.ex is None
                and c.tunnel is None
                and not c.parser.requests
                and c.deadline_kind == D_IDLE
                and now - (c.deadline - self.keepalive) >= min_idle
            ):
                c.close()
