"""One request on its way through the proxy: pick a backend, get a connection, send the head and
stream the body, relay the response re-framed, and deal with every failure on the way
(retries within the budget, 502/503/504, passive ejection).

Invariants: an exchange ends exactly once (``done``), and ends by ``ClientConn.exchange_done``
or by closing the client; the strategy hears ``on_start`` once per try and ``on_finish`` once
per try; a try is repeated elsewhere only under the rules in prefork_lb.proxy.server.

The exchange talks to its client connection through
:class:`~prefork_lb.proxy.client_side.ClientSide` (write, flush, the deadline, finish, close)
and to the proxy through its shared state (:class:`~prefork_lb.proxy.state.ProxyState`); it
imports neither the client's module nor the proxy process's.
"""

from __future__ import annotations

import logging
from time import monotonic as _now
from typing import Any

from prefork_lb.admission import BUSY_DETAIL
from prefork_lb.http.framing import NONE, response_framing
from prefork_lb.http.parser import Request, seen_before
from prefork_lb.proxy.backend import Backend
from prefork_lb.proxy.cache_plan import Plan, conditional_head, forwarded_status
from prefork_lb.proxy.client_side import ClientSide
from prefork_lb.proxy.failures import IDEMPOTENT, ExchangeFailures
from prefork_lb.proxy.headers import cookie_value
from prefork_lb.proxy.memo import ResponseMemo
from prefork_lb.proxy.upstream import Upstream
from prefork_lb.request_id import incoming_id

__all__ = ["Exchange", "request_id_of"]

log = logging.getLogger("prefork_lb.error")

REPLAY_MAX = 64 * 1024  # body bytes kept for a retry of an idempotent request
FRESH_FOR_UNSAFE = 1.0  # a non-idempotent request reuses only connections used this recently
PIPELINE_BODY_MAX = 64 * 1024  # a pipelined GET's last answer had at most this much body
FAST = "fast"  # key in Request.memo: the last exchange with this head was that fast
RID = "request id"  # key in Request.memo: the valid request id this head carries, or None


def request_id_of(proxy: Any, req: Request) -> bytes | None:
    """The id of ``req`` when request ids are on: the client's when valid (the same head
    carries the same one: kept in its memo), or a new one with ``--request-id``; else None.
    An answer from the cache carries it as a forwarded response does."""
    lname = proxy.rid_lname
    if lname is None:
        return None
    memo = req.memo
    if memo is not None:
        rid = memo.get(RID, False)
        if rid is False:
            rid = memo[RID] = incoming_id(req.headers, lname)
    else:
        rid = incoming_id(req.headers, lname)
    if rid is None and proxy.rid_generate is not None:
        rid = proxy.rid_generate()
    return None if rid is None else rid.encode("latin-1")


class Exchange(ExchangeFailures):
    """One request on its way through the proxy: pick, send, relay the response."""

    __slots__ = ()  # the fields are ExchangeFailures' slots: one layout for both halves

    def __init__(self, client: ClientSide, req: Request) -> None:
        self.client = client
        self.req = req
        self.proxy = client.proxy
        self.backend: Backend | None = None
        self.up: Upstream | None = None
        self.tries = 0
        self.tried: list[Backend] = []
        self.sent = False  # a byte of this request reached a backend connection
        self.head = b""
        self.replay: list[bytes] | None = []
        self.replay_size = 0
        self.started = 0.0
        self.status = 0
        self.framing = ""
        self.responded = False  # a byte of the response went to the client
        self.set_cookie: bytes | None = None
        self.done = False
        self.websocket = False
        self.body_done = False
        self.until_close = False  # the response body ends when the backend closes
        self.head_at: tuple[int, int] = (-1, 0)  # (client flushes, wbuf index) when the head was queued
        self.pipelined = False  # may share a backend connection with others sent in the same pass
        self.length: int | None = None  # the response's Content-Length
        self.fresh = False  # sent again on a new connection after a pooled one was found closed
        self.request_id: bytes | None = None
        self.cache_body: tuple[int, list[tuple[bytes, bytes]], list[bytes]] | None = None
        self.cache_plan: Plan | None = None  # set by the client when the cache is on
        self.pool: str | None = None  # --mount: the route of the pool this request goes to

    # -- request side -----------------------------------------------------------------------------

    def start(self) -> None:
        proxy = self.proxy
        client = self.client
        req = self.req
        self.started = _now()
        if req.upgrade:
            self.websocket = any(n == "upgrade" and b"websocket" in v.lower() for n, _, v in req.headers)
        memo = req.memo
        if memo is not None and req.host is not None:
            # A request head seen before: its rewrite only depends on the peer and scheme.
            key = (client.peer_ip, client.scheme)
            head = memo.get(key)
            if head is None:
                head = proxy.request_rewriter.head(req, client.peer_ip, client.scheme, False)
                if len(memo) < 64:
                    memo[key] = head
            self.head = head
        else:
            # (No Host: the one sent is the address this client connected to.)
            authority = client.local_authority() if req.host is None else None
            self.head = proxy.request_rewriter.head(
                req, client.peer_ip, client.scheme, self.websocket, authority
            )
        value = self.request_id  # (set already when the cache looked at the request first)
        if value is None:
            value = self.request_id = request_id_of(proxy, req)
        if value is not None:
            # The rewriter dropped the client's line: the canonical id's goes in.
            self.head = self.head[:-2] + proxy.rid_line(value) + b"\r\n"
        proxy.budget.on_request()
        proxy.requests += 1
        if req.expect_continue and not req.complete:
            client.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        plan = self.cache_plan
        if plan is not None:
            if plan.conditional and plan.entry is not None:
                self.head = conditional_head(self.head, plan.entry.headers)
            if plan.wait and proxy.cache is not None:
                proxy.cache.park(self)  # another request for this key is in flight
                return
        self.route()

    def hint(self) -> Any:
        """What the pool's strategy keys on: the sticky cookie, the client address, or None."""
        kind = self.proxy.hints[self.pool]
        if kind == "sticky":
            return cookie_value(self.req.headers, self.proxy.cookie_names[self.pool])
        return self.client.peer_ip if kind == "hash" else None

    def pick(self) -> Backend | None:
        """The backend for the next try (one not tried yet when there is one), or None."""
        return self.proxy.pick(self.hint(), self.tried, self.pool)

    def in_pool(self) -> tuple[str, Any, bool, Any] | None:
        """--mount: the request's pool (found on its first try), that pool's strategy, whether
        it is sticky, and the hint; None after answering 404 when no route matches."""
        proxy = self.proxy
        pool = self.pool
        if pool is None:
            pool = self.pool = proxy.pool_for(self.req)
            if pool is None:
                self.fail(404, "no --mount route matches this request")
                return None
        return pool, proxy.strategy.pools[pool], proxy.hints[pool] == "sticky", self.hint()

    def route(self, backend: Backend | None = None) -> None:
        """Get a connection to ``backend``, or to the one picked here when none is given."""
        proxy = self.proxy
        pool = self.pool
        hint: Any = None
        if proxy.mounts is None:  # the hot path without --mount: attributes, no lookups
            strategy = proxy.strategy
            sticky = proxy.sticky
            if sticky:
                hint = cookie_value(self.req.headers, proxy.cookie_name)
            elif proxy.hashing:
                hint = self.client.peer_ip
        else:
            routed = self.in_pool()
            if routed is None:
                return
            pool, strategy, sticky, hint = routed
        if backend is None:
            backend = proxy.pick(hint, self.tried, pool)
            if backend is None:
                self.fail(503, "no backend available", retry_after=True)
                return
            if proxy.worker_limit and proxy.full(backend):
                backend = proxy.with_room(self.tried, pool)
                if backend is None:  # every local worker is full: refused at once, here
                    proxy.shed += 1
                    self.fail(503, BUSY_DETAIL, retry_after=True)
                    return
        self.backend = backend
        self.tries += 1
        self.tried.append(backend)
        strategy.on_start(backend.key)
        if sticky and (hint is None or strategy.key_for(hint) != backend.key):
            self.set_cookie = proxy.cookie_header(backend.key, pool)
        backend.stats.requests += 1  # tries: a retried request counts at each backend it tried
        req = self.req
        memo = req.memo
        # A retry goes on its own: it may be here because a pipeline it was in broke.
        self.pipelined = (
            memo is not None
            and proxy.pipeline > 1
            and req.method == "GET"
            and self.tries == 1
            and memo.get(FAST, False)
        )
        if self.pipelined:
            # Another GET for this backend went on a connection in this pass of the loop: go
            # behind it, in the same write; the worker reads them in one go too.
            batch = backend.batch
            if batch is not None and not batch.closed and len(batch.queue) < proxy.pipeline - 1:
                self.attach(batch)
                return
        up = None if self.websocket or not backend.idle else self.idle_connection(backend)
        if up is not None:
            self.attach(up)
        else:
            proxy.connect(backend, self)

    def idle_connection(self, backend: Backend) -> Upstream | None:
        """An idle keep-alive connection to ``backend`` this request may use, or None."""
        idle = backend.idle
        now = self.started
        unsafe = self.req.method not in IDEMPOTENT
        while idle:
            cand = idle.pop()
            if cand.closed:
                continue
            if unsafe and now - cand.last_used > FRESH_FOR_UNSAFE:
                cand.close()  # may be closing on the backend's side: not for a POST
                continue
            return cand
        return None

    def attach(self, up: Upstream) -> None:
        """``up`` is connected: send the head and what we have of the body."""
        self.up = up
        if up.ex is None:
            up.ex = self
            up.is_head = self.req.method == "HEAD"
            up.got_bytes = False
            if up.paused:
                up.paused = False
                up.transport.resume_reading()
        else:
            up.queue.append(self)  # pipelined: answered after those before it
            up.backend.stats.pipelined += 1
        self.client.sending()
        self.sent = True
        if self.req.memo is not None:
            # A whole request with no body: written at the end of this pass of the loop, in one
            # write with whatever else goes to this connection (see Proxy.end_of_pass).
            self.body_done = True
            out = up.out
            if not out:
                self.proxy.at_end_of_pass(up)
            out.append(self.head)
            if self.pipelined and self.backend is not None:
                self.backend.batch = up
            return
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
            self.client.body_sent()

    # -- response side ----------------------------------------------------------------------------

    def response_head(self, up: Upstream, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        if status < 200 and status != 101:
            return  # interim (100 Continue: we sent our own); the final response follows
        client = self.client
        req = self.req
        proxy = self.proxy
        self.status = status
        if status == 101:
            if not self.websocket:
                self.bad_response("101 to a request that asked for no upgrade")
                up.close()
                return
            return  # upgraded() follows with the tunnel
        length: int | None = None
        chunked = False
        reusable = True
        for name, value in headers:
            if len(name) == 14 and name.lower() == b"content-length":
                length = int(value)
            elif len(name) == 17 and name.lower() == b"transfer-encoding":
                chunked = True
        head_request = req.method == "HEAD"
        framing, keep = response_framing(
            status, head_request, req.version, length, chunked, req.keep_alive, proxy.stopping
        )
        if head_request:
            # llhttp cannot know this response has no body: it ends here.
            reusable = up.parser.should_keep_alive()
            up.reset_parser()
        elif framing != NONE and length is None and not chunked:
            self.until_close = True  # the backend ends the body by closing
        self.framing = framing
        self.length = length if framing == "length" else None
        plan = self.cache_plan
        if plan is not None and self.cache_head(up, status, headers, reusable):
            return
        client.responding(keep)
        head = proxy.response_rewriter.head(
            status,
            up.reason,
            headers,
            framing=framing,
            content_length=length,
            keep_alive=keep,
            version=req.version,
            backend=self.backend.name if self.backend else None,
            set_cookie=self.set_cookie,
        )
        self.head_at = client.mark()
        rid = self.request_id
        if plan is None:
            client.write(head if rid is None else head[:-2] + proxy.rid_line(rid) + b"\r\n")
        else:
            client.write(self.with_cache_status(head, plan, status))
        self.responded = True
        raw = up.raw_head
        if (
            raw is not None
            and framing == "length"
            and self.set_cookie is None
            and self.backend is not None
            and not proxy.stopping
            and length is not None
        ):
            memos = proxy.response_memo
            memo = memos.get(raw)
            if memo is None and seen_before(memos, raw):
                memo = memos[raw] = ResponseMemo(status, length, up.parser.should_keep_alive())
            if memo is not None and len(memo.heads) < 64:
                memo.heads[(req.version, keep, self.backend.name)] = head
        if req.method == "HEAD":
            self.response_done(up, reusable)

    def cache_head(
        self, up: Upstream, status: int, headers: list[tuple[bytes, bytes]], reusable: bool
    ) -> bool:
        """The cache's part in the response head. True when the response is the cache's (a 304
        to our revalidation, an error stale-if-error covers): its body is dropped and the client
        is answered from the cache in response_done."""
        cache = self.proxy.cache
        if cache is None or not cache.on_head(self, status, headers):
            return False
        if self.req.method == "HEAD":
            self.response_done(up, reusable)
        return True

    def with_cache_status(self, head: bytes, plan: Plan, status: int) -> bytes:
        """``head`` with the request id line, if any, and ``Cache-Status`` (the cache is on)."""
        rid = self.request_id
        extra = b"cache-status: " + forwarded_status(plan, status) + b"\r\n"
        return head[:-2] + (b"" if rid is None else self.proxy.rid_line(rid)) + extra + b"\r\n"

    def fast_response(self, up: Upstream, memo: ResponseMemo, body: bytes) -> bool:
        """A whole response whose head was seen before: relay it without parsing. False when
        the memo does not fit this exchange (the caller parses instead)."""
        req = self.req
        if (
            req.method == "HEAD"
            or self.set_cookie is not None
            or self.websocket
            or self.backend is None
            or self.cache_plan is not None  # (the cache keeps the response, adds Cache-Status)
        ):
            return False
        keep = req.keep_alive and not self.proxy.stopping
        head = memo.heads.get((req.version, keep, self.backend.name))
        if head is None:
            return False
        client = self.client
        self.status = memo.status
        self.framing = "length"
        self.length = memo.length
        self.responded = True
        client.keep_alive = keep
        rid = self.request_id
        client.write(head if rid is None else head[:-2] + self.proxy.rid_line(rid) + b"\r\n")
        if memo.length:
            client.write(body)
        self.response_done(up, memo.upstream_keep)
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
        if self.cache_body is not None:
            self.cache_body[2].append(body)
        client.deadline = _now() + self.proxy.upstream_timeout

    def response_done(self, up: Upstream, reusable: bool) -> None:
        if self.status < 200 or self.done:
            return  # an interim response, or the 101 (upgraded() takes over)
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
        memo = self.req.memo
        if memo is not None:
            # Pipelining needs answers that are quick, small (a client that does not read one
            # cannot hold up those behind it for long) and leave the connection open.
            length = self.length
            memo[FAST] = (
                latency < proxy.pipeline_latency
                and self.status < 500
                and reusable
                and length is not None
                and length <= PIPELINE_BODY_MAX
            )
        proxy.strategy.on_finish(backend.key, latency, self.status < 500)
        backend.stats.record_response(self.status, latency)
        if self.status >= 500 and self.status != 503 and backend.slot is None:
            # 503 is a backend shedding load (admission control): ejecting it would only pile
            # its share onto the others. Local workers are judged by the scoreboard instead.
            proxy.passive_failure(backend, f"HTTP {self.status}")
        else:
            backend.ejector.success()
        # Reuse the connection only when the exchange is clean at both ends (when it is not,
        # what was queued on it is retried: Upstream.connection_lost).
        if not (self.body_done and reusable) or up.closed:
            up.close()
        elif up.queue:
            up.ex = up.queue.popleft()  # the next response on it is the next pipelined one's
            up.is_head = False
            up.got_bytes = False
        elif not proxy.stopping and len(backend.idle) < proxy.keepalive_max:
            up.last_used = now
            backend.idle.append(up)
        else:
            up.close()
        if self.cache_plan is not None and proxy.cache is not None:
            proxy.cache.finish(self, client.scheme)  # kept; answered from the cache; waiters go on
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
        head = proxy.response_rewriter.head(
            101,
            up.reason,
            up.headers,
            framing="none",
            content_length=None,
            keep_alive=True,
            version=self.req.version,
            backend=self.backend.name,
            set_cookie=None,
            upgrade=True,
        )
        rid = self.request_id
        client.write(head if rid is None else head[:-2] + proxy.rid_line(rid) + b"\r\n")
        if rest:
            client.write(rest)
        proxy.strategy.on_finish(self.backend.key, _now() - self.started, True)
        # A WebSocket counts as a connection, not a request.
        self.backend.stats.websockets += 1
        self.backend.tunnels += 1
        up.tunneled = True
        self.backend.stats.requests -= 1
        proxy.requests -= 1
        proxy.websockets += 1
        client.start_tunnel(up)

    # -- connecting ----------------------------------------------------------------------------

    def connected(self, backend: Backend, up: Upstream | None, exc: BaseException | None) -> None:
        """The connect that :meth:`route` asked the proxy for ended: ``up``, or ``exc``."""
        if up is None:
            if self.backend is backend and not self.done and self.up is None:
                self.connect_failed(backend, exc, timed_out=isinstance(exc, TimeoutError))
                self.client.flush()
            return
        client = self.client
        if self.done or self.backend is not backend or client.closed or self.up is not None:
            # The exchange went on without it (timed out, client gone): keep it for later.
            up.last_used = _now()
            if len(backend.idle) < self.proxy.keepalive_max and not self.websocket:
                backend.idle.append(up)
            else:
                up.close()
            return
        self.attach(up)
        client.flush()

    # -- failures ---------------------------------------------------------------------------------

    def drop_upstream(self) -> None:
        """Give up the backend connection: closed, since what is still due on it can no longer
        be told apart. Exchanges pipelined on it with this one are retried elsewhere."""
        up = self.up
        self.up = None
        if up is not None:
            if up.ex is self:
                up.ex = None
            elif self in up.queue:
                up.queue.remove(self)
            up.close()
