"""How an exchange ends when something goes wrong: retries, error answers, timeouts, lost peers.

:class:`ExchangeFailures` is mixed into :class:`~prefork_lb.proxy.exchange.Exchange` (which
holds every attribute named below, in its slots). Kept apart so that the exchange's normal path
reads by itself; a mixin rather than a separate object, so the per-request path pays nothing.

Rules: a try that failed is told to the strategy and the backend's stats (``try_failed``);
another try is routed only within --retries and the retry budget (``may_retry``); a pooled
connection the backend closed before a byte of the answer is sent again once on a fresh
connection to the same backend, not counted as a failure (``send_again_fresh``); a POST that
was sent is never retried; nor is a request whose local worker was lost past the workers'
--request-timeout (504: the master aborted that worker for it, ``past_request_timeout``); an
answer of our own closes the client connection (``fail``), unless the response cache answers
instead with a stale entry its ``stale-if-error`` covers (the connection then stays open).
Every end of an exchange lets go of its cache lock (requests coalesced behind it go on).
"""

from __future__ import annotations

import logging
from time import monotonic as _now
from typing import TYPE_CHECKING

from prefork_lb.http.parser import Request
from prefork_lb.http.response import simple_response
from prefork_lb.proxy.backend import Backend
from prefork_lb.proxy.cache_plan import Plan
from prefork_lb.proxy.client_side import ClientSide
from prefork_lb.proxy.state import ProxyState
from prefork_lb.proxy.upstream import Upstream

__all__ = ["IDEMPOTENT", "ExchangeFailures"]

log = logging.getLogger("prefork_lb.error")

IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})


class ExchangeFailures:
    """The failure half of an exchange (see the module docstring). It declares the exchange's
    fields as slots, so that both halves read and write one layout (Exchange adds none)."""

    __slots__ = (
        "client",
        "req",
        "proxy",
        "backend",
        "up",
        "tries",
        "tried",
        "sent",
        "head",
        "replay",
        "replay_size",
        "started",
        "status",
        "framing",
        "responded",
        "set_cookie",
        "done",
        "websocket",
        "body_done",
        "until_close",
        "head_at",
        "pipelined",
        "length",
        "fresh",
        "request_id",
        "cache_body",
        "cache_plan",
        "pool",
    )

    client: ClientSide
    req: Request
    proxy: ProxyState
    backend: Backend | None
    up: Upstream | None
    tries: int
    replay: list[bytes] | None
    started: float
    status: int
    framing: str
    responded: bool
    done: bool
    until_close: bool
    head_at: tuple[int, int]
    fresh: bool
    request_id: bytes | None  # the id this request goes by (prefork_lb.request_id), or None
    cache_plan: Plan | None  # the response cache's part in it (prefork_lb.proxy.cache)

    if TYPE_CHECKING:

        def pick(self) -> Backend | None: ...
        def route(self, backend: Backend | None = None) -> None: ...
        def drop_upstream(self) -> None: ...
        def connected(self, backend: Backend, up: Upstream | None, exc: BaseException | None) -> None: ...

    def try_failed(self, backend: Backend, eject: str | None = None) -> None:
        """This try on ``backend`` failed: the strategy and the backend's stats hear it, and
        with ``eject`` (why) so does its passive health check."""
        proxy = self.proxy
        proxy.strategy.on_finish(backend.key, None, False)
        backend.stats.errors += 1
        if eject is not None:
            proxy.passive_failure(backend, eject)

    def may_retry(self, backend: Backend, taken: bool = False) -> bool:
        """Another try after this one on ``backend`` is allowed (by --retries and the retry
        budget): it is routed now. ``taken``: a backend took this try and failed it; False
        when no backend is left to try (the caller answers with that failure, not with 503,
        which says that no backend could take the request)."""
        proxy = self.proxy
        if self.tries > proxy.retries:
            return False
        nxt = self.pick() if taken else None
        if (nxt is None and taken) or not proxy.budget.try_spend():
            return False
        backend.stats.retries += 1
        self.client.retrying()
        self.route(nxt)
        return True

    def send_again_fresh(self, backend: Backend) -> None:
        """The pooled connection this try went on was closed by ``backend`` before a byte of
        the answer came: the backend closing an idle keep-alive connection just as the request
        was sent, which says nothing about its health. Sent again, once, on a new connection to
        the same backend; not counted as a failure, nor against --retries."""
        self.fresh = True
        backend.stats.retries += 1
        self.client.retrying()
        self.proxy.connect(backend, self)

    def give_up(self, status: int, why: str) -> None:
        """End with an error: ``status`` of our own, or, when part of the response is already
        out, cutting the client off (all that can be done then)."""
        if self.responded:
            self.done = True
            self.release_cache_lock()
            self.client.close()
        else:
            self.fail(status, why)

    def connect_failed(self, backend: Backend, exc: BaseException | None, timed_out: bool = False) -> None:
        if self.done:
            return
        self.try_failed(backend)
        self.proxy.connect_failure(backend, "connect timed out" if timed_out else f"connect failed: {exc}")
        # Nothing reached the backend: retry anywhere, within the budget.
        if not self.may_retry(backend):
            self.fail(504 if timed_out else 502, "backend unreachable")

    def upstream_lost(self, up: Upstream, exc: Exception | None) -> None:
        """The backend closed before the response was complete."""
        if self.done:
            return
        backend = self.backend
        assert backend is not None
        self.up = None
        if self.responded and self.until_close and not exc:
            # Close-delimited response: the end of the connection is the end of the body.
            if self.framing == "chunked":
                self.client.write(b"0\r\n\r\n")
            else:
                self.framing = "closed"
            self.done = True
            self.proxy.strategy.on_finish(backend.key, _now() - self.started, True)
            backend.stats.record_response(self.status, _now() - self.started)
            self.client.exchange_done(self)
            self.client.flush()
            return
        if self.responded:
            self.try_failed(backend)
            self.give_up(502, "backend closed the connection")
            return
        if self.past_request_timeout(backend):
            # The master aborted that worker for this request (or it died past the deadline):
            # 504, and never another try, which would block another worker as long.
            self.try_failed(backend)
            self.fail(504, "the request took too long")
            self.client.flush()
            return
        req = self.req
        replayable = (
            req.method in IDEMPOTENT
            and self.replay is not None
            and not up.got_bytes
            and (req.complete or not req.body_size)
        )
        if replayable and up.last_used and not self.fresh and not self.client.closed:
            # (last_used: the connection waited in the pool before this request)
            self.send_again_fresh(backend)
            return
        self.try_failed(backend)
        if replayable and self.may_retry(backend, taken=True):
            return
        self.proxy.passive_failure(backend, "connection closed before a response")
        self.fail(502, "backend closed the connection")
        self.client.flush()

    def past_request_timeout(self, backend: Backend) -> bool:
        """``backend`` is a local worker and this request has been on its way longer than the
        workers' --request-timeout (measured from before the worker got it, so never short)."""
        timeout = self.proxy.request_timeout
        return bool(timeout) and backend.slot is not None and _now() - self.started >= timeout

    def bad_response(self, why: str) -> None:
        if self.done:
            return
        backend = self.backend
        assert backend is not None
        log.warning("proxy: malformed response from %s: %s", backend.key, why)
        self.try_failed(backend, "malformed response")
        self.drop_upstream()
        if self.responded and self.client.take_back(self.head_at):
            # Nothing of the response has left yet: taken back, answered with 502 instead.
            self.responded = False
        self.give_up(502, "malformed response from the backend")

    def timed_out(self) -> None:
        """No response (or no further response bytes) within --upstream-timeout."""
        if self.done:
            return
        backend = self.backend
        up = self.up
        silent = up is not None and not up.got_bytes and not self.responded
        self.drop_upstream()
        if backend is not None:
            self.try_failed(backend, "response timed out")
            # --retry-on-timeout: nothing came back, so an idempotent request whose body is
            # still held may go to another backend (nginx's proxy_next_upstream timeout).
            if silent and self.proxy.retry_on_timeout and self.replayable() and self.may_retry(backend, True):
                return
        self.give_up(504, "the backend did not answer in time")

    def replayable(self) -> bool:
        """The request can be sent whole again: idempotent, its body (if any) held and read."""
        req = self.req
        return req.method in IDEMPOTENT and self.replay is not None and (req.complete or not req.body_size)

    def timed_out_client(self) -> None:
        """The client stopped sending its body: 408, and the backend connection is dropped."""
        self.drop_upstream()
        if self.backend is not None:
            self.proxy.strategy.on_finish(self.backend.key, None, True)
        self.done = True
        self.client.end_with(simple_response(408, "request body not received in time", close=True))

    def client_gone(self) -> None:
        """The client connection was lost mid-exchange: nobody reads the response."""
        self.done = True
        if self.backend is not None:
            self.proxy.strategy.on_finish(self.backend.key, None, True)
        self.drop_upstream()  # its response has no reader; the connection cannot be reused
        self.release_cache_lock()

    def release_cache_lock(self) -> None:
        """Requests waiting for this one's response (cache coalescing) go on without it."""
        cache = self.proxy.cache
        if self.cache_plan is not None and cache is not None:
            cache.release(self)

    def fail(self, status: int, why: str, retry_after: bool = False) -> None:
        """Answer the client with an error of our own; the connection closes after it (or the
        stale entry stale-if-error allows, when the cache is on)."""
        self.done = True
        self.status = status
        client = self.client
        if self.backend is not None and status >= 500:
            self.backend.stats.record_response(status, _now() - self.started)
        if status == 504:
            self.proxy.timeouts += 1  # /metrics: prefork_lb_request_timeouts_total{where="proxy"}
        cache = self.proxy.cache
        if self.cache_plan is not None and cache is not None:
            stale = cache.failed(self, status)  # stale-if-error: the stored answer instead
            if stale is not None:
                client.write(stale)
                client.exchange_done(self)
                return
        extra = "Retry-After: 1\r\n" if retry_after else ""
        if self.request_id is not None:
            extra += self.proxy.rid_line(self.request_id).decode("latin-1")
        client.write(simple_response(status, why, close=True, extra=extra))
        client.keep_alive = False
        client.exchange_done(self)
