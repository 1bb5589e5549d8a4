"""gunicorn worker class running prefork_lb's engine: ``gunicorn -k prefork_lb.gunicorn.Worker app``.

The only module that imports gunicorn. gunicorn's master (arbiter) stays in charge; each worker
serves with our HTTP/1.1 engine (gevent + httptools) instead of gunicorn's parser. gunicorn's
settings keep their documented meaning: timeout (the worker notifies every second from a
greenlet, so a blocked event loop is noticed), graceful_timeout, keepalive, max_requests and
max_requests_jitter, limit_request_line / _fields / _field_size, worker_connections, the access
log and access_log_format (gunicorn's own logger), forwarded_allow_ips (addresses and
networks) with secure_scheme_headers, then ``Forwarded: proto=``, reuse_port (gunicorn binds),
and the hooks pre_request, post_request, worker_int, worker_abort and post_worker_init. The CPU
offload pool is there too (``from prefork_lb import offload``, or
``environ["prefork_lb.offload"]``), sized by ``PREFORK_LB_OFFLOAD_PROCESSES``; an external
executor comes from ``PREFORK_LB_OFFLOAD_EXECUTOR`` (``dask://HOST:PORT`` or MODULE:FACTORY, as
``--offload-executor``; set it in the environment or with gunicorn's ``-e``/``raw_env``), made in
each worker after the app is loaded; a bad value is one error line and gunicorn stops (exit 4).

``gunicorn -k prefork_lb.gunicorn.AsgiWorker app`` runs an ASGI app the same way on our asyncio
server (prefork_lb.asgi; uvloop when installed): the same settings (timeout through
notifications from the event loop, so a view that blocks the loop is aborted), root_path, the
lifespan (a failed startup: one line, exit WORKER_BOOT_ERROR, gunicorn stops), WebSockets and
``offload_async``. Both classes share _PreforkWorker: the offload set-up, gunicorn's settings as
our engines' options, the parent check and max_requests.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from datetime import timedelta
from typing import Any

import gevent
from gevent import hub, monkey
from gevent import socket as gsocket
from gunicorn.arbiter import Arbiter
from gunicorn.config import PostRequest, PreRequest
from gunicorn.workers.base import Worker as _BaseWorker

from prefork_lb.asgi.accounting import access_environ
from prefork_lb.asgi.child import new_loop, stop_serving
from prefork_lb.asgi.lifespan import Lifespan, LifespanFailed, failure_line
from prefork_lb.asgi.options import AsgiOptions
from prefork_lb.asgi.server import AsgiServer
from prefork_lb.http.forwarded import forwarded_scheme
from prefork_lb.http.parser import Limits, Request
from prefork_lb.offload.lifecycle import ENV_PROCESSES, WorkerOffload
from prefork_lb.proxy.peers import TrustedPeers
from prefork_lb.settings.base import offload_executor
from prefork_lb.worker.server import Server, ServerOptions

ENV_EXECUTOR = "PREFORK_LB_OFFLOAD_EXECUTOR"  # prefork_lb's own env name of --offload-executor


class GunicornRequest:
    """What gunicorn's pre_request/post_request hooks read of a request."""

    def __init__(self, req: Request, env: dict[str, Any]) -> None:
        self.method = req.method
        self.uri = env.get("RAW_URI", "")
        self.path = env.get("PATH_INFO", "")
        self.query = env.get("QUERY_STRING", "")
        self.version = (1, 1) if req.version == "HTTP/1.1" else (1, 0)
        self.headers = [
            (raw.decode("latin-1").upper(), value.decode("latin-1")) for _, raw, value in req.headers
        ]
        self.scheme = env.get("wsgi.url_scheme", "http")


class GunicornResponse:
    """What gunicorn's access log and post_request hook read of a response."""

    def __init__(self, status: str | None, headers: list[tuple[str, str]], sent: int) -> None:
        self.status = status or "500 Internal Server Error"
        self.status_code = int(self.status[:3]) if self.status[:3].isdigit() else 500
        self.headers = headers
        self.sent = sent
        self.response_length = sent


class _AccessLog:
    """gunicorn's access log (its logger, access_log_format and atoms), for either engine."""

    def __init__(self, worker: _PreforkWorker) -> None:
        self.worker = worker
        self.glog = worker.log  # gunicorn's logger

    def log_access(self, resp: GunicornResponse, greq: Any, env: dict[str, Any], duration: float) -> None:
        if self.glog.access_log_enabled:
            headers = (
                greq.headers
                if greq is not None
                else [(k[5:].replace("_", "-"), v) for k, v in env.items() if k.startswith("HTTP_")]
            )
            self.glog.access(resp, headers, env, timedelta(seconds=duration))


class _Hooks(_AccessLog):
    """The engine's before-request callback and access-log slot, spoken in gunicorn's terms."""

    def __init__(self, worker: Worker) -> None:
        super().__init__(worker)
        cfg = worker.cfg
        self.pre = cfg.pre_request if cfg.pre_request is not PreRequest.default else None
        self.post = cfg.post_request if cfg.post_request is not PostRequest.default else None
        self.secure_headers = {
            "HTTP_" + k.upper().replace("-", "_"): v for k, v in (cfg.secure_scheme_headers or {}).items()
        }
        # gunicorn's forwarded_allow_ips: addresses and CIDR networks, or *.
        self.trusted = TrustedPeers(cfg.forwarded_allow_ips or [])

    def before_request(self, env: dict[str, Any], req: Request) -> None:
        peer = env.get("REMOTE_ADDR", "")
        # As gunicorn: a unix socket peer (no address) is trusted.
        if not peer or peer in self.trusted:
            scheme = self.forwarded_scheme(env)
            if scheme is not None:
                env["wsgi.url_scheme"] = scheme
        if self.pre is not None or self.post is not None:
            greq = GunicornRequest(req, env)
            env["gunicorn.request"] = greq
            if self.pre is not None:
                self.pre(self.worker, greq)

    def forwarded_scheme(self, env: dict[str, Any]) -> str | None:
        """gunicorn's secure_scheme_headers first (a present one decides: https when its value
        matches), else Forwarded proto= as our own workers read it."""
        for key, value in self.secure_headers.items():
            got = env.get(key)
            if got is not None:
                return "https" if got.lower() == value.lower() else None
        return forwarded_scheme(None, env.get("HTTP_FORWARDED"))

    def log(self, env: dict[str, Any], conn: Any, duration: float) -> None:
        resp = GunicornResponse(conn.status, conn.out_headers or [], conn.bytes_sent)
        greq = env.get("gunicorn.request")
        self.log_access(resp, greq, env, duration)
        if self.post is not None and greq is not None:
            try:
                self.post(self.worker, greq, env, resp)
            except Exception:
                self.glog.exception("post_request hook failed")


NOTIFY_EVERY = 1.0  # seconds between a worker's notifications to gunicorn's master


# gunicorn ships no type information, so its Worker base reads as Any to mypy.
class _PreforkWorker(_BaseWorker):  # type: ignore[misc]
    """What both worker classes do the same way: the offload pool and executor, gunicorn's
    settings as our engines' options, the parent check, max_requests."""

    offload: WorkerOffload
    sockets: list[Any]  # gunicorn's, set in its __init__
    alive: bool

    def setup_offload(self) -> None:
        """Before the app is loaded. The offload pool (prefork_lb.offload) is offered as in our
        own workers: sized by PREFORK_LB_OFFLOAD_PROCESSES, else the usable CPUs
        (prefork_lb.resources) divided among gunicorn's workers; PREFORK_LB_OFFLOAD_EXECUTOR is
        --offload-executor (gunicorn parses its command line before it imports the worker
        class, so it cannot take the flag)."""
        if ENV_PROCESSES not in os.environ:
            from prefork_lb.resources import cpu_count

            share = max(1, cpu_count() // max(1, self.cfg.workers))
            os.environ[ENV_PROCESSES] = str(share)
        try:
            spec = offload_executor(os.environ.get(ENV_EXECUTOR))
        except ValueError as exc:
            self.log.error("%s: %s", ENV_EXECUTOR, exc)
            sys.exit(Arbiter.APP_LOAD_ERROR)  # gunicorn's master stops: "App failed to load."
        self.offload = WorkerOffload(1, spec)  # the pool is always offered here

    def start_offload_executor(self) -> None:
        """After the app is loaded (its sys.path holds); a failure stops gunicorn (exit 4)."""
        error = self.offload.start_executor()
        if error is not None:
            self.log.error("%s", error.replace("--offload-executor", ENV_EXECUTOR, 1))
            sys.exit(Arbiter.APP_LOAD_ERROR)

    def engine_options(self) -> dict[str, Any]:
        """gunicorn's settings that both engines' options take, by their names there."""
        cfg = self.cfg
        return {
            # gunicorn does not require Host
            "limits": Limits(
                cfg.limit_request_line,
                cfg.limit_request_fields,
                cfg.limit_request_field_size,
                0,
                require_host=False,
            ),
            "keepalive": cfg.keepalive,
            "header_timeout": max(float(cfg.keepalive), 10.0),
            "worker_connections": cfg.worker_connections,
        }

    def parent_gone(self) -> bool:
        if self.ppid != os.getppid():
            self.log.info("Parent changed, shutting down: %s", self)
            return True
        return False

    def retire_due(self, served: int) -> bool:
        """max_requests (with gunicorn's jitter, drawn in its __init__) reached: say so."""
        if self.alive and self.max_requests and served >= self.max_requests:
            self.log.info("Autorestarting worker after current request.")
            return True
        return False


class Worker(_PreforkWorker):
    """gunicorn worker class for WSGI apps: ``-k prefork_lb.gunicorn.Worker``."""

    server: Server | None = None

    def patch(self) -> None:
        monkey.patch_all()
        self.sockets = [
            gsocket.socket(s.FAMILY, gsocket.SOCK_STREAM, fileno=s.sock.detach()) for s in self.sockets
        ]

    def init_process(self) -> None:
        self.setup_offload()
        self.patch()
        hub.reinit()
        super().init_process()  # load_wsgi, init_signals, post_worker_init, then run()

    def notify(self) -> None:
        super().notify()
        if self.parent_gone():
            sys.exit(0)

    def run(self) -> None:
        self.start_offload_executor()
        cfg = self.cfg
        options = ServerOptions(**self.engine_options())
        from prefork_lb.offload import offload

        options.extra_environ["prefork_lb.offload"] = offload
        hooks = _Hooks(self)
        server = self.server = Server(
            self.wsgi, options, access_log=hooks, shared_accept=not cfg.reuse_port and cfg.workers > 1
        )
        server.before_request = hooks.before_request
        for sock in self.sockets:
            server.add_listener(sock)
        while self.alive:
            self.notify()
            if self.retire_due(server.requests_served):
                self.alive = False
                break
            gevent.sleep(NOTIFY_EVERY)
        if not server.drain(cfg.graceful_timeout):
            self.log.warning("Worker graceful timeout (pid:%s)", self.pid)

    def handle_quit(self, sig: int, frame: Any) -> None:
        # Out of the signal handler, so the hook may block (gunicorn's gevent worker does the same).
        gevent.spawn(super().handle_quit, sig, frame)

    def handle_usr1(self, sig: int, frame: Any) -> None:
        gevent.spawn(super().handle_usr1, sig, frame)


class _AsgiHooks(_AccessLog):
    """The ASGI server's request_finished hook: gunicorn's access log line, max_requests."""

    worker: AsgiWorker

    def request_finished(
        self, conn_info: Any, scope: dict[str, Any], status: int, sent_bytes: int, seconds: float
    ) -> None:
        # No line for a request that got no status line (cut at the graceful timeout, or its
        # client left first): gunicorn's own workers write none either, and a status would be
        # one the client never got (the error line names a cut request).
        if status and self.glog.access_log_enabled:
            resp = GunicornResponse(str(status), [], sent_bytes)
            self.log_access(resp, None, access_environ(scope), seconds)
        worker = self.worker
        if worker.server is not None and worker.retire_due(worker.server.served):
            worker.stop(graceful=True)


class AsgiWorker(_PreforkWorker):
    """gunicorn worker class for ASGI apps: ``-k prefork_lb.gunicorn.AsgiWorker``.

    gunicorn's loaded app (``self.wsgi``) is the ASGI app; it runs on prefork_lb.asgi's server
    on a uvloop loop (asyncio's without uvloop), accepting on gunicorn's listeners. The loop
    notifies gunicorn every timeout / 4 (a second at most), so a view that blocks it (``time.sleep`` in an ``async
    def``) meets gunicorn's timeout: SIGABRT, the worker_abort hook, exit. The lifespan startup
    runs before the first accept (a failure: one error line and exit WORKER_BOOT_ERROR, so
    gunicorn stops instead of respawning), its shutdown after the drain. TERM drains within
    graceful_timeout; INT and QUIT run worker_int and stop at once, as gunicorn's workers.
    """

    server: AsgiServer | None = None
    loop: asyncio.AbstractEventLoop
    lifespan: Lifespan
    stopping: asyncio.Task[None] | None = None
    done: asyncio.Future[None] | None = None
    interval = NOTIFY_EVERY

    def init_process(self) -> None:
        self.setup_offload()
        # The engine's own lines (app errors, drains) go where gunicorn's error log goes.
        engine_log = logging.getLogger("prefork_lb.error")
        engine_log.handlers = self.log.error_log.handlers
        engine_log.setLevel(self.log.error_log.level)
        engine_log.propagate = False
        super().init_process()  # init_signals, load_wsgi, post_worker_init, then run()

    def run(self) -> None:
        self.notify()  # the app is loaded: its import's time does not count against the startup
        self.start_offload_executor()
        self.loop = loop = new_loop()
        asyncio.set_event_loop(loop)
        self.lifespan = Lifespan(self.wsgi, "auto")
        try:
            loop.run_until_complete(self.lifespan.startup())
        except LifespanFailed as exc:
            self.log.error("%s", failure_line(exc))
            sys.exit(Arbiter.WORKER_BOOT_ERROR)  # gunicorn's master stops: "Worker failed to boot."
        server = self.server = AsgiServer(
            self.wsgi, self.asgi_options(), loop, hooks=_AsgiHooks(self), state=self.lifespan.state
        )
        for sig, graceful in ((signal.SIGTERM, True), (signal.SIGINT, False), (signal.SIGQUIT, False)):
            loop.add_signal_handler(sig, self.stop, graceful)
        server.drain_takes_listener_queue = False  # gunicorn's arbiter keeps them for the next worker
        for sock in self.sockets:
            server.add_listener(sock.sock)
        self.done = loop.create_future()
        # A quarter of gunicorn's timeout (its worker gets half of it), a second at most.
        self.interval = min(NOTIFY_EVERY, self.timeout / 2) if self.timeout else NOTIFY_EVERY
        loop.call_soon(self.beat)
        if not self.alive:  # a TERM while the startup ran
            self.stop(graceful=True)
        try:
            loop.run_until_complete(self.done)
        finally:
            server.close()

    def asgi_options(self) -> AsgiOptions:
        cfg = self.cfg
        return AsgiOptions(
            **self.engine_options(),
            root_path=(getattr(cfg, "root_path", "") or "").rstrip("/"),  # gunicorn 24+
            # forwarded_allow_ips: X-Forwarded-Proto, then Forwarded proto=, set the scheme
            trusted_peers=TrustedPeers(cfg.forwarded_allow_ips or []),
            app_name=str(
                getattr(getattr(self, "app", None), "app_uri", None) or getattr(cfg, "wsgi_app", None) or ""
            ),
        )

    def beat(self) -> None:
        """Notify gunicorn, then again in ``interval``: a blocked loop stops the beats."""
        self.notify()
        if self.parent_gone():
            self.stop(graceful=True)
        elif self.done is not None and not self.done.done():
            self.loop.call_later(self.interval, self.beat)

    def stop(self, graceful: bool) -> None:
        """TERM (graceful): drain, then the lifespan shutdown; INT/QUIT (or one during a graceful
        stop): worker_int, close what is open, end."""
        self.alive = False
        if self.stopping is not None:
            if graceful:
                return  # already draining
            self.stopping.cancel()
        if not graceful:
            self.cfg.worker_int(self)
        self.stopping = self.loop.create_task(self.finish(graceful))

    async def finish(self, graceful: bool) -> None:
        timeout = self.cfg.graceful_timeout
        # gunicorn's master kills its workers at graceful_timeout: cut what still runs a little
        # before, so the error line naming it and the lifespan shutdown come before the kill.
        await stop_serving(self.server, self.lifespan, graceful, timeout, reserve=min(1.0, timeout / 4))
        if self.done is not None and not self.done.done():
            self.done.set_result(None)

    def handle_abort(self, sig: int, frame: Any) -> None:
        # gunicorn's own raises SystemExit inside whatever the loop runs: the blocked view,
        # where the server takes it for the app's error and the worker would go on.
        self.alive = False
        try:
            self.cfg.worker_abort(self)
        finally:
            os._exit(1)
