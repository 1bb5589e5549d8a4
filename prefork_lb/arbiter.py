"""The master: binds every listener, forks the workers, then only supervises.

Signal handlers only queue the signal and wake the loop (through ``signal.set_wakeup_fd``); the
loop handles each as ``handle_<name>``. The master never serves a request, never imports the
user's app (a worker does, after fork) and is never monkey-patched.

Slots: a worker serves a *slot*, a position in the dispatch. In ``reuseport`` mode each slot
has its own SO_REUSEPORT listener, created and kept open by the master: when a worker dies,
the connections queued on its slot wait in the kernel for its replacement instead of being
reset. A slot can briefly have two workers: the old one draining and its replacement (rolling
reload, max-requests recycling).

Signals, as gunicorn uses them: TERM graceful stop within --graceful-timeout; INT and QUIT fast
stop; HUP reload (config and app code; new workers first, old ones drain once the new are
ready); TTIN/TTOU one worker more/less; USR1 reopen log files; CHLD reap.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import select
import signal
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from prefork_lb import scoreboard as sb
from prefork_lb.sockets import Address, listen, parse_address, steer_reuseport
from prefork_lb.worker import child

log = logging.getLogger("prefork_lb.error")

SIGNALS = ("HUP", "QUIT", "INT", "TERM", "TTIN", "TTOU", "USR1", "USR2", "CHLD")
_HANDLED = {getattr(signal, "SIG" + name) for name in SIGNALS}
# USR2 hands the listeners to a new master through these environment variables.
ENV_FDS = "PREFORK_LB_INHERITED_FDS"
ENV_OLD_MASTER = "PREFORK_LB_OLD_MASTER"
DISPATCHER_SLOT = -1  # the handoff dispatcher or the proxy: supervised like a worker in this slot
ABORT_GRACE = 2.0  # seconds between SIGABRT and SIGKILL for a stuck worker
FAST_STOP_GRACE = 3.0  # seconds INT/QUIT gives workers before SIGKILL
MAX_BACKOFF = 10.0


@dataclass
class WorkerProc:
    pid: int
    slot: int
    entry: int
    started: float
    ready: bool = False
    term_at: float = 0.0  # when we asked it to stop (0: never)
    abort_at: float = 0.0  # when we sent SIGABRT for a missed heartbeat
    replaced_by: int = 0  # pid of the worker taking over its slot
    replaces: int = 0  # pid of the worker it takes over from
    reload_gen: int = 0  # the reload generation it was started in


class BootError(Exception):
    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


class Arbiter:
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
        self.cfg = cfg
        self.reload_config = reload_config
        self.argv = argv  # for USR2: the new master runs the same command line
        self.new_master = 0  # pid of the master started by USR2
        self.old_master = 0  # pid of the master we replace (we were started by its USR2)
        self.handed_over = False
        self.clock = clock
        self.fork = fork
        self.kill = kill
        self.waitpid = waitpid
        self.pid = os.getpid()
        self.num_workers = cfg.workers
        self.workers: dict[int, WorkerProc] = {}
        self.board = sb.Scoreboard(max(16, 2 * max(self.num_workers, cfg.max_workers) + 8))
        self.sig_queue: list[str] = []
        self.stopping: str | None = None  # None | "graceful" | "fast"
        self.stop_signal = signal.SIGTERM
        self.stop_deadline = 0.0
        self.exit_code = 0
        self.boot_error: BootError | None = None
        self.generation = 0
        self.ready_announced = False
        self.next_spawn: dict[int, float] = {}
        self.backoff: dict[int, float] = {}
        self.shared_sockets: list[socket.socket] = []
        self.slot_sockets: dict[int, list[socket.socket]] = {}
        self.channels: dict[int, tuple[socket.socket, socket.socket]] = {}  # handoff: slot -> (send, recv)
        self.admin_sockets: list[socket.socket] = []  # proxy: the --stats-bind listener
        # proxy: one secret for the sticky cookie, so a replaced proxy honours the old cookies
        secret = getattr(cfg, "sticky_secret", None)
        self.sticky_secret = secret.encode("utf-8") if secret else os.urandom(32)
        self.addresses: list[Address] = []
        self.min_workers = cfg.workers
        self.busy_since = 0.0  # autoscaling: when every worker became busy (0: not now)
        self.idle_since = 0.0  # when load fell to at most one busy worker (0: not now)
        self.scaled_at = 0.0  # last autoscaling change (a cooldown against flapping)
        self._wake_r = self._wake_w = -1
        self._boot_r = self._boot_w = -1

    # -- listeners ----------------------------------------------------------------------------

    def bind(self) -> None:
        """Bind every address (BindError for a user mistake), or take the listeners handed
        down by an old master (USR2) or by systemd (LISTEN_FDS)."""
        cfg = self.cfg
        self.addresses = [parse_address(b) for b in cfg.bind]
        reuse = cfg.dispatch == "reuseport"
        proxy = cfg.dispatch == "proxy"
        inherited = os.environ.pop(ENV_FDS, None)
        old = os.environ.pop(ENV_OLD_MASTER, None)
        if inherited:
            spec = json.loads(inherited)
            self.shared_sockets = [_adopt(fd) for fd in spec["shared"]]
            self.slot_sockets = {int(k): [_adopt(fd) for fd in v] for k, v in spec["slots"].items()}
            self.old_master = int(old or 0)
            self.admin_sockets = [_adopt(fd) for fd in spec.get("admin", [])]
            if reuse:
                for slot in range(self.num_workers):
                    self.slot_listeners(slot)
                self.steer()
            self.open_channels()  # channels are per master: the new one makes its own
            return
        if os.environ.get("LISTEN_PID") == str(os.getpid()) and os.environ.get("LISTEN_FDS"):
            # systemd socket activation: its sockets replace --bind; every worker shares them.
            n = int(os.environ["LISTEN_FDS"])
            for var in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
                os.environ.pop(var, None)
            self.shared_sockets = [_adopt(fd) for fd in range(3, 3 + n)]
            self.addresses = [Address("fd", fd=fd) for fd in range(3, 3 + n)]
            if reuse:
                log.info("systemd socket activation: the inherited sockets are shared by all workers")
                self.cfg.values["dispatch"] = "shared"
            self.open_channels()
            return
        for addr in self.addresses:
            if addr.kind != "tcp" or not reuse:
                self.shared_sockets.append(listen(addr, cfg.backlog))
        if reuse or proxy:
            for slot in range(self.num_workers):
                self.slot_listeners(slot)
        if reuse:
            self.steer()
        if proxy and cfg.stats_bind not in ("off", "public", ""):
            self.admin_sockets = [listen(parse_address(cfg.stats_bind), 64)]
        self.open_channels()

    def open_channels(self) -> None:
        """Handoff: a channel per slot, created before any process that uses it is forked."""
        if self.cfg.dispatch != "handoff":
            return
        from prefork_lb.dispatch.handoff import open_channel

        for slot in range(self.num_workers):
            if slot not in self.channels:
                self.channels[slot] = open_channel()

    def steer(self) -> None:
        """Keep new connections on the slots below the worker count (see sockets.steer_reuseport)."""
        first = self.slot_sockets.get(0)
        if not first or self.cfg.dispatch != "reuseport":
            return
        for sock in first:  # one program per address group
            if not steer_reuseport(sock, self.num_workers):
                log.warning(
                    "Cannot steer SO_REUSEPORT (no classic BPF); connections queued on a "
                    "removed worker slot may be reset unless net.ipv4.tcp_migrate_req=1"
                )
                return

    def slot_listeners(self, slot: int) -> list[socket.socket]:
        if self.cfg.dispatch == "proxy":
            # The slot's own loopback port; the master keeps it, so connections the proxy
            # makes to a worker being replaced wait in its backlog.
            socks = self.slot_sockets.get(slot)
            if socks is None:
                base = self.cfg.worker_base_port
                socks = self.slot_sockets[slot] = [
                    listen(
                        Address("tcp", host="127.0.0.1", port=base + slot if base else 0), self.cfg.backlog
                    )
                ]
            return socks
        if self.cfg.dispatch != "reuseport" or not any(a.kind == "tcp" for a in self.addresses):
            return []
        socks = self.slot_sockets.get(slot)
        if socks is None:
            socks = []
            for i, a in enumerate(self.addresses):
                if a.kind != "tcp":
                    continue
                sock = listen(a, self.cfg.backlog, reuseport=True)
                if a.port == 0:
                    # Port 0: every slot must join the group on the port the first one got.
                    self.addresses[i] = Address("tcp", host=a.host, port=sock.getsockname()[1])
                socks.append(sock)
            self.slot_sockets[slot] = socks
        return socks

    def close_slot(self, slot: int) -> None:
        for s in self.slot_sockets.pop(slot, []):
            s.close()

    def all_sockets(self) -> list[socket.socket]:
        return (
            self.shared_sockets
            + [s for socks in self.slot_sockets.values() for s in socks]
            + [s for pair in self.channels.values() for s in pair]
            + self.admin_sockets
        )

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
        try:
            from setproctitle import setproctitle

            setproctitle(f"prefork_lb: master [{self.cfg.proc_name or self.cfg.app_uri or 'proxy'}]")
        except ImportError:
            pass

    def _on_signal(self, signum: int, frame: Any) -> None:
        # Only record it: the loop does the work (the wakeup fd has already woken it).
        if len(self.sig_queue) < 16:
            self.sig_queue.append(signal.Signals(signum).name[3:])

    def run(self) -> int:
        self.setup()
        self.hook("on_starting", self)
        try:
            self.manage()
            while True:
                self.sleep(self.sleep_time())
                while self.sig_queue:
                    name = self.sig_queue.pop(0)
                    getattr(self, "handle_" + name.lower())()
                self.reap()
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
            sys.stderr.write(f"prefork_lb: error: {self.boot_error}\n")
            return self.boot_error.code
        self.hook("on_exit", self)
        return self.exit_code

    def sleep_time(self) -> float:
        """Until the next tick, or sooner when a backed-off respawn is due."""
        if self.stopping:
            return 0.1
        due = [t for t in self.next_spawn.values() if t > 0]
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
        if self.cfg.pidfile:
            try:
                with open(self.cfg.pidfile) as f:
                    mine = f.read().strip() == str(self.pid)
                if mine:
                    os.unlink(self.cfg.pidfile)
            except OSError:
                pass

    # -- workers ------------------------------------------------------------------------------

    def spawn(self, slot: int, replaces: int = 0) -> WorkerProc:
        entry = self.board.allocate(0, slot)
        handoff = self.cfg.dispatch == "handoff"
        proxy = self.cfg.dispatch == "proxy"
        if slot == DISPATCHER_SLOT and proxy:
            mine = self.shared_sockets + self.admin_sockets
        elif slot == DISPATCHER_SLOT:
            mine = self.shared_sockets + [send for send, _ in self.channels.values()]
        elif proxy:
            mine = self.slot_listeners(slot)
            self.board.set_port(entry, mine[0].getsockname()[1])
        elif handoff:
            mine = [self.channels[slot][1]]
        else:
            mine = self.shared_sockets + self.slot_listeners(slot)
        w = WorkerProc(0, slot, entry, self.clock(), replaces=replaces, reload_gen=self.generation)
        if slot != DISPATCHER_SLOT:
            self.hook("pre_fork", self, w)
        # Block the master's signals across the fork: the child must not run the master's
        # handlers (which write to the master's wake-up pipe) nor die of a TERM before it has
        # its own graceful handler. The child unblocks them once its handlers are set.
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, _HANDLED)
        try:
            pid = self.fork()
        except BaseException:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
            raise
        if pid != 0:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        if pid == 0:  # the worker (or the dispatcher)
            w.pid = os.getpid()
            keep = {s.fileno() for s in mine}
            for s in self.all_sockets():
                if s.fileno() not in keep:
                    s.close()
            os.close(self._boot_r)
            os.close(self._wake_r)
            os.close(self._wake_w)
            if slot == DISPATCHER_SLOT and proxy:
                from prefork_lb.proxy.process import run_proxy

                code = 1
                try:
                    code = run_proxy(w, self, self.shared_sockets, self.admin_sockets)
                finally:
                    os._exit(code)
            if slot == DISPATCHER_SLOT:
                from prefork_lb.dispatch.handoff import run_dispatcher

                channels = {k: send for k, (send, _) in self.channels.items()}
                code = 1
                try:
                    code = run_dispatcher(w, self, self.shared_sockets, channels)
                finally:
                    os._exit(code)
            self.hook("post_fork", self, w)
            child.run(w, self, mine)
        self.board.set_pid(entry, pid)
        w.pid = pid
        self.workers[pid] = w
        log.debug("Booting %s (pid %d)", self.slot_name(slot), pid)
        return w

    def slot_name(self, slot: int) -> str:
        if slot != DISPATCHER_SLOT:
            return f"worker {slot}"
        return "proxy" if self.cfg.dispatch == "proxy" else "dispatcher"

    def live_for_slot(self, slot: int) -> list[WorkerProc]:
        return [w for w in self.workers.values() if w.slot == slot and not w.term_at]

    def manage(self) -> None:
        now = self.clock()
        # A worker asked to drain (reload, TTOU, recycling) gets --graceful-timeout, then SIGKILL.
        grace = self.cfg.graceful_timeout + ABORT_GRACE
        for w in list(self.workers.values()):
            if w.term_at and not w.abort_at and now - w.term_at > grace:
                log.warning(
                    "%s (pid %d) did not stop within %.0f s of being asked: SIGKILL",
                    self.slot_name(w.slot).capitalize(),
                    w.pid,
                    grace,
                )
                w.abort_at = now
                try:
                    self.kill(w.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        for w in self.workers.values():
            if not w.ready and self.board.get(w.entry, sb.STATE) in (sb.READY, sb.RETIRING):
                w.ready = True
        # Fill empty slots (and the dispatcher's or the proxy's).
        slots = list(range(self.num_workers))
        if self.cfg.dispatch in ("handoff", "proxy"):
            slots.append(DISPATCHER_SLOT)
        for slot in slots:
            if not self.live_for_slot(slot) and now >= self.next_spawn.get(slot, 0.0):
                self.spawn(slot)
        # Replace workers that asked to retire (max-requests) or are older than a reload.
        for w in list(self.workers.values()):
            if w.term_at or w.replaced_by:
                continue
            wants_out = self.board.get(w.entry, sb.STATE) == sb.RETIRING or w.reload_gen < self.generation
            if wants_out and w.slot < self.num_workers:
                w.replaced_by = self.spawn(w.slot, replaces=w.pid).pid
        # A replacement that is ready lets its predecessor drain.
        for w in list(self.workers.values()):
            if w.replaces and w.ready:
                old = self.workers.get(w.replaces)
                w.replaces = 0
                if old is not None and not old.term_at:
                    self.stop_worker(old, signal.SIGTERM)
        # Slots beyond the worker count (TTOU): drain their workers, then close the slot.
        for w in list(self.workers.values()):
            if w.slot >= self.num_workers and not w.term_at:
                self.stop_worker(w, signal.SIGTERM)
        for slot in [s for s in self.slot_sockets if s >= self.num_workers]:
            if not any(w.slot == slot for w in self.workers.values()):
                self.close_slot(slot)
        if (
            not self.ready_announced
            and slots
            and all(any(w.ready for w in self.live_for_slot(s)) for s in slots)
        ):
            self.ready_announced = True
            for a in self.addresses:
                log.info(
                    "Listening at %s (%s dispatch, master pid %d)",
                    f"unix:{a.path}" if a.kind == "unix" else f"http://{a}",
                    self.cfg.dispatch,
                    self.pid,
                )
            for s in self.admin_sockets:
                log.info("Admin endpoints /lb-health and /lb-stats at http://%s:%d", *s.getsockname()[:2])
            if self.cfg.dispatch == "proxy" and not self.num_workers:
                log.info("Ready: proxy to %s", ", ".join(self.cfg.backends or []))
            else:
                log.info("Ready: %d worker%s serving", self.num_workers, "" if self.num_workers == 1 else "s")
            self.hook("when_ready", self)
            sd_notify(f"READY=1\nMAINPID={self.pid}")
            if self.old_master:
                log.info("Binary upgrade: asking the old master (pid %d) to drain", self.old_master)
                try:
                    self.kill(self.old_master, signal.SIGTERM)
                except ProcessLookupError:
                    pass
                self.old_master = 0

    def autoscale(self) -> None:
        """Between --workers and --max-workers, from the scoreboard's requests in flight.

        Hysteresis: up only after every worker has been busy for autoscale_up_after seconds,
        down only after autoscale_down_after seconds with at most one busy worker, and never
        twice within the shorter of the two delays."""
        cfg = self.cfg
        top = cfg.max_workers
        if not top or top <= self.min_workers:
            return
        now = self.clock()
        serving = [w for w in self.workers.values() if w.ready and not w.term_at and w.slot >= 0]
        if not serving:
            return
        busy = sum(
            1
            for w in serving
            if self.board.get(w.entry, sb.IN_FLIGHT) + self.board.get(w.entry, sb.FRESH) > 0
        )
        all_busy = busy >= len(serving) and len(serving) >= self.num_workers
        quiet = busy <= 1
        self.busy_since = (self.busy_since or now) if all_busy else 0.0
        self.idle_since = (self.idle_since or now) if quiet else 0.0
        cooldown = min(cfg.autoscale_up_after, cfg.autoscale_down_after)
        if now - self.scaled_at < cooldown:
            return
        if self.busy_since and now - self.busy_since >= cfg.autoscale_up_after and self.num_workers < top:
            self.handle_ttin_quiet()
            log.info(
                "Autoscale: %d workers (all %d busy for %.0f s)",
                self.num_workers,
                len(serving),
                now - self.busy_since,
            )
            self.scaled_at, self.busy_since = now, 0.0
        elif (
            self.idle_since
            and now - self.idle_since >= cfg.autoscale_down_after
            and self.num_workers > self.min_workers
        ):
            self.num_workers -= 1
            self.steer()
            log.info(
                "Autoscale: %d workers (%d busy for %.0f s)", self.num_workers, busy, now - self.idle_since
            )
            self.scaled_at, self.idle_since = now, 0.0

    def stop_worker(self, w: WorkerProc, sig: int) -> None:
        if not w.term_at:
            w.term_at = self.clock()
        try:
            self.kill(w.pid, sig)
        except ProcessLookupError:
            pass

    def reap(self) -> None:
        while True:
            try:
                pid, status = self.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            w = self.workers.pop(pid, None)
            if w is None:
                if pid == self.new_master:
                    log.error(
                        "The new master (pid %d) exited: %s; this master keeps serving",
                        pid,
                        describe_exit(os.waitstatus_to_exitcode(status)),
                    )
                    self.new_master = 0
                    self.handed_over = False
                continue
            self.board.clear(w.entry)
            code = os.waitstatus_to_exitcode(status)
            self.hook("child_exit", self, w)
            if w.term_at:
                log.debug("Worker %d (pid %d) exited: %s", w.slot, pid, describe_exit(code))
                continue
            if code in (child.EXIT_APP_LOAD, child.EXIT_BOOT) and not w.ready:
                message = self.read_boot_message() or f"worker failed to boot ({describe_exit(code)})"
                old = self.workers.get(w.replaces) if w.replaces else None
                if old is not None:
                    # A reload or recycle whose new worker cannot boot: keep the old one serving.
                    old.replaced_by = -1
                    old.reload_gen = self.generation
                    log.error(
                        "Replacement for worker %d failed to boot: %s; the old worker keeps serving",
                        w.slot,
                        message,
                    )
                    return
                self.boot_error = BootError(message, 2 if code == child.EXIT_APP_LOAD else 3)
                if self.ready_announced:  # at start-up, run() prints the one line alone
                    log.error("Worker failed to boot: %s; stopping", message)
                self.begin_stop("fast")
                return
            log.error(
                "%s (pid %d) died unexpectedly: %s; replacing it",
                self.slot_name(w.slot).capitalize(),
                pid,
                describe_exit(code),
            )
            # Back off when a slot's workers keep failing on their own: dying while booting, or
            # exiting soon after. A ready worker killed by a signal (the OOM killer, an operator)
            # is replaced at once: its slot may have connections waiting.
            now = self.clock()
            if not w.ready or (code > 0 and now - w.started < 1.0):
                delay = min(MAX_BACKOFF, max(0.1, self.backoff.get(w.slot, 0.0) * 2))
                self.backoff[w.slot] = delay
                self.next_spawn[w.slot] = now + delay
                log.warning(
                    "Worker %d crashed within a second of starting; next start in %.1f s", w.slot, delay
                )
            else:
                self.backoff.pop(w.slot, None)

    def read_boot_message(self) -> str:
        try:
            data = os.read(self._boot_r, 65536)
        except (BlockingIOError, OSError):
            return ""
        return data.decode("utf-8", "replace").strip().splitlines()[0] if data.strip() else ""

    def check_timeouts(self) -> None:
        timeout = self.cfg.timeout
        if not timeout:
            return
        now = self.clock()
        for w in list(self.workers.values()):
            if w.abort_at:
                if now - w.abort_at > ABORT_GRACE:
                    try:
                        self.kill(w.pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                continue
            age = time.monotonic() - self.board.getf(w.entry, sb.HEARTBEAT)
            if age <= timeout:
                continue
            req = self.board.current_request(w.entry) if self.board.get(w.entry, sb.IN_FLIGHT) else ""
            started = self.board.getf(w.entry, sb.REQ_START)
            where = (
                f"while serving {req} (for {time.monotonic() - started:.1f} s)"
                if req
                else "outside any request"
            )
            log.critical(
                "WORKER TIMEOUT: worker %d (pid %d) missed its heartbeat for %.1f s %s; aborting it",
                w.slot,
                w.pid,
                age,
                where,
            )
            w.abort_at = now
            if not w.term_at:
                w.term_at = now
            try:
                self.kill(w.pid, signal.SIGABRT)
            except ProcessLookupError:
                pass

    # -- stopping -----------------------------------------------------------------------------

    def begin_stop(self, how: str) -> None:
        if self.stopping == "fast":
            return
        self.stopping = how
        grace = self.cfg.graceful_timeout if how == "graceful" else FAST_STOP_GRACE
        self.stop_deadline = self.clock() + grace + 0.5
        sig = signal.SIGTERM if how == "graceful" else signal.SIGQUIT
        self.stop_signal = sig
        # Handoff: the dispatcher stops first. Workers drain once it has exited, so nothing is
        # passed to a worker after it has emptied its channel for the last time.
        dispatchers = [w for w in self.workers.values() if w.slot == DISPATCHER_SLOT]
        for w in list(self.workers.values()):
            w.term_at = 0.0
            if w.slot == DISPATCHER_SLOT or not dispatchers or how == "fast":
                self.stop_worker(w, sig)

    def step_stop(self) -> bool:
        """True once every worker is gone."""
        if not self.workers:
            return True
        if not any(w.slot == DISPATCHER_SLOT for w in self.workers.values()):
            for w in list(self.workers.values()):
                if not w.term_at:
                    self.stop_worker(w, self.stop_signal)
        if self.clock() >= self.stop_deadline:
            for w in list(self.workers.values()):
                log.warning("Worker %d (pid %d) did not stop in time: SIGKILL", w.slot, w.pid)
                try:
                    self.kill(w.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            self.stop_deadline = self.clock() + 5
        return False

    # -- signal handlers ----------------------------------------------------------------------

    def handle_chld(self) -> None:
        pass  # reap() runs after every wake-up

    def handle_term(self) -> None:
        log.info("SIGTERM: graceful stop (up to %.0f s)", self.cfg.graceful_timeout)
        self.begin_stop("graceful")

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
            new.values["workers"] = self.num_workers if new.workers == self.cfg.workers else new.workers
            self.cfg = new
            self.num_workers = new.workers
        self.generation += 1

    def handle_ttin(self) -> None:
        self.handle_ttin_quiet()
        log.info("SIGTTIN: %d workers", self.num_workers)

    def handle_ttin_quiet(self) -> None:
        """One worker slot more (TTIN and autoscaling)."""
        self.num_workers += 1
        self.slot_listeners(self.num_workers - 1)
        self.steer()
        if self.cfg.dispatch == "handoff" and self.num_workers - 1 not in self.channels:
            self.open_channels()
            # The running dispatcher has no end of the new channel: replace it (the new one
            # starts first; connections wait in the listen queue meanwhile).
            for w in self.live_for_slot(DISPATCHER_SLOT):
                w.reload_gen = -1

    def handle_ttou(self) -> None:
        if self.num_workers > 1:
            self.num_workers -= 1
            self.steer()  # before the slot's worker drains its queue: nothing new lands there
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
        spec = {
            "shared": [s.fileno() for s in self.shared_sockets],
            "slots": {str(k): [s.fileno() for s in v] for k, v in self.slot_sockets.items()},
            "admin": [s.fileno() for s in self.admin_sockets],
        }
        env = dict(os.environ, **{ENV_FDS: json.dumps(spec), ENV_OLD_MASTER: str(self.pid)})
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
            try:
                self.kill(w.pid, signal.SIGUSR1)
            except ProcessLookupError:
                pass

    # -- hooks ----------------------------------------------------------------------------------

    def hook(self, name: str, *args: Any) -> None:
        fn = self.cfg.hooks.get(name)
        if fn is None:
            return
        try:
            fn(*args)
        except Exception:
            log.exception("hook %s failed", name)


def _adopt(fd: int) -> socket.socket:
    sock = socket.socket(fileno=fd)
    sock.setblocking(False)
    os.set_inheritable(fd, False)
    return sock


def describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def sd_notify(message: str) -> None:
    """Tell systemd (Type=notify) about our state, when it asked through NOTIFY_SOCKET."""
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return
    if path.startswith("@"):
        path = "\0" + path[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.connect(path)
            s.sendall(message.encode())
    except OSError as exc:
        if exc.errno != errno.ENOENT:
            log.warning("sd_notify failed: %s", exc)
