"""StatsD push: what changed since the last push, as StatsD lines in UDP datagrams.

The admin process pushes once per ``--statsd-interval`` from the same numbers ``/metrics`` reads
(the scoreboard and the master's totals); nothing in a worker sends anything, so the request path
gains no system call. gunicorn sends one datagram per request from the worker; the names are
gunicorn's where gunicorn has one, so dashboards built on them keep working:

=================================  =====  =============================================
``gunicorn.requests``              ``c``  requests answered since the last push
``gunicorn.request.status.2xx``    ``c``  by status class (gunicorn: one per code; the
                                          workers count classes)
``gunicorn.request.duration``      ``ms`` request durations, as histogram samples
``gunicorn.workers``               ``g``  worker processes running
=================================  =====  =============================================

plus prefork_lb's own under ``prefork_lb.`` (spawns by reason, 503s shed, timeouts...). Every
name gets ``--statsd-prefix`` in front (a dot is added when the prefix has none), as gunicorn does.

Durations: the workers keep a histogram, not each sample. A bucket that gained ``n`` samples is
sent as one timing of the bucket's upper bound with sample rate ``1/n`` (``...|ms|@0.01`` for
100 samples), which StatsD servers count as ``n`` samples of that value; percentiles are then as
exact as the buckets.

Pure functions build the lines and pack them; :class:`Pusher` owns the socket and never raises
(a StatsD server that is down must not disturb the admin process: UDP drops, errors are counted).
"""

from __future__ import annotations

import re
import socket
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

__all__ = [
    "Sample",
    "Target",
    "parse_target",
    "parse_tags",
    "normalise_prefix",
    "lines",
    "packets",
    "Pusher",
]

MAX_DATAGRAM = 1432  # a safe payload on a 1500-byte MTU path (what the StatsD docs advise)
_TAG = re.compile(r"^[A-Za-z][A-Za-z0-9_.\-/]*(:[A-Za-z0-9_.\-/:]*)?$")
_NAME = re.compile(r"[^A-Za-z0-9_.\-]")


@dataclass(frozen=True)
class Target:
    """Where datagrams go: ``(host, port)`` over UDP, or a Unix datagram socket path."""

    family: int
    address: str | tuple[str, int]

    def __str__(self) -> str:
        if isinstance(self.address, str):
            return f"unix:{self.address}"
        host, port = self.address
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_target(value: str) -> Target:
    """``HOST:PORT``, ``[IPv6]:PORT`` or ``unix:PATH`` (gunicorn's --statsd-host forms). Raises
    ValueError with a message that says what is expected."""
    value = value.strip()
    if value.startswith("unix:"):
        path = value[5:]
        if not path:
            raise ValueError(f"{value!r}: expected unix:PATH")
        return Target(socket.AF_UNIX, path)
    host, sep, port_s = value.rpartition(":")
    if not sep or not host or not port_s.isdigit() or not 0 < int(port_s) < 65536:
        raise ValueError(f"{value!r}: expected HOST:PORT (for example localhost:8125) or unix:PATH")
    if host.startswith("[") and host.endswith("]"):
        return Target(socket.AF_INET6, (host[1:-1], int(port_s)))
    if ":" in host:
        raise ValueError(f"{value!r}: an IPv6 address goes in brackets, as [::1]:8125")
    return Target(socket.AF_INET, (host, int(port_s)))


def parse_tags(value: str) -> str:
    """``--dogstatsd-tags``: ``key:value,key2:value2`` (or bare tags), checked, joined again
    without spaces; empty when none. Raises ValueError naming the bad tag."""
    tags = [t.strip() for t in value.split(",") if t.strip()]
    for t in tags:
        if not _TAG.match(t):
            raise ValueError(
                f"{t!r}: a DogStatsD tag is a letter, then letters, digits, _ . - / (and :value)"
            )
    return ",".join(tags)


def normalise_prefix(prefix: str) -> str:
    """``service.app`` → ``service.app.``: what goes in front of every name."""
    prefix = _NAME.sub("_", prefix.strip())
    return prefix + "." if prefix and not prefix.endswith(".") else prefix


@dataclass
class Sample:
    """The totals at one moment. Counters only grow (a process's counts are kept after it exits);
    ``histogram`` holds counts per bucket (not cumulative), ``bounds[i]`` the upper bound in
    seconds of bucket ``i`` (the last bucket, past the last bound, is sent at ``overflow_ms``)."""

    requests: int = 0
    by_status: Mapping[str, int] = field(default_factory=dict)
    histogram: Sequence[int] = ()
    bounds: Sequence[float] = ()
    workers: int = 0
    counters: Mapping[str, int] = field(default_factory=dict)  # prefork_lb.<name>
    gauges: Mapping[str, float] = field(default_factory=dict)  # prefork_lb.<name>
    overflow_ms: float = 0.0


def _suffix(tags: str) -> str:
    return f"|#{tags}" if tags else ""


def _number(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else f"{v:.6g}"


def _timing_value(bounds: Sequence[float], i: int, overflow_ms: float) -> float:
    if i < len(bounds):
        return bounds[i] * 1000.0
    return overflow_ms or (bounds[-1] * 1000.0 * 2 if bounds else 0.0)


def lines(prev: Sample | None, cur: Sample, prefix: str = "", tags: str = "") -> list[str]:
    """The StatsD lines for what changed from ``prev`` to ``cur`` (everything, from zero, when
    ``prev`` is None). A counter that went backwards (a restarted master) sends its new value."""
    p = prefix
    t = _suffix(tags)
    out: list[str] = []

    def delta(now: int, before: int) -> int:
        return now - before if now >= before else now

    before = prev or Sample()
    n = delta(cur.requests, before.requests)
    if n:
        out.append(f"{p}gunicorn.requests:{n}|c{t}")
    for status, count in sorted(cur.by_status.items()):
        n = delta(count, before.by_status.get(status, 0))
        if n:
            out.append(f"{p}gunicorn.request.status.{status}:{n}|c{t}")
    old_hist = (
        list(before.histogram) if len(before.histogram) == len(cur.histogram) else [0] * len(cur.histogram)
    )
    for i, count in enumerate(cur.histogram):
        n = delta(count, old_hist[i])
        if n:
            ms = _number(_timing_value(cur.bounds, i, cur.overflow_ms))
            rate = "" if n == 1 else f"|@{1 / n:.6g}"
            out.append(f"{p}gunicorn.request.duration:{ms}|ms{rate}{t}")
    out.append(f"{p}gunicorn.workers:{cur.workers}|g{t}")
    for name, count in sorted(cur.counters.items()):
        n = delta(count, before.counters.get(name, 0))
        if n:
            out.append(f"{p}prefork_lb.{name}:{n}|c{t}")
    for name, value in sorted(cur.gauges.items()):
        out.append(f"{p}prefork_lb.{name}:{_number(value)}|g{t}")
    return out


def packets(items: Iterable[str], limit: int = MAX_DATAGRAM) -> list[bytes]:
    """Lines joined by newlines into datagrams of at most ``limit`` bytes (a longer line goes
    alone: StatsD servers take one line per datagram too)."""
    out: list[bytes] = []
    cur = b""
    for line in items:
        b = line.encode("ascii", "replace")
        if cur and len(cur) + 1 + len(b) > limit:
            out.append(cur)
            cur = b""
        cur = cur + b"\n" + b if cur else b
    if cur:
        out.append(cur)
    return out


class Pusher:
    """Sends each push's lines to the target; never raises. ``errors`` counts datagrams the
    kernel refused (no route, a Unix socket with no reader, a full buffer)."""

    def __init__(self, target: Target, prefix: str = "", tags: str = "") -> None:
        self.target = target
        self.prefix = normalise_prefix(prefix)
        self.tags = tags
        self.last: Sample | None = None
        self.errors = 0
        self.sent = 0
        self.sock = socket.socket(target.family, socket.SOCK_DGRAM)
        self.sock.setblocking(False)
        self.address: str | tuple[str, int] | None = (
            target.address if target.family == socket.AF_UNIX else None
        )

    def resolve(self) -> str | tuple[str, int] | None:
        """The target's address, its host name looked up once (again after a failed send)."""
        target = self.target.address
        if self.address is None and not isinstance(target, str):
            host, port = target
            try:
                infos = socket.getaddrinfo(host, port, self.target.family, socket.SOCK_DGRAM)
            except OSError:
                self.errors += 1
                return None
            sockaddr = infos[0][4]
            self.address = (str(sockaddr[0]), int(sockaddr[1]))
        return self.address

    def push(self, cur: Sample) -> int:
        """Send what changed since the last push; the number of datagrams sent."""
        sent = 0
        address = self.resolve()
        datagrams = packets(lines(self.last, cur, self.prefix, self.tags)) if address is not None else []
        for datagram in datagrams:
            assert address is not None
            try:
                self.sock.sendto(datagram, address)
                sent += 1
            except OSError:
                self.errors += 1
                if self.target.family != socket.AF_UNIX:
                    self.address = None  # looked up again at the next push
        self.last = cur
        self.sent += sent
        return sent

    def close(self) -> None:
        self.sock.close()
