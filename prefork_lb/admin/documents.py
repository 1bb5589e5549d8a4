"""``/lb-health`` and ``/lb-stats`` of the dispatch modes without a proxy, from shared memory.

Pure functions of the scoreboard and the master's totals (prefork_lb.admin.totals). In
``--dispatch proxy`` the admin process serves the proxy's own documents instead (see
prefork_lb.admin.link), unchanged, so that what a proxy user reads stays as it was.

Shape: /lb-health is ``{"status": "ok" | "degraded" | "down", "healthy": N, "total": N,
"workers": [...]}`` (a slot is healthy when it has a ready worker; 503 when none is), the same
keys as the proxy's, with ``workers`` where the proxy has ``backends``.
"""

from __future__ import annotations

import os
from typing import Any

from prefork_lb import scoreboard as sb
from prefork_lb.admin.totals import Totals

_SERVING = (sb.READY, sb.RETIRING)
_STATUS = sb.BY_STATUS - sb.COUNTERS


def health_doc(board: sb.Scoreboard, totals: Totals) -> dict[str, Any]:
    target = int(totals.header()["target"])
    ready: dict[int, bool] = {}
    workers = []
    for e in board.entries_in_use():
        if e.slot < 0:
            continue
        ok = e.state in _SERVING
        ready[e.slot] = ready.get(e.slot, False) or ok
        workers.append(
            {
                "slot": e.slot,
                "pid": e.pid,
                "state": sb.STATE_NAMES.get(e.state, "?"),
                "in_flight": e.in_flight,
            }
        )
    total = max(target, len(ready))
    healthy = sum(1 for slot, ok in ready.items() if ok and slot < total)
    status = "down" if not healthy else ("ok" if healthy >= total else "degraded")
    workers.sort(key=lambda w: (w["slot"], w["pid"]))
    return {"status": status, "healthy": healthy, "total": total, "workers": workers}


def stats_doc(board: sb.Scoreboard, totals: Totals, dispatch: str) -> dict[str, Any]:
    per_slot = totals.read_counters(board)
    requests = sum(sum(c[_STATUS : _STATUS + len(sb.STATUS_CLASSES)]) for s, c in per_slot.items() if s >= 0)
    h = totals.header()
    workers = [board.snapshot(e.entry) for e in board.entries_in_use() if e.slot >= 0]
    workers.sort(key=lambda w: (int(str(w["slot"])), int(str(w["pid"]))))
    return {
        "dispatch": dispatch,
        "master_pid": int(h["master_pid"]),
        "pid": os.getpid(),
        "workers_target": int(h["target"]),
        "requests": requests,
        "in_flight": sum(int(str(w["in_flight"])) for w in workers),
        "workers": workers,
    }
