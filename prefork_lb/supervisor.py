"""The master's children: forking them, the supervision tick, reaping, stopping (the watchdog
is a mixin: prefork_lb.watchdog).

:class:`Supervisor` is the half of the master (prefork_lb.arbiter.Arbiter) that deals with
processes and nothing else: no signals of its own, no listeners (the dispatch mode holds
them), no event loop. Every method is driven by the arbiter's loop, and every system call it
makes (fork, kill, waitpid, the clock) is injected, so its logic runs in tests without a fork.

Slots: a worker serves a *slot*, a position in the dispatch; the helper process (the handoff
dispatcher or the proxy) has slot HELPER_SLOT, the admin process (--stats-bind) ADMIN_SLOT. A
slot can briefly have two processes: the old one draining and its replacement (rolling reload,
max-requests recycling). A replacement starts first and its predecessor is asked to drain only
once it is ready.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import time
import traceback
from collections import deque
from collections.abc import Callable
from typing import Any, ClassVar, NoReturn

from prefork_lb import boot_message, dispatch
from prefork_lb import scoreboard as sb
from prefork_lb.admin import totals as tt
from prefork_lb.autoscale import Autoscaler
from prefork_lb.child import EXIT_APP_LOAD, EXIT_BOOT, ChildContext, ChildProcess, call_hook, describe_exit
from prefork_lb.child_records import BootError as BootError  # re-exported: the arbiter
from prefork_lb.child_records import ReloadProgress as ReloadProgress
from prefork_lb.child_records import WorkerProc as WorkerProc
from prefork_lb.dispatch.base import ADMIN_SLOT
from prefork_lb.interface import EXIT_WRONG_INTERFACE
from prefork_lb.pools import interfaces_for
from prefork_lb.sockets import Address, sd_notify
from prefork_lb.watchdog import ABORT_GRACE as ABORT_GRACE  # re-exported: the arbiter and tests
from prefork_lb.watchdog import DISPATCHER_SLOT as DISPATCHER_SLOT
from prefork_lb.watchdog import Watchdog

log = logging.getLogger("prefork_lb.error")

FAST_STOP_GRACE = 3.0  # seconds INT/QUIT gives workers before SIGKILL
MAX_BACKOFF = 10.0
# Signals the master handles: blocked across a fork, so a child never runs the master's handlers.
SIGNALS = ("HUP", "QUIT", "INT", "TERM", "TTIN", "TTOU", "USR1", "USR2", "CHLD")
_HANDLED = {getattr(signal, "SIG" + name) for name in SIGNALS}


class Supervisor(Watchdog):
    """The master's children; the Arbiter adds the listeners' binding, signals and the loop."""

    log: ClassVar[logging.Logger] = log  # hooks' ``server.log``, as in gunicorn

    def __init__(
        self,
        cfg: Any,
        clock: Callable[[], float],
        fork: Callable[[], int],
        kill: Callable[[int, int], None],
        waitpid: Callable[[int, int], tuple[int, int]],
    ) -> None:
        self.cfg = cfg
        self.clock = clock
        self.fork = fork
        self.kill = kill
        self.waitpid = waitpid
        self.pid = os.getpid()
        self.num_workers = cfg.workers
        self.min_workers = cfg.workers
        self.workers: dict[int, WorkerProc] = {}
        self.board = sb.Scoreboard(max(16, 2 * max(self.num_workers, cfg.max_workers) + 8))
        # What exited processes counted, and the master's own counters, for /metrics.
        self.totals = tt.Totals(self.board.entries)
        self.totals.started(self.pid, time.time())
        self.spawn_reason: dict[int, str] = {}  # slot -> why its next process starts
        self.mode = dispatch.make(cfg)  # everything that differs between --dispatch modes
        self.interface = interfaces_for(cfg)  # the worker class: WSGI or ASGI (per --mount pool)
        self.stopping: str | None = None  # None | "graceful" | "fast"
        self.stop_signal = signal.SIGTERM
        self.stop_deadline = 0.0
        self.shutdown_at = 0.0  # TERM with --shutdown-delay: when the graceful stop begins
        self.boot_error: BootError | None = None
        self.generation = 0  # HUP: processes of an older generation are replaced
        self.reload: ReloadProgress | None = None  # the HUP being rolled out, until it is done
        self.ready_announced = False
        self.old_master = 0  # pid of the master we replace (we were started by its USR2)
        self.new_master = 0  # pid of the master our USR2 started
        self.handed_over = False  # to that new master: it owns the unix socket paths and pidfile
        self.next_spawn: dict[int, float] = {}  # slot -> earliest respawn (crash back-off)
        self.backoff: dict[int, float] = {}
        self.autoscaler = Autoscaler(cfg.autoscale_up_after, cfg.autoscale_down_after)
        # The master's pipes (set up by Arbiter.setup): a child closes all but the boot
        # message's write end.
        self._wake_r = self._wake_w = -1
        self._boot_r = self._boot_w = -1
        # Messages read from the boot pipe that no failed worker took yet (read_boot_message).
        self._boot_messages: deque[tuple[str, str]] = deque()

    @property
    def addresses(self) -> list[Address]:
        return self.mode.sockets.addresses

    def add_slot(self) -> None:
        """One worker slot more (TTIN and autoscaling)."""
        self.num_workers += 1
        self.resized()

    def all_sockets(self) -> list[socket.socket]:
        return self.mode.sockets.all()

    def resized(self) -> None:
        """The worker count changed: the mode adds slot listeners, steers, opens channels."""
        if self.mode.resize(self.num_workers):
            # The running helper has no end of the new channel: replace it (the new one
            # starts first; connections wait in the listen queue meanwhile).
            for w in self.live_for_slot(DISPATCHER_SLOT):
                w.reload_gen = -1

    # -- workers ------------------------------------------------------------------------------

    def spawn(self, slot: int, replaces: int = 0, reason: str = "start") -> WorkerProc:
        entry = self.board.allocate(0, slot)
        helper = slot < 0
        if slot == ADMIN_SLOT:
            mine = self.mode.admin_sockets()
        else:
            mine = self.mode.helper_sockets() if helper else self.mode.worker_sockets(slot)
        port = 0 if helper else self.mode.slot_port(slot)
        if port:
            self.board.set_port(entry, port)
        w = WorkerProc(0, slot, entry, self.clock(), replaces=replaces, reload_gen=self.generation)
        w.interface = self.interface.for_slot(slot).current
        if not helper:
            self.hook("pre_fork", self, w)
        pid = self.fork_blocked()
        if pid == 0:
            self.become_child(w, mine)
        self.board.set_pid(entry, pid)
        w.pid = pid
        self.workers[pid] = w
        if not helper:
            self.totals.spawned(reason)
        log.debug("Booting %s (pid %d)", self.slot_name(slot), pid)
        return w

    def fork_blocked(self) -> int:
        """Fork with the master's signals blocked: the child must not run the master's handlers
        (which write to the master's wake-up pipe) nor die of a TERM before it has its own
        graceful handler. The child unblocks them once its handlers are set (prefork_lb.child)."""
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, _HANDLED)
        try:
            pid = self.fork()
        except BaseException:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
            raise
        if pid != 0:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        return pid

    def become_child(self, w: WorkerProc, mine: list[socket.socket]) -> NoReturn:
        """In the forked child: keep only its own sockets, then run it (never returns)."""
        w.pid = os.getpid()
        keep = {s.fileno() for s in mine}
        for s in self.all_sockets():
            if s.fileno() not in keep:
                s.close()
        os.close(self._boot_r)
        os.close(self._wake_r)
        os.close(self._wake_w)
        ctx = ChildContext(
            slot=w.slot,
            cfg=self.interface.cfg_for(w.slot, self.cfg),
            board=self.board,
            entry=w.entry,
            master_pid=self.pid,
            boot_fd=self._boot_w,
            sockets=mine,
            mode=self.mode,
            record=w,
            hook_server=self,
        )
        try:
            proc: ChildProcess
            if w.slot == ADMIN_SLOT:
                proc = self.mode.admin_process(ctx, self.totals)
            elif w.slot == DISPATCHER_SLOT:
                proc = self.mode.helper_process(ctx)
            else:
                self.hook("post_fork", self, w)
                proc = self.interface.for_slot(w.slot).child_class()(ctx)
        except BaseException:
            traceback.print_exc()
            os._exit(1)
        proc.main()

    def slot_name(self, slot: int) -> str:
        if slot == ADMIN_SLOT:
            return "admin process"
        if slot != DISPATCHER_SLOT:
            return f"worker {slot}"
        return self.mode.helper_role or "helper"

    def live_for_slot(self, slot: int) -> list[WorkerProc]:
        return [w for w in self.workers.values() if w.slot == slot and not w.term_at]

    def slots(self) -> list[int]:
        """Every slot that must have a live process: the workers', and the helper's if any."""
        slots = list(range(self.num_workers))
        if self.mode.helper_role:
            slots.append(DISPATCHER_SLOT)
        if self.mode.has_admin():
            slots.append(ADMIN_SLOT)
        return slots

    # -- the supervision tick -----------------------------------------------------------------

    def manage(self) -> None:
        now = self.clock()
        slots = self.slots()
        self.totals.set_target(self.num_workers)
        self.kill_overdue(now)
        self.note_ready()
        self.fill_slots(slots, now)
        self.replace_outdated()
        self.retire_predecessors()
        self.shrink()
        self.note_reload_done()
        if not self.ready_announced and slots and all(self.slot_ready(s) for s in slots):
            self.announce_ready()

    def kill_overdue(self, now: float) -> None:
        """A worker asked to drain (reload, TTOU, recycling) gets --graceful-timeout, then SIGKILL."""
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
                self.signal_pid(w.pid, signal.SIGKILL)

    def note_ready(self) -> None:
        for w in self.workers.values():
            if not w.ready and self.board.state(w.entry) in (sb.READY, sb.RETIRING):
                w.ready = True
                self.interface.for_slot(w.slot).ready(w.interface)

    def fill_slots(self, slots: list[int], now: float) -> None:
        """Empty slots (and the helper's) get a process, unless their back-off is not over."""
        for slot in slots:
            if not self.live_for_slot(slot) and now >= self.next_spawn.get(slot, 0.0):
                reason = self.spawn_reason.pop(slot, "scale" if self.ready_announced else "start")
                self.spawn(slot, reason=reason)

    def replace_outdated(self) -> None:
        """Workers that asked to retire (max-requests, max-rss) or are older than a reload get a
        successor; after a successor failed, not before its back-off (``retry_at``) is over."""
        now = self.clock()
        for w in list(self.workers.values()):
            if w.term_at or w.replaced_by or now < w.retry_at:
                continue
            reloaded = w.reload_gen < self.generation
            wants_out = reloaded or self.board.state(w.entry) == sb.RETIRING
            if wants_out and w.slot < self.num_workers:
                reason = "reload" if reloaded else self.board.retire_reason(w.entry)
                w.replaced_by = self.spawn(w.slot, replaces=w.pid, reason=reason).pid

    def retire_predecessors(self) -> None:
        """A replacement that is ready lets its predecessor drain."""
        for w in list(self.workers.values()):
            if w.replaces and w.ready:
                old = self.workers.get(w.replaces)
                w.replaces = 0
                self.backoff.pop(w.slot, None)
                if old is not None and not old.term_at:
                    self.count_replaced(old)
                    self.stop_worker(old, signal.SIGTERM)

    def count_replaced(self, old: WorkerProc) -> None:
        r = self.reload
        if r is None or old.reload_gen >= r.generation:
            return  # recycled, not reloaded
        if old.slot == DISPATCHER_SLOT:
            r.helper = True
        elif old.slot >= 0:
            r.replaced += 1

    def note_reload_done(self) -> None:
        """Once no live process is older than the HUP and no replacement is pending: one line."""
        r = self.reload
        if r is None:
            return
        for w in self.workers.values():
            if w.replaces or (not w.term_at and w.reload_gen < r.generation):
                return
        self.reload = None
        log.info(r.summary(self.slot_name(DISPATCHER_SLOT)))

    def shrink(self) -> None:
        """Slots beyond the worker count (TTOU): drain their workers, then close the slot."""
        for w in list(self.workers.values()):
            if w.slot >= self.num_workers and not w.term_at:
                self.stop_worker(w, signal.SIGTERM)
        for slot in [s for s in self.mode.sockets.slots if s >= self.num_workers]:
            if not any(w.slot == slot for w in self.workers.values()):
                self.mode.close_slot(slot)

    def slot_ready(self, slot: int) -> bool:
        return any(w.ready for w in self.live_for_slot(slot))

    def announce_ready(self) -> None:
        """Once, when every slot first has a ready process: the log lines, when_ready, systemd,
        and the old master (USR2) told to drain."""
        self.ready_announced = True
        for a in self.addresses:
            log.info(
                "Listening at %s (%s dispatch, master pid %d)",
                f"unix:{a.path}" if a.kind == "unix" else f"http://{a}",
                self.mode.name,
                self.pid,
            )
        for s in self.mode.sockets.admin:
            where = s.getsockname()
            at = f"unix:{where}" if isinstance(where, str) else f"http://{where[0]}:{where[1]}"
            log.info("Admin endpoints /lb-health, /lb-stats, /metrics, /livez and /readyz at %s", at)
        log.info(self.mode.ready_message(self.num_workers, self.interface.learned()))
        self.hook("when_ready", self)
        sd_notify(f"READY=1\nMAINPID={self.pid}")
        if self.old_master:
            log.info("Binary upgrade: asking the old master (pid %d) to drain", self.old_master)
            self.signal_pid(self.old_master, signal.SIGTERM)
            self.old_master = 0

    def autoscale(self) -> None:
        """Between --workers and --max-workers, from the scoreboard's load (see autoscale.py)."""
        top = self.cfg.max_workers
        if not top or top <= self.min_workers:
            return
        now = self.clock()
        serving = [w for w in self.workers.values() if w.ready and not w.term_at and w.slot >= 0]
        if not serving:
            return
        busy = sum(1 for w in serving if self.board.busy(w.entry))
        scaler = self.autoscaler
        change = scaler.decide(now, len(serving), busy, self.num_workers, self.min_workers, top)
        if change:
            self.totals.count(tt.SCALE_UP if change > 0 else tt.SCALE_DOWN)
        if change > 0:
            self.add_slot()
            log.info(
                "Autoscale: %d workers (all %d busy for %.0f s)",
                self.num_workers,
                len(serving),
                now - scaler.busy_since,
            )
        elif change < 0:
            self.num_workers -= 1
            self.resized()
            log.info(
                "Autoscale: %d workers (%d of %d busy; a spare worker idle for %.0f s)",
                self.num_workers,
                busy,
                len(serving),
                now - scaler.idle_since,
            )
        if change:
            scaler.changed(now, up=change > 0)

    def signal_pid(self, pid: int, sig: int) -> None:
        try:
            self.kill(pid, sig)
        except ProcessLookupError:
            pass

    def stop_worker(self, w: WorkerProc, sig: int) -> None:
        if not w.term_at:
            w.term_at = self.clock()
        self.signal_pid(w.pid, sig)

    def reap(self) -> None:
        while True:
            try:
                pid, status = self.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            w = self.workers.pop(pid, None)
            code = os.waitstatus_to_exitcode(status)
            if w is None:
                if pid == self.new_master:
                    log.error(
                        "The new master (pid %d) exited: %s; this master keeps serving",
                        pid,
                        describe_exit(code),
                    )
                    self.new_master = 0
                    self.handed_over = False
                continue
            # Its counters join the running totals as its entry is cleared (it is reaped: nothing
            # writes there any more), so no counter on /metrics goes back.
            self.totals.reaped(self.board, w.entry, w.slot)
            self.hook("child_exit", self, w)
            if w.abort_at and not self.live_for_slot(w.slot):
                self.spawn_reason[w.slot] = "timeout"
            if w.term_at or self.stopping:  # asked to stop, or the master stops: never replaced
                # A crash of its own while the master stops is still worth a warning; an exit 0
                # or the deadline's SIGKILL (already warned of) is not.
                calm = w.term_at or code in (0, -signal.SIGKILL, -signal.SIGTERM)
                (log.debug if calm else log.warning)(
                    "Worker %d (pid %d) exited: %s", w.slot, pid, describe_exit(code)
                )
                continue
            if code == EXIT_WRONG_INTERFACE and not w.ready and self.interface.wrong_in(w.slot, w.interface):
                self.predecessor(w)  # --interface auto: the slot starts again with the other class
                continue
            if code in (EXIT_APP_LOAD, EXIT_BOOT, EXIT_WRONG_INTERFACE) and not w.ready:
                self.boot_failed(w, code)
                if self.boot_error is not None:
                    return
                continue
            self.died(w, code)

    def boot_failed(self, w: WorkerProc, code: int) -> None:
        """A worker that could not import the app: stop the master (exit code 2 or 3), unless
        it was a reload's or a recycle's replacement, which leaves the old worker serving."""
        self.totals.count(tt.BOOT_FAILED)
        line, detail = self.read_boot_message()
        message = line or f"worker failed to boot ({describe_exit(code)})"
        traceback_after = "\n" + detail.rstrip("\n") if detail else ""  # for a log line
        old = self.predecessor(w)
        if old is not None:
            # The old worker serves on, with the code it has. It is not replaced again for
            # this reload (the code on disk fails), but the next HUP replaces it, and so does
            # recycling (--max-requests, --max-rss) once a back-off is over.
            if self.reload is not None and old.reload_gen < self.reload.generation:
                self.reload.failed += 1
            old.reload_gen = self.generation
            old.retry_at = self.back_off(w.slot)
            log.error(
                "Replacement for worker %d failed to boot: %s; the old worker keeps serving%s",
                w.slot,
                message,
                traceback_after,
            )
            return
        self.boot_error = BootError(message, 2 if code == EXIT_APP_LOAD else 3, detail)
        if self.ready_announced:  # at start-up, run() prints the traceback and the one line
            log.error("Worker failed to boot: %s; stopping%s", message, traceback_after)
        self.begin_stop("fast")

    def died(self, w: WorkerProc, code: int) -> None:
        """A process that nobody asked to stop exited: fill_slots replaces it, maybe after a back-off."""
        log.error(
            "%s (pid %d) died unexpectedly: %s; replacing it",
            self.slot_name(w.slot).capitalize(),
            w.pid,
            describe_exit(code),
        )
        # Back off when a slot's workers keep failing on their own: dying while booting, or
        # exiting soon after. A ready worker killed by a signal (the OOM killer, an operator)
        # is replaced at once: its slot may have connections waiting.
        now = self.clock()
        old = self.predecessor(w)
        if not self.live_for_slot(w.slot):
            self.spawn_reason[w.slot] = "crash"
        if w.slot >= 0 and not w.ready:
            self.totals.count(tt.BOOT_FAILED)
        if not w.ready or (code > 0 and now - w.started < 1.0):
            self.next_spawn[w.slot] = self.back_off(w.slot)
            if old is not None:  # a replacement: its predecessor serves on, and gets another later
                old.retry_at = self.next_spawn[w.slot]
            log.warning(
                "Worker %d crashed within a second of starting; next start in %.1f s",
                w.slot,
                self.next_spawn[w.slot] - now,
            )
        else:
            self.backoff.pop(w.slot, None)

    def predecessor(self, w: WorkerProc) -> WorkerProc | None:
        """The worker that ``w`` (gone before it was ready) was to replace, unmarked so that
        it can get another successor; None when ``w`` replaced nobody."""
        old = self.workers.get(w.replaces) if w.replaces else None
        if old is not None and old.replaced_by == w.pid:
            old.replaced_by = 0
        return old

    def back_off(self, slot: int) -> float:
        """When the slot may try again after a failure: doubling delays, up to MAX_BACKOFF."""
        delay = min(MAX_BACKOFF, max(0.1, self.backoff.get(slot, 0.0) * 2))
        self.backoff[slot] = delay
        return self.clock() + delay

    def read_boot_message(self) -> tuple[str, str]:
        """The next message on the boot pipe: (its line, its traceback), or ("", ""). One read
        may bring the messages of several workers that failed at once (a reload's
        replacements): each is kept for the next failure reaped, in the order they came."""
        try:
            data = os.read(self._boot_r, 65536)
        except OSError:  # BlockingIOError included: nothing more was written
            data = b""
        self._boot_messages.extend(boot_message.messages(data))
        return self._boot_messages.popleft() if self._boot_messages else ("", "")

    # -- stopping -----------------------------------------------------------------------------

    def begin_stop(self, how: str, grace: float | None = None) -> None:
        """``grace``: seconds before SIGKILL for a graceful stop (default --graceful-timeout)."""
        if self.stopping == "fast":
            return
        self.stopping = how
        self.shutdown_at = 0.0
        self.totals.set_shutdown(tt.DRAINING)
        if grace is None:
            grace = self.cfg.graceful_timeout if how == "graceful" else FAST_STOP_GRACE
        elif how == "graceful":  # (the workers drain for it too, not for --graceful-timeout)
            self.board.set_stop_grace([w.entry for w in self.workers.values()], grace)
        # Nothing serves after them: their drain skips the idle grace (scoreboard SERVER_STOP).
        self.board.set_server_stop(w.entry for w in self.workers.values())
        self.stop_deadline = self.clock() + grace + 0.5
        sig = signal.SIGTERM if how == "graceful" else signal.SIGQUIT
        self.stop_signal = sig
        # The helper stops first. Workers drain once it has exited (so the dispatcher passes them nothing
        # more), or once the proxy has only websockets left (their 1001 passes through it). On a graceful
        # stop the admin process stops last, so that /readyz says 503 until the end; not after
        # USR2, when the new master's admin process answers on the same listener.
        dispatchers = [w for w in self.workers.values() if w.slot == DISPATCHER_SLOT]
        admin_now = how == "fast" or self.handed_over
        for w in list(self.workers.values()):
            w.term_at = 0.0
            if w.slot == ADMIN_SLOT:
                if admin_now:
                    self.stop_worker(w, sig)
            elif how == "fast" or w.slot == DISPATCHER_SLOT or not dispatchers:
                self.stop_worker(w, sig)
        self.stop_admin_last()

    def step_stop(self) -> bool:
        """True once every worker is gone."""
        if not self.workers:
            return True
        helpers = (w for w in self.workers.values() if w.slot == DISPATCHER_SLOT)
        if all(self.board.state(w.entry) == sb.DRAINING for w in helpers):  # gone, or websockets only
            for w in list(self.workers.values()):
                if not w.term_at and w.slot != ADMIN_SLOT:
                    self.stop_worker(w, self.stop_signal)
        self.stop_admin_last()
        if self.clock() >= self.stop_deadline:
            for w in list(self.workers.values()):
                self.kill_late(w)
            self.stop_deadline = self.clock() + 5
        return False

    def stop_admin_last(self) -> None:
        """The admin process gets the stop signal once it is the only process left."""
        if all(w.slot == ADMIN_SLOT for w in self.workers.values()):
            for w in list(self.workers.values()):
                if not w.term_at:
                    self.stop_worker(w, self.stop_signal)

    # -- hooks ----------------------------------------------------------------------------------

    def hook(self, name: str, *args: Any) -> None:
        call_hook(self.cfg, name, *args)
