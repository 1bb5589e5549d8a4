"""What one proxy process shares between its exchanges and connections: the backends and the
balancing strategy, the settings of the request path, the retry budget, the response memo,
the end-of-pass write batch and the counters, with backend membership and health.

:class:`ProxyState` is the part of the proxy that the exchange (prefork_lb.proxy.exchange)
works with; ``prefork_lb.proxy.server.Proxy`` adds the client side (admission, the deadline
sweep, access log). This module imports neither: what it calls on an exchange or on a
connection is the :class:`Connecting` and :class:`Flushable` protocols.

Invariants: ``backends`` and the strategy's members are the same keys (``add_backend`` /
``remove_backend``); an ejected backend is marked down in the strategy and has no idle
connection; ``pass_end`` is empty unless a callback to :meth:`ProxyState.end_of_pass` is
scheduled, and that callback flushes each connection in it once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from time import monotonic as _now
from typing import Any, Protocol

from prefork_lb.admission import limit
from prefork_lb.mounts import request_host
from prefork_lb.proxy.backend import Backend
from prefork_lb.proxy.cache import ProxyCache
from prefork_lb.proxy.deadline import within
from prefork_lb.proxy.headers import RequestRewriter, ResponseRewriter, TrustedPeers
from prefork_lb.proxy.health import RetryBudget
from prefork_lb.proxy.memo import ResponseMemos
from prefork_lb.proxy.upstream import Upstream
from prefork_lb.request_id import RequestIds

__all__ = ["Connecting", "Flushable", "ProxyState", "hint_kind"]


def hint_kind(strategy: Any) -> str:
    """What a strategy keys on: "sticky" (the cookie), "hash" (the client address) or ""."""
    if hasattr(strategy, "cookie_for") and getattr(strategy, "name", "") != "pooled":
        return "sticky"
    return "hash" if getattr(strategy, "name", "") == "hash" else ""


log = logging.getLogger("prefork_lb.error")


class Flushable(Protocol):
    """A connection that gathers its writes (ClientConn, Upstream)."""

    def flush(self) -> None: ...


class Connecting(Protocol):
    """An exchange waiting for a new backend connection (prefork_lb.proxy.exchange.Exchange)."""

    def connected(self, backend: Backend, up: Upstream | None, exc: BaseException | None) -> None:
        """The connect to ``backend`` ended: ``up``, or ``exc`` when it failed."""
        ...


class ProxyState:
    """Backends, strategy, request-path settings and counters of one proxy process."""

    def __init__(self, cfg: Any, strategy: Any, loop: asyncio.AbstractEventLoop) -> None:
        self.cfg = cfg
        self.loop = loop
        self.strategy = strategy
        self.sticky = hasattr(strategy, "cookie_for")
        self.hashing = getattr(strategy, "name", "") == "hash"
        self.cookie_name = cfg.sticky_cookie
        self.backends: dict[str, Backend] = {}
        # Request ids: the header (None: off), its lower-case name, the generator (None: only
        # valid incoming ids). The rewriters drop the header either way and the exchange adds
        # the id's own line, so what the backend and the client see is always the canonical id.
        rid = cfg.request_id_header
        self.rid_name: bytes | None = rid.encode("ascii") if rid else None
        self.rid_lname: str | None = rid.lower() if rid else None
        self.rid_generate: Callable[[], str] | None = RequestIds().new if rid and cfg.request_id else None
        self.request_rewriter = RequestRewriter(
            trusted=TrustedPeers(cfg.forwarded_allow_ips), lb_headers=cfg.lb_headers, drop=self.rid_lname
        )
        self.response_rewriter = ResponseRewriter(lb_headers=cfg.lb_headers, drop=self.rid_lname)
        self.budget = RetryBudget(ratio=cfg.retry_budget)
        self.retries = cfg.retries
        self.connect_timeout = cfg.upstream_connect_timeout or 3600.0
        self.upstream_timeout = cfg.upstream_timeout or 86400.0
        self.retry_on_timeout = bool(getattr(cfg, "retry_on_timeout", False))
        # The workers' --request-timeout: a local worker lost after it is a worker the master
        # aborted for a blocked request (prefork_lb.request_deadline), see upstream_lost.
        self.request_timeout = getattr(cfg, "request_timeout", 0.0) or 0.0
        self.keepalive_max = cfg.upstream_keepalive
        self.pipeline = cfg.upstream_pipeline
        self.pipeline_latency = cfg.upstream_pipeline_latency
        self.pass_end: list[Flushable] = []  # connections with writes for the end of this pass
        self.requests = 0
        self.websockets = 0
        self.timeouts = 0  # 504s of our own: --upstream-timeout, a connect timeout, a worker aborted
        self.stopping = False
        self.response_memo: ResponseMemos = {}  # None: seen once
        size = getattr(cfg, "cache_size", 0)
        self.cache: ProxyCache | None = None
        if size:
            self.cache = ProxyCache(size, cfg.cache_max_object, getattr(cfg, "cache_lock_timeout", 5.0))
        # Admission control for local workers (--dispatch proxy): requests in flight to one
        # worker slot past which a request is answered 503 here (0: none); ``shed`` counts them.
        self.worker_limit = limit(getattr(cfg, "max_concurrency", 0), getattr(cfg, "queue_size", 0))
        self.shed = 0
        # --mount: the pools (prefork_lb.mounts), each with its strategy (prefork_lb.proxy.pools)
        # and limit; a request's pool is its route (None without --mount).
        self.mounts: Any = getattr(cfg, "mounts", None)
        self.pool_limits: dict[str | None, int] = {None: self.worker_limit}
        self.hints: dict[str | None, str] = {None: hint_kind(strategy)}
        # The sticky cookie's name per pool: each pool pins a client to its own backend, so two
        # sticky pools must not overwrite each other's cookie (Path=/ sends both everywhere).
        # The first sticky pool has --sticky-cookie's name, a later one NAME-<its position>.
        self.cookie_names: dict[str | None, str] = {None: self.cookie_name}
        if self.mounts is not None:
            self.pool_limits = {m.route: limit(m.max_concurrency, m.queue_size) for m in self.mounts.mounts}
            self.worker_limit = max(self.pool_limits.values())
            self.hints = {route: hint_kind(s) for route, s in strategy.pools.items()}
            self.sticky = "sticky" in self.hints.values()
            sticky = [i for i, m in enumerate(self.mounts.mounts) if self.hints[m.route] == "sticky"]
            self.cookie_names = {
                m.route: self.cookie_name if not sticky or i == sticky[0] else f"{self.cookie_name}-{i}"
                for i, m in enumerate(self.mounts.mounts)
            }

    def pool_for(self, req: Any) -> str | None:
        """The route of the pool a request goes to (--mount), or None: no route matches."""
        m = self.mounts.route(request_host(req.host), req.split_target()[0].decode("latin-1"))
        return None if m is None else m.route

    def rid_line(self, rid: bytes) -> bytes:
        """The request id's header line."""
        assert self.rid_name is not None
        return self.rid_name + b": " + rid + b"\r\n"

    # -- writing ------------------------------------------------------------------------------------

    def at_end_of_pass(self, conn: Flushable) -> None:
        """Flush ``conn`` once this pass of the event loop has handled all its ready sockets.
        Writes to backends then go out together (a worker wakes once for all of them, and the
        pipelined GETs for one connection take one write), and so do responses to clients."""
        pending = self.pass_end
        if not pending:
            self.loop.call_soon(self.end_of_pass)
        pending.append(conn)

    def end_of_pass(self) -> None:
        pending, self.pass_end = self.pass_end, []
        for conn in pending:
            conn.flush()

    # -- membership ---------------------------------------------------------------------------------

    def add_backend(self, backend: Backend) -> None:
        self.backends[backend.key] = backend
        if backend.pool is not None:
            self.strategy.place(backend.key, backend.pool)
        self.strategy.add(backend.key, backend.weight)

    def remove_backend(self, key: str) -> None:
        backend = self.backends.pop(key, None)
        if backend is not None:
            self.strategy.remove(key)
            for up in list(backend.idle):
                up.close()

    def pick(self, hint: Any, tried: list[Backend], pool: str | None = None) -> Backend | None:
        """A backend of ``pool`` (--mount; None: the only pool) for a try."""
        strategy = self.strategy if pool is None else self.strategy.pools[pool]
        backends = self.backends
        key = strategy.pick(hint)
        if key is not None and tried and backends[key] in tried:
            # A retry goes to a backend not tried yet, when one is eligible.
            members = strategy.members
            for b in backends.values():
                if b not in tried and b.pool == pool and members[b.key].eligible:
                    key = b.key
                    break
        if key is None:
            # Local worker slots hold their port in the master: a slot whose worker is being
            # replaced still queues the connection, so use it rather than answer 503.
            for b in backends.values():
                if (
                    b.slot is not None
                    and b.pool == pool
                    and b not in tried
                    and not b.ejected_until
                    and not b.admin_state
                ):
                    return b
            return None
        return backends[key]

    def full(self, backend: Backend) -> bool:
        """A local worker with its --max-concurrency + --queue-size requests in flight through
        us: it would answer 503 itself, or not at all while a view blocks its loop."""
        cap = self.pool_limits.get(backend.pool, 0)
        return backend.slot is not None and cap > 0 and self.strategy.members[backend.key].in_flight >= cap

    def with_room(self, tried: list[Backend], pool: str | None = None) -> Backend | None:
        """An eligible backend of ``pool`` not tried yet that is not full (remote backends have
        no limit)."""
        members = self.strategy.members
        for b in self.backends.values():
            if b not in tried and b.pool == pool and members[b.key].eligible and not self.full(b):
                return b
        return None

    def cookie_header(self, key: str, pool: str | None = None) -> bytes:
        name = self.cookie_names[pool]
        return f"{name}={self.strategy.cookie_for(key)}; Path=/; HttpOnly".encode("latin-1")

    # -- connecting -------------------------------------------------------------------------------

    def connect(self, backend: Backend, ex: Connecting) -> None:
        backend.connecting += 1
        task = self.loop.create_task(self._connect(backend, ex))
        del task

    async def _connect(self, backend: Backend, ex: Connecting) -> None:
        memos = self.response_memo
        try:
            _, up = await within(
                self.connect_timeout,
                self.loop.create_connection(lambda: Upstream(backend, memos), backend.host, backend.port),
            )
        except (OSError, TimeoutError) as exc:
            backend.connecting -= 1
            ex.connected(backend, None, exc)
            return
        backend.connecting -= 1
        ex.connected(backend, up, None)

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
            backend.stats.ejections += 1
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
