"""The proxy process: event loop, backends (local worker slots and remote hosts), health
checks, the admin documents, and a graceful stop.

Forked by the master like the handoff dispatcher and supervised the same way (heartbeat on
the scoreboard; a dead proxy is replaced while the master keeps the listeners): :class:`ProxyChild`
is its side of the child-process contract (prefork_lb.child), :class:`ProxyProcess` the proxy. It never
imports the user's app: it only knows addresses. Its /lb-health and /lb-stats documents go to
the admin process (prefork_lb.admin, which serves --stats-bind) over a private channel, or to
clients of the public listeners with --stats-bind public.

Local workers (--dispatch proxy) are read from the scoreboard every :data:`SYNC` seconds: an
entry's SLOT and PORT name the backend ``127.0.0.1:PORT``; a slot with no ready worker is
marked down (yet still used when nothing else is up, since the master keeps its port
queueing). Remote backends (--backends) get active health checks with rise/fall thresholds.
Both get passive ejection (connect errors, timeouts, bursts of 5xx).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import ssl
import time
from collections import Counter
from collections.abc import Callable
from typing import Any, ClassVar

from prefork_lb import scoreboard as sb
from prefork_lb.child import ChildContext, ChildProcess
from prefork_lb.http.parser import RequestParser
from prefork_lb.http.response import simple_response
from prefork_lb.proxy.deadline import within
from prefork_lb.proxy.health import HealthState, parse_backends
from prefork_lb.proxy.listening import stop_accepting
from prefork_lb.proxy.operator import (
    Journal,
    OperatorError,
    apply,
    cache_operation,
    journal_entry,
    state_of,
)
from prefork_lb.proxy.resolve import Resolution, resolver
from prefork_lb.proxy.server import SWEEP, Backend, ClientConn, Proxy

log = logging.getLogger("prefork_lb.error")

SYNC = 0.1  # seconds between scoreboard reads and heartbeats
IDLE_BEFORE_CLOSE = 0.5  # a draining proxy closes keep-alive connections idle this long


def tls_context(certfile: str, keyfile: str | None) -> ssl.SSLContext:
    """The public listeners' TLS: 1.2 and up, the library's default ciphers, HTTP/1.1 by ALPN."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.options |= ssl.OP_NO_COMPRESSION
    ctx.load_cert_chain(certfile, keyfile)
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


def make_strategy(cfg: Any, secret: bytes | None) -> Any:
    """--strategy's, or with --mount one per pool behind a PooledStrategy."""
    from prefork_lb.balance import make

    def one(name: str) -> Any:
        options: dict[str, Any] = {"slow_start": cfg.slow_start}
        if name == "sticky" and secret:
            options["secret"] = secret
        return make(name, **options)

    mounts = getattr(cfg, "mounts", None)
    if mounts is None:
        return one(cfg.strategy)
    from prefork_lb.proxy.pools import PooledStrategy

    return PooledStrategy(mounts, one)


class ProxyProcess:
    def __init__(
        self,
        cfg: Any,
        listeners: list[socket.socket],
        admin: list[socket.socket],
        board: sb.Scoreboard | None,
        child: ChildProcess | None,
        secret: bytes | None,
        loop: asyncio.AbstractEventLoop,
        stats_link: socket.socket | None = None,
        journal: Any = None,
    ) -> None:
        self.cfg = cfg
        self.stats_link = stats_link  # the admin process asks for our documents here
        self.journal = Journal(journal) if journal is not None else None  # control socket changes
        self.loop = loop
        self.listeners = listeners
        self.admin = admin
        self.board = board
        self.child = child  # heartbeat and readiness (None: run outside a master, in tests)
        self.proxy = Proxy(cfg, make_strategy(cfg, secret), loop)
        self.proxy.admin_response = self.admin_response
        self.servers: list[Any] = []
        self.stopped = asyncio.Event()
        self.graceful = True
        self.slot_seen: dict[int, float] = {}
        self.slot_interface: dict[int, str] = {}  # what a slot's latest ready worker serves
        self.shed_written = 0  # proxy.shed as last written to our scoreboard entry
        self.tasks: list[asyncio.Task[Any]] = []
        for host, port, weight in parse_backends(cfg.backends or []):
            b = Backend(host, port, weight)
            if cfg.health_check_interval > 0:
                b.health = HealthState(cfg.health_check_rise, cfg.health_check_fall)
            self.proxy.add_backend(b)

    # -- local workers ----------------------------------------------------------------------------

    def sync(self) -> None:
        board = self.board
        if board is None:
            return
        ports: dict[int, tuple[int, bool]] = {}
        for e in board.entries_in_use():
            slot, port = e.slot, e.port
            if slot < 0 or port <= 0:
                continue
            ready = e.state in (sb.READY, sb.RETIRING)
            if ready and e.interface:
                self.slot_interface[slot] = sb.INTERFACES[e.interface]
            prev = ports.get(slot)
            ports[slot] = (port, ready or (prev is not None and prev[1]))
        proxy = self.proxy
        now = time.monotonic()
        for slot, (port, ready) in ports.items():
            self.slot_seen[slot] = now
            key = f"127.0.0.1:{port}"
            b = proxy.backends.get(key)
            if b is None:
                b = Backend("127.0.0.1", port, 1, slot=slot, pool=self.pool_of(slot))
                proxy.add_backend(b)
                if not ready:
                    proxy.strategy.mark_down(key)
                continue
            m = proxy.strategy.members[key]
            if ready and not m.up:
                proxy.set_up(b)
            elif not ready and m.up:
                proxy.strategy.mark_down(key)
                # Its worker drains: close our idle connections to it, so it can finish (it
                # serves what we sent before this, and closes the rest itself).
                for up in list(b.idle):
                    up.close()
        # A slot with no worker for a while is gone (TTOU, autoscaling down).
        for b in list(proxy.backends.values()):
            if b.slot is not None and b.slot not in ports:
                if now - self.slot_seen.get(b.slot, now) > 5.0:
                    proxy.remove_backend(b.key)
                elif proxy.strategy.members[b.key].up:
                    proxy.strategy.mark_down(b.key)

    def pool_of(self, slot: int) -> str | None:
        mounts = self.proxy.mounts
        m = None if mounts is None else mounts.for_slot(slot)
        return None if m is None else m.route

    async def ticker(self) -> None:
        proxy = self.proxy
        last_sync = 0.0
        while True:
            await asyncio.sleep(SWEEP)
            proxy.sweep()
            now = time.monotonic()
            if now - last_sync >= SYNC:
                last_sync = now
                if self.child is not None and not self.child.beat():
                    self.stop(False)
                    return
                if self.child is not None and proxy.shed != self.shed_written:
                    self.child.entry.shed(proxy.shed - self.shed_written)  # scoreboard word SHED
                    self.shed_written = proxy.shed
                self.sync()

    # -- active health checks ---------------------------------------------------------------------

    async def check_loop(self, b: Backend) -> None:
        cfg = self.cfg
        proxy = self.proxy
        while b.key in proxy.backends:
            ok = await self.probe(b)
            health = b.health
            first = health.checking
            if health.observe(ok):
                if health.healthy:
                    b.ejected_until = 0.0
                    proxy.set_up(b)
                elif first:
                    log.warning("proxy: backend %s failed its first health check", b.key)
                    b.down_reason = "health check"
                else:
                    log.warning("proxy: backend %s failed %d health checks", b.key, cfg.health_check_fall)
                    b.down_reason = "health check"
                    proxy.strategy.mark_down(b.key)
            await asyncio.sleep(cfg.health_check_interval)

    async def probe(self, b: Backend) -> bool:
        try:
            line = await within(self.cfg.health_check_timeout or None, self.ask(b))
            parts = line.split(None, 2)
            return len(parts) >= 2 and parts[0].startswith(b"HTTP/1.") and 200 <= int(parts[1]) < 400
        except (OSError, TimeoutError, ValueError, asyncio.IncompleteReadError):
            return False

    async def ask(self, b: Backend) -> bytes:
        """One health check request to ``b``: the status line of its answer."""
        reader, writer = await asyncio.open_connection(b.host, b.port)
        try:
            writer.write(
                f"GET {self.cfg.health_check_path} HTTP/1.1\r\nHost: {b.key}\r\n"
                f"User-Agent: prefork_lb-health\r\nConnection: close\r\n\r\n".encode("latin-1")
            )
            return await reader.readline()
        finally:
            writer.close()

    # -- admin endpoints ----------------------------------------------------------------------------

    def health_doc(self) -> dict[str, Any]:
        proxy = self.proxy
        snap = {m["key"]: m for m in proxy.strategy.snapshot()}
        backends = []
        healthy = 0
        for b in proxy.backends.values():
            m = snap.get(b.key)
            lat = m["latency"] if m else None
            up = bool(m and m["state"] != "down")  # health, whatever an operator's drain says
            healthy += up
            backends.append(
                {
                    "name": b.key,
                    "healthy": up,
                    "state": state_of(proxy, b),
                    "in_flight": m["in_flight"] if m else 0,
                    "latency_ms": None if lat is None else round(lat * 1000, 3),
                    **({"slot": b.slot} if b.slot is not None else {}),
                    **({"pool": b.pool} if b.pool is not None else {}),
                    **({"reason": b.down_reason} if not up and b.down_reason else {}),
                }
            )
        total = len(backends)
        status = "down" if not healthy else ("ok" if healthy == total else "degraded")
        return {"status": status, "healthy": healthy, "total": total, "backends": backends}

    def stats_doc(self) -> dict[str, Any]:
        proxy = self.proxy
        return {
            "strategy": self.cfg.strategy,
            "requests": proxy.requests,
            "websockets": proxy.websockets,
            "timeouts": proxy.timeouts,  # 504s the proxy answered itself
            "connections": proxy.connections,
            "active_connections": proxy.active,
            "queued": len(proxy.waiting),
            "shed": proxy.shed,  # requests answered 503 because every local worker was full
            "pid": os.getpid(),
            # --dispatch proxy: worker slots with a ready worker (autoscaling shows here)
            "local_workers": sum(
                1 for b in proxy.backends.values() if b.slot is not None and proxy.strategy.members[b.key].up
            ),
            "backends": [
                {
                    **b.stats.as_dict(b.key),
                    "state": state_of(proxy, b),
                    "weight": b.weight,
                    **({"pool": b.pool} if b.pool is not None else {}),
                }
                for b in proxy.backends.values()
            ],
            # --cache-size: the response cache's counts and memory; null when it is off
            "cache": proxy.cache.store.stats() if proxy.cache is not None else None,
            # --mount: each pool's route, app, interface, workers, strategy and backends; else null
            "pools": self.pools_doc(),
        }

    def pools_doc(self) -> list[dict[str, Any]] | None:
        proxy = self.proxy
        if proxy.mounts is None:
            return None
        docs = []
        for m in proxy.mounts.mounts:
            mine = [b for b in proxy.backends.values() if b.pool == m.route]
            up = [b for b in mine if proxy.strategy.members[b.key].up]
            docs.append(
                {
                    "route": m.route,
                    "host": m.host,
                    "prefix": m.prefix,
                    "app": m.app,
                    "interface": m.interface,
                    "workers": m.workers,
                    "slots": [m.first_slot, m.first_slot + m.workers - 1],
                    "strategy": m.strategy,
                    "max_concurrency": m.max_concurrency,
                    "queue_size": m.queue_size,
                    "ready_workers": len(up),
                    # what the pool's ready workers serve: {"asgi": 2} (auto shows what it learned)
                    "serving": dict(
                        Counter(self.slot_interface[b.slot] for b in up if b.slot in self.slot_interface)
                    ),
                    "requests": sum(b.stats.requests for b in mine),
                    "backends": [b.key for b in mine],
                }
            )
        return docs

    def document(self, what: str) -> dict[str, Any] | None:
        """What the admin process asked for over its channel (prefork_lb.admin.link)."""
        if what == "health":
            return self.health_doc()
        if what == "stats":
            return self.stats_doc()
        if what == "metrics":
            return self.metrics_doc()
        if what.startswith("backend "):
            return self.operate(what[len("backend ") :])
        if what.startswith("cache "):
            return self.operate_cache(what[len("cache ") :])
        return None

    def operate_cache(self, question: str) -> dict[str, Any]:
        """``prefork_lb ctl cache ...`` from the control socket (prefork_lb.proxy.operator)."""
        try:
            req = json.loads(question)
            if not isinstance(req, dict):
                raise OperatorError("not a JSON object")
            doc = cache_operation(self.proxy, req)
        except (OperatorError, ValueError) as exc:
            return {"error": str(exc)}
        log.info(
            "proxy: cache purge %r: %d entries purged (control socket)", doc["prefix"] or "", doc["purged"]
        )
        return {**doc, "pid": os.getpid()}

    def operate(self, question: str) -> dict[str, Any]:
        """A change of the backend pool from the control socket (prefork_lb.proxy.operator)."""
        try:
            req = json.loads(question)
            if not isinstance(req, dict):
                raise OperatorError("not a JSON object")
            before = set(self.proxy.backends)
            doc = apply(self.proxy, req, self.health_settings())
        except (OperatorError, ValueError) as exc:
            return {"error": str(exc)}
        if self.journal is not None:
            self.journal.record(journal_entry(req, doc))
        for key in set(self.proxy.backends) - before:
            b = self.proxy.backends[key]
            log.info("proxy: backend %s added (control socket)", key)
            if b.health is not None:
                self.tasks.append(self.loop.create_task(self.check_loop(b)))
        if req.get("op") != "add":
            log.info("proxy: backend %s: %s (control socket)", req.get("name"), doc["backend"]["state"])
        return doc

    def health_settings(self) -> tuple[int, int] | None:
        """(rise, fall) of the active checks of a backend added at run time, None without them."""
        cfg = self.cfg
        return (cfg.health_check_rise, cfg.health_check_fall) if cfg.health_check_interval > 0 else None

    def metrics_doc(self) -> dict[str, Any]:
        """What /metrics shows beyond /lb-stats: per backend, its pool and a latency histogram
        at the workers' bucket bounds."""
        backends = {}
        for b in self.proxy.backends.values():
            h = b.stats.histogram
            counts, total = h.cumulative(sb.DURATION_BUCKETS)
            backends[b.key] = {
                "idle": len(b.idle),
                "connecting": b.connecting,
                "active": max(0, b.open - len(b.idle)),
                "websockets": b.tunnels,
                "buckets": counts,
                "count": h.count,
                "sum": total,
            }
        return {"bounds": list(sb.DURATION_BUCKETS), "backends": backends}

    def admin_response(self, req: Any) -> bytes:
        path = req.split_target()[0]
        if req.method not in ("GET", "HEAD"):
            return simple_response(405, "use GET", close=not req.keep_alive, extra="Allow: GET, HEAD\r\n")
        if path == b"/lb-health":
            doc = self.health_doc()
            code = 200 if doc["healthy"] else 503
        elif path == b"/lb-stats":
            doc, code = self.stats_doc(), 200
        else:
            return simple_response(404, "not found: try /lb-health or /lb-stats", close=not req.keep_alive)
        body = json.dumps(doc, indent=1).encode() + b"\n"
        reason = "OK" if code == 200 else "Service Unavailable"
        head = (
            f"HTTP/1.1 {code} {reason}\r\nContent-Type: application/json\r\nCache-Control: no-store\r\n"
            f"Content-Length: {len(body)}\r\n" + ("" if req.keep_alive else "Connection: close\r\n") + "\r\n"
        )
        return head.encode() + (b"" if req.method == "HEAD" else body)

    # -- running ------------------------------------------------------------------------------------

    async def serve(self) -> None:
        cfg = self.cfg
        loop = self.loop
        ctx = tls_context(cfg.certfile, cfg.keyfile) if cfg.certfile else None
        scheme = "https" if ctx else "http"
        proxy = self.proxy
        for s in self.listeners:
            s.setblocking(False)
            self.servers.append(
                await loop.create_server(
                    lambda: ClientConn(proxy, scheme), sock=s, ssl=ctx, backlog=cfg.backlog
                )
            )
        for s in self.admin:
            s.setblocking(False)
            self.servers.append(await loop.create_server(lambda: AdminConn(self), sock=s, backlog=64))
        self.answer_admin(True)
        self.sync()
        self.replay_changes()
        dns = Resolution(proxy, resolver(loop, cfg.upstream_connect_timeout), cfg.health_check_interval)
        for b in await dns.start(list(proxy.backends.values())):
            self.tasks.append(loop.create_task(dns.retry(b)))
        self.tasks.append(loop.create_task(self.ticker()))
        for b in list(proxy.backends.values()):
            if b.health is not None:
                self.tasks.append(loop.create_task(self.check_loop(b)))
        if self.child is not None:
            self.child.notify_ready()
        await self.stopped.wait()
        # A successor (a reload) answers the admin process from now on: questions, and backend
        # changes, go to the proxy that serves new connections.
        self.answer_admin(False)
        # Stop accepting; let exchanges in flight finish (graceful) within the deadline.
        proxy.stopping = True
        await stop_accepting(loop, self.servers)  # (those accepted so far are in proxy.clients)
        grace = cfg.graceful_timeout if self.child is None else self.child.graceful_timeout()
        deadline = time.monotonic() + (grace if self.graceful else 0)
        while not proxy.tunnels_only() and time.monotonic() < deadline:
            proxy.close_idle(IDLE_BEFORE_CLOSE)
            await asyncio.sleep(0.05)
        # Only websockets are left: the master may stop the workers now (it waits for this
        # state, prefork_lb.supervisor.step_stop); their drain's close frames 1001 go through
        # the tunnels, which close as the workers do.
        if self.child is not None:
            self.child.entry.set_state(sb.DRAINING)
        while proxy.clients and time.monotonic() < deadline:
            proxy.close_idle(IDLE_BEFORE_CLOSE)
            await asyncio.sleep(0.05)
        for t in self.tasks:
            t.cancel()
        for c in list(proxy.clients):
            c.close()
        for b in proxy.backends.values():
            for up in list(b.idle):
                up.close()

    def answer_admin(self, on: bool) -> None:
        """Answer the admin process's questions on the link (prefork_lb.admin.link), or stop."""
        link = self.stats_link
        if link is None:
            return
        if not on:
            self.loop.remove_reader(link.fileno())
            return
        from prefork_lb.admin.link import answer

        link.setblocking(False)
        self.loop.add_reader(link.fileno(), answer, link, self.document)

    def replay_changes(self) -> None:
        """What ``prefork_lb ctl backend ...`` changed for our predecessors (the journal)."""
        if self.journal is not None and self.journal.entries():
            n = self.journal.replay(self.proxy, self.health_settings())
            log.info("proxy: %d backend change%s from the control socket kept", n, "" if n == 1 else "s")

    def stop(self, graceful: bool) -> None:
        self.graceful = self.graceful and graceful
        self.stopped.set()


class AdminConn(asyncio.Protocol):
    """The admin listener: /lb-health and /lb-stats, nothing else."""

    def __init__(self, owner: ProxyProcess) -> None:
        self.owner = owner
        self.parser = RequestParser()
        self.transport: Any = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        from prefork_lb.http.errors import HTTPError

        try:
            self.parser.feed(data)
        except HTTPError as exc:
            self.transport.write(simple_response(exc.status, exc.detail))
            self.transport.close()
            return
        while self.parser.requests:
            req = self.parser.requests.popleft()
            self.transport.write(self.owner.admin_response(req))
            if not req.keep_alive:
                self.transport.close()
                return


def new_loop(kind: str) -> asyncio.AbstractEventLoop:
    if kind in ("auto", "uvloop"):
        try:
            import uvloop

            return uvloop.new_event_loop()
        except ImportError:
            if kind == "uvloop":
                log.warning("proxy: uvloop is not installed; using asyncio's loop")
    return asyncio.new_event_loop()


class ProxyChild(ChildProcess):
    """The proxy as a child of the master: an event loop (uvloop when there is one) running
    :class:`ProxyProcess`; TERM drains within --graceful-timeout, INT and QUIT stop at once."""

    role: ClassVar[str] = "proxy"

    def __init__(
        self,
        ctx: ChildContext,
        listeners: list[socket.socket],
        admin: list[socket.socket],
        secret: bytes | None,
        stats_link: socket.socket | None = None,
        journal: Any = None,
    ) -> None:
        super().__init__(ctx)
        self.journal = journal
        self.listeners = listeners
        self.admin = admin
        self.secret = secret
        self.stats_link = stats_link
        self.loop: asyncio.AbstractEventLoop | None = None
        self.proc: ProxyProcess | None = None

    def boot(self) -> int:
        self.loop = loop = new_loop(self.cfg.proxy_loop)
        asyncio.set_event_loop(loop)
        self.proc = ProxyProcess(
            self.cfg,
            self.listeners,
            self.admin,
            self.ctx.board,
            self,
            self.secret,
            loop,
            self.stats_link,
            self.journal,
        )
        return 0

    def install(self, sig: signal.Signals, handler: Callable[[], None]) -> None:
        assert self.loop is not None
        self.loop.add_signal_handler(sig, handler)

    def stop(self, graceful: bool) -> None:
        assert self.proc is not None
        self.proc.stop(graceful)

    def reopen_logs(self) -> None:
        super().reopen_logs()
        if self.proc is not None and self.proc.proxy.access is not None:
            self.proc.proxy.access.reopen()

    def run(self) -> int:
        assert self.loop is not None and self.proc is not None
        try:
            self.loop.run_until_complete(self.proc.serve())
        except Exception:
            log.exception("proxy: crashed")
            return 1
        finally:
            self.loop.close()
        return 0
