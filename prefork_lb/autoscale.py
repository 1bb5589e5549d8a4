"""Autoscaling between --workers and --max-workers: the decision alone, with no processes.

The master (prefork_lb.arbiter) counts its serving workers and the busy ones (a request in
flight, or a connection whose first request is on its way) at every tick and applies what
:meth:`Autoscaler.decide` returns. Hysteresis: up only after every worker has been busy for
autoscale_up_after seconds, down only after autoscale_down_after seconds with at most one busy
worker, and never twice within the shorter of the two delays.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Autoscaler:
    up_after: float
    down_after: float
    busy_since: float = 0.0  # when every worker became busy (0: not now)
    idle_since: float = 0.0  # when load fell to at most one busy worker (0: not now)
    scaled_at: float = 0.0  # last change (a cooldown against flapping)

    def decide(self, now: float, serving: int, busy: int, workers: int, low: int, high: int) -> int:
        """+1, -1 or 0 workers. ``serving``: ready workers not draining; ``workers``: the count
        now; ``low``/``high``: --workers and --max-workers."""
        all_busy = busy >= serving and serving >= workers
        quiet = busy <= 1
        self.busy_since = (self.busy_since or now) if all_busy else 0.0
        self.idle_since = (self.idle_since or now) if quiet else 0.0
        if now - self.scaled_at < min(self.up_after, self.down_after):
            return 0
        if self.busy_since and now - self.busy_since >= self.up_after and workers < high:
            return 1
        if self.idle_since and now - self.idle_since >= self.down_after and workers > low:
            return -1
        return 0

    def changed(self, now: float, up: bool) -> None:
        """The change :meth:`decide` asked for is made: the cooldown and a fresh period start."""
        self.scaled_at = now
        if up:
            self.busy_since = 0.0
        else:
            self.idle_since = 0.0
