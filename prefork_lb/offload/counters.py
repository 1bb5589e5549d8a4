"""What the offload pools of one process did, for /metrics: tasks by outcome, and how long the
tasks that ran to an end took. Pure bookkeeping, no I/O.

Every pool of the process counts into :data:`TASKS` (the default pool and pools of one's own
alike), so the numbers only grow while the process lives, even when the default pool is closed
and made again. A worker's heartbeat copies :meth:`TaskCounters.words` into its scoreboard
entry (prefork_lb.scoreboard, ``WorkerEntry.offload``); a forked process starts from zero.

Outcomes (the scoreboard's OFFLOAD_OUTCOMES): ``submitted`` counts each task handed to a
pool process; each then ends ``completed`` (the function returned), ``failed`` (it raised, its
result could not be unpickled, or its process died), ``timed_out`` (past its ``timeout``) or
``cancelled`` (it was running when its caller stopped waiting: another task of the same
``map`` failed, or the caller was interrupted). So submitted = the four ends + those running.
The duration, from the hand-off to the response, is recorded for completed and failed tasks
whose process answered.
"""

from __future__ import annotations

import os
import threading
from bisect import bisect_left

__all__ = [
    "BOUNDS",
    "CANCELLED",
    "COMPLETED",
    "FAILED",
    "OUTCOMES",
    "SUBMITTED",
    "TASKS",
    "TIMED_OUT",
    "TaskCounters",
]

# The scoreboard's OFFLOAD_OUTCOMES and DURATION_BUCKETS, written out: a pool process imports
# prefork_lb.offload and nothing else of the package (tests/unit/offload checks both).
OUTCOMES = ("submitted", "completed", "failed", "timed_out", "cancelled")
SUBMITTED, COMPLETED, FAILED, TIMED_OUT, CANCELLED = range(len(OUTCOMES))
BOUNDS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
_BOUNDS = BOUNDS


class TaskCounters:
    """Counts of one process's offload tasks (a lock per update: tasks cost milliseconds)."""

    __slots__ = ("tasks", "duration", "buckets", "_lock")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        self.tasks = [0] * len(OUTCOMES)
        self.duration = 0.0  # seconds, the tasks whose duration was recorded
        self.buckets = [0] * (len(_BOUNDS) + 1)  # per bucket of DURATION_BUCKETS, +Inf last

    def submitted(self) -> None:
        with self._lock:
            self.tasks[SUBMITTED] += 1

    def ended(self, outcome: int, seconds: float | None = None) -> None:
        """A task ended with ``outcome``; ``seconds``: how long its process took, if it answered."""
        with self._lock:
            self.tasks[outcome] += 1
            if seconds is not None:
                self.duration += seconds
                self.buckets[bisect_left(_BOUNDS, seconds)] += 1

    def words(self) -> list[int]:
        """The scoreboard's words OFFLOAD_TASKS..COUNTERS_END: by outcome, the duration sum in
        microseconds, the histogram."""
        with self._lock:
            return [*self.tasks, int(self.duration * 1e6), *self.buckets]


TASKS = TaskCounters()

if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=TASKS.reset)
