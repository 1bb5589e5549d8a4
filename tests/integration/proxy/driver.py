"""Drives the proxy in the integration tests: starts it, talks to it, loads it.

* :class:`ProxyProcess` runs ``python -m prefork_lb proxy --backends ...`` (or an app with
  ``--dispatch proxy``) in its own process group and waits until it answers; :meth:`stop`
  always stops the whole group (TERM, then KILL).
* :class:`BackendProcess`: a backend of :mod:`tests.integration.proxy.backends` in its own
  process, for the tests that SIGKILL one.
* :func:`connect`, :func:`http_request`, :class:`Client` (keep-alive) and :class:`Load`
  (clients in threads) talk to it; :func:`backend_requests` and :func:`stats_for` read /lb-stats.
* :func:`proxy_with_backend`: a recording backend and a proxy in front of it, for module-scoped
  fixtures.

Every wait polls with a deadline; everything talks to 127.0.0.1 (or ::1) only.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import psutil

from tests.helpers import (
    HOST,
    free_port,
    kill_group,
    server_env,
    spawn,
    start_on_free_port,
    stop_process,
    wait_for,
)
from tests.integration.proxy.backends import Backend
from tests.server import HTTPStream, Response, build_request

# Quick health checks so that up/down transitions take a fraction of a second.
FAST_HEALTH = (
    "--health-check-interval",
    "0.2",
    "--health-check-timeout",
    "0.5",
    "--health-check-fall",
    "2",
    "--health-check-rise",
    "2",
)


# -- the proxy process -------------------------------------------------------------------------------


class ProxyProcess:
    """``python -m prefork_lb proxy`` (or an app with ``--dispatch proxy``) in its own group."""

    def __init__(
        self, workdir: Path, args: list[str], *, admin: bool = True, env: dict[str, str] | None = None
    ) -> None:
        self.workdir = workdir
        self.env = env or {}
        self.args = args
        self.admin = admin
        self.port = 0
        self.admin_port = 0
        self.log_path = workdir / "proxy.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 15.0) -> ProxyProcess:
        def launch(port: int) -> bool:
            self.port = port
            self.admin_port = free_port() if self.admin else 0
            if "--stats-bind" in self.args:
                stats = []
            else:
                stats = ["--stats-bind", f"{HOST}:{self.admin_port}" if self.admin else "off"]
            cmd = [sys.executable, "-m", "prefork_lb", *self.args, "-b", f"{HOST}:{self.port}", *stats]
            with open(self.log_path, "wb") as log:
                self.proc = spawn(
                    cmd,
                    env=server_env(self.env),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            return self._wait_ready(timeout)

        start_on_free_port(launch, self.text, self.stop, f"proxy {self.args}")
        return self

    def _wait_ready(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        assert self.proc is not None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            if "Ready:" in self.text():
                break
            time.sleep(0.02)
        else:
            return False
        # The master says Ready; the proxy process answers a moment later.
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                if self.admin:
                    http_request(self.admin_port, "GET", "/lb-health", timeout=1.0)
                else:
                    with socket.create_connection((HOST, self.port), timeout=1.0):
                        pass
                return True
            except (OSError, AssertionError):
                time.sleep(0.02)
        return False

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def text(self) -> str:
        try:
            return self.log_path.read_text("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def children(self) -> list[psutil.Process]:
        try:
            return [c for c in psutil.Process(self.pid).children() if c.status() != psutil.STATUS_ZOMBIE]
        except psutil.NoSuchProcess:
            return []

    def proxy_pid(self) -> int | None:
        """The child whose title says it is the proxy process."""
        for c in self.children():
            try:
                if "prefork_lb: proxy" in " ".join(c.cmdline()):
                    return c.pid
            except psutil.NoSuchProcess:
                pass
        return None

    def worker_pids(self) -> list[int]:
        out = []
        for c in self.children():
            try:
                title = " ".join(c.cmdline())
                if "prefork_lb: proxy" not in title and "prefork_lb: admin" not in title:
                    out.append(c.pid)
            except psutil.NoSuchProcess:
                pass
        return sorted(out)

    def health(self) -> tuple[int, dict[str, Any]]:
        r = http_request(self.admin_port, "GET", "/lb-health", timeout=3.0)
        return r.status, r.json()

    def stats(self) -> dict[str, Any]:
        r = http_request(self.admin_port, "GET", "/lb-stats", timeout=3.0)
        assert r.status == 200, r
        return r.json()

    def backend_health(self, name: str) -> bool | None:
        for b in self.health()[1]["backends"]:
            if b["name"] == name:
                return bool(b["healthy"])
        return None

    def wait_healthy(self, n: int, timeout: float = 10.0) -> None:
        wait_for(lambda: self.health()[1]["healthy"] == n, timeout, f"{n} healthy backends")

    def stop(self, timeout: float = 10.0) -> int | None:
        return None if self.proc is None else stop_process(self.proc, timeout)

    def discard(self) -> None:
        """The fixture's stop after a test: QUIT, a fast stop (as tests/server.py's)."""
        if self.proc is not None:
            stop_process(self.proc, 10.0, group=False, sig=signal.SIGQUIT)


class BackendProcess:
    """A backend in its own process (for SIGKILL); see backends.main."""

    def __init__(self, name: str) -> None:
        self.proc = spawn(
            [sys.executable, "-m", "tests.integration.proxy.backends", name],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        assert self.proc.stdout is not None
        self.port = int(self.proc.stdout.readline())
        self.name = name

    @property
    def addr(self) -> str:
        return f"{HOST}:{self.port}"

    def kill(self) -> None:
        kill_group(self.proc)
        self.proc.wait(5)
        for f in (self.proc.stdin, self.proc.stdout):
            if f is not None:
                f.close()


def backend_requests(p: ProxyProcess) -> dict[str, int]:
    """Requests the proxy has sent to each backend, from /lb-stats."""
    return {b["name"]: b["requests"] for b in p.stats()["backends"]}


# -- clients ------------------------------------------------------------------------------------------


def connect(port: int, timeout: float = 5.0, source: str | None = None) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        if source:
            sock.bind((source, 0))
        sock.connect((HOST, port))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError:
        sock.close()
        raise
    return sock


def http_request(
    port: int,
    method: str = "GET",
    target: str = "/",
    headers: Iterable[tuple[str, str]] = (),
    body: bytes = b"",
    timeout: float = 5.0,
    source: str | None = None,
    **kw: Any,
) -> Response:
    """One request on a new connection; the final response."""
    with connect(port, timeout, source) as sock:
        sock.sendall(build_request(method, target, headers, body, **kw))
        return HTTPStream(sock, timeout).read_final(head=method == "HEAD")[1]


class Client:
    """A keep-alive client connection."""

    def __init__(self, port: int, timeout: float = 5.0) -> None:
        self.sock = connect(port, timeout)
        self.stream = HTTPStream(self.sock, timeout)

    def request(
        self,
        method: str = "GET",
        target: str = "/",
        headers: Iterable[tuple[str, str]] = (),
        body: bytes = b"",
    ) -> Response:
        self.sock.sendall(build_request(method, target, headers, body))
        return self.stream.read_final(head=method == "HEAD")[1]

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def names(responses: Iterable[Response]) -> list[str]:
    return [r.body.decode() for r in responses]


def by_name(bs: list[Backend]) -> dict[str, Backend]:
    return {b.name: b for b in bs}


def stats_for(stats: dict[str, Any], addr: str) -> dict[str, Any]:
    for b in stats["backends"]:
        if b["name"] == addr:
            return b
    raise AssertionError(f"{addr} not in /lb-stats: {stats}")


class Load:
    """``threads`` keep-alive clients sending GETs until stopped, at most ``limit`` requests each
    and ``seconds`` in all; every non-200 and every error is a failure."""

    def __init__(
        self, port: int, threads: int = 3, limit: int = 400, seconds: float = 4.0, target: str = "/"
    ) -> None:
        self.port, self.limit, self.seconds, self.target = port, limit, seconds, target
        self.ok = 0
        self.failures: list[str] = []
        self.lock = threading.Lock()
        self.done = threading.Event()
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def _run(self) -> None:
        deadline = time.monotonic() + self.seconds
        client: Client | None = None
        try:
            for _ in range(self.limit):
                if self.done.is_set() or time.monotonic() > deadline:
                    return
                try:
                    if client is None:
                        client = Client(self.port)
                    r = client.request("GET", self.target)
                    with self.lock:
                        if r.status == 200:
                            self.ok += 1
                        else:
                            self.failures.append(f"{r.status} {r.body[:100]!r}")
                    if (r.header("connection") or "").lower() == "close":
                        client.close()
                        client = None
                except (OSError, AssertionError) as exc:
                    with self.lock:
                        self.failures.append(repr(exc))
                    if client is not None:
                        client.close()
                    client = None
        finally:
            if client is not None:
                client.close()

    def wait_more(self, n: int, timeout: float = 5.0) -> None:
        seen = self.ok
        wait_for(
            lambda: self.ok >= seen + n or not any(t.is_alive() for t in self.threads),
            timeout,
            f"{n} more requests served",
        )

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        for t in self.threads:
            t.join(timeout=15)


def sticky_cookie(r: Response, name: str = "lb") -> str | None:
    for v in r.header_list("set-cookie"):
        first = v.split(";")[0]
        k, _, val = first.partition("=")
        if k.strip() == name:
            return val.strip()
    return None


@contextlib.contextmanager
def proxy_with_backend(workdir: Path, name: str, *flags: str) -> Iterator[tuple[ProxyProcess, Backend]]:
    """A recording backend and a standalone proxy in front of it, both stopped at the end."""
    b = Backend(name=name).start()
    p = ProxyProcess(
        workdir, ["proxy", "--backends", b.addr, "--health-check-interval", "0", *flags], admin=False
    )
    try:
        p.start()
        yield p, b
    finally:
        p.stop()
        b.stop()


def forwarded_elements(value: str) -> list[dict[str, str]]:
    """RFC 7239 Forwarded: a list of elements, each pairs of name=token|quoted-string."""
    out = []
    for element in value.split(","):
        pairs = {}
        for pair in element.split(";"):
            k, sep, v = pair.strip().partition("=")
            assert sep, f"bad forwarded-pair {pair!r} in {value!r}"
            if v.startswith('"'):
                assert v.endswith('"') and len(v) >= 2, value
                v = v[1:-1]
            else:
                assert v and all(ch.isalnum() or ch in "!#$%&'*+-.^_`|~" for ch in v), (
                    f"{v!r} must be a quoted-string in {value!r}"
                )
            pairs[k.lower()] = v
        out.append(pairs)
    return out
