"""Running the engine in the current process: signals, serve, drain, exit.

Used directly for a single process (``-w 1`` until the master lands) and, later, by each
forked worker. gevent's monkey-patching happens here, in the process that serves requests,
and never in a master.
"""

from __future__ import annotations

import logging
import signal
import socket
from typing import Any

log = logging.getLogger("prefork_lb.error")


def patch() -> None:
    """Monkey-patch the standard library for gevent (before the app is imported)."""
    from gevent import monkey

    if not monkey.is_module_patched("socket"):
        monkey.patch_all()


def serve(app: Any, cfg: Any, listeners: list[socket.socket]) -> int:
    """Serve until TERM (graceful) or INT/QUIT (fast). Returns the exit code."""
    import gevent

    from prefork_lb.logs import AccessLog
    from prefork_lb.worker.server import Server, ServerOptions

    access = AccessLog(cfg.access_log_format, cfg.access_logfile) if cfg.access_logfile else None
    server = Server(app, ServerOptions.from_config(cfg), access_log=access)
    for sock in listeners:
        server.add_listener(sock)

    state = {"graceful": True}

    def stop(graceful: bool) -> None:
        state["graceful"] = graceful
        gevent.spawn(stop_server, server, graceful, cfg.graceful_timeout)

    gevent.signal_handler(signal.SIGTERM, stop, True)
    gevent.signal_handler(signal.SIGINT, stop, False)
    gevent.signal_handler(signal.SIGQUIT, stop, False)
    if access is not None:
        gevent.signal_handler(signal.SIGUSR1, access.reopen)
    server.serve_forever()
    return 0


def stop_server(server: Any, graceful: bool, timeout: float) -> None:
    if graceful:
        log.info("Graceful stop: draining %d connection(s), up to %.0f s", len(server.connections), timeout)
        if not server.drain(timeout):
            log.warning("Graceful timeout: closed %d connection(s) still busy", len(server.connections))
    else:
        server.drain(0)
