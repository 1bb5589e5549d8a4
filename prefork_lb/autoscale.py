"""Autoscaling between --workers and --max-workers: the decision alone, with no processes.

The master (prefork_lb.arbiter) counts its serving workers and the busy ones (a request in
flight, or a connection whose first request is on its way) at every tick and applies what
:meth:`Autoscaler.decide` returns.

Hysteresis, so that a steady load keeps a steady worker count:

* up only after every worker has been busy for autoscale_up_after seconds;
* down only after the capacity autoscaling added has been idle for autoscale_down_after
  seconds: at least two workers idle the whole time, so that with one worker fewer one would
  still be free. (With "at most one busy worker", a load that saturates one worker scaled up to
  two, found the second idle, scaled down, and so on.)
* a change restarts both periods (a scale-up's idle timer starts after it, not before), and
  there is never a second change within the shorter of the two delays.
"""

from __future__ import annotations

from dataclasses import dataclass


def saturated(serving: int, busy: int, workers: int) -> bool:
    """Every worker there should be is serving, and every one of them is busy."""
    return busy >= serving >= workers


def spare(busy: int, workers: int) -> bool:
    """One worker fewer would still leave one idle: the added capacity is not in use."""
    return busy <= workers - 2


@dataclass
class Autoscaler:
    up_after: float
    down_after: float
    busy_since: float = 0.0  # when every worker became busy (0: not now)
    idle_since: float = 0.0  # when a spare worker appeared (see spare(); 0: not now)
    scaled_at: float = 0.0  # last change (a cooldown against flapping)

    def decide(self, now: float, serving: int, busy: int, workers: int, low: int, high: int) -> int:
        """+1, -1 or 0 workers. ``serving``: ready workers not draining; ``workers``: the count
        now; ``low``/``high``: --workers and --max-workers."""
        self.busy_since = (self.busy_since or now) if saturated(serving, busy, workers) else 0.0
        self.idle_since = (self.idle_since or now) if spare(busy, workers) else 0.0
        if now - self.scaled_at < min(self.up_after, self.down_after):
            return 0
        if self.busy_since and now - self.busy_since >= self.up_after and workers < high:
            return 1
        if self.idle_since and now - self.idle_since >= self.down_after and workers > low:
            return -1
        return 0

    def changed(self, now: float, up: bool) -> None:
        """The change :meth:`decide` asked for is made: the cooldown and fresh periods start
        (both: what was measured before describes a worker count that is gone)."""
        self.scaled_at = now
        self.busy_since = 0.0
        self.idle_since = 0.0
