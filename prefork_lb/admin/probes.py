"""``/livez`` and ``/readyz``, the orchestrators' probes: pure decisions over what the admin
process reads (the scoreboard, the master's totals header, its parent pid).

* ``/livez`` (liveness: restart me if this fails): the master is alive (it is the admin
  process's parent and its loop ticked recently) and so is the helper process of the mode, the
  handoff dispatcher or the proxy (a recent heartbeat on the scoreboard). Workers are not part of
  it: the master's watchdog (--timeout) replaces a stuck worker, restarting the whole server
  would not help. While the master stops (TERM) the helper is stopped on purpose, so it is
  no longer required.
* ``/readyz`` (readiness: send me traffic): at least one worker is ready, the helper (when the
  mode has one) is ready and beating, and the master is not shutting down: from the TERM on
  (--shutdown-delay, then the drain) it answers 503, so the load balancer in front stops sending.

Both answer a JSON document ``{"status": "ok" | "fail", "reasons": [...], ...}`` with 200 or
503 (:func:`http_status`); ``reasons`` says in words what failed. Both are public on the admin
listener (no --stats-token): they hold no numbers, and a kubelet cannot easily send a token.

Invariants: nothing here does I/O or reads a clock; the admin process passes ages it computed
(prefork_lb.admin.child).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from prefork_lb.admin.totals import DRAINING, PHASE_NAMES, SERVING

PROBE_PATHS = ("/livez", "/readyz")
# prefork_lb.dispatch.base.HELPER_SLOT, not imported from there (that module starts this
# package's processes: a cycle); a unit test checks they agree.
HELPER_SLOT = -1
STALE_MIN = 1.0  # seconds: never call a heartbeat stale sooner (the helpers beat every 0.1-0.25 s)
STALE_MAX = 10.0
STALE_WITHOUT_TIMEOUT = 10.0  # --timeout 0 (no watchdog)


def stale_after(timeout: float) -> float:
    """How old a heartbeat may be before /livez calls its process stuck: half of --timeout (so
    the probe fails before the watchdog aborts the process), between STALE_MIN and STALE_MAX."""
    if timeout <= 0:
        return STALE_WITHOUT_TIMEOUT
    return min(STALE_MAX, max(STALE_MIN, timeout / 2))


@dataclass(frozen=True)
class HelperView:
    """The helper process's slot as the admin process sees it: its live processes' heartbeat
    ages (two during a replacement) and whether one of them is ready."""

    role: str  # "dispatcher" or "proxy"
    ages: tuple[float, ...]
    ready: bool

    def freshest(self) -> float | None:
        return min(self.ages) if self.ages else None


def helper_problem(helper: HelperView, stale: float) -> str | None:
    """Why the helper counts as not alive (None: it is)."""
    age = helper.freshest()
    if age is None:
        return f"no {helper.role} process is running (it may be restarting)"
    if age > stale:
        return f"the {helper.role}'s heartbeat is {age:.1f} s old (more than {stale:g} s): it is stuck"
    return None


def liveness(
    master_is_parent: bool,
    master_age: float,
    helper: HelperView | None,
    shutdown: int,
    stale: float,
) -> dict[str, Any]:
    """The /livez document. ``master_age``: seconds since the master's loop last ticked;
    ``helper``: None in the modes without one; ``shutdown``: the master's phase (totals)."""
    reasons = []
    if not master_is_parent:
        reasons.append("the master process is gone")
    elif master_age > stale:
        reasons.append(
            f"the master's loop last ran {master_age:.1f} s ago (more than {stale:g} s): it is stuck"
        )
    if helper is not None and shutdown == SERVING:
        problem = helper_problem(helper, stale)
        if problem:
            reasons.append(problem)
    doc: dict[str, Any] = {"status": "fail" if reasons else "ok", "reasons": reasons}
    doc["master_heartbeat_age"] = round(master_age, 3)
    if helper is not None:
        age = helper.freshest()
        doc[f"{helper.role}_heartbeat_age"] = None if age is None else round(age, 3)
    return doc


def readiness(ready_workers: int, helper: HelperView | None, shutdown: int, stale: float) -> dict[str, Any]:
    """The /readyz document. ``ready_workers``: worker slots with a ready process."""
    reasons = []
    if shutdown != SERVING:
        what = "draining" if shutdown == DRAINING else "in its --shutdown-delay"
        reasons.append(f"shutting down (TERM received; {what})")
    if ready_workers < 1:
        reasons.append("no worker is ready yet")
    if helper is not None:
        problem = helper_problem(helper, stale)
        if problem:
            reasons.append(problem)
        elif not helper.ready:
            reasons.append(f"the {helper.role} is not ready yet")
    return {
        "status": "fail" if reasons else "ok",
        "reasons": reasons,
        "phase": PHASE_NAMES.get(shutdown, "?"),
        "ready_workers": ready_workers,
    }


def http_status(doc: dict[str, Any]) -> int:
    return 200 if doc.get("status") == "ok" else 503


def ready_slots(states: Iterable[tuple[int, bool]]) -> int:
    """Worker slots (slot >= 0) with at least one ready process, from (slot, ready) pairs."""
    return len({slot for slot, ok in states if slot >= 0 and ok})
