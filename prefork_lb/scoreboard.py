"""The shared-memory scoreboard: one fixed-size entry per worker process.

The master creates it (an anonymous shared mapping) before forking, so every worker writes
its own entry and the master reads them all without a system call. Fields per entry:

    pid, state, heartbeat (CLOCK_MONOTONIC, which is system-wide), requests in flight,
    requests served, start time of the current request, its method and path, the slot
    (dispatch position) it serves, and a latency EWMA in microseconds.

Invariants: a worker writes only its own entry; the master clears an entry only after it has
reaped that worker's pid. Values are machine words written in one store, so a reader sees
either the old or the new value (the method and path strings may be torn: they are only
for log messages).
"""

from __future__ import annotations

import mmap
import time
from bisect import bisect_left
from collections.abc import Container, Iterable, Sequence
from typing import Final, NamedTuple

ENTRY_SIZE = 1024
_WORDS = ENTRY_SIZE // 8
# Layout of an entry: words 0-15 are the fields below (15: why the worker retires); bytes
# 128-255 the current request line; words 32-100 counters that only grow (the master folds them
# into its running totals, prefork_lb.admin.totals, when it reaps the process); words 101-102
# more gauges (QUEUED, OFFLOAD_SIZE); 103 the worker's INTERFACE; 104 the grace of a ``ctl stop``
# (STOP_GRACE); 105 whether the whole server stops (SERVER_STOP); 106-127 free. tests/unit/test_scoreboard.py checks that
# no two of these overlap and that everything fits in ENTRY_SIZE.
# word offsets inside an entry
(
    PID,
    STATE,
    HEARTBEAT,
    IN_FLIGHT,
    SERVED,
    REQ_START,
    SLOT,
    LATENCY,
    RECEIVED,
    CONNS,
    TEXT_LEN,
    FRESH,
    OFFLOAD_BUSY,
    OFFLOAD_IDLE,
    PORT,
    RETIRE_REASON,
) = range(16)  # PORT: --dispatch proxy, the slot's loopback port; RETIRE_REASON: RETIRE_REASONS
_TEXT_OFFSET = 128  # byte offset of the current request line, "METHOD target" (TEXT_LEN bytes)
_TEXT_MAX: Final = 128
COUNTERS = 32  # the first counter word: 503s shed by admission control
COUNTERS_END = 101  # one past the last counter word (what the master folds)
# The metrics' counters (prefork_lb.admin.metrics reads them), written by request_finished:
# requests by status class (none: the client left before any response, 1xx..5xx), by method,
# their total duration in microseconds, and a histogram of it (one word per bucket of
# DURATION_BUCKETS, counts not cumulative, the last word past the last bound).
STATUS_CLASSES = ("none", "1xx", "2xx", "3xx", "4xx", "5xx")
BY_STATUS = 33  # 33-38
METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "other")
BY_METHOD = BY_STATUS + len(STATUS_CLASSES)  # 39-46
DURATION_US = BY_METHOD + len(METHODS)  # 47
# Prometheus' default buckets, which are chosen for web latency, in seconds.
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
HISTOGRAM = DURATION_US + 1  # 48-62: the buckets, then +Inf
# 504s from the worker's own --request-timeout (the cooperative deadline), written straight
# into the entry as they happen (off the hot path, as SHED).
DEADLINES = HISTOGRAM + len(DURATION_BUCKETS) + 1  # 63
# Queue wait: from a request's arrival to the app being called (published by publish(), as the
# durations): the sum in microseconds, then a histogram over QUEUE_BUCKETS (+Inf last). Finer
# than the durations at the low end: most requests wait well under a millisecond.
QUEUE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
QUEUE_WAIT_US = DEADLINES + 1  # 64
QUEUE_HISTOGRAM = QUEUE_WAIT_US + 1  # 65-79
# The offload pool (prefork_lb.offload.pool.TaskCounters), copied at each heartbeat: tasks by
# outcome (OFFLOAD_OUTCOMES; "submitted" counts each task handed to a pool process), the sum of
# the durations of the tasks that ran to an end (returned or raised) in microseconds, and their
# histogram over DURATION_BUCKETS (+Inf last).
OFFLOAD_OUTCOMES = ("submitted", "completed", "failed", "timed_out", "cancelled")
OFFLOAD_TASKS = QUEUE_HISTOGRAM + len(QUEUE_BUCKETS) + 1  # 80-84
OFFLOAD_US = OFFLOAD_TASKS + len(OFFLOAD_OUTCOMES)  # 85
OFFLOAD_HISTOGRAM = OFFLOAD_US + 1  # 86-100
assert OFFLOAD_HISTOGRAM + len(DURATION_BUCKETS) + 1 == COUNTERS_END
# Gauges past the counters: requests waiting for a place in the app (--max-concurrency), written
# as they change (off the hot path: only a full worker queues), and the offload pool's size.
QUEUED = COUNTERS_END  # 101
OFFLOAD_SIZE = QUEUED + 1  # 102
# What the worker serves, once its app loaded: an index in INTERFACES (0: not known yet).
INTERFACE = OFFLOAD_SIZE + 1  # 103
INTERFACES = ("", "wsgi", "asgi")
# Written by the master before a graceful stop's TERM when ``prefork_lb ctl stop
# --graceful-timeout S`` asked for S (float, S + 1.0: 0.0 means none), read by the worker as it
# begins to drain, so that it drains for S, and says so, rather than for --graceful-timeout.
STOP_GRACE = INTERFACE + 1  # 104
# Written by the master (1) before a stop's signal when the whole server stops (TERM, INT,
# QUIT), not a reload, a smaller pool or a recycle: nothing goes on serving after this worker,
# so its drain needs no idle grace (ServerOptions.idle_grace: the proxy, which the master
# stopped first, sends it nothing more).
SERVER_STOP = STOP_GRACE + 1  # 105
RETIRE_REASONS = ("recycle", "max_requests", "max_rss")
_METHOD_WORD = {m: BY_METHOD + i for i, m in enumerate(METHODS)}
_OTHER_METHOD = BY_METHOD + len(METHODS) - 1
_BUCKETS_US: Final = tuple(b * 1e6 for b in DURATION_BUCKETS)
_FIRST_US: Final = _BUCKETS_US[0]
_QUEUE_FIRST: Final = QUEUE_BUCKETS[0]
# A worker counts into memory of its own and publishes into its entry at each heartbeat and when
# it exits (WorkerEntry.publish): a write to the shared mapping costs several times a list
# increment. Per request it bumps one cell of a table by (status class, method, duration bucket)
# and adds the duration; publish() sums the table into the words above. Published with the
# status classes last, so that a reader who sees a request there sees it everywhere else too.
_NBUCKETS = len(DURATION_BUCKETS) + 1
_CELL_METHOD: Final = {m: i * _NBUCKETS for i, m in enumerate(METHODS)}
_CELL_OTHER: Final = (len(METHODS) - 1) * _NBUCKETS
_CELL_STATUS: Final = tuple(k * len(METHODS) * _NBUCKETS for k in range(len(STATUS_CLASSES)))
_NCELLS = len(STATUS_CLASSES) * len(METHODS) * _NBUCKETS
SHED = COUNTERS  # 503s for a full server (--max-concurrency + --queue-size), by this process
# Weight of a new sample in the worker's latency EWMA. Slow on purpose: workers serving the same
# mix should show similar estimates, so that for least_latency the in-flight term decides; with
# 0.2 one 50 ms request among 1 ms ones made a worker look ten times slower than its twin.
LATENCY_ALPHA: Final = 0.05
_monotonic: Final = time.monotonic  # (a global: one lookup less per request)
_METHOD_BYTES: Final[dict[str, bytes]] = {}

EMPTY, BOOTING, READY, RETIRING, DRAINING = 0, 1, 2, 3, 4
STATE_NAMES = {EMPTY: "empty", BOOTING: "booting", READY: "ready", RETIRING: "retiring", DRAINING: "draining"}


class EntryState(NamedTuple):
    """One entry as a reader sees it (the dispatcher and the proxy read these every sync)."""

    entry: int
    pid: int
    state: int
    slot: int
    in_flight: int
    fresh: int  # connections with no request yet, and requests waiting for a place (--queue-size)
    latency: int  # EWMA in microseconds
    req_start: float  # CLOCK_MONOTONIC start of the current request
    received: int  # connections taken from the handoff channel
    conns: int
    port: int  # --dispatch proxy: the slot's loopback port
    interface: int = 0  # an index in INTERFACES


class Scoreboard:
    """The master's view (and writer of pid, slot, port); readers never do word arithmetic."""

    def __init__(self, entries: int) -> None:
        self.entries = entries
        self._map = mmap.mmap(-1, entries * ENTRY_SIZE, flags=mmap.MAP_SHARED)
        self._mv = memoryview(self._map)
        self.q = self._mv.cast("q")  # int64 view
        self.d = self._mv.cast("d")  # float64 view over the same bytes

    # -- master side ------------------------------------------------------------------------

    def allocate(self, pid: int, slot: int) -> int:
        """Take a free entry for a new worker (before fork: pid 0; set again after)."""
        q = self.q
        for i in range(self.entries):
            base = i * _WORDS
            if q[base + STATE] == EMPTY and q[base + PID] == 0:
                self.clear(i)
                q[base + PID] = pid or -1  # reserved
                q[base + SLOT] = slot
                q[base + STATE] = BOOTING
                self.d[base + HEARTBEAT] = time.monotonic()
                return i
        raise RuntimeError("scoreboard full")

    def clear(self, i: int) -> None:
        start = i * ENTRY_SIZE
        self._mv[start : start + ENTRY_SIZE] = bytes(ENTRY_SIZE)

    def get(self, i: int, field: int) -> int:
        """An integer field (PID, STATE, IN_FLIGHT, ...) of entry ``i``."""
        return self.q[i * _WORDS + field]

    def getf(self, i: int, field: int) -> float:
        """A float field (HEARTBEAT, REQ_START) of entry ``i``."""
        return self.d[i * _WORDS + field]

    def put(self, i: int, field: int, value: int) -> None:
        """Write an integer field: the master (pid, port) and tests (a worker's state)."""
        self.q[i * _WORDS + field] = value

    def putf(self, i: int, field: int, value: float) -> None:
        self.d[i * _WORDS + field] = value

    def set_pid(self, i: int, pid: int) -> None:
        self.q[i * _WORDS + PID] = pid

    def set_stop_grace(self, entries: Iterable[int], seconds: float) -> None:
        """The master: these entries' workers drain for ``seconds`` on their graceful stop."""
        for i in entries:
            self.d[i * _WORDS + STOP_GRACE] = seconds + 1.0

    def set_server_stop(self, entries: Iterable[int]) -> None:
        """The master: these entries' workers stop with the whole server (SERVER_STOP)."""
        for i in entries:
            self.q[i * _WORDS + SERVER_STOP] = 1

    def set_port(self, i: int, port: int) -> None:
        """--dispatch proxy: the loopback port the proxy reaches entry ``i``'s worker on."""
        self.q[i * _WORDS + PORT] = port

    def set_interface(self, i: int, name: str) -> None:
        """What entry ``i``'s worker serves (INTERFACES), written once its app loaded."""
        self.q[i * _WORDS + INTERFACE] = INTERFACES.index(name)

    def state(self, i: int) -> int:
        return self.q[i * _WORDS + STATE]

    def heartbeat(self, i: int) -> float:
        """CLOCK_MONOTONIC time of the worker's last beat."""
        return self.d[i * _WORDS + HEARTBEAT]

    def in_flight(self, i: int) -> int:
        return self.q[i * _WORDS + IN_FLIGHT]

    def request_start(self, i: int) -> float:
        return self.d[i * _WORDS + REQ_START]

    def shed(self, i: int) -> int:
        """Requests or connections entry ``i``'s process refused with 503 for being full."""
        return self.q[i * _WORDS + SHED]

    def busy(self, i: int) -> bool:
        """Serving a request, or holding a connection whose first request is on its way."""
        base = i * _WORDS
        return self.q[base + IN_FLIGHT] + self.q[base + FRESH] > 0

    def ready_load(self, slots: Container[int], now: float) -> dict[int, tuple[int, int, int, int]]:
        """The handoff dispatcher's read, per slot in ``slots`` with a READY worker: (load,
        connections received from its channel, latency in µs, open connections). Load is the
        requests in flight plus the connections whose first request has not arrived yet and the
        requests waiting for a place under --max-concurrency (right after a handoff the worker looks idle, but a request is on its way); a worker deep in a
        long request is at least that slow right now. Two ready workers in one slot (a reload)
        read the same channel: their numbers add up (latency: the larger). One pass, no objects:
        the dispatcher calls this at every wake-up."""
        q, d = self.q, self.d
        ready: dict[int, tuple[int, int, int, int]] = {}
        for i in range(self.entries):
            base = i * _WORDS
            if q[base + STATE] != READY or q[base + PID] <= 0:
                continue
            slot = q[base + SLOT]
            if slot < 0 or slot not in slots:
                continue
            # Read in this order: a worker counts a connection or request into its next count
            # before out of the last (received after fresh, fresh down after in flight up), so a
            # read racing with it may count it twice for an instant, never not at all.
            received = q[base + RECEIVED]
            fresh = max(0, q[base + FRESH])
            in_flight = q[base + IN_FLIGHT]
            load = in_flight + fresh
            latency = q[base + LATENCY]
            if in_flight:
                latency = max(latency, int((now - d[base + REQ_START]) * 1e6))
            prev = ready.get(slot, (0, 0, 0, 0))
            ready[slot] = (
                prev[0] + load,
                prev[1] + received,
                max(prev[2], latency),
                prev[3] + q[base + CONNS],
            )
        return ready

    def entries_in_use(self) -> list[EntryState]:
        """Every entry with a process (pid > 0), decoded in one pass."""
        q, d = self.q, self.d
        out = []
        for i in range(self.entries):
            base = i * _WORDS
            pid = q[base + PID]
            if pid <= 0:
                continue
            out.append(
                EntryState(
                    i,
                    pid,
                    q[base + STATE],
                    q[base + SLOT],
                    q[base + IN_FLIGHT],
                    q[base + FRESH],
                    q[base + LATENCY],
                    d[base + REQ_START],
                    q[base + RECEIVED],
                    q[base + CONNS],
                    q[base + PORT],
                    q[base + INTERFACE],
                )
            )
        return out

    def counters(self, i: int) -> list[int]:
        """Entry ``i``'s counter words (COUNTERS..COUNTERS_END), in order."""
        base = i * _WORDS
        return list(self.q[base + COUNTERS : base + COUNTERS_END])

    def retire_reason(self, i: int) -> str:
        """Why entry ``i``'s worker asked to be replaced (when its state is RETIRING)."""
        r = self.q[i * _WORDS + RETIRE_REASON]
        return RETIRE_REASONS[r] if 0 <= r < len(RETIRE_REASONS) else RETIRE_REASONS[0]

    def current_request(self, i: int) -> str:
        start = i * ENTRY_SIZE + _TEXT_OFFSET
        n = max(0, min(_TEXT_MAX, self.q[i * _WORDS + TEXT_LEN]))
        return bytes(self._mv[start : start + n]).decode("latin-1")

    def snapshot(self, i: int) -> dict[str, object]:
        base = i * _WORDS
        q, d = self.q, self.d
        return {
            "pid": q[base + PID],
            "state": STATE_NAMES.get(q[base + STATE], "?"),
            "slot": q[base + SLOT],
            "heartbeat_age": round(time.monotonic() - d[base + HEARTBEAT], 3),
            "in_flight": q[base + IN_FLIGHT],
            "served": q[base + SERVED],
            "connections": q[base + CONNS],
            "latency_us": q[base + LATENCY],
            "offload_busy": q[base + OFFLOAD_BUSY],
            "offload_idle": q[base + OFFLOAD_IDLE],
            "current_request": self.current_request(i) if q[base + IN_FLIGHT] else "",
        }

    # -- worker side -------------------------------------------------------------------------

    def handle(self, i: int) -> WorkerEntry:
        return WorkerEntry(self, i)


class WorkerEntry:
    """A worker's writer for its own entry. The per-request methods are on the hot path."""

    __slots__ = (
        "q",
        "d",
        "base",
        "mv",
        "text",
        "in_flight",
        "conns",
        "ewma",
        "fresh",
        "cells",
        "duration_us",
        "served",
        "waits",
        "wait_s",
        "published",
        "line_method",
        "line_path",
        "i_in_flight",
        "i_req_start",
        "i_latency",
    )

    def __init__(self, board: Scoreboard, i: int) -> None:
        self.q = board.q
        self.d = board.d
        self.base = i * _WORDS
        self.mv = board._mv
        self.text = i * ENTRY_SIZE + _TEXT_OFFSET
        self.in_flight = 0
        self.conns = 0
        self.fresh = 0  # connections with no request yet: load that in_flight cannot see
        self.ewma = 0.0
        # What publish() writes into the entry: requests by (status class, method, bucket), the
        # sum of their durations, and the count served.
        self.cells = [0] * _NCELLS
        self.duration_us = 0.0
        self.served = 0
        # The queue waits by QUEUE_BUCKETS bucket and their sum in seconds (published as they
        # are at each beat; ``published``: how many waits the last beat saw).
        self.waits = [0] * (len(QUEUE_BUCKETS) + 1)
        self.wait_s = 0.0
        self.published = 0
        # The (method, target) objects whose line the entry's text holds: a keep-alive client
        # asking for the same thing again (the parser's memo hands out the same objects) costs
        # no rewrite of the line.
        self.line_method: str | None = None
        self.line_path: bytes | None = None
        # The words written per request (the hot path), as absolute indexes.
        self.i_in_flight = self.base + IN_FLIGHT
        self.i_req_start = self.base + REQ_START
        self.i_latency = self.base + LATENCY

    def set_state(self, state: int) -> None:
        self.q[self.base + STATE] = state

    def stop_grace(self, default: float) -> float:
        """How long to drain: what ``ctl stop --graceful-timeout`` asked for, else ``default``."""
        grace = self.d[self.base + STOP_GRACE]
        return grace - 1.0 if grace > 0 else default

    def server_stopping(self) -> bool:
        """Whether this worker's stop is the whole server's (SERVER_STOP), not a reload's."""
        return self.q[self.base + SERVER_STOP] == 1

    def beat(self) -> None:
        self.publish()
        self.d[self.base + HEARTBEAT] = time.monotonic()

    def publish(self) -> None:
        """Copy this process's request counters into its entry (at each heartbeat and at exit;
        a process killed without warning loses what it counted since its last beat)."""
        q, base = self.q, self.base
        started = sum(self.waits)
        if q[base + SERVED] == self.served and self.published == started:
            return  # nothing started or finished since the last publish (never, in a helper)
        if self.published != started:
            self.published = started
            for i, n in enumerate(self.waits):
                q[base + QUEUE_HISTOGRAM + i] = n
            q[base + QUEUE_WAIT_US] = int(self.wait_s * 1e6)
        cells = self.cells
        # Sums of slices (in C): a status class is a block of the table, a method a row in each
        # block, a bucket every _NBUCKETS-th cell.
        block = len(METHODS) * _NBUCKETS
        by_status = [sum(cells[k : k + block]) for k in range(0, _NCELLS, block)]
        by_method = [
            sum(sum(cells[k + m * _NBUCKETS : k + (m + 1) * _NBUCKETS]) for k in range(0, _NCELLS, block))
            for m in range(len(METHODS))
        ]
        buckets = [sum(cells[b::_NBUCKETS]) for b in range(_NBUCKETS)]
        for i, n in enumerate(buckets):
            q[base + HISTOGRAM + i] = n
        q[base + DURATION_US] = int(self.duration_us)
        for i, n in enumerate(by_method):
            q[base + BY_METHOD + i] = n
        for i, n in enumerate(by_status):
            q[base + BY_STATUS + i] = n
        q[base + SERVED] = self.served

    def request_started(self, method: str, path: bytes, arrived: float = 0.0) -> None:
        """The app is about to be called for a request that ``arrived`` then (CLOCK_MONOTONIC:
        the accept, the dispatcher's accept, the read that brought it with others pipelined,
        the start of its wait for a place; 0.0: it waited for nothing)."""
        self.in_flight = n = self.in_flight + 1
        self.q[self.i_in_flight] = n
        self.d[self.i_req_start] = now = _monotonic()
        # The queue wait: one cell and a sum of this process's own, as the durations (in
        # seconds: no conversion per request). Most waits are under the first bound.
        if arrived:
            wait = now - arrived
            self.wait_s += wait
            self.waits[0 if wait <= _QUEUE_FIRST else bisect_left(QUEUE_BUCKETS, wait)] += 1
        else:
            self.waits[0] += 1
        # The request line, for the log of a worker that stops answering (it cannot write
        # anything once stuck, so it is written for every request; no padding, no copies),
        # unless the text already holds this very line.
        if path is self.line_path and method is self.line_method:
            return
        self.line_method = method
        self.line_path = path
        mb = _METHOD_BYTES.get(method)
        if mb is None:
            mb = _METHOD_BYTES[method] = method.encode("latin-1")[:16] + b" "
        line = mb + path if len(path) < _TEXT_MAX - len(mb) else (mb + path)[:_TEXT_MAX]
        n = len(line)
        t = self.text
        self.mv[t : t + n] = line
        self.q[self.base + TEXT_LEN] = n

    def request_finished(self, method: str = "", status_class: int = 0) -> None:
        """``status_class``: 1-5 for the response sent (1xx-5xx), 0 for none."""
        self.in_flight = n = self.in_flight - 1
        q = self.q
        q[self.i_in_flight] = n
        self.served += 1
        took = (_monotonic() - self.d[self.i_req_start]) * 1e6  # since the latest start
        # The metrics: one cell of this process's own table and a sum (published by beat()); no
        # lock, no shared write, no call into prometheus_client. Most requests are quicker than
        # the first bound: one comparison instead of a search.
        self.cells[
            _CELL_STATUS[status_class]
            + _CELL_METHOD.get(method, _CELL_OTHER)
            + (0 if took <= _FIRST_US else bisect_left(_BUCKETS_US, took))
        ] += 1
        self.duration_us += took
        ewma = self.ewma
        self.ewma = ewma = took if ewma == 0.0 else ewma + LATENCY_ALPHA * (took - ewma)
        q[self.i_latency] = int(ewma)

    def connection_opened(self) -> None:
        self.conns += 1
        self.fresh += 1
        self.q[self.base + CONNS] = self.conns
        self.q[self.base + FRESH] = self.fresh

    def first_request(self) -> None:
        """A connection's first request has arrived: it stops counting as fresh."""
        self.fresh -= 1
        self.q[self.base + FRESH] = self.fresh

    def connection_closed(self, had_request: bool = True) -> None:
        self.conns -= 1
        self.q[self.base + CONNS] = self.conns
        if not had_request:
            self.first_request()

    def retiring(self, reason: str) -> None:
        """Ask to be replaced (state RETIRING), saying why (one of RETIRE_REASONS)."""
        self.q[self.base + RETIRE_REASON] = RETIRE_REASONS.index(reason) if reason in RETIRE_REASONS else 0
        self.q[self.base + STATE] = RETIRING

    def offload(self, busy: int, idle: int, size: int = 0, tasks: Sequence[int] = ()) -> None:
        """The worker's offload pool, as of its last heartbeat: processes busy and idle, its
        size, and ``tasks``, the words OFFLOAD_TASKS..COUNTERS_END (by outcome, the duration sum
        in µs, the histogram; prefork_lb.offload.pool.TaskCounters.words)."""
        q, base = self.q, self.base
        q[base + OFFLOAD_BUSY] = busy
        q[base + OFFLOAD_IDLE] = idle
        q[base + OFFLOAD_SIZE] = size
        for i, n in enumerate(tasks[: COUNTERS_END - OFFLOAD_TASKS]):
            q[base + OFFLOAD_TASKS + i] = n

    def queued(self, n: int) -> None:
        """``n`` more (or, negative, fewer) requests wait for a place under --max-concurrency.
        They count with the fresh connections: load that in_flight does not show yet."""
        self.fresh += n
        q = self.q
        q[self.base + FRESH] = self.fresh
        q[self.base + QUEUED] += n

    def deadline_passed(self) -> None:
        """A request ran past --request-timeout in this worker (the cooperative deadline)."""
        self.q[self.base + DEADLINES] += 1

    def shed(self, n: int = 1) -> None:
        """``n`` more refused with 503 for being full (off the hot path: overload only)."""
        self.q[self.base + SHED] += n

    def received(self, n: int) -> None:
        """Connections taken from the handoff channel (the dispatcher counts what it sent)."""
        self.q[self.base + RECEIVED] += n
