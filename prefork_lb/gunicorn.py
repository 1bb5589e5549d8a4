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
"""

from __future__ import annotations

import os
import sys
from datetime import timedelta
from typing import Any

import gevent
from gevent import hub, monkey
from gevent import socket as gsocket
from gunicorn.arbiter import Arbiter
from gunicorn.config import PostRequest, PreRequest
from gunicorn.workers.base import Worker as _BaseWorker

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


class _Hooks:
    """The engine's before-request callback and access-log slot, spoken in gunicorn's terms."""

    def __init__(self, worker: Worker) -> None:
        cfg = worker.cfg
        self.worker = worker
        self.glog = worker.log  # gunicorn's logger
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

    def log_access(self, resp: GunicornResponse, greq: Any, env: dict[str, Any], duration: float) -> None:
        if self.glog.access_log_enabled:
            headers = (
                greq.headers
                if greq is not None
                else [(k[5:].replace("_", "-"), v) for k, v in env.items() if k.startswith("HTTP_")]
            )
            self.glog.access(resp, headers, env, timedelta(seconds=duration))


# gunicorn ships no type information, so its Worker base reads as Any to mypy.
class Worker(_BaseWorker):  # type: ignore[misc]
    """gunicorn worker class: ``-k prefork_lb.gunicorn.Worker``."""

    server: Server | None = None
    offload: WorkerOffload
    sockets: list[Any]  # gunicorn's, set in its __init__
    alive: bool

    def patch(self) -> None:
        monkey.patch_all()
        self.sockets = [
            gsocket.socket(s.FAMILY, gsocket.SOCK_STREAM, fileno=s.sock.detach()) for s in self.sockets
        ]

    def init_process(self) -> None:
        # The offload pool (prefork_lb.offload) is offered here as in our own workers: sized
        # by PREFORK_LB_OFFLOAD_PROCESSES, else the usable CPUs (prefork_lb.resources) divided
        # among gunicorn's workers; PREFORK_LB_OFFLOAD_EXECUTOR is --offload-executor (gunicorn
        # parses its command line before it imports the worker class, so it cannot take the flag).
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
        self.patch()
        hub.reinit()
        super().init_process()  # load_wsgi, init_signals, post_worker_init, then run()

    def notify(self) -> None:
        super().notify()
        if self.ppid != os.getppid():
            self.log.info("Parent changed, shutting down: %s", self)
            sys.exit(0)

    def run(self) -> None:
        error = self.offload.start_executor()  # after load_wsgi: the app's sys.path holds
        if error is not None:
            self.log.error("%s", error.replace("--offload-executor", ENV_EXECUTOR, 1))
            sys.exit(Arbiter.APP_LOAD_ERROR)
        cfg = self.cfg
        options = ServerOptions(
            limits=Limits(
                cfg.limit_request_line,
                cfg.limit_request_fields,
                cfg.limit_request_field_size,
                0,
                require_host=False,
            ),  # gunicorn does not require Host
            keepalive=cfg.keepalive,
            header_timeout=max(float(cfg.keepalive), 10.0),
            worker_connections=cfg.worker_connections,
        )
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
            if self.max_requests and server.requests_served >= self.max_requests:
                self.log.info("Autorestarting worker after current request.")
                self.alive = False
                break
            gevent.sleep(1.0)
        if not server.drain(cfg.graceful_timeout):
            self.log.warning("Worker graceful timeout (pid:%s)", self.pid)

    def handle_quit(self, sig: int, frame: Any) -> None:
        # Out of the signal handler, so the hook may block (gunicorn's gevent worker does the same).
        gevent.spawn(super().handle_quit, sig, frame)

    def handle_usr1(self, sig: int, frame: Any) -> None:
        gevent.spawn(super().handle_usr1, sig, frame)
