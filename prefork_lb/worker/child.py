"""The WSGI worker process: a :class:`prefork_lb.child.ChildProcess` that serves with gevent.

Order matters (see prefork_lb.child for the steps every child shares): signals back to
defaults and a death signal tied to the master, every signal but TERM unblocked (a TERM that
arrives while booting waits for the graceful handler instead of killing a worker with
connections queued on its slot), faulthandler for the master's SIGABRT, the process title,
then gevent's monkey-patching (here, never in the master), then the app import (so a reload
re-reads the code), then serving on what the master handed down.

Exit codes the master understands (prefork_lb.child): 0 normal, EXIT_APP_LOAD (the app path is
wrong, or the object is no app of --interface: the message went through the boot pipe),
EXIT_BOOT (the app raised on import), EXIT_WRONG_INTERFACE (--interface auto and the app is an
ASGI one: the master starts an ASGI worker instead, prefork_lb.interface).
"""

from __future__ import annotations

import faulthandler
import logging
import os
import random
import signal
import time
import traceback
from collections.abc import Callable
from typing import Any, ClassVar

from prefork_lb import boot_message
from prefork_lb import scoreboard as sb
from prefork_lb.child import EXIT_APP_LOAD, EXIT_BOOT, EXIT_WRONG_INTERFACE, ChildProcess

__all__ = ["EXIT_APP_LOAD", "EXIT_BOOT", "WorkerChild", "idle_grace_note", "patch", "stop_server"]

log = logging.getLogger("prefork_lb.error")
_fault_file: Any = None


def patch() -> None:
    """Monkey-patch the standard library for gevent (before the app is imported)."""
    from gevent import monkey

    if not monkey.is_module_patched("socket"):
        monkey.patch_all()


def idle_grace_note(idle_grace: float, timeout: float) -> str:
    """What the drain line adds when the drain first keeps serving (--dispatch proxy's reloads)."""
    grace = min(idle_grace, timeout)
    return f" (serving {grace:g} s more first, while the proxy learns of it)" if grace > 0 else ""


def stop_server(server: Any, graceful: bool, timeout: float) -> None:
    if graceful:
        log.info(
            "Graceful stop: draining %d connection(s), up to %.0f s%s",
            len(server.connections),
            timeout,
            idle_grace_note(server.options.idle_grace, timeout),
        )
        if not server.drain(timeout):
            log.warning("Graceful timeout: closed %d connection(s) still busy", server.cut)
    else:
        server.drain(0)


class WorkerChild(ChildProcess):
    role: ClassVar[str] = "worker"
    interface: ClassVar[str] = "wsgi"  # what it serves (prefork_lb.asgi.detect)
    boot_mask: ClassVar[set[signal.Signals] | None] = {signal.SIGTERM}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.server: Any = None
        self.access: Any = None
        self.n_offload = 0
        self.retiring = False  # asked the master for a replacement (max-requests, max-rss)
        self.request_limit = 0  # --max-requests (jittered) for this worker; 0: none
        self.rss: RssLimit | None = None

    def title(self) -> str:
        return f"worker {self.ctx.slot}"

    # -- boot ---------------------------------------------------------------------------------

    def boot(self) -> int:
        self.enable_faulthandler()
        self.size_offload_pool()
        if not self.switch_user():
            return EXIT_APP_LOAD
        patch()
        app, code = self.load_app()
        if app is None:
            return code
        code = self.start_offload_executor()  # after the app: its --chdir and sys.path hold
        if code:
            return code
        os.close(self.ctx.boot_fd)
        self.ctx.hook("post_worker_init", self.ctx.record)
        self.server = self.make_server(app)
        return 0

    def switch_user(self) -> bool:
        """--user/--group: become that user before the app is imported (False: one line on
        the boot pipe, the master reports it)."""
        from prefork_lb.privileges import identity, switch

        try:
            switch(identity(self.cfg.user, self.cfg.group))
        except (OSError, KeyError) as exc:
            boot_message.write(self.ctx.boot_fd, f"cannot switch to --user/--group: {exc}")
            return False
        return True

    def enable_faulthandler(self) -> None:
        """SIGABRT from the master (missed heartbeat) dumps the stack into the error log."""
        global _fault_file
        logfile = self.cfg.error_logfile
        if logfile not in ("-", "", None):
            _fault_file = open(logfile, "a")  # noqa: SIM115 - kept open for faulthandler
            faulthandler.enable(file=_fault_file, all_threads=True)
        else:
            faulthandler.enable(all_threads=True)

    def size_offload_pool(self) -> None:
        """The offload pool (prefork_lb.offload) reads its size from the environment when the app
        first uses it; its processes are fresh interpreters, so they inherit neither the gevent
        hub nor any listener, and they exit with this worker (SIGKILL included). The steps are
        prefork_lb.offload.lifecycle.WorkerOffload's, which any worker process shares."""
        from prefork_lb.offload.lifecycle import WorkerOffload

        self.offload = WorkerOffload.from_config(self.cfg)
        self.n_offload = self.offload.processes

    def start_offload_executor(self) -> int:
        """--offload-executor: this worker's own executor, made after fork (never in the master);
        0, or EXIT_APP_LOAD with one line on the boot pipe (a factory that fails to import)."""
        error = self.offload.start_executor()
        if error is None:
            return 0
        boot_message.write(self.ctx.boot_fd, error)
        return EXIT_APP_LOAD  # a user error, as a wrong app path is: one line, exit 2

    def load_app(self) -> tuple[Any, int]:
        """(the app, 0), or (None, exit code) with one line on the boot pipe for the master;
        EXIT_WRONG_INTERFACE (nothing on the pipe) for an app of the other interface."""
        from prefork_lb.app import AppLoadError, load_object
        from prefork_lb.asgi.detect import resolve
        from prefork_lb.mounts import boot_line

        cfg, fd = self.cfg, self.ctx.boot_fd
        try:
            app = cfg.app_object  # prefork_lb.run(app): checked as a loaded one is
            if app is None:
                app = load_object(cfg.app_uri, cfg.chdir)
            found = resolve(app, cfg.app_uri, cfg.interface)
        except AppLoadError as exc:
            boot_message.write(fd, boot_line(cfg.mount_route, str(exc)))
            return None, EXIT_APP_LOAD
        except BaseException as exc:
            # The master prints the traceback, once, however many workers fail alike.
            line = f"the app failed to import: {type(exc).__name__}: {exc}"
            boot_message.write(fd, boot_line(cfg.mount_route, line), traceback.format_exc())
            return None, EXIT_BOOT
        if found.interface != self.interface:
            return None, EXIT_WRONG_INTERFACE
        self.ctx.board.set_interface(self.ctx.entry, self.interface)  # the proxy's /lb-stats pools
        if found.asgi_version == "2.0":
            from prefork_lb.asgi.detect import asgi2_adapter

            app = asgi2_adapter(app)
        return app, 0

    def make_server(self, app: Any) -> Any:
        from prefork_lb.logs import AccessLog
        from prefork_lb.worker.server import Server, ServerOptions

        cfg, mode = self.cfg, self.ctx.mode
        self.access = (
            AccessLog(cfg.access_log_format, cfg.access_logfile, cfg.request_id_header)
            if cfg.access_logfile
            else None
        )
        options = ServerOptions.from_config(cfg)
        mode.configure_worker(options)
        if self.n_offload or cfg.offload_executor is not None:
            from prefork_lb.offload import offload

            options.extra_environ["prefork_lb.offload"] = offload
        server = Server(
            app, options, access_log=self.access, board=self.entry, shared_accept=mode.shared_accept
        )
        mode.attach(server, self.ctx.sockets)
        return server

    # -- signals --------------------------------------------------------------------------------

    def install(self, sig: signal.Signals, handler: Callable[[], None]) -> None:
        import gevent

        gevent.signal_handler(sig, handler)

    def stop(self, graceful: bool) -> None:
        import gevent

        self.entry.set_state(sb.DRAINING)
        self.no_idle_grace_when_all_stop()
        gevent.spawn(stop_server, self.server, graceful, self.graceful_timeout())

    def no_idle_grace_when_all_stop(self) -> None:
        """The idle grace (--dispatch proxy) keeps idle connections open a moment while the
        proxy, still serving, learns that this worker drains. When the whole server stops the
        master stopped the proxy first (it sends nothing more): the drain goes on at once."""
        if self.entry.server_stopping() and self.server is not None:
            self.server.options.idle_grace = 0.0

    def reopen_logs(self) -> None:
        super().reopen_logs()
        if self.access is not None:
            self.access.reopen()

    # -- run ------------------------------------------------------------------------------------

    def run(self) -> int:
        import gevent

        gevent.spawn(self.heartbeat_loop)
        self.notify_ready()
        self.server.serve_forever()
        self.ctx.hook("worker_exit", self.ctx.hook_server, self.ctx.record)
        return 0

    def heartbeat_loop(self) -> None:
        import gevent

        interval = self.heartbeat_setup()
        while self.heartbeat_step():
            gevent.sleep(interval)

    def heartbeat_setup(self) -> float:
        """The recycling limits of this worker (jittered once); the seconds between beats."""
        from prefork_lb.request_deadline import heartbeat_interval

        cfg = self.cfg
        limit = cfg.max_requests
        if limit:
            limit += random.randint(0, cfg.max_requests_jitter) if cfg.max_requests_jitter else 0
        self.request_limit = limit
        rss_mib = max_rss(cfg) if cfg.max_rss else 0
        self.rss = RssLimit(rss_mib, cfg.max_rss_jitter) if rss_mib else None
        return heartbeat_interval(cfg.timeout, cfg.request_timeout)

    def served(self) -> int:
        return int(self.server.requests_served)

    def heartbeat_step(self) -> bool:
        """One beat: the heartbeat, the offload pool's numbers, recycling. False once the
        master is gone (the worker stops)."""
        from prefork_lb.offload import default_pool_if_started
        from prefork_lb.offload.counters import SUBMITTED, TASKS
        from prefork_lb.offload.external import configured

        entry = self.entry
        alive = self.beat()
        pool = configured() or default_pool_if_started()  # --offload-executor, or the pool
        if pool is not None or TASKS.tasks[SUBMITTED]:  # any pool of this process was used
            st = pool.stats() if pool is not None else {}
            entry.offload(st.get("busy", 0), st.get("idle", 0), st.get("size", 0), TASKS.words())
        if not alive:
            log.warning("Worker %d: master is gone; stopping", os.getpid())
            self.stop(True)
            return False
        rss = self.rss
        if rss is not None and not self.retiring and rss.over():
            self.retire("max_rss")
        limit = self.request_limit
        if limit and not self.retiring and self.served() >= limit:
            # Ask the master for a replacement; it sends TERM once that one is ready.
            self.retire("max_requests")
            log.info("Worker %d served %d requests: asking to be replaced", os.getpid(), self.served())
        return True

    def retire(self, reason: str) -> None:
        self.retiring = True
        self.entry.retiring(reason)


def max_rss(cfg: Any) -> int:
    """--max-rss in MiB for this worker; a percentage is resolved against the cgroup memory
    limit (the CLI refused N% without one at start; prefork_lb.run() did not check: 0, off)."""
    from prefork_lb.resources import resolve_max_rss, server_workers

    try:
        return resolve_max_rss(cfg.max_rss, max(server_workers(cfg), cfg.max_workers))
    except ValueError as exc:
        log.error("Worker %d: %s", os.getpid(), exc)
        return 0


class RssLimit:
    """--max-rss: over the limit, this worker asks to be replaced after a jittered delay."""

    def __init__(self, max_mib: int, jitter: float) -> None:
        import psutil

        self.me = psutil.Process()
        self.limit = max_mib * 1024 * 1024
        self.max_mib = max_mib
        self.jitter = jitter
        self.retire_at = 0.0

    def over(self) -> bool:
        """True once the delay after first seeing the memory over the limit has passed."""
        now = time.monotonic()
        if not self.retire_at and self.me.memory_info().rss > self.limit:
            self.retire_at = now + random.uniform(0, self.jitter)
            log.warning(
                "Worker %d uses %d MiB, over --max-rss %d MiB: recycling it",
                os.getpid(),
                self.me.memory_info().rss >> 20,
                self.max_mib,
            )
        return bool(self.retire_at) and now >= self.retire_at
