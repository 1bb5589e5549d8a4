"""The master: binds every listener, forks the workers, then only supervises.

Signal handlers only queue the signal and wake the loop (through ``signal.set_wakeup_fd``); the
loop handles each as ``handle_<name>``. The master never serves a request, never imports the
user's app (a worker does, after fork) and is never monkey-patched.

The loop, each tick: handle the queued signals, reap, then either step a stop or check the
heartbeats, autoscale and run the supervision steps (prefork_lb.supervisor: kill overdue, note
ready, fill slots, replace outdated, retire predecessors, shrink, announce ready). What differs
between --dispatch modes (listeners, the sockets a slot gets, the helper process, resizing,
USR2's hand-over) is asked of the mode object (prefork_lb.dispatch), never branched on here.

Signals, as gunicorn uses them: TERM graceful stop within --graceful-timeout (after
--shutdown-delay seconds of serving on, /readyz saying 503 meanwhile); INT and QUIT fast stop;
HUP reload (config and app code; new workers first, old ones drain once the new are ready);
TTIN/TTOU one worker more/less; USR1 reopen log files; CHLD reap.
"""

from __future__ import annotations

import json
import logging
import os
import select
import signal
import sys
import time
from collections.abc import Callable
from typing import Any

from prefork_lb.admin import totals as tt
from prefork_lb.child import describe_exit, set_title, title_label
from prefork_lb.sockets import parse_address, sd_notify, systemd_listen_fds
from prefork_lb.supervisor import (
    ABORT_GRACE,
    DISPATCHER_SLOT,
    FAST_STOP_GRACE,
    MAX_BACKOFF,
    SIGNALS,
    BootError,
    ReloadProgress,
    Supervisor,
    WorkerProc,
)

log = logging.getLogger("prefork_lb.error")

__all__ = [
    "ABORT_GRACE",
    "DISPATCHER_SLOT",
    "FAST_STOP_GRACE",
    "MAX_BACKOFF",
    "Arbiter",
    "BootError",
    "WorkerProc",
    "describe_exit",
    "sd_notify",
]

# USR2 hands the listeners to a new master through these environment variables.
ENV_FDS = "PREFORK_LB_INHERITED_FDS"
ENV_OLD_MASTER = "PREFORK_LB_OLD_MASTER"


class Arbiter(Supervisor):
    """The master process: its listeners (through the dispatch mode), its signals, its loop.
    What it does with its children is the Supervisor's part."""

    def __init__(
        self,
        cfg: Any,
        reload_config: Callable[[], Any] | None = None,
        argv: list[str] | None = None,
        clock: Callable[[], float] = time.monotonic,
        fork: Callable[[], int] = os.fork,
        kill: Callable[[int, int], None] = os.kill,
        waitpid: Callable[[int, int], tuple[int, int]] = os.waitpid,
    ) -> None:
        super().__init__(cfg, clock, fork, kill, waitpid)
        self.reload_config = reload_config
        self.argv = argv  # for USR2: the new master runs the same command line
        self.sig_queue: list[str] = []
        self.exit_code = 0
        self.stop_grace: float | None = None  # `prefork_lb ctl stop --graceful-timeout S`

    @property
    def sticky_secret(self) -> bytes | None:
        """--dispatch proxy: the sticky cookie's secret, one per master (see dispatch.proxy)."""
        return getattr(self.mode, "sticky_secret", None)

    # -- listeners ----------------------------------------------------------------------------

    def bind(self) -> None:
        """Bind every address (BindError for a user mistake), or take the listeners handed
        down by an old master (USR2) or by systemd (LISTEN_FDS)."""
        addresses = [parse_address(b) for b in self.cfg.bind]
        inherited = os.environ.pop(ENV_FDS, None)
        old = os.environ.pop(ENV_OLD_MASTER, None)
        if inherited:
            self.mode.adopt(json.loads(inherited), addresses, self.num_workers)
            self.old_master = int(old or 0)
            return
        fds = systemd_listen_fds()
        if fds is not None:
            self.mode = self.mode.adopt_systemd(fds, self.num_workers)
            return
        self.mode.bind(addresses, self.num_workers)

    # -- main loop ----------------------------------------------------------------------------

    def setup(self) -> None:
        self._wake_r, self._wake_w = os.pipe()
        for fd in (self._wake_r, self._wake_w):
            os.set_blocking(fd, False)
            os.set_inheritable(fd, False)
        self._boot_r, self._boot_w = os.pipe()
        os.set_blocking(self._boot_r, False)
        signal.set_wakeup_fd(self._wake_w)
        for name in SIGNALS:
            signal.signal(getattr(signal, "SIG" + name), self._on_signal)
        if self.cfg.pidfile:
            with open(self.cfg.pidfile, "w") as f:
                f.write(f"{self.pid}\n")
        set_title(f"prefork_lb: master [{title_label(self.cfg, 'proxy')}]")

    def _on_signal(self, signum: int, frame: Any) -> None:
        # Only record it: the loop does the work (the wakeup fd has already woken it).
        if len(self.sig_queue) < 16:
            self.sig_queue.append(signal.Signals(signum).name[3:])

    def run(self) -> int:
        self.setup()
        self.hook("on_starting", self)
        try:
            self.totals.beat(time.monotonic())
            self.manage()
            while True:
                self.sleep(self.sleep_time())
                self.totals.beat(time.monotonic())  # for the admin process's /livez
                while self.sig_queue:
                    name = self.sig_queue.pop(0)
                    getattr(self, "handle_" + name.lower())()
                self.reap()
                self.end_shutdown_delay()
                if self.stopping:
                    if self.step_stop():
                        break
                    continue
                self.check_timeouts()
                self.autoscale()
                self.manage()
        finally:
            self.cleanup()
        if self.boot_error is not None:
            if self.ready_announced:  # logged with its traceback; at start-up, the lines below say it all
                log.info("Master (pid %d) exiting: exit code %d", self.pid, self.boot_error.code)
            else:
                sys.stderr.write(self.boot_error.detail)  # the app's traceback, once
            sys.stderr.write(f"prefork_lb: error: {self.boot_error}\n")
            return self.boot_error.code
        self.hook("on_exit", self)
        log.info("Master (pid %d) exiting: exit code %d", self.pid, self.exit_code)
        return self.exit_code

    def sleep_time(self) -> float:
        """Until the next tick, or sooner when a backed-off respawn is due."""
        if self.stopping:
            return 0.1
        due = [t for t in self.next_spawn.values() if t > 0]
        if self.shutdown_at:
            due.append(self.shutdown_at)
        if due:
            return max(0.0, min(0.5, min(due) - self.clock()))
        return 0.5

    def sleep(self, timeout: float) -> None:
        try:
            ready, _, _ = select.select([self._wake_r], [], [], timeout)
        except InterruptedError:
            return
        if ready:
            try:
                while os.read(self._wake_r, 4096):
                    pass
            except BlockingIOError:
                pass

    def cleanup(self) -> None:
        own = self.mode.sockets.admin + self.mode.sockets.control
        admin_paths = [n for n in (s.getsockname() for s in own) if isinstance(n, str) and n]
        for s in self.all_sockets():
            s.close()
        if self.handed_over:
            return  # the new master owns the unix socket paths and the pidfile now
        for a in self.addresses:
            if a.kind == "unix":
                try:
                    os.unlink(a.path)
                except OSError:
                    pass
        for path in admin_paths:  # --stats-bind unix:PATH, --control-socket
            try:
                os.unlink(path)
            except OSError:
                pass
        if self.cfg.pidfile:
            try:
                with open(self.cfg.pidfile) as f:
                    mine = f.read().strip() == str(self.pid)
                if mine:
                    os.unlink(self.cfg.pidfile)
            except OSError:
                pass

    # -- signal handlers ----------------------------------------------------------------------

    def handle_chld(self) -> None:
        pass  # reap() runs after every wake-up

    def handle_term(self) -> None:
        taken = self.totals.take_stop_grace()  # `prefork_lb ctl stop --graceful-timeout S`
        if taken is not None:
            self.stop_grace = taken
        delay = self.cfg.shutdown_delay
        # After USR2 the TERM comes from the new master, which serves already: no delay.
        if delay > 0 and not self.stopping and not self.shutdown_at and not self.handed_over:
            # Serve on; /readyz says 503 from now, so the load balancer in front stops sending.
            log.info(
                "SIGTERM: serving %g s more (--shutdown-delay, /readyz answers 503), then a graceful "
                "stop (up to %.0f s); another TERM stops now",
                delay,
                self.graceful_timeout(),
            )
            self.shutdown_at = self.clock() + delay
            self.totals.set_shutdown(tt.DELAYING)
            sd_notify("STOPPING=1")
            return
        log.info("SIGTERM: graceful stop (up to %.0f s)", self.graceful_timeout())
        sd_notify("STOPPING=1")
        self.begin_stop("graceful", self.stop_grace)

    def graceful_timeout(self) -> float:
        """--graceful-timeout, or what `prefork_lb ctl stop --graceful-timeout S` asked for."""
        return self.cfg.graceful_timeout if self.stop_grace is None else self.stop_grace

    def end_shutdown_delay(self) -> None:
        """--shutdown-delay is over: the graceful stop begins."""
        if self.shutdown_at and not self.stopping and self.clock() >= self.shutdown_at:
            log.info("Shutdown delay over: graceful stop (up to %.0f s)", self.graceful_timeout())
            self.begin_stop("graceful", self.stop_grace)

    def handle_int(self) -> None:
        log.info("SIGINT: fast stop")
        self.begin_stop("fast")

    handle_quit = handle_int

    def handle_hup(self) -> None:
        log.info("SIGHUP: reloading configuration and app")
        if self.reload_config is not None:
            try:
                new = self.reload_config()
            except Exception as exc:
                log.error("Reload failed, keeping the running configuration: %s", exc)
                return
            workers = self.num_workers if new.workers == self.cfg.workers else new.workers
            new.set("workers", workers, "SIGHUP reload")
            self.mode.reconfigure(new)
            self.interface.reconfigure(new)
            self.cfg = new
            self.num_workers = new.workers
            self.resized()
        self.generation += 1
        self.reload = ReloadProgress(self.generation)
        for w in self.workers.values():
            w.retry_at = 0.0  # an operator's HUP tries again now, whatever failed before

    def fixed_pools(self, what: str) -> bool:
        """--mount: each pool keeps the workers it was given (TTIN, TTOU and scale refused)."""
        if self.cfg.mounts is None:
            return False
        log.warning("%s ignored: with --mount each pool has its workers= (change them and restart)", what)
        return True

    def handle_ttin(self) -> None:
        target = self.totals.take_scale()  # `prefork_lb ctl scale N` wrote a count, then sent TTIN
        if self.fixed_pools("Control socket: scale" if target > 0 else "SIGTTIN"):
            return
        if target > 0:
            self.scale_to(target)
            return
        self.add_slot()
        log.info("SIGTTIN: %d workers", self.num_workers)

    def scale_to(self, target: int) -> None:
        if target != self.num_workers:
            self.num_workers = target
            self.resized()  # fewer: shrink() drains the slots past the count on the next tick
        log.info("Control socket: scale to %d workers", self.num_workers)

    def handle_ttou(self) -> None:
        if self.fixed_pools("SIGTTOU"):
            return
        if self.num_workers > 1:
            self.num_workers -= 1
            self.resized()  # reuseport steers before the slot's worker drains: nothing new lands there
        log.info("SIGTTOU: %d workers", self.num_workers)

    def handle_usr2(self) -> None:
        """Binary upgrade: exec a new master that inherits every listener. It sends us TERM
        once its workers are ready; until then both serve."""
        if self.new_master:
            log.warning("SIGUSR2 ignored: a new master (pid %d) is already starting", self.new_master)
            return
        if self.argv is None:
            log.warning("SIGUSR2 ignored: an app passed as an object cannot be re-executed")
            return
        socks = self.all_sockets()
        for sock in socks:
            os.set_inheritable(sock.fileno(), True)
        spec = json.dumps(self.mode.handover())
        env = dict(os.environ, **{ENV_FDS: spec, ENV_OLD_MASTER: str(self.pid)})
        pid = self.fork()
        if pid == 0:
            try:
                os.execve(sys.executable, [sys.executable, "-m", "prefork_lb", *self.argv], env)
            finally:
                os._exit(127)
        for sock in socks:
            os.set_inheritable(sock.fileno(), False)
        self.new_master = pid
        self.handed_over = True
        log.info("SIGUSR2: started a new master (pid %d); this one drains when it is ready", pid)

    def handle_usr1(self) -> None:
        from prefork_lb.logs import setup_error_log

        setup_error_log(self.cfg.log_level, self.cfg.error_logfile)
        for w in self.workers.values():
            self.signal_pid(w.pid, signal.SIGUSR1)
