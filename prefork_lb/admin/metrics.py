"""``/metrics``: a prometheus_client Collector that reads the scoreboard when it is scraped.

Nothing in a worker calls prometheus_client: a worker only bumps counter words of its own
scoreboard entry (prefork_lb.scoreboard, ``request_finished``). At scrape time
:class:`ServerCollector` reads every live entry and the master's totals
(prefork_lb.admin.totals: the counters of exited processes, the master's own counters) and
builds the metric families; prometheus_client writes the text exposition format.

Invariants: counters per ``worker`` label (the slot number) never go backwards, since a
process's counts move to its slot's totals in the same step as its entry is cleared; gauges of
one process (heartbeat age, state, memory, CPU) carry its ``pid`` too, so that two processes
serving one slot during a reload are two series. CPU seconds are per process: a replaced worker
starts again from zero (Prometheus' rate() reads that as a counter reset).
"""

from __future__ import annotations

import platform
import time
from collections.abc import Callable, Iterator
from importlib import metadata
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from prefork_lb import scoreboard as sb
from prefork_lb.admin.totals import (
    BOOT_FAILED,
    REQUEST_ABORTS,
    SCALE_DOWN,
    SCALE_UP,
    TIMEOUTS,
    Totals,
)

PREFIX = "prefork_lb_"
ProcessInfo = Callable[[int], "tuple[float, float] | None"]  # pid -> (RSS bytes, CPU seconds)
ProxyDocs = Callable[[], "dict[str, Any] | None"]  # {"stats": /lb-stats, "health": /lb-health}

_STATUS = [(sb.BY_STATUS - sb.COUNTERS + i, c) for i, c in enumerate(sb.STATUS_CLASSES)]
_METHOD = [(sb.BY_METHOD - sb.COUNTERS + i, m) for i, m in enumerate(sb.METHODS)]
_DURATION = sb.DURATION_US - sb.COUNTERS
_HISTOGRAM = sb.HISTOGRAM - sb.COUNTERS
_SHED = 0  # word COUNTERS: 503s from admission control
_BOUNDS = [str(b) for b in sb.DURATION_BUCKETS] + ["+Inf"]
_DEADLINES = sb.DEADLINES - sb.COUNTERS
_QUEUE_US = sb.QUEUE_WAIT_US - sb.COUNTERS
_QUEUE_HISTOGRAM = sb.QUEUE_HISTOGRAM - sb.COUNTERS
_QUEUE_BOUNDS = [str(b) for b in sb.QUEUE_BUCKETS] + ["+Inf"]
_OFFLOAD = [(sb.OFFLOAD_TASKS - sb.COUNTERS + i, o) for i, o in enumerate(sb.OFFLOAD_OUTCOMES)]
_OFFLOAD_US = sb.OFFLOAD_US - sb.COUNTERS
_OFFLOAD_HISTOGRAM = sb.OFFLOAD_HISTOGRAM - sb.COUNTERS


def psutil_info(pid: int) -> tuple[float, float] | None:
    """A process's resident memory and CPU seconds (user + system), None once it is gone."""
    import psutil

    try:
        p = psutil.Process(pid)
        with p.oneshot():
            cpu = p.cpu_times()
            return float(p.memory_info().rss), float(cpu.user + cpu.system)
    except (psutil.Error, OSError):
        return None


def version_of(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "unknown"


def role_of(slot: int) -> str:
    """The ``role`` label of a scoreboard entry's process."""
    return "worker" if slot >= 0 else {-1: "helper", -2: "admin"}.get(slot, "helper")


class ServerCollector:
    """Every metric of the server, from shared memory; registered in a CollectorRegistry."""

    def __init__(
        self,
        board: sb.Scoreboard,
        totals: Totals,
        dispatch: str,
        helper_role: str | None = None,
        proxy: ProxyDocs | None = None,
        process_info: ProcessInfo = psutil_info,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.board = board
        self.totals = totals
        self.dispatch = dispatch
        self.helper_role = helper_role or "helper"
        self.proxy = proxy
        self.process_info = process_info
        self.clock = clock

    def describe(self) -> list[Metric]:
        return []  # no collect() at registration: the scoreboard is read at scrape time only

    def collect(self) -> Iterator[Metric]:
        docs = self.proxy() if self.proxy is not None else None
        yield from self.request_metrics(docs)
        yield from self.process_metrics()
        yield from self.master_metrics()
        if docs is not None:
            yield from backend_metrics(docs)

    # -- requests (counters per slot) --------------------------------------------------------------

    def request_metrics(self, docs: dict[str, Any] | None = None) -> Iterator[Metric]:
        per_slot = self.totals.read_counters(self.board)
        requests = CounterMetricFamily(
            PREFIX + "requests",
            "Requests answered, by worker slot and status class (none: the client left first).",
            labels=["worker", "code"],
        )
        methods = CounterMetricFamily(
            PREFIX + "requests_by_method",
            "Requests answered, by worker slot and method.",
            labels=["worker", "method"],
        )
        duration = HistogramMetricFamily(
            PREFIX + "request_duration_seconds",
            "Time from a request's head to the end of its response, by worker slot.",
            labels=["worker"],
        )
        shed = CounterMetricFamily(
            PREFIX + "admission_rejected",
            "Requests answered 503 by admission control (the worker was full), by slot.",
            labels=["worker"],
        )
        queue_wait = HistogramMetricFamily(
            PREFIX + "request_queue_wait_seconds",
            "Time from a request's arrival (the accept, the dispatcher's accept, or the read that "
            "completed its head) to the app being called, by worker slot.",
            labels=["worker"],
        )
        tasks = CounterMetricFamily(
            PREFIX + "offload_tasks",
            "Offload tasks handed to a pool process (submitted), and how they ended, by worker slot.",
            labels=["worker", "outcome"],
        )
        task_duration = HistogramMetricFamily(
            PREFIX + "offload_task_duration_seconds",
            "Time from handing an offload task to a pool process to its answer, by worker slot.",
            labels=["worker"],
        )
        deadlines = 0
        for slot in sorted(per_slot):
            c = per_slot[slot]
            worker = str(slot) if slot >= 0 else role_of(slot)
            if c[_SHED]:
                shed.add_metric([worker], c[_SHED])
            if slot < 0:
                continue
            deadlines += c[_DEADLINES]
            for k, name in _STATUS:
                requests.add_metric([worker, name], c[k])
            for k, name in _METHOD:
                methods.add_metric([worker, name], c[k])
            duration.add_metric([worker], _cumulative(c, _HISTOGRAM, _BOUNDS), c[_DURATION] / 1e6)
            queue_wait.add_metric(
                [worker], _cumulative(c, _QUEUE_HISTOGRAM, _QUEUE_BOUNDS), c[_QUEUE_US] / 1e6
            )
            for k, name in _OFFLOAD:
                tasks.add_metric([worker, name], c[k])
            task_duration.add_metric(
                [worker], _cumulative(c, _OFFLOAD_HISTOGRAM, _BOUNDS), c[_OFFLOAD_US] / 1e6
            )
        timeouts = CounterMetricFamily(
            PREFIX + "request_timeouts",
            "Requests past --request-timeout (504 when nothing was sent yet), by where the deadline "
            "was kept: the worker's own deadline, the master aborting a blocked worker, the proxy.",
            labels=["where"],
        )
        timeouts.add_metric(["worker"], deadlines)
        timeouts.add_metric(["master"], self.totals.q[REQUEST_ABORTS])
        stats = (docs or {}).get("stats")
        if stats:
            timeouts.add_metric(["proxy"], stats.get("timeouts", 0))
        yield from (requests, methods, duration, shed, queue_wait, timeouts, tasks, task_duration)

    # -- processes (gauges per process) ------------------------------------------------------------

    def process_metrics(self) -> Iterator[Metric]:
        board = self.board
        now = self.clock()
        in_flight = GaugeMetricFamily(
            PREFIX + "requests_in_flight", "Requests being served.", labels=["worker"]
        )
        conns = GaugeMetricFamily(PREFIX + "connections_open", "Client connections open.", labels=["worker"])
        workers = GaugeMetricFamily(PREFIX + "workers", "Worker processes alive, by state.", labels=["state"])
        beat = GaugeMetricFamily(
            PREFIX + "worker_heartbeat_age_seconds",
            "Seconds since the process's last heartbeat (the master aborts it past --timeout).",
            labels=["worker", "pid"],
        )
        state = GaugeMetricFamily(
            PREFIX + "worker_state", "1 for the state each process is in.", labels=["worker", "pid", "state"]
        )
        busy = GaugeMetricFamily(
            PREFIX + "offload_busy_processes", "Offload pool processes busy.", labels=["worker"]
        )
        idle = GaugeMetricFamily(
            PREFIX + "offload_idle_processes", "Offload pool processes idle.", labels=["worker"]
        )
        size = GaugeMetricFamily(
            PREFIX + "offload_pool_size",
            "Processes the offload pool may run (0 until the worker first offloads).",
            labels=["worker"],
        )
        queued = GaugeMetricFamily(
            PREFIX + "requests_queued",
            "Requests read and waiting for a place in the app (--max-concurrency, --queue-size).",
            labels=["worker"],
        )
        rss = GaugeMetricFamily(
            PREFIX + "process_resident_memory_bytes",
            "Resident memory of each process.",
            labels=["role", "worker", "pid"],
        )
        cpu = CounterMetricFamily(
            PREFIX + "process_cpu_seconds",
            "CPU time (user + system) of each process since it started.",
            labels=["role", "worker", "pid"],
        )
        slot_in_flight: dict[str, int] = {}
        slot_conns: dict[str, int] = {}
        slot_busy: dict[str, int] = {}
        slot_idle: dict[str, int] = {}
        slot_size: dict[str, int] = {}
        slot_queued: dict[str, int] = {}
        by_state = dict.fromkeys(("booting", "ready", "retiring", "draining"), 0)
        for e in board.entries_in_use():
            role = role_of(e.slot)
            if role == "helper":
                role = self.helper_role
            worker = str(e.slot) if e.slot >= 0 else role
            pid = str(e.pid)
            name = sb.STATE_NAMES.get(e.state, "unknown")
            beat.add_metric([worker, pid], max(0.0, now - board.heartbeat(e.entry)))
            state.add_metric([worker, pid, name], 1)
            if e.slot >= 0:
                by_state[name] = by_state.get(name, 0) + 1
                slot_in_flight[worker] = slot_in_flight.get(worker, 0) + e.in_flight
                slot_conns[worker] = slot_conns.get(worker, 0) + e.conns
                slot_busy[worker] = slot_busy.get(worker, 0) + board.get(e.entry, sb.OFFLOAD_BUSY)
                slot_idle[worker] = slot_idle.get(worker, 0) + board.get(e.entry, sb.OFFLOAD_IDLE)
                slot_size[worker] = slot_size.get(worker, 0) + board.get(e.entry, sb.OFFLOAD_SIZE)
                slot_queued[worker] = slot_queued.get(worker, 0) + board.get(e.entry, sb.QUEUED)
            info = self.process_info(e.pid)
            if info is not None:
                rss.add_metric([role, worker, pid], info[0])
                cpu.add_metric([role, worker, pid], info[1])
        master = self.totals.header()["master_pid"]
        info = self.process_info(int(master)) if master else None
        if info is not None:
            rss.add_metric(["master", "", str(int(master))], info[0])
            cpu.add_metric(["master", "", str(int(master))], info[1])
        for name, n in by_state.items():
            workers.add_metric([name], n)
        for fam, values in (
            (in_flight, slot_in_flight),
            (conns, slot_conns),
            (busy, slot_busy),
            (idle, slot_idle),
            (size, slot_size),
            (queued, slot_queued),
        ):
            for worker in sorted(values, key=int):
                fam.add_metric([worker], values[worker])
        yield from (in_flight, queued, conns, workers, beat, state, busy, idle, size, rss, cpu)

    # -- the master -------------------------------------------------------------------------------

    def master_metrics(self) -> Iterator[Metric]:
        h = self.totals.header()
        yield GaugeMetricFamily(
            PREFIX + "workers_target", "Worker count the master aims at.", value=h["target"]
        )
        spawns = CounterMetricFamily(
            PREFIX + "worker_spawns", "Workers started, by reason.", labels=["reason"]
        )
        for reason, n in self.totals.spawns().items():
            spawns.add_metric([reason], n)
        yield spawns
        q = self.totals.q
        yield CounterMetricFamily(
            PREFIX + "worker_boot_failures",
            "Workers that exited before they were ready.",
            value=q[BOOT_FAILED],
        )
        yield CounterMetricFamily(
            PREFIX + "worker_timeouts",
            "Workers aborted for a missed heartbeat (--timeout).",
            value=q[TIMEOUTS],
        )
        scale = CounterMetricFamily(PREFIX + "autoscale_changes", "Autoscaling steps.", labels=["direction"])
        scale.add_metric(["up"], q[SCALE_UP])
        scale.add_metric(["down"], q[SCALE_DOWN])
        yield scale
        yield GaugeMetricFamily(
            PREFIX + "master_start_time_seconds",
            "When the master started (Unix time).",
            value=h["start_time"],
        )
        info = GaugeMetricFamily(
            PREFIX + "build_info",
            "Versions and dispatch mode; always 1.",
            labels=["version", "python", "gevent", "dispatch"],
        )
        info.add_metric(
            [version_of("prefork_lb"), platform.python_version(), version_of("gevent"), self.dispatch], 1
        )
        yield info


def _cumulative(c: list[int], first: int, bounds: list[str]) -> list[tuple[str, float]]:
    """A histogram's buckets, from its counter words (per bucket) to Prometheus' cumulative."""
    total = 0
    out: list[tuple[str, float]] = []
    for i, bound in enumerate(bounds):
        total += c[first + i]
        out.append((bound, total))
    return out


def backend_pools(doc: dict[str, Any]) -> Iterator[Metric]:
    """The proxy's upstream pools and per-backend latency histograms (its "metrics" answer)."""
    idle = GaugeMetricFamily(
        PREFIX + "backend_idle_connections", "Idle upstream connections.", labels=["backend"]
    )
    connecting = GaugeMetricFamily(
        PREFIX + "backend_connecting", "Upstream connections being opened.", labels=["backend"]
    )
    active = GaugeMetricFamily(
        PREFIX + "backend_active_connections",
        "Upstream connections in use: a request on them, or a WebSocket tunnel.",
        labels=["backend"],
    )
    websockets = GaugeMetricFamily(
        PREFIX + "backend_websockets_open", "WebSocket tunnels open through the backend.", labels=["backend"]
    )
    hist = HistogramMetricFamily(
        PREFIX + "backend_latency_seconds",
        "Backend response latency (each sample at its HdrHistogram bucket's midpoint, within 3.2%).",
        labels=["backend"],
    )
    bounds = [str(float(b)) for b in doc.get("bounds", [])] + ["+Inf"]
    for name, b in sorted((doc.get("backends") or {}).items()):
        idle.add_metric([name], b.get("idle", 0))
        connecting.add_metric([name], b.get("connecting", 0))
        active.add_metric([name], b.get("active", 0))
        websockets.add_metric([name], b.get("websockets", 0))
        counts = list(b.get("buckets", [])) + [b.get("count", 0)]
        if len(counts) == len(bounds):
            hist.add_metric([name], list(zip(bounds, counts, strict=True)), b.get("sum", 0.0))
    yield from (idle, connecting, active, websockets, hist)


def backend_metrics(docs: dict[str, Any]) -> Iterator[Metric]:
    """The proxy's per-backend numbers, from its /lb-stats and /lb-health documents."""
    stats = docs.get("stats") or {}
    health = docs.get("health") or {}
    fams: dict[str, Any] = {}
    for key, doc in (
        ("requests", "Requests sent to the backend (each try)."),
        ("errors", "Failed exchanges with the backend (connect errors, timeouts, bad answers)."),
        ("retries", "Requests retried after a failure at the backend."),
        ("websockets", "WebSocket upgrades through the backend."),
        ("pipelined", "Requests sent behind another on one connection."),
        ("ejections", "Times the backend was taken out of rotation (passive ejection, a failed connect)."),
    ):
        fams[key] = CounterMetricFamily(PREFIX + "backend_" + key, doc, labels=["backend"])
    responses = CounterMetricFamily(
        PREFIX + "backend_responses",
        "Final responses from the backend, by status class.",
        labels=["backend", "code"],
    )
    latency = GaugeMetricFamily(
        PREFIX + "backend_latency_quantile_seconds",
        "Latency percentiles of the backend's responses since the proxy started.",
        labels=["backend", "quantile"],
    )
    up = GaugeMetricFamily(
        PREFIX + "backend_up", "1 when the proxy sends to the backend.", labels=["backend"]
    )
    flying = GaugeMetricFamily(
        PREFIX + "backend_in_flight", "Requests at the backend now.", labels=["backend"]
    )
    weight = GaugeMetricFamily(
        PREFIX + "backend_weight", "The backend's balancing weight.", labels=["backend"]
    )
    state = GaugeMetricFamily(
        PREFIX + "backend_state",
        "1 for the state the backend is in: up, down, checking (added, first health check pending), "
        "or an operator's draining or disabled.",
        labels=["backend", "state"],
    )
    for b in stats.get("backends", []):
        name = str(b["name"])
        for key in ("requests", "errors", "retries", "websockets", "pipelined", "ejections"):
            fams[key].add_metric([name], b.get(key, 0))
        for cls, n in (b.get("responses") or {}).items():
            responses.add_metric([name, cls], n)
        if "weight" in b:
            weight.add_metric([name], b["weight"])
        if "state" in b:
            state.add_metric([name, str(b["state"])], 1)
        for q, label in (("p50", "0.5"), ("p90", "0.9"), ("p99", "0.99")):
            ms = (b.get("latency_ms") or {}).get(q)
            if ms is not None:
                latency.add_metric([name, label], ms / 1000.0)
    for b in health.get("backends", []):
        sending = b.get("healthy") and b.get("state", "up") not in ("draining", "disabled")
        up.add_metric([str(b["name"])], 1 if sending else 0)
        flying.add_metric([str(b["name"])], b.get("in_flight", 0))
    yield from fams.values()
    yield from (responses, latency, up, flying, weight, state)
    yield from backend_pools(docs.get("metrics") or {})
    if stats:
        yield GaugeMetricFamily(
            PREFIX + "proxy_connections_active",
            "Client connections open at the proxy.",
            value=stats.get("active_connections", 0),
        )
        yield GaugeMetricFamily(
            PREFIX + "proxy_queued",
            "Client connections waiting for a free slot.",
            value=stats.get("queued", 0),
        )
        yield CounterMetricFamily(
            PREFIX + "proxy_requests", "Requests the proxy received.", value=stats.get("requests", 0)
        )
        yield CounterMetricFamily(
            PREFIX + "proxy_websockets",
            "Connections the proxy upgraded to WebSocket tunnels.",
            value=stats.get("websockets", 0),
        )
        if isinstance(stats.get("cache"), dict):
            yield from cache_metrics(stats["cache"])
        if stats.get("pools"):
            yield from mount_metrics(stats["pools"])


def mount_metrics(pools: list[dict[str, Any]]) -> Iterator[Metric]:
    """--mount: each pool's workers, and which pool each backend serves (join on ``backend``)."""
    workers = GaugeMetricFamily(
        PREFIX + "mount_workers",
        "Workers a --mount pool is given.",
        labels=["mount", "app", "interface"],
    )
    ready = GaugeMetricFamily(
        PREFIX + "mount_ready_workers", "Workers of a --mount pool the proxy sends to.", labels=["mount"]
    )
    member = GaugeMetricFamily(
        PREFIX + "backend_mount",
        "1 for the --mount pool a local backend serves.",
        labels=["backend", "mount"],
    )
    for pool in pools:
        route = str(pool["route"])
        workers.add_metric([route, str(pool["app"]), str(pool["interface"])], pool["workers"])
        ready.add_metric([route], pool["ready_workers"])
        for key in pool["backends"]:
            member.add_metric([str(key), route], 1)
    yield from (workers, ready, member)


CACHE_RESULTS = (("hit", "hits"), ("miss", "misses"), ("stale", "stale"), ("coalesced", "coalesced"))
CACHE_COUNTERS = (
    ("stored", "Responses the cache stored."),
    ("evicted", "Entries evicted to stay within --cache-size (least recently used first)."),
    ("purged", "Entries removed by prefork_lb ctl cache purge."),
    ("too_big", "Storable responses not stored for being larger than --cache-max-object or the cache."),
)


def cache_metrics(cache: dict[str, Any]) -> Iterator[Metric]:
    """The proxy's response cache (--cache-size), from the ``cache`` section of its /lb-stats."""
    requests = CounterMetricFamily(
        PREFIX + "proxy_cache_requests",
        "Requests that looked in the response cache, by result: hit (fresh), stale (served stale), "
        "miss, coalesced (waited for another request's response).",
        labels=["result"],
    )
    for label, key in CACHE_RESULTS:
        requests.add_metric([label], cache.get(key, 0))
    yield requests
    for key, doc in CACHE_COUNTERS:
        yield CounterMetricFamily(PREFIX + "proxy_cache_" + key, doc, value=cache.get(key, 0))
    yield GaugeMetricFamily(
        PREFIX + "proxy_cache_bytes", "Bytes charged by the entries held now.", value=cache.get("bytes", 0)
    )
    yield GaugeMetricFamily(
        PREFIX + "proxy_cache_entries", "Responses (variants) held now.", value=cache.get("entries", 0)
    )
    yield GaugeMetricFamily(
        PREFIX + "proxy_cache_capacity_bytes",
        "The cache's bound in bytes (--cache-size).",
        value=cache.get("capacity_bytes", 0),
    )
