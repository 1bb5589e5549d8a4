"""The live dashboard: the page at ``/`` and the document it polls, ``/dashboard.json``.

The page (dashboard.html, next to this module) is static: no build step, nothing from a CDN.
It polls ``dashboard.json`` every second and computes rates, error ratios and latency quantiles
itself from successive totals, so the server keeps no history: :func:`dashboard_doc` is a pure
function of shared memory (the scoreboard and the master's totals), of the proxy's /lb-stats and
/lb-health when there is a proxy, and of a process-info function (RSS), at one moment.

Totals in the document only grow (a dead worker's counts stay in its slot's row of the master's
totals), so a worker that is replaced never makes the charts dip.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from importlib import resources
from typing import Any

from prefork_lb import scoreboard as sb
from prefork_lb.admin.metrics import version_of
from prefork_lb.admin.totals import Totals
from prefork_lb.statsd import Sample

ProcessInfo = Callable[[int], "tuple[float, float] | None"]  # pid -> (RSS bytes, CPU seconds)

_STATUS = sb.BY_STATUS - sb.COUNTERS
_HISTOGRAM = sb.HISTOGRAM - sb.COUNTERS
_NBUCKETS = len(sb.DURATION_BUCKETS) + 1


def request_totals(per_slot: Mapping[int, list[int]]) -> tuple[dict[str, int], list[int]]:
    """Over every worker slot: requests by status class, and the duration histogram (counts per
    bucket, not cumulative)."""
    by_class = dict.fromkeys(sb.STATUS_CLASSES, 0)
    histogram = [0] * _NBUCKETS
    for slot, c in per_slot.items():
        if slot < 0:
            continue
        for k, name in enumerate(sb.STATUS_CLASSES):
            by_class[name] += c[_STATUS + k]
        for i in range(_NBUCKETS):
            histogram[i] += c[_HISTOGRAM + i]
    return by_class, histogram


def statsd_sample(board: sb.Scoreboard, totals: Totals) -> Sample:
    """What the StatsD push sends (prefork_lb.statsd), from the same shared memory as /metrics."""
    per_slot = totals.read_counters(board)
    by_class, histogram = request_totals(per_slot)
    header = totals.header()
    counters = {f"spawns.{reason}": n for reason, n in totals.spawns().items()}
    counters["boot_failed"] = int(header["boot_failed"])
    counters["request_timeouts"] = int(header["timeouts"])
    counters["autoscale.up"] = int(header["scale_up"])
    counters["autoscale.down"] = int(header["scale_down"])
    counters["admission_rejected"] = sum(c[0] for c in per_slot.values())
    entries = [e for e in board.entries_in_use() if e.slot >= 0]
    return Sample(
        requests=sum(by_class.values()),
        by_status={k: v for k, v in by_class.items() if k != "none"},
        histogram=histogram,
        bounds=sb.DURATION_BUCKETS,
        workers=len(entries),
        counters=counters,
        gauges={
            "requests_in_flight": sum(e.in_flight for e in entries),
            "workers_target": int(header["target"]),
        },
    )


def page() -> bytes:
    """The dashboard's HTML (package data)."""
    return resources.files("prefork_lb.admin").joinpath("dashboard.html").read_bytes()


def health_of(workers: list[dict[str, Any]], target: int) -> str:
    """ok: every slot up to the target has a serving worker; down: none has; degraded between."""
    serving = {w["slot"] for w in workers if w["state"] in ("ready", "retiring")}
    if not serving:
        return "down"
    return "ok" if len(serving) >= max(1, target) else "degraded"


def backend_rows(stats: Mapping[str, Any] | None, health: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """The proxy's backends from its /lb-stats and /lb-health documents: name, health, load,
    latency quantiles in seconds (the proxy reports milliseconds)."""
    states = {b.get("name"): b for b in (health or {}).get("backends", [])}
    rows = []
    for b in (stats or {}).get("backends", []):
        lat = b.get("latency_ms") or {}
        p50, p99 = lat.get("p50"), lat.get("p99")
        h = states.get(b.get("name"), {})
        rows.append(
            {
                "name": b.get("name", "?"),
                "health": "healthy" if h.get("healthy") else "unhealthy",
                "in_flight": h.get("in_flight", 0),
                "requests": b.get("requests", 0),
                "errors": b.get("errors", 0),
                "p50": None if p50 is None else p50 / 1000.0,
                "p99": None if p99 is None else p99 / 1000.0,
            }
        )
    return rows


def dashboard_doc(
    board: sb.Scoreboard,
    totals: Totals,
    dispatch: str,
    process_info: ProcessInfo,
    proxy_docs: Mapping[str, Any] | None = None,
    clock: Callable[[], float] = time.monotonic,
    wall: Callable[[], float] = time.time,
) -> dict[str, Any]:
    now = clock()
    header = totals.header()
    by_class, histogram = request_totals(totals.read_counters(board))
    requests, errors = sum(by_class.values()), by_class["5xx"]
    workers = []
    offload_busy = offload_idle = 0
    for e in board.entries_in_use():
        if e.slot < 0:
            continue
        info = process_info(e.pid)
        snap = board.snapshot(e.entry)
        offload_busy += int(str(snap["offload_busy"]))
        offload_idle += int(str(snap["offload_idle"]))
        serving = bool(e.in_flight)
        workers.append(
            {
                "slot": e.slot,
                "pid": e.pid,
                "state": sb.STATE_NAMES.get(e.state, "unknown"),
                "interface": sb.INTERFACES[e.interface] if 0 <= e.interface < len(sb.INTERFACES) else "",
                "in_flight": e.in_flight,
                "served": snap["served"],
                "rss": None if info is None else int(info[0]),
                "heartbeat_age": round(max(0.0, now - board.heartbeat(e.entry)), 3),
                "current_request": snap["current_request"] if serving else "",
                "current_for": round(max(0.0, now - e.req_start), 3) if serving else None,
            }
        )
    workers.sort(key=lambda w: (w["slot"], w["pid"]))
    target = int(header["target"])
    start = float(header["start_time"])
    t = wall()
    return {
        "time": t,
        "health": health_of(workers, target),
        "master": {
            "pid": int(header["master_pid"]),
            "uptime": round(max(0.0, t - start), 1) if start else None,
            "dispatch": dispatch,
            "version": version_of("prefork_lb"),
            "workers_target": target,
        },
        "workers": workers,
        "totals": {
            "requests": requests,
            "errors": errors,
            "bounds": list(sb.DURATION_BUCKETS),
            "histogram": histogram,
        },
        "backends": backend_rows(*(proxy_docs.get(k) for k in ("stats", "health"))) if proxy_docs else [],
        "offload": {"busy": offload_busy, "idle": offload_idle},
    }
