"""What the ASGI worker counts and logs of each request: the hooks it gives its AsgiServer.

:class:`WorkerHooks` turns the server's ``request_started`` / ``request_finished`` calls into
the scoreboard writes the WSGI worker's connection makes (prefork_lb.worker.connection): the
request line in the entry's text (so the master's abort line names a request whose view blocks
the loop), in-flight, the metrics cells; and the access log line, through the same
prefork_lb.logs.AccessLog, from a WSGI-like view of the scope (:func:`access_environ`).

The connection hooks keep the entry's load counters as the WSGI server does (open
connections, the fresh ones that have not sent a request yet, connections received from a
handoff channel): the server calls ``connection_opened(conn)`` from the protocol's
connection_made, ``connection_closed(conn)`` from its connection_lost, ``received(n)`` per
handoff message. A connection's first request marks it no longer fresh (an attribute set on
the connection object: no per-worker table to keep).

Invariant: nothing here blocks or allocates more than a request line per request; the access
log's environ is built only when there is an access log.
"""

from __future__ import annotations

import time
from typing import Any

from prefork_lb.scoreboard import WorkerEntry

# The scope keys an access log reads, as WSGI environ names.
_PROTOCOLS = {"1.1": "HTTP/1.1", "1.0": "HTTP/1.0", "2": "HTTP/2"}


class Sent:
    """What AccessLog.log reads of a connection: the status line's start, bytes, headers."""

    __slots__ = ("status", "bytes_sent", "out_headers")

    def __init__(self, status: int, sent: int) -> None:
        self.status = str(status) if status else None
        self.bytes_sent = sent
        self.out_headers: list[tuple[str, str]] = []


def request_target(scope: dict[str, Any]) -> bytes:
    """The request target as the client sent it (raw path and query), for the scoreboard."""
    raw: bytes = scope.get("raw_path") or scope.get("path", "").encode("utf-8", "replace")
    qs = scope.get("query_string") or b""
    return raw + b"?" + qs if qs else raw


def access_environ(scope: dict[str, Any]) -> dict[str, Any]:
    """The environ keys prefork_lb.logs.AccessLog reads, from an ASGI scope."""
    qs = (scope.get("query_string") or b"").decode("latin-1")
    env: dict[str, Any] = {
        "REQUEST_METHOD": scope.get("method", "GET"),
        # As WSGI has it (PEP 3333): the decoded path's bytes, read as latin-1.
        "PATH_INFO": scope.get("path", "").encode("utf-8", "surrogateescape").decode("latin-1"),
        "QUERY_STRING": qs,
        "RAW_URI": request_target(scope).decode("latin-1"),
        "SERVER_PROTOCOL": _PROTOCOLS.get(scope.get("http_version", "1.1"), "HTTP/1.1"),
        "wsgi.url_scheme": scope.get("scheme", "http"),
    }
    client = scope.get("client")
    if client:
        env["REMOTE_ADDR"] = client[0]
    for name, value in scope.get("headers", ()):
        key = "HTTP_" + name.decode("latin-1").upper().replace("-", "_")
        text = value.decode("latin-1")
        env[key] = env[key] + "," + text if key in env else text
    return env


class WorkerHooks:
    """The AsgiServer hooks of one worker: its scoreboard entry and its access log (or None).

    ``request_started`` / ``request_finished`` run once per request (the hot path): the entry's
    methods are bound once here, the target is taken from the scope without a copy when it has no
    query, and ``timed`` tells the server that the duration it passes is only read by an access
    log (the scoreboard times the request itself), so without one the server skips the clock.
    """

    def __init__(self, entry: Any, access_log: Any = None) -> None:
        self.entry = entry
        self.access_log = access_log
        self.timed = access_log is not None
        self._started = entry.request_started
        self._finished = entry.request_finished
        # The entry itself when it is a scoreboard entry (compiled: a direct call per request,
        # no arguments parsed); else (a wrapper, as the load tests trace calls) its bound methods.
        self.native: WorkerEntry | None = entry if isinstance(entry, WorkerEntry) else None

    def request_started(self, conn_info: Any, scope: dict[str, Any]) -> None:
        # The queue wait: since the accept for a connection's first request, since the start of
        # its wait for a place for a later one that waited; other requests waited for nothing.
        # It stops counting as fresh or as queued only after it counts as in flight: the load
        # never misses it in between.
        waited = 0.0
        fresh = getattr(conn_info, "lb_fresh", False)
        if fresh:
            arrived = getattr(conn_info, "accepted_at", 0.0)
        else:
            arrived = waited = getattr(conn_info, "lb_waited", 0.0)
        qs = scope.get("query_string")
        raw = scope.get("raw_path")
        if qs or not raw:
            raw = request_target(scope)
        native = self.native
        if native is not None:
            native.request_started(scope.get("method", "GET"), raw, arrived)
        else:
            self._started(scope.get("method", "GET"), raw, arrived)
        if fresh:
            conn_info.lb_fresh = False
            self.entry.first_request()
        elif waited:
            conn_info.lb_waited = 0.0
            self.entry.queued(-1)

    def request_finished(
        self, conn_info: Any, scope: dict[str, Any], status: int, sent_bytes: int, seconds: float
    ) -> None:
        method = scope.get("method", "GET")
        status_class = status // 100 if 100 <= status < 600 else 0
        native = self.native
        if native is not None:
            native.request_finished(method, status_class)
        else:
            self._finished(method, status_class)
        access = self.access_log
        if access is not None:
            access.log(access_environ(scope), Sent(status, sent_bytes), seconds)

    # -- load and overload counters, as the WSGI server keeps them -------------------------------

    def connection_opened(self, conn: Any) -> None:
        conn.lb_fresh = True
        self.entry.connection_opened()

    def connection_closed(self, conn: Any) -> None:
        self.entry.connection_closed(not getattr(conn, "lb_fresh", False))

    def received(self, n: int) -> None:
        self.entry.received(n)

    def request_queued(self, conn_info: Any, n: int) -> None:
        """A request of ``conn_info`` waits for a place (``n`` = 1) or stops waiting without one
        (-1; one that got its place is counted out by request_started). Waiting, it counts as
        queued, no longer as fresh: once, not twice (a fresh connection's request stops counting
        as fresh only after it counts as queued)."""
        entry = self.entry
        entry.queued(n)
        if n < 0:
            conn_info.lb_waited = 0.0
        elif getattr(conn_info, "lb_fresh", False):
            conn_info.lb_fresh = False
            entry.first_request()
            conn_info.lb_waited = getattr(conn_info, "accepted_at", 0.0) or time.monotonic()
        else:
            conn_info.lb_waited = time.monotonic()

    def shed(self, n: int = 1) -> None:
        self.entry.shed(n)

    def deadline_passed(self) -> None:
        self.entry.deadline_passed()
