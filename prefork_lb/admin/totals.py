"""The master's shared totals: what the admin process needs that no live scoreboard entry holds.

A second anonymous shared mapping, created by the master before it forks (next to the
scoreboard), written by the master only and read by the admin process at scrape time:

* a header: the master's pid and start time, the target worker count, counters of what the
  master did (spawns by reason, boot failures, watchdog aborts, autoscaling changes), the
  master's own heartbeat (CLOCK_MONOTONIC, once per loop tick) and whether it is shutting down
  (:data:`SERVING`, :data:`DELAYING`: TERM arrived and --shutdown-delay runs, :data:`DRAINING`),
  which the admin process's /livez and /readyz read (prefork_lb.admin.probes);
* one row per slot (HELPER_SLOT and ADMIN_SLOT included) holding the counter words
  (scoreboard COUNTERS..COUNTERS_END) of that slot's processes that have exited.

Two header words go the other way (:data:`CTL_TARGET`, :data:`CTL_GRACE`): the admin process
writes what the control socket asked for (a worker count, a stop's grace) and then signals the
master (TTIN, TERM), which takes the word (reads it and sets it back to 0) when it handles the
signal. Signals of one kind can merge; the word carries the value, the signal only wakes.

Invariants: a counter on /metrics never goes backwards. When the master reaps a process it
adds the process's counters to its slot's row and clears the scoreboard entry (the only place
an entry with counters is cleared, after the pid was reaped, so nothing writes to it any more),
both inside a sequence lock: the writer makes :data:`SEQ` odd before and even after, and a
reader (:meth:`Totals.read_counters`) retries until it saw the same even value on both sides of
its copy. The master is the only writer, so the lock needs no atomic instruction.
"""

from __future__ import annotations

import mmap
from collections.abc import Iterable

from prefork_lb import scoreboard as sb

ROW = 72  # words per slot row (the counter words, padded)
NCOUNTERS = sb.COUNTERS_END - sb.COUNTERS
SLOT_BASE = 2  # row of slot s is s + SLOT_BASE: ADMIN_SLOT (-2) and HELPER_SLOT (-1) come first
# Why the master started a worker: the first ones, a replacement for one that died (crash), that
# missed its heartbeat (timeout), that asked to be recycled (max_requests, max_rss, recycle),
# a reload's replacement, a slot added by TTIN or autoscaling (scale).
SPAWN_REASONS = ("start", "crash", "timeout", "max_requests", "max_rss", "recycle", "reload", "scale")
# Header word offsets.
SEQ, MASTER_PID, START_TIME, TARGET, BOOT_FAILED, TIMEOUTS, SCALE_UP, SCALE_DOWN = range(8)
SPAWNS = 8  # SPAWNS + i: spawns for SPAWN_REASONS[i]
SHUTDOWN = SPAWNS + len(SPAWN_REASONS)  # the master's shutdown phase (SERVING, DELAYING, DRAINING)
MASTER_BEAT = SHUTDOWN + 1  # float: CLOCK_MONOTONIC of the master's last loop tick
CTL_TARGET, CTL_GRACE = 24, 25  # written by the admin process (the control socket), taken by the master
# Workers aborted for a request past --request-timeout while their loop was blocked (also
# counted in TIMEOUTS, which counts every abort for a missed heartbeat).
REQUEST_ABORTS = MASTER_BEAT + 1
HEADER = 32
assert REQUEST_ABORTS < CTL_TARGET < CTL_GRACE < HEADER and NCOUNTERS <= ROW
# Shutdown phases (header word SHUTDOWN).
SERVING, DELAYING, DRAINING = 0, 1, 2
PHASE_NAMES = {SERVING: "serving", DELAYING: "shutdown delay", DRAINING: "draining"}


class Totals:
    """The master writes; the admin process (forked after it exists) reads."""

    def __init__(self, slots: int) -> None:
        self.rows = slots + SLOT_BASE
        self._map = mmap.mmap(-1, (HEADER + self.rows * ROW) * 8, flags=mmap.MAP_SHARED)
        self._mv = memoryview(self._map)
        self.q = self._mv.cast("q")
        self.d = self._mv.cast("d")

    # -- master side ------------------------------------------------------------------------

    def started(self, pid: int, wall_time: float) -> None:
        self.q[MASTER_PID] = pid
        self.d[START_TIME] = wall_time

    def beat(self, now: float) -> None:
        """The master's loop ticked (``now``: time.monotonic())."""
        self.d[MASTER_BEAT] = now

    def set_shutdown(self, phase: int) -> None:
        """SERVING, DELAYING (TERM, --shutdown-delay running) or DRAINING."""
        self.q[SHUTDOWN] = phase

    def set_target(self, workers: int) -> None:
        self.q[TARGET] = workers

    def count(self, word: int, n: int = 1) -> None:
        """A header counter (BOOT_FAILED, TIMEOUTS, REQUEST_ABORTS, SCALE_UP, SCALE_DOWN) goes up."""
        self.q[word] += n

    def spawned(self, reason: str) -> None:
        i = SPAWN_REASONS.index(reason) if reason in SPAWN_REASONS else 0
        self.q[SPAWNS + i] += 1

    def reaped(self, board: sb.Scoreboard, entry: int, slot: int) -> None:
        """A reaped process's counters join its slot's row; its entry is cleared (one step for
        a reader)."""
        q = self.q
        row = self._row(slot)
        q[SEQ] += 1  # odd: a fold is in progress
        try:
            for k, v in enumerate(board.counters(entry)):
                q[row + k] += v
            board.clear(entry)
        finally:
            q[SEQ] += 1

    def _row(self, slot: int) -> int:
        r = slot + SLOT_BASE
        if not 0 <= r < self.rows:
            r = self.rows - 1  # a slot past the table (never: the scoreboard is as large)
        return HEADER + r * ROW

    def take_scale(self) -> int:
        """The worker count the control socket asked for (0: none), cleared."""
        target, self.q[CTL_TARGET] = self.q[CTL_TARGET], 0
        return int(target)

    def take_stop_grace(self) -> float | None:
        """The graceful timeout ``ctl stop --graceful-timeout`` asked for (None: none), cleared."""
        grace, self.d[CTL_GRACE] = self.d[CTL_GRACE], 0.0
        return grace - 1.0 if grace > 0 else None

    # -- admin process side (the control socket) ---------------------------------------------------

    def request_scale(self, target: int) -> None:
        self.q[CTL_TARGET] = target

    def request_stop_grace(self, seconds: float) -> None:
        self.d[CTL_GRACE] = seconds + 1.0  # 0 means "none": 0 seconds is stored as 1.0

    # -- reader side ------------------------------------------------------------------------

    def header(self) -> dict[str, float]:
        q = self.q
        return {
            "master_pid": q[MASTER_PID],
            "start_time": self.d[START_TIME],
            "target": q[TARGET],
            "boot_failed": q[BOOT_FAILED],
            "timeouts": q[TIMEOUTS],
            "request_aborts": q[REQUEST_ABORTS],
            "scale_up": q[SCALE_UP],
            "scale_down": q[SCALE_DOWN],
        }

    def shutdown(self) -> int:
        return self.q[SHUTDOWN]

    def master_beat(self) -> float:
        """CLOCK_MONOTONIC of the master's last tick (0.0: it never ticked)."""
        return self.d[MASTER_BEAT]

    def spawns(self) -> dict[str, int]:
        return {r: self.q[SPAWNS + i] for i, r in enumerate(SPAWN_REASONS)}

    def read_counters(self, board: sb.Scoreboard, tries: int = 1000) -> dict[int, list[int]]:
        """Per slot: the counters of its exited processes plus those of its live ones, as of
        one moment (see the module's sequence lock). Slots never seen are absent."""
        q = self.q
        out: dict[int, list[int]] = {}
        for _ in range(tries):
            seq = q[SEQ]
            if seq & 1:
                continue
            out = {}
            for r in range(self.rows):
                base = HEADER + r * ROW
                row = list(q[base : base + NCOUNTERS])
                if any(row):
                    out[r - SLOT_BASE] = row
            for e in board.entries_in_use():
                add(out, e.slot, board.counters(e.entry))
            if q[SEQ] == seq:
                return out
        return out  # the master folded all along (it never does for long): a close answer


def add(out: dict[int, list[int]], slot: int, values: Iterable[int]) -> None:
    row = out.get(slot)
    if row is None:
        out[slot] = list(values)
        return
    for k, v in enumerate(values):
        row[k] += v
