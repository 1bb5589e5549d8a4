"""The ASGI worker process: a :class:`prefork_lb.child.ChildProcess` that serves an ASGI app on
asyncio (uvloop when installed) with prefork_lb.asgi.server.AsgiServer.

It is the WSGI worker (prefork_lb.worker.child.WorkerChild) in everything but the engine, and
inherits its steps: faulthandler for the master's SIGABRT, --user/--group, the offload pool's
size, the app import (never monkey-patched: gevent is not imported in this process), the
--offload-executor, the heartbeat's recycling (--max-requests, --max-rss) and the offload
pool's numbers. What differs:

* boot: after the import, the event loop and the lifespan startup (prefork_lb.asgi.lifespan).
  A failed startup is one line on the boot pipe and EXIT_BOOT: the master stops with that line
  at start, or keeps the old worker serving when this one was a reload's replacement (never a
  respawn loop). ``notify_ready`` only once the startup is complete.
* the heartbeat is a ``loop.call_later`` chain every --timeout / 4: a view that blocks the loop
  (``time.sleep`` in an ``async def``) stops the beats, and the master's watchdog aborts the
  worker (SIGABRT: faulthandler dumps every thread; the scoreboard's request line, written by
  the hooks of prefork_lb.asgi.accounting for each request, names the request in its log line).
* signals through ``loop.add_signal_handler``: TERM drains (new connections refused, requests
  in flight finish with Connection: close, within --graceful-timeout), then the lifespan
  shutdown; INT and QUIT stop at once; USR1 reopens the log files.

Exit codes as the WSGI worker's (prefork_lb.child); EXIT_WRONG_INTERFACE when --interface auto
finds a WSGI app here (the master starts a WSGI worker instead, see prefork_lb.interface).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Callable
from typing import Any, ClassVar

from prefork_lb import boot_message
from prefork_lb import scoreboard as sb
from prefork_lb.child import EXIT_APP_LOAD, EXIT_BOOT
from prefork_lb.worker.child import WorkerChild, idle_grace_note

__all__ = ["AsgiWorkerChild", "new_loop", "stop_serving"]

log = logging.getLogger("prefork_lb.error")

FAST_STOP = 1.0  # seconds INT/QUIT gives connections to close before the loop stops
CUT_NAMED = 5  # requests the graceful timeout's line names at most


def new_loop() -> asyncio.AbstractEventLoop:
    """uvloop's loop when it is installed, else asyncio's."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    return loop


async def stop_serving(
    server: Any, lifespan: Any, graceful: bool, timeout: float, reserve: float = 0.0
) -> None:
    """Graceful: drain within ``timeout`` less ``reserve`` (requests in flight finish with
    Connection: close; the reserve leaves time for the lines and the lifespan shutdown before a
    master that kills at ``timeout``), then the lifespan shutdown; fast: close what is open at
    once. Never raises but CancelledError, when a fast stop takes over a graceful one (it
    finishes)."""
    try:
        if graceful:
            log.info(
                "Graceful stop: draining %d connection(s) and %d websocket(s), up to %.0f s%s",
                len(server.connections),
                len(server.websockets),
                timeout,
                idle_grace_note(server.options.idle_grace, timeout),
            )
            if not await server.drain(max(0.0, timeout - reserve)):
                graceful_timeout_line(server.cut_requests, timeout)
            await lifespan.shutdown()
        else:
            await asyncio.wait_for(server.drain(0), FAST_STOP)
    except asyncio.CancelledError:
        if graceful:
            raise
    except (asyncio.TimeoutError, Exception):
        log.exception("Worker %d: error while stopping", os.getpid())


def graceful_timeout_line(cut: list[str], timeout: float) -> None:
    """The drain's timeout came: one error line naming the requests it cut (the access log has
    no status for those that got none), else a warning for the idle or websocket ones."""
    if not cut:
        log.warning("Graceful timeout: closed the connections still busy")
        return
    names = ", ".join(cut[:CUT_NAMED]) + (f" and {len(cut) - CUT_NAMED} more" if len(cut) > CUT_NAMED else "")
    log.error("Graceful timeout (%g s): cut %d request(s) still running: %s", timeout, len(cut), names)


class AsgiWorkerChild(WorkerChild):
    interface: ClassVar[str] = "asgi"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.loop: asyncio.AbstractEventLoop | None = None
        self.lifespan: Any = None
        self.stopping: asyncio.Task[None] | None = None
        self.done: asyncio.Future[None] | None = None
        self.interval = 1.0

    # -- boot ---------------------------------------------------------------------------------

    def boot(self) -> int:
        self.enable_faulthandler()
        self.size_offload_pool()
        if not self.switch_user():
            return EXIT_APP_LOAD
        app, code = self.load_app()  # unpatched: this process never imports gevent
        if app is None:
            return code
        code = self.start_offload_executor()
        if code:
            return code
        self.loop = loop = new_loop()
        asyncio.set_event_loop(loop)
        code = self.start_lifespan(app)
        if code:
            return code
        os.close(self.ctx.boot_fd)
        self.ctx.hook("post_worker_init", self.ctx.record)
        self.server = self.make_server(app)
        return 0

    def start_lifespan(self, app: Any) -> int:
        """The app's lifespan startup (--lifespan); 0, or EXIT_BOOT with its one line on the
        boot pipe."""
        from prefork_lb.asgi.lifespan import Lifespan, LifespanFailed, failure_line

        assert self.loop is not None
        self.lifespan = Lifespan(app, self.cfg.lifespan)
        try:
            self.loop.run_until_complete(self.lifespan.startup())
        except LifespanFailed as exc:
            line = failure_line(exc)
            boot_message.write(self.ctx.boot_fd, line)
            return EXIT_BOOT
        return 0

    def make_server(self, app: Any) -> Any:
        from prefork_lb.asgi.accounting import WorkerHooks
        from prefork_lb.asgi.options import AsgiOptions
        from prefork_lb.asgi.server import AsgiServer
        from prefork_lb.logs import AccessLog

        cfg, mode = self.cfg, self.ctx.mode
        self.access = (
            AccessLog(cfg.access_log_format, cfg.access_logfile, cfg.request_id_header)
            if cfg.access_logfile
            else None
        )
        options = AsgiOptions.from_config(cfg)
        mode.configure_worker(options)
        hooks = WorkerHooks(self.entry, self.access)
        state = getattr(self.lifespan, "state", None)
        server = AsgiServer(app, options, self.loop, hooks=hooks, state=state)
        mode.attach(server, self.ctx.sockets)
        return server

    # -- signals --------------------------------------------------------------------------------

    def install(self, sig: signal.Signals, handler: Callable[[], None]) -> None:
        assert self.loop is not None
        self.loop.add_signal_handler(sig, handler)

    def unblock_signals(self) -> None:
        pass  # from the loop's first callback (run)

    def stop(self, graceful: bool) -> None:
        """Graceful: drain, then the lifespan shutdown; fast (or a fast stop during a graceful
        one): close what is open and end the loop."""
        self.entry.set_state(sb.DRAINING)
        self.no_idle_grace_when_all_stop()
        if self.stopping is not None:
            if graceful:
                return  # already draining
            self.stopping.cancel()
        assert self.loop is not None
        self.stopping = self.loop.create_task(self.drain_and_finish(graceful))

    async def drain_and_finish(self, graceful: bool) -> None:
        await stop_serving(self.server, self.lifespan, graceful, self.graceful_timeout())
        if self.done is not None and not self.done.done():
            self.done.set_result(None)

    # -- run ------------------------------------------------------------------------------------

    def run(self) -> int:
        loop = self.loop
        assert loop is not None
        self.done = loop.create_future()
        self.interval = self.heartbeat_setup()
        # uvloop sees a signal only while it runs: one that came while booting (TERM waits
        # blocked) is delivered from the loop's first callback, not lost before it.
        loop.call_soon(signal.pthread_sigmask, signal.SIG_SETMASK, set())
        loop.call_soon(self.heartbeat)
        self.notify_ready()
        try:
            loop.run_until_complete(self.done)
        finally:
            self.ctx.hook("worker_exit", self.ctx.hook_server, self.ctx.record)
        return 0

    def heartbeat(self) -> None:
        """One beat, then the next in --timeout / 4 (a blocked loop stops beating)."""
        assert self.loop is not None
        if self.heartbeat_step():
            self.loop.call_later(self.interval, self.heartbeat)

    def served(self) -> int:
        return int(self.server.served)
