"""A forked worker process: from fork to exit.

Order matters: signals back to defaults, a death signal tied to the master, the process title,
then gevent's monkey-patching (here, never in the master), then the app import (so a reload
re-reads the code), then serving on the listeners the master handed down.

Exit codes the master understands: 0 normal, EXIT_APP_LOAD (the app path is wrong: the message
went through the boot pipe), EXIT_BOOT (the app raised on import).
"""

from __future__ import annotations

import ctypes
import faulthandler
import logging
import os
import random
import signal
import socket
import sys
import time
import traceback
from typing import Any

EXIT_APP_LOAD = 2
EXIT_BOOT = 3
PR_SET_PDEATHSIG = 1
_fault_file: Any = None

log = logging.getLogger("prefork_lb.error")


def _die_with_parent() -> None:
    """Ask the kernel for SIGTERM when the master dies, SIGKILL included (Linux)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        pass


MASTER_SIGNALS = (
    signal.SIGTERM,
    signal.SIGINT,
    signal.SIGQUIT,
    signal.SIGHUP,
    signal.SIGUSR1,
    signal.SIGUSR2,
    signal.SIGTTIN,
    signal.SIGTTOU,
    signal.SIGCHLD,
)


def _leave_master(master_pid: int) -> bool:
    """First steps of any child of the master: its signal handlers off (the signals stay
    blocked, as the master forked with them blocked: see Arbiter.spawn), death with the master.
    False when the master died before the death signal was armed."""
    for sig in MASTER_SIGNALS:
        signal.signal(sig, signal.SIG_DFL)
    signal.set_wakeup_fd(-1)
    _die_with_parent()
    return os.getppid() == master_pid


def begin_helper(master: Any, role: str) -> bool:
    """First steps of a helper process forked by the master (the handoff dispatcher, the
    proxy): _leave_master, then the process title. False when the master is already gone. The
    caller installs its own handlers, then unblocks the signals."""
    if not _leave_master(master.pid):
        return False
    cfg = master.cfg
    try:
        from setproctitle import setproctitle

        setproctitle(f"prefork_lb: {role} [{cfg.proc_name or cfg.app_uri or 'standalone'}]")
    except ImportError:
        pass
    return True


def run(worker: Any, master: Any, listeners: list[socket.socket]) -> None:
    """Never returns: the worker process exits from here. ``worker`` is the master's record of
    this process (pid, slot), ``master`` the Arbiter as it was at fork: both are what the
    config file's hooks receive, as in gunicorn."""
    code = 0
    try:
        code = _run(worker, master, listeners)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:
        traceback.print_exc()
        code = 1
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        except Exception:
            pass
        os._exit(code)


def _run(worker: Any, master: Any, listeners: list[socket.socket]) -> int:
    slot, cfg, board, master_pid, boot_fd = worker.slot, master.cfg, master.board, master.pid, master._boot_w
    if not _leave_master(master_pid):  # the master died between fork and prctl
        return 0
    # All signals but TERM can come now; a TERM that arrived while booting waits until the
    # graceful handler is in place, instead of killing the worker with connections queued on
    # its slot.
    signal.pthread_sigmask(signal.SIG_SETMASK, {signal.SIGTERM})
    # SIGABRT from the master (missed heartbeat) dumps the stack into the error log.
    global _fault_file
    if cfg.error_logfile not in ("-", "", None):
        _fault_file = open(cfg.error_logfile, "a")  # noqa: SIM115 - kept open for faulthandler
        faulthandler.enable(file=_fault_file, all_threads=True)
    else:
        faulthandler.enable(all_threads=True)
    name = cfg.proc_name or cfg.app_uri
    try:
        from setproctitle import setproctitle

        setproctitle(f"prefork_lb: worker {slot} [{name}]")
    except ImportError:
        pass
    entry = board.handle(worker.entry)
    entry.beat()

    from prefork_lb.worker import process

    # The offload pool (prefork_lb.offload) reads its size from the environment when the app
    # first uses it; its processes are fresh interpreters, so they inherit neither the gevent
    # hub nor any listener, and they exit with this worker (SIGKILL included).
    n_offload = cfg.offload_processes
    if n_offload < 0:
        n_offload = max(1, (os.cpu_count() or 1) // max(1, cfg.workers))
    if n_offload:
        os.environ["PREFORK_LB_OFFLOAD_PROCESSES"] = str(n_offload)
    process.patch()
    from prefork_lb.app import AppLoadError, load_app

    try:
        app = cfg.app_object if cfg.app_object is not None else load_app(cfg.app_uri, cfg.chdir)
    except AppLoadError as exc:
        os.write(boot_fd, (str(exc) + "\n").encode())
        return EXIT_APP_LOAD
    except BaseException as exc:
        traceback.print_exc()
        os.write(boot_fd, f"the app failed to import: {type(exc).__name__}: {exc}\n".encode())
        return EXIT_BOOT
    os.close(boot_fd)
    _hook(cfg, "post_worker_init", worker)

    import gevent

    from prefork_lb.logs import AccessLog
    from prefork_lb.scoreboard import DRAINING, READY, RETIRING
    from prefork_lb.worker.server import Server, ServerOptions

    access = AccessLog(cfg.access_log_format, cfg.access_logfile) if cfg.access_logfile else None
    options = ServerOptions.from_config(cfg)
    if n_offload:
        from prefork_lb.offload import offload

        options.extra_environ["prefork_lb.offload"] = offload
    server = Server(app, options, access_log=access, board=entry, shared_accept=cfg.dispatch == "shared")
    if cfg.dispatch == "handoff":
        for sock in listeners:
            server.add_handoff_channel(sock)
    else:
        for sock in listeners:
            server.add_listener(sock)

    limit = cfg.max_requests
    if limit:
        limit += random.randint(0, cfg.max_requests_jitter) if cfg.max_requests_jitter else 0

    def heartbeat() -> None:
        interval = max(0.05, min(1.0, (cfg.timeout or 4.0) / 4))
        retiring = False
        from prefork_lb import offload as offload_mod

        me = None
        if cfg.max_rss:
            import psutil

            me = psutil.Process()
        retire_at = 0.0  # --max-rss: when this worker asks to be replaced (jittered)
        while True:
            entry.beat()
            pool = offload_mod._default_pool  # only if the app has started it
            if pool is not None:
                st = pool.stats()
                entry.offload(st["busy"], st["idle"])
            if os.getppid() != master_pid:
                log.warning("Worker %d: master is gone; stopping", os.getpid())
                stop(True)
                return
            if me is not None and not retiring:
                now = time.monotonic()
                if not retire_at and me.memory_info().rss > cfg.max_rss * 1024 * 1024:
                    retire_at = now + random.uniform(0, cfg.max_rss_jitter)
                    log.warning(
                        "Worker %d uses %d MiB, over --max-rss %d MiB: recycling it",
                        os.getpid(),
                        me.memory_info().rss >> 20,
                        cfg.max_rss,
                    )
                if retire_at and now >= retire_at:
                    retiring = True
                    entry.set_state(RETIRING)
            if limit and not retiring and server.requests_served >= limit:
                # Ask the master for a replacement; it sends TERM once that one is ready.
                retiring = True
                entry.set_state(RETIRING)
                log.info(
                    "Worker %d served %d requests: asking to be replaced", os.getpid(), server.requests_served
                )
            gevent.sleep(interval)

    def stop(graceful: bool) -> None:
        entry.set_state(DRAINING)
        gevent.spawn(process.stop_server, server, graceful, cfg.graceful_timeout)

    gevent.signal_handler(signal.SIGTERM, stop, True)
    gevent.signal_handler(signal.SIGINT, stop, False)
    gevent.signal_handler(signal.SIGQUIT, stop, False)
    signal.pthread_sigmask(signal.SIG_SETMASK, set())

    def reopen_logs() -> None:
        from prefork_lb.logs import setup_error_log

        setup_error_log(cfg.log_level, cfg.error_logfile)
        if access is not None:
            access.reopen()

    gevent.signal_handler(signal.SIGUSR1, reopen_logs)
    gevent.spawn(heartbeat)
    entry.set_state(READY)
    server.serve_forever()
    _hook(cfg, "worker_exit", master, worker)
    return 0


def _hook(cfg: Any, name: str, *args: Any) -> None:
    fn = cfg.hooks.get(name)
    if fn is not None:
        try:
            fn(*args)
        except Exception:
            log.exception("hook %s failed", name)
