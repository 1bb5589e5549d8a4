"""The admin process: the --stats-bind listener and the --control-socket, in every dispatch mode.

A child of the master like the workers and the helper (prefork_lb.child: the master binds the
listener and keeps it, supervises this process through its heartbeat on the scoreboard
(slot ADMIN_SLOT) and starts another when it dies). It never imports the app and never
serves the public listeners. It reads the scoreboard and the master's totals
(prefork_lb.admin.totals), and in --dispatch proxy asks the proxy for its documents over a
private channel (prefork_lb.admin.link).

Routes: ``/lb-health`` and ``/lb-stats`` (JSON), ``/metrics`` (Prometheus text format), the
live dashboard at ``/`` with the document it polls, ``/dashboard.json`` (prefork_lb.admin.dashboard),
and the orchestrators' probes ``/livez`` and ``/readyz`` (prefork_lb.admin.probes; public, like
the dashboard's page). The master stops this process last on a graceful stop, so that /readyz
answers 503 through the --shutdown-delay and the drain.
The control socket (prefork_lb.admin.control, the server ``prefork_lb ctl`` talks to) is served
by a thread of its own; the process runs when either listener is on (both are optional).
With --statsd-host a thread pushes StatsD lines (prefork_lb.statsd) from the same shared memory.
Something new served here (a dashboard page, an event stream) is one more entry in
:meth:`AdminChild.routes`; something that pushes (a StatsD client) is one more thread started in
:meth:`AdminChild.run` reading the same collector.

Threads: the main thread beats and waits for a stop signal; the HTTP server runs in its own
thread (one more per client connection).
"""

from __future__ import annotations

import os
import select
import socket
import threading
import time
from typing import Any, ClassVar

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from prefork_lb import scoreboard as sb
from prefork_lb.admin.control import ControlActions, ControlServer
from prefork_lb.admin.dashboard import dashboard_doc, page, statsd_sample
from prefork_lb.admin.documents import health_doc, stats_doc
from prefork_lb.admin.link import ProxyLink
from prefork_lb.admin.metrics import ServerCollector, psutil_info
from prefork_lb.admin.probes import (
    HELPER_SLOT,
    PROBE_PATHS,
    HelperView,
    http_status,
    liveness,
    readiness,
    ready_slots,
    stale_after,
)
from prefork_lb.admin.server import AdminServer, Reply, Route, json_reply
from prefork_lb.admin.totals import Totals
from prefork_lb.child import ChildContext, ChildProcess
from prefork_lb.statsd import Pusher, parse_target

NOT_ANSWERING = "the proxy is not answering (it may be restarting)"
# How long a stopping admin process gives the ctl clients it already accepted to get an answer
# (a reload replaces this process while clients keep coming: one it took must not be reset).
CONTROL_DRAIN = 2.0


class AdminChild(ChildProcess):
    role: ClassVar[str] = "admin"

    def __init__(
        self,
        ctx: ChildContext,
        totals: Totals,
        dispatch: str,
        helper_role: str | None,
        listener: socket.socket | None,
        link: socket.socket | None = None,
        control: socket.socket | None = None,
    ) -> None:
        super().__init__(ctx)
        self.totals = totals
        self.dispatch = dispatch
        self.helper_role = helper_role
        self.listener = listener
        self.link = ProxyLink(link) if link is not None else None
        self.stopping = False
        self._stop_event = threading.Event()
        self._wake_r = self._wake_w = -1
        self.server: AdminServer | None = None
        self.control = control
        self.control_server: ControlServer | None = None

    # -- what it serves -------------------------------------------------------------------------

    def collector(self) -> ServerCollector:
        proxy = None
        link = self.link
        if link is not None:

            def proxy_docs() -> dict[str, Any] | None:
                stats = link.ask("stats")
                if stats is None:
                    return None
                return {"stats": stats, "health": link.ask("health"), "metrics": link.ask("metrics")}

            proxy = proxy_docs
        return ServerCollector(self.ctx.board, self.totals, self.dispatch, self.helper_role, proxy)

    def routes(self) -> dict[str, Route]:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(self.collector())
        board, totals, link = self.ctx.board, self.totals, self.link

        def metrics(_req: Any) -> Reply:
            return Reply(200, generate_latest(registry), CONTENT_TYPE_LATEST)

        def health(_req: Any) -> Reply:
            doc = health_doc(board, totals) if link is None else link.ask("health")
            if doc is None:
                doc = {"status": "down", "healthy": 0, "total": 0, "backends": [], "reason": NOT_ANSWERING}
            return json_reply(doc, 200 if doc.get("healthy") else 503)

        def stats(_req: Any) -> Reply:
            if link is None:
                return json_reply(stats_doc(board, totals, self.dispatch))
            doc = link.ask("stats")
            return json_reply(doc) if doc is not None else json_reply({"error": NOT_ANSWERING}, 503)

        proxy_docs = self.proxy_docs

        def dashboard_page(_req: Any) -> Reply:
            return Reply(200, page(), "text/html; charset=utf-8")

        def dashboard_data(_req: Any) -> Reply:
            docs = proxy_docs() if link is not None else None
            return json_reply(dashboard_doc(board, totals, self.dispatch, psutil_info, docs))

        return {
            "/lb-health": health,
            "/lb-stats": stats,
            "/metrics": metrics,
            "/": dashboard_page,
            "/dashboard.json": dashboard_data,
            "/livez": self.livez,
            "/readyz": self.readyz,
        }

    # -- the probes (prefork_lb.admin.probes decides) ----------------------------------------------

    def helper_view(self, entries: list[sb.EntryState], now: float) -> HelperView | None:
        if not self.helper_role:
            return None
        board = self.ctx.board
        mine = [e for e in entries if e.slot == HELPER_SLOT]
        ages = tuple(now - board.heartbeat(e.entry) for e in mine)
        return HelperView(self.helper_role, ages, any(e.state == sb.READY for e in mine))

    def livez(self, _req: Any) -> Reply:
        now = time.monotonic()
        helper = self.helper_view(self.ctx.board.entries_in_use(), now)
        doc = liveness(
            os.getppid() == self.ctx.master_pid,
            now - self.totals.master_beat(),
            helper,
            self.totals.shutdown(),
            stale_after(self.cfg.timeout),
        )
        return json_reply(doc, http_status(doc))

    def readyz(self, _req: Any) -> Reply:
        now = time.monotonic()
        entries = self.ctx.board.entries_in_use()
        ready = ready_slots((e.slot, e.state in (sb.READY, sb.RETIRING)) for e in entries)
        helper = self.helper_view(entries, now)
        doc = readiness(ready, helper, self.totals.shutdown(), stale_after(self.cfg.timeout))
        return json_reply(doc, http_status(doc))

    def proxy_docs(self) -> dict[str, Any] | None:
        """The proxy's /lb-stats and /lb-health (None without a proxy, or while it does not answer)."""
        link = self.link
        if link is None:
            return None
        stats = link.ask("stats")
        return None if stats is None else {"stats": stats, "health": link.ask("health")}

    def push_statsd(self) -> None:
        """The StatsD thread: once per --statsd-interval, what changed since the last push."""
        cfg = self.cfg
        pusher = Pusher(parse_target(cfg.statsd_host), cfg.statsd_prefix, cfg.dogstatsd_tags)
        board, totals = self.ctx.board, self.totals
        try:
            while not self.stopping:
                pusher.push(statsd_sample(board, totals))
                self._stop_event.wait(cfg.statsd_interval)
            pusher.push(statsd_sample(board, totals))  # the last counts before a stop
        finally:
            pusher.close()

    # -- the child-process contract -----------------------------------------------------------------

    def boot(self) -> int:
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        if self.listener is not None:
            self.server = AdminServer(self.listener, self.cfg.stats_token)
            self.server.routes.update(self.routes())
            self.server.public.add("/")
            self.server.public.update(PROBE_PATHS)  # a kubelet's probe cannot easily send a token
        if self.control is not None:
            actions = ControlActions(
                self.ctx.board,
                self.totals,
                self.dispatch,
                self.link,
                self.cfg.graceful_timeout,
                shutdown_delay=self.cfg.shutdown_delay,
                pools=pools_by_slot(self.cfg),
            )
            self.control_server = ControlServer(self.control, actions.handle)
        return 0

    def run(self) -> int:
        if self.server is not None:
            threading.Thread(target=self.server.serve_forever, name="admin-http", daemon=True).start()
        if self.control_server is not None:
            threading.Thread(target=self.control_server.serve_forever, name="admin-ctl", daemon=True).start()
        pushing = None
        if self.cfg.statsd_host:
            pushing = threading.Thread(target=self.push_statsd, name="admin-statsd", daemon=True)
            pushing.start()
        self.notify_ready()
        interval = max(0.05, min(1.0, (self.cfg.timeout or 4.0) / 4))
        while not self.stopping:
            select.select([self._wake_r], [], [], interval)
            if not self.beat():
                break  # the master is gone
        self._stop_event.set()
        if pushing is not None:
            pushing.join(2.0)
        if self.control_server is not None:
            self.control_server.shutdown(wait=CONTROL_DRAIN)
        if self.server is not None:
            self.server.shutdown()
        return 0

    def stop(self, graceful: bool) -> None:
        self.stopping = True
        self._stop_event.set()
        try:
            os.write(self._wake_w, b"x")
        except OSError:
            pass


def pools_by_slot(cfg: Any) -> dict[int, str] | None:
    """--mount: each worker slot's pool (its route), for ``ctl status``; None without."""
    if not cfg.mount:
        return None
    table = getattr(cfg, "mounts", None)
    return {} if table is None else {slot: m.route for m in table.mounts for slot in m.slots}
