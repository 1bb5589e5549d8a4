"""The proxy engine: asyncio protocols for the client side and the upstream side, over httptools.

One :class:`ClientConn` per client connection parses requests strictly (the workers' own
:class:`~prefork_lb.http.parser.RequestParser`), so a malformed request is answered here and
never reaches a backend. Each request becomes an :class:`Exchange`: a backend is picked by the
balancing strategy, an idle keep-alive :class:`Upstream` connection is taken from that backend's
pool (or a new one is opened), the request head is rewritten and re-framed, the body streams
through, and the response comes back re-framed for the client.

Invariants:

* a client connection has at most one exchange at a time; pipelined requests wait in the
  parser's queue, and reading from the client pauses while more than one is queued;
* an upstream connection serves at most one exchange, and goes back to its pool only after a
  complete response to a completely sent request, with both sides willing to keep it alive;
* every write of an event handler is gathered and sent with one ``transport.write`` at its end
  (``ClientConn.flush``), so a small response costs one system call;
* backpressure both ways: a client that does not read pauses its upstream's reading, and an
  upstream that does not read pauses the client's; nothing is buffered without bound;
* a request is retried on another backend only while no byte of it reached a backend, or when
  it is idempotent, its body is still held, and the failure came before any response byte.

Time: no timer per request. One sweep every :data:`SWEEP` seconds checks every connection's
single deadline (head, body, idle, queue, upstream), so the hot path only stores a float.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections import deque
from time import monotonic as _now
from typing import Any

import httptools

from prefork_lb.http.errors import HTTPError
from prefork_lb.http.parser import Limits, Request, RequestParser
from prefork_lb.http.response import simple_response
from prefork_lb.proxy.headers import RequestRewriter, ResponseRewriter, TrustedPeers, cookie_value
from prefork_lb.proxy.health import PassiveEjector, RetryBudget
from prefork_lb.proxy.stats import BackendStats

log = logging.getLogger("prefork_lb.error")

SWEEP = 0.1                 # seconds between deadline sweeps
REPLAY_MAX = 64 * 1024      # body bytes kept for a retry of an idempotent request
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
FRESH_FOR_UNSAFE = 1.0      # a non-idempotent request reuses only connections used this recently
HIGH_WATER = 256 * 1024
MEMO_MAX = 256              # request heads and response heads remembered (see Memo)
MEMO_HEAD_MAX = 2048        # longest head worth remembering
# deadline kinds of a client connection
D_NONE, D_HEAD, D_BODY, D_IDLE, D_QUEUE, D_UPSTREAM = range(6)


class ResponseMemo:
    """What a response head seen before turned into: status, length, whether the backend keeps
    the connection, and the rewritten head per (client version, keep-alive, backend).

    Keyed on the raw head bytes, which fully determine the rewrite; the Date header changes
    once a second, so a backend answering the same way hits the memo for all but one response
    a second. Only simple responses are remembered: a final status, Content-Length framing."""

    __slots__ = ("status", "length", "upstream_keep", "heads")

    def __init__(self, status: int, length: int, upstream_keep: bool) -> None:
        self.status = status
        self.length = length
        self.upstream_keep = upstream_keep
        self.heads: dict[tuple[str, bool, bytes], bytes] = {}


class Backend:
    """One upstream address: its pool of idle connections, health and statistics."""

    __slots__ = ("key", "host", "port", "name", "weight", "idle", "stats", "health", "ejector",
                 "slot", "ejected_until", "checking", "connecting", "down_reason")

    def __init__(self, host: str, port: int, weight: int = 1, slot: int | None = None) -> None:
        self.host = host
        self.port = port
        self.key = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self.name = self.key.encode("latin-1")
        self.weight = weight
        self.idle: list[Upstream] = []
        self.stats = BackendStats()
        self.health: Any = None          # HealthState for remote backends with active checks
        self.ejector = PassiveEjector()
        self.slot = slot                 # a local worker slot, or None for a remote backend
        self.ejected_until = 0.0
        self.checking = False
        self.connecting = 0
        self.down_reason = ""


class Upstream(asyncio.Protocol):
    """A connection to a backend; parses responses with httptools."""

    __slots__ = ("proxy", "backend", "transport", "parser", "ex", "headers", "last_used", "closed",
                 "paused", "is_head", "got_bytes", "tunnel_to", "reason", "midmsg", "raw_head")

    def __init__(self, proxy: Proxy, backend: Backend) -> None:
        self.proxy = proxy
        self.backend = backend
        self.transport: Any = None
        self.parser = httptools.HttpResponseParser(self)
        self.ex: Exchange | None = None
        self.headers: list[tuple[bytes, bytes]] = []
        self.last_used = 0.0
        self.closed = False
        self.paused = False
        self.is_head = False
        self.got_bytes = False
        self.tunnel_to: ClientConn | None = None
        self.reason = b""
        self.midmsg = False          # a response is partly parsed
        self.raw_head: bytes | None = None   # the head of the response being parsed, when whole

    # -- asyncio callbacks ------------------------------------------------------------------------

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        transport.set_write_buffer_limits(HIGH_WATER)

    def data_received(self, data: bytes) -> None:
        tunnel = self.tunnel_to
        if tunnel is not None:
            tunnel.transport.write(data)
            return
        ex = self.ex
        if ex is None:
            # Bytes from an idle backend: it is confused; never reuse this connection.
            self.close()
            return
        self.got_bytes = True
        self.raw_head = None
        if not self.midmsg:
            end = data.find(b"\r\n\r\n")
            if 0 < end < MEMO_HEAD_MAX:
                raw = data[:end]
                memo = self.proxy.response_memo.get(raw)
                if memo is not None and len(data) == end + 4 + memo.length and ex.fast_response(self, memo, data, end):
                    return
                self.raw_head = raw
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            ex.upgraded(data[exc.args[0]:])
        except httptools.HttpParserError as exc:
            if self.ex is not None:
                self.ex.bad_response(str(exc))
            self.close()
        cl = ex.client
        if cl.wbuf:
            cl.flush()

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        idle = self.backend.idle
        if self in idle:
            idle.remove(self)
        tunnel = self.tunnel_to
        if tunnel is not None:
            self.tunnel_to = None
            tunnel.close()
            return
        ex = self.ex
        if ex is not None:
            self.ex = None
            ex.upstream_lost(self, exc)

    def pause_writing(self) -> None:
        ex = self.ex
        if ex is not None:
            ex.client.pause("upstream")
        elif self.tunnel_to is not None:
            self.tunnel_to.pause("upstream")

    def resume_writing(self) -> None:
        ex = self.ex
        if ex is not None:
            ex.client.resume("upstream")
        elif self.tunnel_to is not None:
            self.tunnel_to.resume("upstream")

    # -- httptools callbacks (response) -----------------------------------------------------------

    def on_message_begin(self) -> None:
        self.headers = []
        self.reason = b""
        self.midmsg = True

    def on_status(self, reason: bytes) -> None:
        self.reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        ex = self.ex
        if ex is not None:
            ex.response_head(self, self.parser.get_status_code(), self.headers)

    def on_body(self, body: bytes) -> None:
        ex = self.ex
        if ex is not None:
            ex.response_body(body)

    def on_message_complete(self) -> None:
        self.midmsg = False
        ex = self.ex
        if ex is not None:
            ex.response_done(self, self.parser.should_keep_alive())

    # -- helpers -----------------------------------------------------------------------------------

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            idle = self.backend.idle
            if self in idle:
                idle.remove(self)
            if self.transport is not None:
                self.transport.close()

    def reset_parser(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.midmsg = False


class Exchange:
    """One request on its way through the proxy: pick, send, relay the response."""

    __slots__ = ("client", "req", "proxy", "backend", "up", "tries", "tried", "sent", "head",
                 "replay", "replay_size", "started", "status", "framing", "responded", "set_cookie",
                 "done", "websocket", "body_done", "until_close", "head_at")

    def __init__(self, client: ClientConn, req: Request) -> None:
        self.client = client
        self.req = req
        self.proxy = client.proxy
        self.backend: Backend | None = None
        self.up: Upstream | None = None
        self.tries = 0
        self.tried: list[Backend] = []
        self.sent = False           # a byte of this request reached a backend connection
        self.head = b""
        self.replay: list[bytes] | None = []
        self.replay_size = 0
        self.started = 0.0
        self.status = 0
        self.framing = ""
        self.responded = False      # a byte of the response went to the client
        self.set_cookie: bytes | None = None
        self.done = False
        self.websocket = False
        self.body_done = False
        self.until_close = False    # the response body ends when the backend closes
        self.head_at: tuple[int, int] = (-1, 0)   # (client flushes, wbuf index) when the head was queued

    # -- request side -----------------------------------------------------------------------------

    def start(self) -> None:
        proxy = self.proxy
        client = self.client
        req = self.req
        self.started = _now()
        if req.upgrade:
            self.websocket = any(n == "upgrade" and b"websocket" in v.lower() for n, _, v in req.headers)
        memo = req.memo
        if memo is not None:
            # A request head seen before: its rewrite only depends on the peer and scheme.
            key = (client.peer_ip, client.scheme)
            head = memo.get(key)
            if head is None:
                head = proxy.request_rewriter.head(req, client.peer_ip, client.scheme, False)
                if len(memo) < 64:
                    memo[key] = head
            self.head = head
        else:
            self.head = proxy.request_rewriter.head(req, client.peer_ip, client.scheme, self.websocket)
        proxy.budget.on_request()
        proxy.requests += 1
        if req.expect_continue and not req.complete:
            client.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        self.route()

    def route(self) -> None:
        """Pick a backend and get a connection to it."""
        proxy = self.proxy
        client = self.client
        hint: Any = None
        strategy = proxy.strategy
        if proxy.sticky:
            hint = cookie_value(self.req.headers, proxy.cookie_name)
        elif proxy.hashing:
            hint = client.peer_ip
        backend = proxy.pick(hint, self.tried)
        if backend is None:
            self.fail(503, "no backend available", retry_after=True)
            return
        self.backend = backend
        self.tries += 1
        self.tried.append(backend)
        strategy.on_start(backend.key)
        if proxy.sticky and (hint is None or strategy.key_for(hint) != backend.key):
            self.set_cookie = proxy.cookie_header(backend.key)
        backend.stats.requests += 1   # tries: a retried request counts at each backend it tried
        up = None
        if not self.websocket:
            idle = backend.idle
            now = self.started
            unsafe = self.req.method not in IDEMPOTENT
            while idle:
                cand = idle.pop()
                if cand.closed:
                    continue
                if unsafe and now - cand.last_used > FRESH_FOR_UNSAFE:
                    cand.close()   # may be closing on the backend's side: not for a POST
                    continue
                up = cand
                break
        if up is not None:
            self.attach(up)
        else:
            proxy.connect(backend, self)

    def attach(self, up: Upstream) -> None:
        """``up`` is connected: send the head and what we have of the body."""
        client = self.client
        self.up = up
        up.ex = self
        client.resume("connect")
        up.is_head = self.req.method == "HEAD"
        up.got_bytes = False
        if up.paused:
            up.paused = False
            up.transport.resume_reading()
        if client.deadline_kind == D_NONE:   # (D_BODY stays until the body is in)
            client.deadline_kind, client.deadline = D_UPSTREAM, _now() + self.proxy.upstream_timeout
        self.sent = True
        out = [self.head]
        if self.replay:
            out.extend(self.replay)
        up.transport.write(b"".join(out) if len(out) > 1 else out[0])
        self.pump_body()

    def pump_body(self) -> None:
        """Send body bytes that arrived from the client."""
        req = self.req
        up = self.up
        if up is None or self.body_done:
            return
        chunks = req.chunks
        if chunks:
            if req.chunked:
                data = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks if c)
            else:
                data = b"".join(chunks) if len(chunks) > 1 else chunks[0]
            chunks.clear()
            if self.replay is not None:
                self.replay_size += len(data)
                if self.replay_size > REPLAY_MAX:
                    self.replay = None
                else:
                    self.replay.append(data)
            if data:
                up.transport.write(data)
        if req.complete:
            if req.chunked:
                up.transport.write(b"0\r\n\r\n")
                if self.replay is not None:
                    self.replay.append(b"0\r\n\r\n")
            self.body_done = True
            client = self.client
            if client.deadline_kind == D_BODY:
                client.deadline_kind, client.deadline = D_UPSTREAM, _now() + self.proxy.upstream_timeout

    # -- response side ----------------------------------------------------------------------------

    def response_head(self, up: Upstream, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        if status < 200 and status != 101:
            return    # interim (100 Continue: we sent our own); the final response follows
        client = self.client
        req = self.req
        proxy = self.proxy
        self.status = status
        if status == 101:
            if not self.websocket:
                self.bad_response("101 to a request that asked for no upgrade")
                up.close()
                return
            return    # upgraded() follows with the tunnel
        length: int | None = None
        chunked = False
        reusable = True
        for name, value in headers:
            if len(name) == 14 and name.lower() == b"content-length":
                length = int(value)
            elif len(name) == 17 and name.lower() == b"transfer-encoding":
                chunked = True
        keep = req.keep_alive and not proxy.stopping
        if req.method == "HEAD" or status in (204, 304):
            framing = "none"
            if req.method == "HEAD":
                # llhttp cannot know this response has no body: it ends here.
                reusable = up.parser.should_keep_alive()
                up.reset_parser()
        elif chunked:
            framing = "chunked" if req.version == "HTTP/1.1" else "close"
        elif length is not None:
            framing = "length"
        else:
            self.until_close = True
            framing = "chunked" if req.version == "HTTP/1.1" else "close"
        if framing == "close":
            keep = False
        self.framing = framing
        client.keep_alive = keep
        client.deadline_kind = D_UPSTREAM
        client.deadline = _now() + proxy.upstream_timeout
        head = proxy.response_rewriter.head(
            status, up.reason, headers, framing=framing, content_length=length, keep_alive=keep,
            version=req.version, backend=self.backend.name if self.backend else None,
            set_cookie=self.set_cookie)
        self.head_at = (client.flushes, len(client.wbuf))
        client.write(head)
        self.responded = True
        raw = up.raw_head
        if (raw is not None and framing == "length" and self.set_cookie is None and self.backend is not None
                and not proxy.stopping and length is not None):
            memos = proxy.response_memo
            memo = memos.get(raw)
            if memo is None:
                if len(memos) >= MEMO_MAX:
                    memos.clear()
                memo = memos[raw] = ResponseMemo(status, length, up.parser.should_keep_alive())
            if len(memo.heads) < 64:
                memo.heads[(req.version, keep, self.backend.name)] = head
        if req.method == "HEAD":
            self.response_done(up, reusable)

    def fast_response(self, up: Upstream, memo: ResponseMemo, data: bytes, end: int) -> bool:
        """A whole response whose head was seen before: relay it without parsing. False when
        the memo does not fit this exchange (the caller parses instead)."""
        req = self.req
        if req.method == "HEAD" or self.set_cookie is not None or self.websocket or self.backend is None:
            return False
        keep = req.keep_alive and not self.proxy.stopping
        head = memo.heads.get((req.version, keep, self.backend.name))
        if head is None:
            return False
        client = self.client
        self.status = memo.status
        self.framing = "length"
        self.responded = True
        client.keep_alive = keep
        client.write(head)
        if memo.length:
            client.write(data[end + 4:])
        self.response_done(up, memo.upstream_keep)
        if client.wbuf:
            client.flush()
        return True

    def response_body(self, body: bytes) -> None:
        if not self.responded:
            return
        client = self.client
        if self.framing == "chunked":
            client.write(b"%x\r\n" % len(body))
            client.write(body)
            client.write(b"\r\n")
        else:
            client.write(body)
        client.deadline = _now() + self.proxy.upstream_timeout

    def response_done(self, up: Upstream, reusable: bool) -> None:
        if self.status < 200 or self.done:
            return    # an interim response, or the 101 (upgraded() takes over)
        self.done = True
        client = self.client
        if self.framing == "chunked":
            client.write(b"0\r\n\r\n")
        up.ex = None
        self.up = None
        proxy = self.proxy
        backend = self.backend
        assert backend is not None
        now = _now()
        latency = now - self.started
        proxy.strategy.on_finish(backend.key, latency, self.status < 500)
        backend.stats.record_response(self.status, latency)
        if self.status >= 500 and self.status != 503 and backend.slot is None:
            # 503 is a backend shedding load (admission control): ejecting it would only pile
            # its share onto the others. Local workers are judged by the scoreboard instead.
            proxy.passive_failure(backend, f"HTTP {self.status}")
        else:
            backend.ejector.success()
        # Reuse the connection only when the exchange is clean at both ends.
        if self.body_done and reusable and not up.closed and not proxy.stopping:
            up.last_used = now
            if len(backend.idle) < proxy.keepalive_max:
                backend.idle.append(up)
            else:
                up.close()
        else:
            up.close()
        client.exchange_done(self)

    def upgraded(self, rest: bytes) -> None:
        """The backend answered 101: from now on both connections are one byte tunnel."""
        up = self.up
        assert up is not None and self.backend is not None
        client = self.client
        proxy = self.proxy
        self.done = True
        up.ex = None
        self.up = None
        client.write(proxy.response_rewriter.head(
            101, up.reason, up.headers, framing="none", content_length=None, keep_alive=True,
            version=self.req.version, backend=self.backend.name, set_cookie=None, upgrade=True))
        if rest:
            client.write(rest)
        proxy.strategy.on_finish(self.backend.key, _now() - self.started, True)
        # A WebSocket counts as a connection, not a request.
        self.backend.stats.websockets += 1
        self.backend.stats.requests -= 1
        proxy.requests -= 1
        proxy.websockets += 1
        client.start_tunnel(up)

    # -- failures ---------------------------------------------------------------------------------

    def connect_failed(self, backend: Backend, exc: BaseException | None, timed_out: bool = False) -> None:
        if self.done:
            return
        proxy = self.proxy
        proxy.strategy.on_finish(backend.key, None, False)
        backend.stats.errors += 1
        proxy.connect_failure(backend, "connect timed out" if timed_out else f"connect failed: {exc}")
        # Nothing reached the backend: retry anywhere, within the budget.
        if self.tries <= proxy.retries and proxy.budget.try_spend():
            backend.stats.retries += 1
            self.client.deadline_kind = D_NONE
            self.route()
            return
        self.fail(504 if timed_out else 502, "backend unreachable")

    def upstream_lost(self, up: Upstream, exc: Exception | None) -> None:
        """The backend closed before the response was complete."""
        if self.done:
            return
        proxy = self.proxy
        backend = self.backend
        assert backend is not None
        self.up = None
        if self.responded:
            if self.until_close and not exc:
                # Close-delimited response: the end of the connection is the end of the body.
                if self.framing == "chunked":
                    self.client.write(b"0\r\n\r\n")
                else:
                    self.framing = "closed"
                self.done = True
                proxy.strategy.on_finish(backend.key, _now() - self.started, True)
                backend.stats.record_response(self.status, _now() - self.started)
                self.client.exchange_done(self)
                self.client.flush()
                return
            # Part of the response is out: all we can do is cut the client off too.
            proxy.strategy.on_finish(backend.key, None, False)
            backend.stats.errors += 1
            self.done = True
            self.client.close()
            return
        proxy.strategy.on_finish(backend.key, None, False)
        backend.stats.errors += 1
        req = self.req
        replayable = (req.method in IDEMPOTENT and self.replay is not None and not up.got_bytes
                      and (req.complete or not req.body_size))
        if replayable and self.tries <= proxy.retries and proxy.budget.try_spend():
            backend.stats.retries += 1
            self.client.deadline_kind = D_NONE
            self.route()
            return
        proxy.passive_failure(backend, "connection closed before a response")
        self.fail(502, "backend closed the connection")
        self.client.flush()

    def bad_response(self, why: str) -> None:
        if self.done:
            return
        proxy = self.proxy
        backend = self.backend
        assert backend is not None
        log.warning("proxy: malformed response from %s: %s", backend.key, why)
        proxy.strategy.on_finish(backend.key, None, False)
        backend.stats.errors += 1
        proxy.passive_failure(backend, "malformed response")
        up = self.up
        self.up = None
        if up is not None:
            up.ex = None
            up.close()
        client = self.client
        flushes, at = self.head_at
        if self.responded and flushes == client.flushes:
            # Nothing of the response has left yet: take it back and answer 502 instead.
            del client.wbuf[at:]
            self.responded = False
        if self.responded:
            self.done = True
            client.close()
        else:
            self.fail(502, "malformed response from the backend")

    def timed_out(self) -> None:
        """No response (or no further response bytes) within --upstream-timeout."""
        if self.done:
            return
        backend = self.backend
        up = self.up
        self.up = None
        if up is not None:
            up.ex = None
            up.close()
        if backend is not None:
            self.proxy.strategy.on_finish(backend.key, None, False)
            backend.stats.errors += 1
            self.proxy.passive_failure(backend, "response timed out")
        if self.responded:
            self.done = True
            self.client.close()
        else:
            self.fail(504, "the backend did not answer in time")

    def timed_out_client(self) -> None:
        """The client stopped sending its body: 408, and the backend connection is dropped."""
        up = self.up
        self.up = None
        if up is not None:
            up.ex = None
            up.close()
        if self.backend is not None:
            self.proxy.strategy.on_finish(self.backend.key, None, True)
        self.done = True
        client = self.client
        client.write(simple_response(408, "request body not received in time", close=True))
        client.keep_alive = False
        client.ex = None
        client.flush()
        client.close_after_write()

    def fail(self, status: int, why: str, retry_after: bool = False) -> None:
        """Answer the client with an error of our own; the connection closes after it."""
        self.done = True
        client = self.client
        if self.backend is not None and status >= 500:
            self.backend.stats.record_response(status, _now() - self.started)
        extra = "Retry-After: 1\r\n" if retry_after else ""
        client.write(simple_response(status, why, close=True, extra=extra))
        client.keep_alive = False
        client.exchange_done(self)


class ClientConn(asyncio.Protocol):
    """A client connection: strict parsing, one exchange at a time, pipelining in order."""

    __slots__ = ("proxy", "transport", "parser", "peer_ip", "scheme", "ex", "wbuf", "keep_alive",
                 "deadline", "deadline_kind", "paused_by", "closed", "tunnel", "queued", "early", "eof",
                 "flushes")

    def __init__(self, proxy: Proxy, scheme: str) -> None:
        self.proxy = proxy
        self.transport: Any = None
        self.parser = RequestParser(proxy.limits)
        self.peer_ip = ""
        self.scheme = scheme
        self.ex: Exchange | None = None
        self.wbuf: list[bytes] = []
        self.keep_alive = True
        self.deadline = 0.0
        self.deadline_kind = D_NONE
        self.paused_by: set[str] = set()
        self.closed = False
        self.tunnel: Upstream | None = None
        self.queued = False
        self.early: list[bytes] = []   # bytes that came before we read: a WebSocket's, a queued client's
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
                self.early.append(data)   # sent before the 101: held for the tunnel
            return
        memos = self.proxy.request_memo
        fresh = self.ex is None and not parser.requests and parser.between_requests
        if fresh:
            # A whole bodiless request head that parsed before: the parser would give the
            # same result again, so skip it (the memo only ever holds requests it accepted).
            req = memos.get(data)
            if req is not None:
                parser.requests.append(req)
                self.next_request()
                if self.wbuf:
                    self.flush()
                return
        try:
            parser.feed(data)
        except HTTPError as exc:
            self.refuse(exc)
            return
        if parser.tail:   # sent along with an Upgrade request: the tunnel's, if one is made
            self.early.append(parser.tail)
            parser.tail = b""
        if fresh and len(parser.requests) == 1 and len(data) < MEMO_HEAD_MAX and parser.between_requests:
            req = parser.requests[0]
            if (req.complete and not req.body_size and not req.chunked and not req.content_length
                    and req.keep_alive and not req.upgrade and not req.expect_continue
                    and data.find(b"\r\n\r\n") == len(data) - 4):
                if len(memos) >= MEMO_MAX:
                    memos.clear()
                req.memo = {}
                memos[data] = req
        ex = self.ex
        if ex is None:
            if parser.requests:
                self.next_request()
            elif self.deadline_kind == D_IDLE:
                self.deadline_kind, self.deadline = D_HEAD, _now() + self.proxy.header_timeout
        elif not ex.body_done:
            ex.pump_body()
            if ex.up is None and ex.req.body_size > HIGH_WATER:
                self.pause("connect")   # the body waits for a backend connection: bounded
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
            if req.complete:
                self.deadline_kind = D_NONE
            else:
                self.deadline_kind, self.deadline = D_BODY, _now() + proxy.body_timeout
            ex = self.ex = Exchange(self, req)
            ex.start()
        if self.ex is None:
            self.after_exchanges()

    def exchange_done(self, ex: Exchange) -> None:
        if self.ex is not ex:
            return
        self.ex = None
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

    # -- writing and closing ----------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        self.wbuf.append(data)

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
            self.transport.close()   # asyncio sends what is buffered first

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
        if up is not None and not up.closed and not up.paused:
            up.paused = True
            up.transport.pause_reading()

    def resume_writing(self) -> None:
        ex = self.ex
        up = ex.up if ex is not None else self.tunnel
        if up is not None and up.paused and not up.closed:
            up.paused = False
            up.transport.resume_reading()

    def eof_received(self) -> bool:
        # A half-closed client may still want its response (HTTP/1.0 style): keep writing, and
        # close once what it sent is answered.
        self.eof = True
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
            ex.done = True
            up = ex.up
            if ex.backend is not None:
                proxy.strategy.on_finish(ex.backend.key, None, True)
            if up is not None:
                up.ex = None
                up.close()   # its response has no reader; the connection cannot be reused
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


class Proxy:
    """Shared state of one proxy process: backends, strategy, limits, counters."""

    def __init__(self, cfg: Any, strategy: Any, loop: asyncio.AbstractEventLoop) -> None:
        self.cfg = cfg
        self.loop = loop
        self.strategy = strategy
        self.sticky = hasattr(strategy, "cookie_for")
        self.hashing = getattr(strategy, "name", "") == "hash"
        self.cookie_name = cfg.sticky_cookie
        self.backends: dict[str, Backend] = {}
        self.limits = Limits(cfg.limit_request_line, cfg.limit_request_fields, cfg.limit_request_field_size,
                             cfg.limit_request_body, cfg.require_host)
        self.request_rewriter = RequestRewriter(trusted=TrustedPeers(cfg.forwarded_allow_ips),
                                                lb_headers=cfg.lb_headers)
        self.response_rewriter = ResponseRewriter(lb_headers=cfg.lb_headers)
        self.budget = RetryBudget(ratio=cfg.retry_budget)
        self.retries = cfg.retries
        self.connect_timeout = cfg.upstream_connect_timeout or 3600.0
        self.upstream_timeout = cfg.upstream_timeout or 86400.0
        self.header_timeout = cfg.header_timeout or 86400.0
        self.body_timeout = cfg.client_body_timeout or 86400.0
        self.keepalive = cfg.keepalive
        self.keepalive_max = cfg.upstream_keepalive
        self.max_connections = cfg.max_connections
        self.queue_timeout = cfg.queue_timeout
        self.admin_public = cfg.stats_bind == "public"
        self.clients: set[ClientConn] = set()
        self.waiting: deque[ClientConn] = deque()
        self.active = 0
        self.connections = 0      # accepted, in total
        self.requests = 0
        self.websockets = 0
        self.stopping = False
        self.admin_response: Any = None   # set by the process: (Request) -> bytes
        self.request_memo: dict[bytes, Request] = {}
        self.response_memo: dict[bytes, ResponseMemo] = {}

    # -- membership ---------------------------------------------------------------------------------

    def add_backend(self, backend: Backend) -> None:
        self.backends[backend.key] = backend
        self.strategy.add(backend.key, backend.weight)

    def remove_backend(self, key: str) -> None:
        backend = self.backends.pop(key, None)
        if backend is not None:
            self.strategy.remove(key)
            for up in list(backend.idle):
                up.close()

    def pick(self, hint: Any, tried: list[Backend]) -> Backend | None:
        strategy = self.strategy
        backends = self.backends
        key = strategy.pick(hint)
        if key is not None and tried and backends[key] in tried:
            # A retry goes to a backend not tried yet, when one is eligible.
            members = strategy.members
            for b in backends.values():
                if b not in tried and members[b.key].eligible:
                    key = b.key
                    break
        if key is None:
            # Local worker slots hold their port in the master: a slot whose worker is being
            # replaced still queues the connection, so use it rather than answer 503.
            for b in backends.values():
                if b.slot is not None and b not in tried and not b.ejected_until:
                    return b
            return None
        return backends[key]

    def cookie_header(self, key: str) -> bytes:
        return f"{self.cookie_name}={self.strategy.cookie_for(key)}; Path=/; HttpOnly".encode("latin-1")

    # -- connecting -------------------------------------------------------------------------------

    def connect(self, backend: Backend, ex: Exchange) -> None:
        backend.connecting += 1
        task = self.loop.create_task(self._connect(backend, ex))
        del task

    async def _connect(self, backend: Backend, ex: Exchange) -> None:
        try:
            async with asyncio.timeout(self.connect_timeout):
                _, up = await self.loop.create_connection(lambda: Upstream(self, backend), backend.host,
                                                          backend.port)
        except (OSError, TimeoutError) as exc:
            backend.connecting -= 1
            if ex.backend is backend and not ex.done and ex.up is None:
                ex.connect_failed(backend, exc, timed_out=isinstance(exc, TimeoutError))
                ex.client.flush()
            return
        backend.connecting -= 1
        client = ex.client
        if ex.done or ex.backend is not backend or client.closed or ex.up is not None:
            # The exchange went on without it (timed out, client gone): keep it for later.
            up.last_used = _now()
            if len(backend.idle) < self.keepalive_max and not ex.websocket:
                backend.idle.append(up)
            else:
                up.close()
            return
        ex.attach(up)
        client.flush()

    # -- health -----------------------------------------------------------------------------------

    def connect_failure(self, backend: Backend, why: str) -> None:
        """A refused or timed-out connect: take the backend out at once."""
        self.eject(backend, why, _now() + backend.ejector.eject())

    def passive_failure(self, backend: Backend, why: str) -> None:
        if backend.ejector.failure():
            self.eject(backend, why, _now() + backend.ejector.eject_for)

    def eject(self, backend: Backend, why: str, until: float) -> None:
        if backend.key not in self.backends:
            return
        if not backend.ejected_until:
            log.warning("proxy: backend %s is down (%s)", backend.key, why)
        backend.ejected_until = until
        backend.down_reason = why
        self.strategy.mark_down(backend.key)
        for up in list(backend.idle):
            up.close()

    def check_ejections(self, now: float) -> None:
        for backend in self.backends.values():
            if backend.ejected_until and now >= backend.ejected_until:
                backend.ejected_until = 0.0
                if backend.health is None or backend.health.healthy:
                    # Without an active check, come back on trial: the next failure ejects again.
                    self.set_up(backend)

    def set_up(self, backend: Backend) -> None:
        if backend.ejected_until:
            return
        if backend.health is not None and not backend.health.healthy:
            return
        m = self.strategy.members.get(backend.key)
        if m is not None and not m.up:
            log.info("proxy: backend %s is up", backend.key)
            backend.down_reason = ""
            self.strategy.mark_up(backend.key)

    # -- the sweep ----------------------------------------------------------------------------------

    def sweep(self) -> None:
        now = _now()
        for c in list(self.clients):
            if c.deadline_kind and now >= c.deadline and not c.closed:
                c.expire(now)
                if c.wbuf:
                    c.flush()
        self.check_ejections(now)

    def admit_next(self) -> None:
        waiting = self.waiting
        while waiting and (not self.max_connections or self.active < self.max_connections):
            c = waiting.popleft()
            if not c.closed:
                c.admitted()

    def busy(self) -> int:
        """Exchanges in progress (for a graceful stop)."""
        return sum(1 for c in self.clients if c.ex is not None or c.tunnel is not None)

    def close_idle(self) -> None:
        for c in list(self.clients):
            if c.ex is None and c.tunnel is None and not c.parser.requests:
                c.close()

