"""The chaos suite's load client, slowloris client and victim snapshots.

* :func:`one_request` sends one request on a new connection and returns a :class:`Result`
  (start, end, outcome kind, status, the client's local port, Retry-After). It never raises and
  never waits past its timeout.
* :class:`Load` runs paced client threads (a target rate, not a closed loop, so the load stays
  modest on a small shared machine) until stopped or a hard deadline; each request is either a
  new connection (failures can then be attributed to a worker by the client port) or a request
  on the thread's keep-alive connection. POSTs carry a unique ``X-Request-Id``.
* :class:`Slowloris` holds N connections that send one more header byte every second.
* :func:`snapshot_connections` lists the peer ports of a (stopped or blocked) process's TCP
  connections: the requests it holds.

Invariants: traffic goes to 127.0.0.1 only; every loop is bounded in time.
"""

from __future__ import annotations

import itertools
import math
import selectors
import socket
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass

import psutil

HOST = "127.0.0.1"


@dataclass
class Result:
    rid: str
    method: str
    path: str
    start: float
    end: float
    kind: str  # "ok" (any complete response), else the failure kind
    status: int = 0
    lport: int = 0
    retry_after: str | None = None

    @property
    def ms(self) -> float:
        return (self.end - self.start) * 1000.0


def _request_bytes(method: str, path: str, rid: str, close: bool) -> bytes:
    head = [f"{method} {path} HTTP/1.1", "Host: chaos"]
    if rid:
        head.append(f"X-Request-Id: {rid}")
    if method == "POST":
        head.append("Content-Length: 2")
    if close:
        head.append("Connection: close")
    return ("\r\n".join(head) + "\r\n\r\n" + ("{}" if method == "POST" else "")).encode()


class _Reader:
    """Reads one response (Content-Length framed) off a socket; raises on EOF/reset/timeout."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""

    def response(self) -> tuple[int, dict[str, str], bool]:
        """(status, headers, got_any_byte)."""
        while b"\r\n\r\n" not in self.buf:
            self._more()
        head, _, rest = self.buf.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0"))
        self.buf = rest
        while len(self.buf) < length:
            self._more()
        self.buf = self.buf[length:]
        return status, headers, True

    def _more(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise EOFError("mid_response" if self.buf else "before_response")
        self.buf += chunk


def _failure_kind(exc: BaseException, phase: str, got_bytes: bool) -> str:
    where = "mid_response" if got_bytes else "before_response"
    if isinstance(exc, EOFError):
        return f"eof_{exc.args[0] if exc.args else where}"
    if isinstance(exc, socket.timeout | TimeoutError):
        return f"{phase}_timeout" if phase == "connect" else f"timeout_{where}"
    if isinstance(exc, ConnectionRefusedError):
        return "connect_refused"
    if isinstance(exc, ConnectionResetError | BrokenPipeError):
        return f"{phase}_reset" if phase != "recv" else f"reset_{where}"
    return f"{phase}_{type(exc).__name__}"


def one_request(
    port: int, method: str = "GET", path: str = "/work?ms=2", rid: str = "", timeout: float = 30.0
) -> Result:
    """One request on a new connection (``Connection: close``); never raises."""
    res = Result(rid, method, path, time.monotonic(), 0.0, "ok")
    phase = "connect"
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    reader = _Reader(sock)
    try:
        sock.connect((HOST, port))
        res.lport = sock.getsockname()[1]
        phase = "send"
        sock.sendall(_request_bytes(method, path, rid, close=True))
        phase = "recv"
        res.status, headers, _ = reader.response()
        res.retry_after = headers.get("retry-after")
    except (OSError, EOFError, ValueError, IndexError) as exc:
        res.kind = _failure_kind(exc, phase, bool(reader.buf))
    finally:
        sock.close()
        res.end = time.monotonic()
    return res


class KeepAlive:
    """One keep-alive connection, reopened after a failure (the failure is still recorded)."""

    def __init__(self, port: int, timeout: float = 30.0) -> None:
        self.port = port
        self.timeout = timeout
        self.sock: socket.socket | None = None
        self.reader: _Reader | None = None

    def request(self, method: str, path: str, rid: str = "") -> Result:
        res = Result(rid, method, path, time.monotonic(), 0.0, "ok")
        phase = "connect"
        try:
            if self.sock is None:
                self.sock = socket.create_connection((HOST, self.port), timeout=self.timeout)
                self.reader = _Reader(self.sock)
            assert self.reader is not None
            res.lport = self.sock.getsockname()[1]
            phase = "send"
            self.sock.sendall(_request_bytes(method, path, rid, close=False))
            phase = "recv"
            res.status, headers, _ = self.reader.response()
            res.retry_after = headers.get("retry-after")
            if headers.get("connection", "").lower() == "close":
                self.close()
        except (OSError, EOFError, ValueError, IndexError) as exc:
            res.kind = _failure_kind(exc, phase, bool(self.reader and self.reader.buf))
            self.close()
        res.end = time.monotonic()
        return res

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
        self.sock = None
        self.reader = None


_ids = itertools.count()


class Load:
    """``threads`` client threads sending ``rate`` requests/s in all, paced (a late request is
    sent at once, missed ones are not made up), until :meth:`stop` or ``max_seconds``."""

    def __init__(
        self,
        port: int,
        *,
        tag: str,
        rate: float = 100.0,
        threads: int = 8,
        method: str = "POST",
        path: str = "/work?ms=3",
        keepalive: bool = False,
        timeout: float = 30.0,
        max_seconds: float = 110.0,
    ) -> None:
        self.port = port
        self.tag = tag
        self.interval = threads / rate
        self.method = method
        self.path = path
        self.keepalive = keepalive
        self.timeout = timeout
        self.max_seconds = max_seconds
        self.results: list[Result] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(threads)]

    def _run(self, index: int) -> None:
        conn = KeepAlive(self.port, self.timeout) if self.keepalive else None
        deadline = time.monotonic() + self.max_seconds
        # Spread the threads' phases over one interval so requests do not come in lockstep.
        next_at = time.monotonic() + self.interval * index / len(self._threads)
        try:
            while not self._stop.is_set():
                now = time.monotonic()
                if now >= deadline:
                    break
                if next_at > now and self._stop.wait(next_at - now):
                    break
                next_at = max(next_at + self.interval, time.monotonic())
                rid = f"{self.tag}-{next(_ids)}" if self.method == "POST" else ""
                if conn is not None:
                    res = conn.request(self.method, self.path, rid)
                else:
                    res = one_request(self.port, self.method, self.path, rid, self.timeout)
                with self._lock:
                    self.results.append(res)
        finally:
            if conn is not None:
                conn.close()

    def served(self) -> int:
        with self._lock:
            return sum(1 for r in self.results if r.kind == "ok" and r.status == 200)

    def start(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=self.timeout + 5)

    def __enter__(self) -> Load:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def p99_ms(results: Iterable[Result]) -> float | None:
    """p99 latency (nearest rank) of the completed requests, in ms."""
    ms = sorted(r.ms for r in results if r.kind == "ok")
    if not ms:
        return None
    return round(ms[max(0, math.ceil(0.99 * len(ms)) - 1)], 1)


class Slowloris:
    """``n`` connections that send a request head one byte per ``interval`` seconds, never
    finishing it, for at most ``max_seconds``; one thread drives them all."""

    HEAD = b"GET /work?ms=1 HTTP/1.1\r\nHost: chaos\r\nX-Slow: "

    def __init__(self, port: int, n: int = 500, interval: float = 1.0, max_seconds: float = 60.0) -> None:
        self.port = port
        self.n = n
        self.interval = interval
        self.max_seconds = max_seconds
        self.opened = 0
        self.open_failures = 0
        self.closed_by_server = 0
        self.bytes_sent = 0
        self._socks: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def open(self, deadline: float = 20.0) -> None:
        """Open the connections (in this thread; bounded by ``deadline`` seconds)."""
        end = time.monotonic() + deadline
        for _ in range(self.n):
            if time.monotonic() > end:
                break
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.settimeout(5)
            try:
                s.connect((HOST, self.port))
                s.sendall(self.HEAD)
            except OSError:
                self.open_failures += 1
                s.close()
                continue
            s.setblocking(False)
            self._socks.append(s)
            self.opened += 1

    def _run(self) -> None:
        sel = selectors.DefaultSelector()
        alive = set(self._socks)
        for s in alive:
            sel.register(s, selectors.EVENT_READ)
        deadline = time.monotonic() + self.max_seconds
        next_tick = time.monotonic()
        while not self._stop.is_set() and time.monotonic() < deadline and alive:
            if time.monotonic() >= next_tick:
                next_tick += self.interval
                for s in list(alive):
                    try:
                        s.send(b"x")
                        self.bytes_sent += 1
                    except OSError:
                        self._drop(sel, alive, s)
            # Anything readable is the server answering (408) or closing: the connection is done.
            for key, _ in sel.select(timeout=max(0.0, min(0.2, next_tick - time.monotonic()))):
                self._drop(sel, alive, key.fileobj)  # type: ignore[arg-type]
        sel.close()

    def _drop(self, sel: selectors.BaseSelector, alive: set[socket.socket], s: socket.socket) -> None:
        if s in alive:
            alive.discard(s)
            sel.unregister(s)
            self.closed_by_server += 1

    def still_open(self) -> int:
        return self.opened - self.closed_by_server

    def __enter__(self) -> Slowloris:
        self.open()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        for s in self._socks:
            s.close()


def snapshot_connections(pid: int, server_port: int | None) -> set[int]:
    """Peer ports of ``pid``'s TCP connections (TIME_WAIT and listeners left out). With
    ``server_port``, only connections whose local port is it: the clients the process serves.
    Meant for a process that accepts nothing meanwhile (stopped, or its event loop blocked)."""
    try:
        conns = psutil.Process(pid).net_connections(kind="tcp")
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return set()
    ports = set()
    for c in conns:
        if not c.raddr or c.status in (psutil.CONN_LISTEN, psutil.CONN_TIME_WAIT):
            continue
        if server_port is None or c.laddr.port == server_port:
            ports.add(c.raddr.port)
    return ports
