"""The master's watchdog: aborting a process that stopped answering.

``--timeout``: a process whose heartbeat is older than that gets SIGABRT (faulthandler writes
its Python stack to the error log) and SIGKILL :data:`ABORT_GRACE` later. ``--request-timeout``:
the same for a worker whose request is past its deadline while its loop is blocked
(prefork_lb.request_deadline decides). A mixin of prefork_lb.supervisor.Supervisor, which owns
the state it reads; it only reads the scoreboard and signals.
"""

from __future__ import annotations

import logging
import signal
import time
from collections.abc import Callable
from typing import Any

from prefork_lb import request_deadline
from prefork_lb import scoreboard as sb
from prefork_lb.admin import totals as tt
from prefork_lb.dispatch.base import HELPER_SLOT

log = logging.getLogger("prefork_lb.error")

DISPATCHER_SLOT = HELPER_SLOT  # the handoff dispatcher or the proxy: supervised like a worker
ABORT_GRACE = 2.0  # seconds between SIGABRT and SIGKILL for a stuck worker


class Watchdog:
    cfg: Any
    clock: Callable[[], float]
    workers: dict[int, Any]  # pid -> prefork_lb.supervisor.WorkerProc
    board: sb.Scoreboard
    totals: tt.Totals
    boot_error: Any  # prefork_lb.supervisor.BootError once a worker failed to boot, else None
    ready_announced: bool

    def signal_pid(self, pid: int, sig: int) -> None: ...

    def check_timeouts(self) -> None:
        """--timeout: SIGABRT (a stack dump) for a missed heartbeat, SIGKILL ABORT_GRACE later;
        --request-timeout: the same for a request past it while its worker's loop is blocked
        (prefork_lb.request_deadline)."""
        timeout = self.cfg.timeout
        now = self.clock()
        mono = time.monotonic()
        entries = [w.entry for w in self.workers.values() if w.slot != DISPATCHER_SLOT]
        late = request_deadline.overdue(
            request_deadline.clocks(self.board, entries), mono, self.cfg.request_timeout
        )
        for w in list(self.workers.values()):
            if w.abort_at:
                if now - w.abort_at > ABORT_GRACE:
                    self.signal_pid(w.pid, signal.SIGKILL)
                continue
            age = mono - self.board.heartbeat(w.entry)
            if w.entry in late:
                req, elapsed = self.board.current_request(w.entry), mono - self.board.request_start(w.entry)
                log.critical(
                    request_deadline.abort_line(w.slot, w.pid, req, self.cfg.request_timeout, elapsed, age)
                )
                if w.slot >= 0:
                    self.totals.count(tt.REQUEST_ABORTS)
            elif timeout and age > timeout:
                log.critical(
                    "WORKER TIMEOUT: worker %d (pid %d) missed its heartbeat for %.1f s %s; aborting it",
                    w.slot,
                    w.pid,
                    age,
                    self.doing(w),
                )
            else:
                continue
            w.abort_at = now
            if not w.term_at:
                w.term_at = now
            if w.slot >= 0:
                self.totals.count(tt.TIMEOUTS)
            self.signal_pid(w.pid, signal.SIGABRT)

    def doing(self, w: Any) -> str:
        req = self.board.current_request(w.entry) if self.board.in_flight(w.entry) else ""
        if not req:
            return "outside any request"
        return f"while serving {req} (for {time.monotonic() - self.board.request_start(w.entry):.1f} s)"

    def kill_late(self, w: Any) -> None:
        """SIGKILL for a process still there at the stop's deadline; a warning, except when a
        failed start stops what was still starting (its one error line says why)."""
        quiet = self.boot_error is not None and not self.ready_announced
        (log.debug if quiet else log.warning)(
            "Worker %d (pid %d) did not stop in time: SIGKILL", w.slot, w.pid
        )
        self.signal_pid(w.pid, signal.SIGKILL)
