"""The L7 proxy over real sockets and real processes, against the contract in docs.

Standalone: ``python -m prefork_lb proxy --backends ...`` in its own process group, in front of
the backends of tests/integration/proxy_backends.py (in-process threads that record what reached
them, or subprocesses where a test kills one with SIGKILL). Integrated: ``python -m prefork_lb
APP --dispatch proxy`` with real workers.

What is checked is what a user sees: status codes, bodies, headers at the client and at the
backend, /lb-health and /lb-stats, and the process list. Every wait polls with a deadline;
every process is stopped (TERM, then KILL of its group) whatever happens. Health checks run
every 0.2 s where a test watches them (FAST_HEALTH) and are off (interval 0) elsewhere, so
that only the test's own requests reach the recording backends.

Sections: balancing strategies; forwarding and hop-by-hop headers; failing backends and
retries; health checks; websockets; TLS (trustme); strict parsing (the shared corpus and
smuggling attempts never reach a backend); bodies and framing; client and upstream
connections (pipelining, --max-connections queue, pools, graceful stop); admin endpoints and
settings; integrated mode. About 80 s on 2 cores:
``python -m pytest tests/integration/test_proxy.py -q``.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.corpus import DEVIATIONS, load
from tests.helpers import (
    HOST,
    ROOT,
    free_port,
    free_port_v6,
    kill_group,
    server_env,
    spawn,
    start_on_free_port,
    stop_process,
    wait_for,
)
from tests.integration.proxy_backends import Backend, refused_port, ws_accept, ws_frame, ws_read_frame
from tests.server import HTTPStream, Response, build_request, exchange, parse_responses

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
                if "prefork_lb: proxy" not in " ".join(c.cmdline()):
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


@pytest.fixture
def start_proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., ProxyProcess]]:
    started: list[ProxyProcess] = []

    def start(
        backends: Iterable[Backend | str] | None,
        *flags: str,
        admin: bool = True,
        app: str | None = None,
        env: dict[str, str] | None = None,
    ) -> ProxyProcess:
        args = [app] if app else ["proxy"]
        if backends is not None:
            args += ["--backends", ",".join(b if isinstance(b, str) else b.addr for b in backends)]
        p = ProxyProcess(tmp_path_factory.mktemp("proxy"), [*args, *flags], admin=admin, env=env)
        started.append(p)
        return p.start()

    try:
        yield start
    finally:
        for p in started:
            p.stop()


@pytest.fixture
def backends() -> Iterator[Callable[..., list[Backend]]]:
    made: list[Backend] = []

    def make(n: int = 3, **kw: Any) -> list[Backend]:
        out = [Backend(name=f"b{len(made) + i}", **kw).start() for i in range(n)]
        made.extend(out)
        return out

    try:
        yield make
    finally:
        for b in made:
            b.stop()


class BackendProcess:
    """A backend in its own process (for SIGKILL); see proxy_backends.main."""

    def __init__(self, name: str) -> None:
        self.proc = spawn(
            [sys.executable, "-m", "tests.integration.proxy_backends", name],
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


# -- balancing strategies ------------------------------------------------------------------------------------


def test_round_robin_rotates_exactly(start_proxy, backends) -> None:
    bs = backends(3)
    p = start_proxy(bs, "--strategy", "round_robin", "--health-check-interval", "0")
    seq = names(http_request(p.port) for _ in range(12))
    assert sorted(seq[:3]) == ["b0", "b1", "b2"], seq
    assert seq == seq[:3] * 4, seq


def test_round_robin_over_one_keepalive_connection(start_proxy, backends) -> None:
    """Balancing is per request, not per client connection."""
    bs = backends(3)
    p = start_proxy(bs, "--strategy", "round_robin", "--health-check-interval", "0")
    with Client(p.port) as c:
        seq = names(c.request() for _ in range(9))
    assert sorted(seq[:3]) == ["b0", "b1", "b2"] and seq == seq[:3] * 3, seq


def test_weighted_round_robin_follows_the_weights(start_proxy, backends) -> None:
    bs = backends(3)
    spec = [f"{bs[0].addr}=3", bs[1].addr, bs[2].addr]
    p = start_proxy(spec, "--strategy", "weighted_round_robin", "--health-check-interval", "0")
    with Client(p.port) as c:
        counts = Counter(names(c.request() for _ in range(100)))
    # weights 3:1:1 -> 60:20:20 over 100 requests (a smooth rotation gives exactly that)
    assert 55 <= counts["b0"] <= 65 and 15 <= counts["b1"] <= 25 and 15 <= counts["b2"] <= 25, counts


def test_least_connections_prefers_the_backends_that_finish(start_proxy, backends) -> None:
    slow = backends(1, delay=0.2)[0]
    fast = backends(2)
    p = start_proxy([slow, *fast], "--strategy", "least_connections", "--health-check-interval", "0")
    with Load(p.port, threads=4, limit=20, seconds=4.0) as load:
        for t in load.threads:
            t.join(timeout=10)
    assert load.failures == []
    n_slow, n_fast = len(slow.seen()), [len(b.seen()) for b in fast]
    assert n_slow >= 1, "the slow backend got nothing at all (is it considered?)"
    assert all(n > 2 * n_slow for n in n_fast), (n_slow, n_fast)


@pytest.mark.parametrize("strategy", ["random", "p2c"])
def test_random_strategies_use_every_backend_evenly(start_proxy, backends, strategy: str) -> None:
    bs = backends(3)
    p = start_proxy(bs, "--strategy", strategy, "--health-check-interval", "0")
    with Client(p.port) as c:
        counts = Counter(names(c.request() for _ in range(300)))
    # 100 expected each; the standard deviation of a uniform pick is ~8
    assert set(counts) == {"b0", "b1", "b2"}, counts
    assert all(60 <= n <= 140 for n in counts.values()), counts


def test_least_latency_avoids_the_slow_backend(start_proxy, backends) -> None:
    slow = backends(1, delay=0.05)[0]
    fast = backends(2)
    p = start_proxy([slow, *fast], "--strategy", "least_latency", "--health-check-interval", "0")
    with Client(p.port) as c:
        for _ in range(80):
            assert c.request().status == 200
    n_slow, n_fast = len(slow.seen()), [len(b.seen()) for b in fast]
    assert 4 * n_slow < sum(n_fast), (n_slow, n_fast)


def test_least_latency_tries_every_backend(start_proxy, backends) -> None:
    """A backend with no latency sample yet must get some traffic (balance/latency.py: a new
    member starts at the median, "neither flooded nor starved"), or it is never measured."""
    slow = backends(1, delay=0.05)[0]
    fast = backends(2)
    p = start_proxy([slow, *fast], "--strategy", "least_latency", "--health-check-interval", "0")
    with Client(p.port) as c:
        for _ in range(60):
            assert c.request().status == 200
    assert all(b.seen() for b in fast), [len(b.seen()) for b in (slow, *fast)]


def test_hash_pins_each_client_address(start_proxy, backends) -> None:
    bs = backends(3)
    p = start_proxy(bs, "--strategy", "hash", "--health-check-interval", "0")
    chosen: dict[str, set[str]] = {}
    for i in range(2, 10):
        src = f"127.0.0.{i}"
        chosen[src] = {http_request(p.port, source=src).body.decode() for _ in range(5)}
    assert all(len(v) == 1 for v in chosen.values()), chosen
    # 8 addresses all on one of 3 backends would not be a hash (p ~ 0.0005 for a fair one)
    assert len(set().union(*chosen.values())) >= 2, chosen


def sticky_cookie(r: Response, name: str = "lb") -> str | None:
    for v in r.header_list("set-cookie"):
        first = v.split(";")[0]
        k, _, val = first.partition("=")
        if k.strip() == name:
            return val.strip()
    return None


def test_sticky_cookie_pins_and_fails_over(start_proxy, backends) -> None:
    bs = backends(3)
    p = start_proxy(bs, "--strategy", "sticky", *FAST_HEALTH)
    first = http_request(p.port)
    assert first.status == 200
    cookie = sticky_cookie(first)
    assert cookie, first
    set_cookie = first.header("set-cookie") or ""
    attrs = {a.strip().lower() for a in set_cookie.split(";")[1:]}
    assert "path=/" in attrs and "httponly" in attrs, set_cookie
    owner = by_name(bs)[first.body.decode()]
    leaks = {owner.addr, str(owner.port), HOST}
    try:
        decoded = base64.urlsafe_b64decode(cookie + "=" * (-len(cookie) % 4)).decode("latin-1")
    except ValueError:
        decoded = ""
    assert not any(x in cookie or x in decoded for x in leaks), (cookie, decoded)

    with Client(p.port) as c:
        got = {c.request(headers=[("Cookie", f"other=1; lb={cookie}")]).body.decode() for _ in range(20)}
    assert got == {owner.name}

    owner.stop()
    r = http_request(p.port, headers=[("Cookie", f"lb={cookie}")])
    assert r.status == 200 and r.body.decode() != owner.name, r
    new_cookie = sticky_cookie(r)
    assert new_cookie and new_cookie != cookie, r
    again = {http_request(p.port, headers=[("Cookie", f"lb={new_cookie}")]).body.decode() for _ in range(10)}
    assert again == {r.body.decode()}


def test_sticky_cookie_name_is_configurable(start_proxy, backends) -> None:
    bs = backends(2)
    p = start_proxy(bs, "--strategy", "sticky", "--sticky-cookie", "route", "--health-check-interval", "0")
    r = http_request(p.port)
    cookie = sticky_cookie(r, "route")
    assert cookie and sticky_cookie(r, "lb") is None, r
    got = {http_request(p.port, headers=[("Cookie", f"route={cookie}")]).body.decode() for _ in range(8)}
    assert got == {r.body.decode()}


def test_slow_start_ramps_a_recovered_backend(start_proxy, backends) -> None:
    bs = backends(3)
    p = start_proxy(bs, "--strategy", "weighted_round_robin", "--slow-start", "5", *FAST_HEALTH)
    p.wait_healthy(3)
    bs[0].health_status = 500
    wait_for(lambda: p.backend_health(bs[0].addr) is False, 5, "b0 down")
    bs[0].health_status = 200
    wait_for(lambda: p.backend_health(bs[0].addr) is True, 5, "b0 back up")
    with Client(p.port) as c:
        counts = Counter(names(c.request() for _ in range(60)))
    # equal weights would give 20 each; b0 is at a fraction of its weight for 5 s
    assert counts["b0"] < 14 and counts["b1"] > 20 and counts["b2"] > 20, counts


# -- forwarding and hop-by-hop headers -----------------------------------------------------------------------


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


def test_forwarding_headers_reach_the_backend(start_proxy, backends) -> None:
    b = backends(1)[0]
    p = start_proxy([b], "--health-check-interval", "0")
    r = http_request(p.port, "GET", "/x?y=1", host="example.test:8080")
    assert r.status == 200
    seen = b.seen()[-1]
    assert seen.target == "/x?y=1" and seen.version == "HTTP/1.1"
    assert seen.header("host") == "example.test:8080"
    assert seen.header_list("x-forwarded-for") == ["127.0.0.1"]
    assert seen.header("x-forwarded-proto") == "http"
    assert seen.header("x-forwarded-host") == "example.test:8080"
    assert forwarded_elements(seen.header("forwarded") or "") == [
        {"for": "127.0.0.1", "proto": "http", "host": "example.test:8080"}
    ]
    assert "1.1 prefork_lb" in (seen.header("via") or "")
    assert seen.header("x-forwarded-by") == "prefork_lb"
    assert r.header("x-backend-server") == b.addr
    assert "1.1 prefork_lb" in (r.header("via") or "")


SPOOFED = [
    ("X-Forwarded-For", "1.2.3.4"),
    ("X-Forwarded-Proto", "https"),
    ("X-Forwarded-Host", "evil.test"),
    ("Forwarded", "for=1.2.3.4;proto=https"),
]


@pytest.mark.parametrize("allow", ["", "10.0.0.1"])
def test_untrusted_peer_forwarding_headers_are_replaced(start_proxy, backends, allow: str) -> None:
    b = backends(1)[0]
    p = start_proxy([b], "--health-check-interval", "0", "--forwarded-allow-ips", allow)
    assert http_request(p.port, headers=SPOOFED).status == 200
    seen = b.seen()[-1]
    assert seen.header_list("x-forwarded-for") == ["127.0.0.1"]
    assert seen.header("x-forwarded-proto") == "http"
    assert seen.header("x-forwarded-host") == "127.0.0.1"
    fwd = forwarded_elements(seen.header("forwarded") or "")
    assert fwd == [{"for": "127.0.0.1", "proto": "http", "host": "127.0.0.1"}], fwd


def test_trusted_peer_forwarding_headers_are_appended_to(start_proxy, backends) -> None:
    b = backends(1)[0]
    p = start_proxy([b], "--health-check-interval", "0")  # default: 127.0.0.1,::1 trusted
    r = http_request(p.port, headers=[*SPOOFED, ("Via", "1.0 fred")])
    assert r.status == 200
    seen = b.seen()[-1]
    assert seen.header("x-forwarded-for") == "1.2.3.4, 127.0.0.1"
    fwd = forwarded_elements(seen.header("forwarded") or "")
    assert [e.get("for") for e in fwd] == ["1.2.3.4", "127.0.0.1"], fwd
    assert fwd[-1].get("proto") == "http"
    assert (seen.header("via") or "").replace(" ", "") == "1.0fred,1.1prefork_lb"


@pytest.mark.parametrize("allow", ["", "127.0.0.1"])
def test_connection_header_cannot_strip_forwarding_headers(start_proxy, backends, allow: str) -> None:
    b = backends(1)[0]
    p = start_proxy([b], "--health-check-interval", "0", "--forwarded-allow-ips", allow)
    names_ = ("x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "forwarded")

    def forwarding(headers: list[tuple[str, str]]) -> dict[str, str | None]:
        assert http_request(p.port, headers=headers).status == 200
        seen = b.seen()[-1]
        return {n: seen.header(n) for n in names_}

    plain = forwarding(SPOOFED)
    named = forwarding(
        [("Connection", "X-Forwarded-For, Forwarded, X-Forwarded-Proto, X-Forwarded-Host"), *SPOOFED]
    )
    assert named == plain, (named, plain)
    assert (plain["x-forwarded-for"] or "").split(",")[-1].strip() == "127.0.0.1", plain
    if allow:  # trusted: the client's chain is kept, ours appended
        assert plain["x-forwarded-for"] == "1.2.3.4, 127.0.0.1", plain


def test_hop_by_hop_headers_do_not_reach_the_backend(start_proxy, backends) -> None:
    b = backends(1)[0]
    p = start_proxy([b], "--health-check-interval", "0")
    hdrs = [
        ("Connection", "keep-alive, X-Private, x-other"),
        ("Keep-Alive", "timeout=5"),
        ("TE", "trailers"),
        ("X-Private", "secret"),
        ("X-Other", "1"),
        ("Proxy-Connection", "keep-alive"),
        ("Trailer", "X-T"),
        ("X-End-To-End", "kept"),
    ]
    assert http_request(p.port, headers=hdrs).status == 200
    seen = b.seen()[-1]
    for name in (
        "keep-alive",
        "te",
        "x-private",
        "x-other",
        "proxy-connection",
        "trailer",
        "transfer-encoding",
    ):
        assert not seen.has(name), (name, seen.headers)
    assert (seen.header("connection") or "keep-alive").lower() in ("keep-alive", "close"), seen.headers
    assert seen.header("x-end-to-end") == "kept"


def test_hop_by_hop_headers_of_the_response_do_not_reach_the_client(start_proxy, backends) -> None:
    b = backends(1)[0]
    p = start_proxy([b], "--health-check-interval", "0")
    r = http_request(p.port, "GET", "/hop")
    assert r.status == 200 and r.body == b"b0"
    for name in ("keep-alive", "x-private", "upgrade"):
        assert r.header(name) is None, (name, r.headers)
    assert r.header("x-backend-name") == "b0"


def test_lb_headers_false(start_proxy, backends) -> None:
    b = backends(1)[0]
    p = start_proxy([b], "--health-check-interval", "0", "--lb-headers", "false")
    r = http_request(p.port)
    assert r.status == 200 and r.header("x-backend-server") is None, r
    seen = b.seen()[-1]
    assert not seen.has("x-forwarded-by")
    assert seen.header("x-forwarded-for") == "127.0.0.1"


def test_client_x_forwarded_by_does_not_pass_when_lb_headers_are_on(start_proxy, backends) -> None:
    b = backends(1)[0]
    p = start_proxy([b], "--health-check-interval", "0")
    assert http_request(p.port, headers=[("X-Forwarded-By", "mallory")]).status == 200
    assert b.seen()[-1].header_list("x-forwarded-by") == ["prefork_lb"]


def test_ipv6_backend_and_client(start_proxy, backends) -> None:
    b = backends(1, host="::1")[0]
    port6 = free_port_v6()
    start_proxy([b], "--health-check-interval", "0", "-b", f"[::1]:{port6}")
    with socket.create_connection(("::1", port6), timeout=5) as sock:
        sock.sendall(build_request(host="[::1]"))
        r = HTTPStream(sock).read_response()
    assert r.status == 200 and r.header("x-backend-server") == f"[::1]:{b.port}", r
    seen = b.seen()[-1]
    assert seen.header("x-forwarded-for") == "::1"
    assert forwarded_elements(seen.header("forwarded") or "")[-1] == {
        "for": "[::1]",
        "proto": "http",
        "host": "[::1]",
    }
    assert '"' in (seen.header("forwarded") or ""), "for=[::1] must be a quoted-string (RFC 7239 section 6)"


# -- failing backends and retries ----------------------------------------------------------------------------


def test_killed_backend_under_load_fails_no_get(start_proxy) -> None:
    procs = [BackendProcess(f"k{i}") for i in range(3)]
    try:
        p = start_proxy(procs, "--strategy", "round_robin", *FAST_HEALTH)
        p.wait_healthy(3)
        with Load(p.port, threads=3, limit=600, seconds=3.0) as load:
            load.wait_more(100)
            procs[0].kill()
            load.wait_more(150)
        assert load.failures == [], load.failures[:10]
        wait_for(lambda: p.backend_health(procs[0].addr) is False, 5, "the killed backend marked down")
        status, health = p.health()
        assert status == 200 and health["status"] == "degraded" and health["healthy"] == 2, health
    finally:
        for b in procs:
            b.kill()


def test_post_to_a_backend_that_closes_is_502_and_not_retried(start_proxy, backends) -> None:
    drop = backends(1, mode="drop")[0]
    ok = backends(1)[0]
    p = start_proxy([drop, ok], "--strategy", "round_robin", "--health-check-interval", "0")
    answers = {}
    for i in range(4):
        body = f"order-{i}".encode()
        answers[body] = http_request(p.port, "POST", "/orders", body=body)
    failed = [body for body, r in answers.items() if r.status != 200]
    assert failed, answers
    for body in failed:
        assert answers[body].status == 502, answers
        assert [r.body for r in drop.seen()].count(body) == 1
        assert body not in [r.body for r in ok.seen()]
    assert sorted(r.body for r in ok.seen()) == sorted(b for b in answers if b not in failed)


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
def test_idempotent_request_to_a_backend_that_closes_is_retried(start_proxy, backends, method: str) -> None:
    drop = backends(1, mode="drop")[0]
    ok = backends(1)[0]
    p = start_proxy([drop, ok], "--strategy", "round_robin", "--health-check-interval", "0")
    for i in range(2):
        body = f"{method}-{i}".encode() if method == "PUT" else b""
        r = http_request(p.port, method, f"/item/{i}", body=body)
        assert r.status == 200 and r.body == b"b1", r
    assert [r.target for r in ok.seen()] == ["/item/0", "/item/1"]
    assert drop.seen(), "the closing backend was never tried"  # each try there was tried again on ok
    if method == "PUT":
        assert ok.seen()[0].body == b"PUT-0" and ok.seen()[1].body == b"PUT-1"


def test_get_not_retried_with_retries_zero(start_proxy, backends) -> None:
    drop = backends(1, mode="drop")[0]
    p = start_proxy([drop], "--health-check-interval", "0", "--retries", "0")
    r = http_request(p.port)
    assert r.status == 502, r
    assert len(drop.seen()) == 1


def test_post_after_backend_idle_close_is_not_lost(start_proxy, backends) -> None:
    """The backend closes idle keep-alive connections after 0.3 s; a POST 0.6 s later must
    not be sent on the dead pooled connection."""
    b = backends(1, idle_timeout=0.3)[0]
    p = start_proxy([b], "--health-check-interval", "0")
    for i in range(3):
        r = http_request(p.port, "POST", "/sha", body=b"p%d" % i)
        assert r.status == 200, r
        if i < 2:
            time.sleep(0.6)  # the backend's idle timeout passes (what is tested is that wait)
    assert len(b.seen()) == 3


def test_backend_that_never_answers_gives_504(start_proxy, backends) -> None:
    hang = backends(1, mode="hang")[0]
    p = start_proxy([hang], "--upstream-timeout", "1", "--health-check-interval", "0")
    r = http_request(p.port, timeout=8)
    # Only --upstream-timeout produces the 504: the hung backend never answers.
    assert r.status == 504, r


def test_malformed_backend_response_gives_502(start_proxy, backends) -> None:
    bad = backends(1, mode="malformed")[0]
    p = start_proxy([bad], "--health-check-interval", "0")
    r = http_request(p.port)
    assert r.status == 502, r
    assert b"nonsense" not in r.body


@pytest.mark.parametrize("path", ["/dup-cl", "/cl-te", "/bad-chunk", "/short", "/space-name"])
def test_broken_response_framing_never_reaches_the_client_as_a_whole_response(
    start_proxy, backends, path: str
) -> None:
    """Ambiguous or broken framing from a backend: a 502 when nothing was sent yet, otherwise a
    response the client can tell is incomplete; never a complete 2xx made of guesswork."""
    b = backends(1)[0]
    p = start_proxy([b], "--health-check-interval", "0", "--retries", "0")
    got = exchange(p.port, build_request("GET", path), 5)
    assert got.closed, got
    responses, _ = parse_responses(got)
    assert len(responses) <= 1, responses
    if responses and responses[0].status != 502:
        assert not responses[0].complete, responses[0]
    if path in ("/dup-cl", "/cl-te", "/space-name"):
        assert [r.status for r in responses] == [502], got


def test_all_backends_down_gives_503_at_once(start_proxy) -> None:
    ports = [f"{HOST}:{refused_port()}" for _ in range(2)]
    p = start_proxy(ports, *FAST_HEALTH)
    first = http_request(p.port, timeout=5)
    assert first.status in (502, 503), first
    wait_for(lambda: p.health()[1]["healthy"] == 0, 5, "both backends down")
    status, health = p.health()
    assert status == 503 and health["status"] == "down" and health["total"] == 2, health
    assert all(b["healthy"] is False for b in health["backends"])
    r = http_request(p.port)
    # At once: refused before any backend is tried (trying the refused ports would give 502).
    assert r.status == 503, r


def test_refused_backend_is_retried_on_another(start_proxy, backends) -> None:
    ok = backends(1)[0]
    p = start_proxy(
        [f"{HOST}:{refused_port()}", ok.addr], "--strategy", "round_robin", "--health-check-interval", "0"
    )
    rs = [http_request(p.port) for _ in range(6)]
    assert [r.status for r in rs] == [200] * 6, rs
    assert len(ok.seen()) == 6


def test_post_to_a_refused_backend_is_retried(start_proxy, backends) -> None:
    ok = backends(1)[0]
    p = start_proxy(
        [f"{HOST}:{refused_port()}", ok.addr], "--strategy", "round_robin", "--health-check-interval", "0"
    )
    for i in range(4):
        r = http_request(p.port, "POST", "/sha", body=b"body%d" % i)
        assert r.status == 200 and r.body.decode() == hashlib.sha256(b"body%d" % i).hexdigest(), r
    assert len(ok.seen()) == 4


def test_retries_zero_refused_backend_is_an_error(start_proxy, backends) -> None:
    ok = backends(1)[0]
    p = start_proxy(
        [f"{HOST}:{refused_port()}", ok.addr],
        "--strategy",
        "round_robin",
        "--health-check-interval",
        "0",
        "--retries",
        "0",
    )
    statuses = sorted(http_request(p.port).status for _ in range(2))
    assert statuses[0] == 200 and statuses[1] in (502, 503), statuses


# -- health checks -------------------------------------------------------------------------------------------


def test_health_checks_take_a_backend_out_and_back(start_proxy, backends) -> None:
    bs = backends(3)
    sick = bs[0]
    p = start_proxy(bs, "--strategy", "round_robin", *FAST_HEALTH)
    p.wait_healthy(3)
    checks = sick.seen("/health")
    assert checks and all(r.method == "GET" and r.target == "/health" for r in checks)
    assert all(r.header("host") for r in checks), "a health check without Host (HTTP/1.1 requires it)"
    sick.health_status = 500
    t0 = sick.health_checks
    wait_for(lambda: p.backend_health(sick.addr) is False, 5, "the sick backend marked down")
    assert sick.health_checks - t0 >= 2, "down before --health-check-fall 2 failed checks"
    sick.clear()
    for _ in range(12):
        assert http_request(p.port).status == 200
    assert sick.seen() == []
    sick.health_status = 200
    t1 = sick.health_checks
    wait_for(lambda: p.backend_health(sick.addr) is True, 5, "the backend back up")
    assert sick.health_checks - t1 >= 2, "up before --health-check-rise 2 passed checks"
    for _ in range(9):
        assert http_request(p.port).status == 200
    assert len(sick.seen()) >= 2


def test_custom_health_check_path(start_proxy, backends) -> None:
    b = backends(1)[0]
    p = start_proxy([b], *FAST_HEALTH, "--health-check-path", "/healthz?deep=1")
    wait_for(lambda: b.seen("/healthz"), 5, "a check on the custom path")
    assert b.seen("/healthz")[0].target == "/healthz?deep=1"
    assert p.health()[0] == 200


def test_health_check_timeout_marks_a_hung_backend_down(start_proxy, backends) -> None:
    hang = backends(1, mode="hang")[0]
    ok = backends(1)[0]
    p = start_proxy(
        [hang, ok],
        "--strategy",
        "round_robin",
        "--health-check-interval",
        "0.2",
        "--health-check-timeout",
        "0.3",
        "--health-check-fall",
        "2",
        "--upstream-timeout",
        "5",
    )
    wait_for(lambda: p.backend_health(hang.addr) is False, 5, "the hung backend marked down")
    status, health = p.health()
    assert status == 200 and health["status"] == "degraded", health
    before = backend_requests(p)
    assert [http_request(p.port).status for _ in range(4)] == [200] * 4
    after = backend_requests(p)
    assert after[hang.addr] == before[hang.addr], "requests went to the hung backend"
    assert after[ok.addr] == before[ok.addr] + 4


# -- websockets ----------------------------------------------------------------------------------------------


WS_KEY = base64.b64encode(b"0123456789abcdef").decode()


WS_HANDSHAKE = [
    ("Upgrade", "websocket"),
    ("Connection", "Upgrade"),
    ("Sec-WebSocket-Key", WS_KEY),
    ("Sec-WebSocket-Version", "13"),
]


def test_websocket_echo_through_the_proxy(start_proxy, backends) -> None:
    b = backends(1, websocket=True)[0]
    p = start_proxy([b], "--health-check-interval", "0")
    with connect(p.port) as sock:
        sock.sendall(build_request("GET", "/ws", WS_HANDSHAKE))
        stream = HTTPStream(sock)
        r = stream.read_response()
        assert r.status == 101, r
        assert r.header("sec-websocket-accept") == ws_accept(WS_KEY)
        assert (r.header("upgrade") or "").lower() == "websocket"
        assert "upgrade" in (r.header("connection") or "").lower()
        buf = bytearray(stream.buf)

        def read_exactly(n: int) -> bytes:
            while len(buf) < n:
                data = sock.recv(65536)
                assert data, "tunnel closed"
                buf.extend(data)
            out = bytes(buf[:n])
            del buf[:n]
            return out

        for text in (b"hello", b"x" * 70000):
            sock.sendall(ws_frame(text, 1, mask=os.urandom(4)))
            opcode, masked, payload = ws_read_frame(read_exactly)
            assert (opcode, masked, payload) == (1, False, text)
        sock.sendall(ws_frame(b"\x03\xe8", 8, mask=os.urandom(4)))
        assert ws_read_frame(read_exactly)[0] == 8
    seen = b.seen()[-1]
    assert (seen.header("upgrade") or "").lower() == "websocket"
    assert "upgrade" in (seen.header("connection") or "").lower()
    wait_for(lambda: p.stats()["websockets"] == 1, 3, "one websocket in /lb-stats")


def test_upgrade_refused_by_backend_is_a_plain_response(start_proxy, backends) -> None:
    b = backends(1, websocket=False)[0]
    p = start_proxy([b], "--health-check-interval", "0")
    with connect(p.port) as sock:
        sock.sendall(build_request("GET", "/ws", WS_HANDSHAKE))
        stream = HTTPStream(sock)
        r = stream.read_response()
        assert r.status == 200 and r.body == b"b0", r
        # No tunnel: what follows is HTTP again (or the proxy closes), never passed raw.
        sock.sendall(build_request("GET", "/after"))
        if not stream.wait_bytes(b"\r\n\r\n", 3):
            assert stream.eof, "neither a response nor a close"
        else:
            r2 = stream.read_response()
            assert r2.status == 200 and r2.header("x-request-target") == "/after", r2
    assert p.stats()["websockets"] == 0


# -- TLS -----------------------------------------------------------------------------------------------------


@pytest.fixture
def tls_files(tmp_path: Path) -> tuple[Any, Path, Path]:
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    certfile, keyfile = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.private_key_and_cert_chain_pem.write_to_path(str(certfile))
    cert.private_key_pem.write_to_path(str(keyfile))
    return ca, certfile, keyfile


def test_tls_termination(start_proxy, backends, tls_files) -> None:
    ca, certfile, keyfile = tls_files
    b = backends(1)[0]
    p = start_proxy(
        [b], "--health-check-interval", "0", "--certfile", str(certfile), "--keyfile", str(keyfile)
    )
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    ctx.set_alpn_protocols(["http/1.1"])
    with socket.create_connection((HOST, p.port), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            assert tls.selected_alpn_protocol() == "http/1.1"
            stream = HTTPStream(tls)
            for _ in range(2):  # keep-alive over TLS
                tls.sendall(build_request("GET", "/secure"))
                r = stream.read_response()
                assert r.status == 200 and r.body == b"b0", r
    seen = b.seen()[-1]
    assert seen.header("x-forwarded-proto") == "https"
    assert forwarded_elements(seen.header("forwarded") or "")[-1]["proto"] == "https"


def test_tls_1_1_is_refused(start_proxy, backends, tls_files) -> None:
    ca, certfile, keyfile = tls_files
    b = backends(1)[0]
    p = start_proxy(
        [b], "--health-check-interval", "0", "--certfile", str(certfile), "--keyfile", str(keyfile)
    )
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ca.configure_trust(ctx)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        # SECLEVEL=0 so that our own OpenSSL does offer TLS 1.1: the refusal must come from the proxy
        ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
        ctx.minimum_version = ssl.TLSVersion.TLSv1_1
        ctx.maximum_version = ssl.TLSVersion.TLSv1_1
    with socket.create_connection((HOST, p.port), timeout=5) as raw:
        with pytest.raises(ssl.SSLError) as info:
            ctx.wrap_socket(raw, server_hostname="127.0.0.1")
    assert "no protocols available" not in str(info.value), "the client could not offer TLS 1.1 here"
    assert b.seen() == []


def test_plain_http_to_a_tls_port_reaches_no_backend(start_proxy, backends, tls_files) -> None:
    _, certfile, keyfile = tls_files
    b = backends(1)[0]
    p = start_proxy(
        [b], "--health-check-interval", "0", "--certfile", str(certfile), "--keyfile", str(keyfile)
    )
    got = exchange(p.port, build_request(), timeout=3)
    assert got.closed and not got.startswith(b"HTTP/1.1 200"), got
    assert b.seen() == []


def test_tls_large_bodies_both_ways(start_proxy, backends, tls_files) -> None:
    ca, certfile, keyfile = tls_files
    b = backends(1)[0]
    p = start_proxy(
        [b], "--health-check-interval", "0", "--certfile", str(certfile), "--keyfile", str(keyfile)
    )
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    body = os.urandom(3 * 1024 * 1024)
    with socket.create_connection((HOST, p.port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            stream = HTTPStream(tls, 10)
            tls.sendall(build_request("PUT", "/sha", body=body))
            r = stream.read_response()
            assert r.status == 200 and r.body.decode() == hashlib.sha256(body).hexdigest(), r
            tls.sendall(build_request("GET", "/big?bytes=5000000"))
            r = stream.read_response()
            assert r.status == 200 and len(r.body) == 5_000_000 and r.complete, r.headers


# -- strict parsing: what never reaches a backend ------------------------------------------------------------


INVALID = [
    c
    for c in load("invalid")
    if c.name not in {"invalid/001", "invalid/rfc9112_chunked_missing_final_crlf_01"}
]


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


@pytest.fixture(scope="module")
def strict_proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ProxyProcess, Backend]]:
    with proxy_with_backend(tmp_path_factory.mktemp("strict"), "victim", "--header-timeout", "1") as pb:
        yield pb


def expected_statuses(error: str) -> set[int]:
    if error == "LimitRequestLine":
        return {414}
    if error == "LimitRequestHeaders":
        return {431}
    return {400, 413, 417, 501}


def test_invalid_corpus_requests_never_reach_a_backend(strict_proxy) -> None:
    p, b = strict_proxy
    b.clear()
    wrong: list[tuple[object, ...]] = []
    for case in INVALID:
        got = exchange(p.port, case.raw, 5)
        responses, rest = parse_responses(got)
        statuses = [r.status for r in responses]
        if (
            not got.closed
            or len(responses) != 1
            or responses[0].status not in expected_statuses(case.expect["error"])
        ):
            wrong.append((case.name, statuses, bytes(got[:120])))
        if b.seen():
            wrong.append((case.name, "reached the backend", b.seen()[0]))
            b.clear()
    assert wrong == [], wrong


SMUGGLING = {
    "cl-and-te": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n",
    "te-and-cl": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 40\r\n\r\n"
    b"0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n",
    "duplicate-cl": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\nContent-Length: 40\r\n\r\n"
    b"GET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n",
    "cl-list": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0, 40\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n",
    "obs-fold": b"GET / HTTP/1.1\r\nHost: a\r\nX-A: 1\r\n Transfer-Encoding: chunked\r\n\r\n",
    "obs-fold-te": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n",
    "te-not-last-chunked": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n",
    "te-xchunked": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n",
    "space-before-colon": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n",
    "cl-plus": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\nhello",
    "bare-lf-in-chunk": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\nhello\r\n0\r\n\r\n",
    "te-http10": b"POST / HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "nul-in-header": b"GET / HTTP/1.1\r\nHost: a\r\nX-A: a\x00b\r\n\r\n",
    "two-hosts": b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
}


@pytest.mark.parametrize("name", sorted(SMUGGLING))
def test_smuggling_attempt_is_refused_by_the_proxy(strict_proxy, name: str) -> None:
    p, b = strict_proxy
    b.clear()
    got = exchange(p.port, SMUGGLING[name], 5)
    responses, rest = parse_responses(got)
    assert got.closed, got
    assert len(responses) == 1 and 400 <= responses[0].status < 600, (responses, rest)
    assert responses[0].status != 502 and responses[0].status != 503, responses
    assert b.seen() == [], b.seen()


def test_header_timeout_applies_to_proxy_clients(strict_proxy) -> None:
    p, b = strict_proxy
    b.clear()
    # The outcome of the header timeout: closed (with a 408 or nothing) within the 6 s deadline.
    got = exchange(p.port, b"GET / HTTP/1.1\r\nHost: a\r\n", 6, half_close=False)
    assert got.closed, got
    responses, _ = parse_responses(got)
    assert not responses or responses[0].status == 408, responses
    assert b.seen() == []


def test_missing_host_is_refused_by_the_proxy(start_proxy, backends) -> None:
    b = backends(1)[0]
    p = start_proxy([b], "--health-check-interval", "0")
    got = exchange(p.port, b"GET / HTTP/1.1\r\n\r\n", 3)
    responses, _ = parse_responses(got)
    assert responses and responses[0].status == 400, got
    assert b.seen() == []


def test_request_body_limit_is_enforced_by_the_proxy(start_proxy, backends) -> None:
    b = backends(1)[0]
    p = start_proxy([b], "--health-check-interval", "0", "--limit-request-body", "1000")
    r = http_request(p.port, "POST", "/sha", body=b"x" * 2000)
    assert r.status == 413, r
    assert b.seen() == []


@pytest.mark.parametrize("pooled", [False, True], ids=["new-upstream", "pooled-upstream"])
def test_client_body_timeout(start_proxy, backends, pooled: bool) -> None:
    """A client that stops sending its body gets 408 after --client-body-timeout, whether the
    proxy had to open a backend connection for it or took one from its pool."""
    b = backends(1)[0]
    p = start_proxy(
        [b], "--health-check-interval", "0", "--client-body-timeout", "1", "--upstream-timeout", "3"
    )
    if pooled:
        assert http_request(p.port).status == 200  # leaves an idle upstream connection (fresh for a POST)
    got = exchange(
        p.port, b"POST /sha HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nab", 7, half_close=False
    )
    responses, _ = parse_responses(got)
    # The body timeout's outcome (408, or a close), not the upstream timeout's (504).
    assert got.closed and [r.status for r in responses] in ([], [408]), responses
    assert b.seen("/sha") == []  # the backend never got a whole request


@pytest.fixture(scope="module")
def lenient_proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ProxyProcess, Backend]]:
    with proxy_with_backend(tmp_path_factory.mktemp("lenient"), "echo", "--require-host", "false") as pb:
        yield pb


# CONNECT is not proxied (405 by design): the corpus' authority-form cases are left out.
VALID = [
    c
    for c in load("valid")
    if c.name not in DEVIATIONS and not any(r["method"] == "CONNECT" for r in c.expect["requests"])
]


def test_valid_corpus_requests_reach_the_backend_intact(lenient_proxy) -> None:
    """Every valid corpus case (pipelined ones too) reaches the backend with its method, target
    and body, and gets one 200 per request."""
    p, b = lenient_proxy
    wrong: list[tuple[object, ...]] = []
    for case in VALID:
        b.clear()
        expected = case.expect["requests"]
        with connect(p.port, 3) as sock:
            sock.sendall(case.raw)
            stream = HTTPStream(sock, 3)
            try:
                statuses = [stream.read_response().status for _ in expected]
            except (AssertionError, OSError) as exc:
                wrong.append((case.name, repr(exc)))
                continue
        if statuses != [200] * len(expected):
            wrong.append((case.name, statuses))
            continue
        want = [
            (r["method"], r["uri"], r["body"].encode("latin-1") if isinstance(r["body"], str) else r["body"])
            for r in expected
        ]
        have = [(r.method, r.target, r.body) for r in b.seen()]
        if have != want:
            wrong.append((case.name, "backend saw", have, "expected", want))
    assert wrong == [], wrong


# -- bodies and framing --------------------------------------------------------------------------------------


def test_chunked_upload_of_20_mb_arrives_intact(start_proxy, backends) -> None:
    b = backends(1)[0]
    p = start_proxy([b], "--health-check-interval", "0")
    block = os.urandom(65536)
    digest = hashlib.sha256()
    with connect(p.port, 20) as sock:
        sock.sendall(b"POST /sha HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n")
        for i in range(320):  # 20 MiB
            part = block[i % 7 :] + block[: i % 7]
            digest.update(part)
            sock.sendall(b"%x\r\n%b\r\n" % (len(part), part))
        sock.sendall(b"0\r\n\r\n")
        r = HTTPStream(sock, 20).read_response()
    assert r.status == 200, r
    assert r.body.decode() == digest.hexdigest()
    seen = b.seen()[-1]
    assert len(seen.body) == 320 * 65536
    assert seen.chunked or seen.header("content-length") == str(320 * 65536)
    b.clear()


def test_content_length_upload_and_body_echo(start_proxy, backends) -> None:
    b = backends(1)[0]
    p = start_proxy([b], "--health-check-interval", "0")
    body = os.urandom(300_000)
    r = http_request(p.port, "PUT", "/sha", body=body)
    assert r.status == 200 and r.body.decode() == hashlib.sha256(body).hexdigest()
    seen = b.seen()[-1]
    assert seen.header("content-length") == str(len(body)) and not seen.chunked


def test_slow_reader_of_a_20_mb_response_does_not_grow_the_proxy(start_proxy, backends) -> None:
    b = backends(1)[0]
    p = start_proxy([b], "--health-check-interval", "0")
    proxy = psutil.Process(wait_for(p.proxy_pid, 5, "the proxy process"))
    assert http_request(p.port, "GET", "/big?bytes=100000").status == 200  # warm up
    base = proxy.memory_info().rss
    size = 20 * 1024 * 1024
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    sock.settimeout(10)
    with sock:
        sock.connect((HOST, p.port))
        sock.sendall(build_request("GET", f"/big?bytes={size}"))
        head = b""
        while b"\r\n\r\n" not in head:
            head += sock.recv(1024)
        got = len(head.split(b"\r\n\r\n", 1)[1])
        # Not reading for a while: without backpressure the proxy would take it all from the backend.
        peak = base
        for _ in range(15):
            time.sleep(0.05)
            peak = max(peak, proxy.memory_info().rss)
        # Then read slowly for a moment, then quickly to the end.
        for _ in range(20):
            got += len(sock.recv(16384))
            time.sleep(0.01)
            peak = max(peak, proxy.memory_info().rss)
        for _ in range(100_000):
            if got >= size:
                break
            data = sock.recv(1 << 20)
            if not data:
                break
            got += len(data)
    assert got == size
    print(f"proxy RSS growth while relaying 20 MiB to a slow reader: {(peak - base) / 2**20:.1f} MiB")
    assert peak - base < 20 * 1024 * 1024, f"proxy RSS grew by {(peak - base) / 2**20:.1f} MiB"


def test_expect_100_continue(start_proxy, backends) -> None:
    b = backends(1)[0]
    p = start_proxy([b], "--health-check-interval", "0")
    with connect(p.port) as sock:
        stream = HTTPStream(sock)
        sock.sendall(b"PUT /sha HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
        interim = stream.read_response(timeout=3)
        assert interim.status == 100, interim
        sock.sendall(b"hello")
        r = stream.read_response()
    assert r.status == 200 and r.body.decode() == hashlib.sha256(b"hello").hexdigest(), r


def test_backend_answering_before_the_upload_ends(start_proxy, backends) -> None:
    """The backend refuses an upload after its head (403, close) while the client still sends:
    the client gets the 403, and the proxy does not hang on the rest of the body."""
    b = backends(1)[0]
    p = start_proxy([b], "--health-check-interval", "0")
    size = 8 * 1024 * 1024
    with connect(p.port, 10) as sock:
        sock.sendall(b"POST /early HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % size)
        stream = HTTPStream(sock, 10)
        sent = 0
        block = b"z" * 65536
        try:
            while sent < size and not stream.buf:
                sock.settimeout(0.5)
                sock.sendall(block)
                sent += len(block)
                sock.setblocking(False)
                try:
                    stream.buf += sock.recv(65536)
                except BlockingIOError:
                    pass
                sock.setblocking(True)
        except (TimeoutError, OSError):
            pass  # the proxy stopped reading or closed: what it answered is still to be read
        sock.settimeout(10)
        r = stream.read_response(timeout=5)
    assert r.status == 403 and r.body == b"nope", r
    assert [rec.target for rec in b.seen()] == ["/early"]


def test_head_then_get_on_one_connection(start_proxy, backends) -> None:
    b = backends(1)[0]
    p = start_proxy([b], "--health-check-interval", "0")
    with Client(p.port) as c:
        for _ in range(2):  # twice: the second time the heads are ones the proxy has seen
            h = c.request("HEAD", "/")
            assert h.status == 200 and h.header("content-length") == "2" and h.body == b"", h
            g = c.request("GET", "/")
            assert g.status == 200 and g.body == b"b0", g
    assert [r.method for r in b.seen()] == ["HEAD", "GET", "HEAD", "GET"]


@pytest.mark.parametrize("status", [204, 304])
def test_bodiless_statuses(start_proxy, backends, status: int) -> None:
    b = backends(1)[0]
    p = start_proxy([b], "--health-check-interval", "0")
    with Client(p.port) as c:
        for _ in range(2):
            r = c.request("GET", f"/status/{status}")
            assert r.status == status and r.body == b"" and r.header("transfer-encoding") is None, r
        assert c.request().body == b"b0"


def test_backend_closing_after_each_response(start_proxy, backends) -> None:
    """A backend's Connection: close: that upstream connection is not pooled and reused."""
    b = backends(1)[0]
    p = start_proxy([b], "--health-check-interval", "0")
    with Client(p.port) as c:
        for _ in range(5):
            r = c.request("GET", "/close")
            assert r.status == 200 and r.body == b"b0", r
        assert c.request("POST", "/close", body=b"x").status == 200
    assert b.accepted >= 6


def test_close_delimited_backend_body_is_reframed(start_proxy, backends) -> None:
    b = backends(1)[0]
    p = start_proxy([b], "--health-check-interval", "0")
    want = ("b0:" + "y" * 5000).encode()
    with Client(p.port) as c:
        r = c.request("GET", "/eof-body")
        assert r.status == 200 and r.body == want and r.complete, r
        assert r.framing in ("chunked", "close"), r
        if r.framing == "chunked":  # the client connection survives
            assert c.request().body == b"b0"
    # an HTTP/1.0 client never gets chunked
    r10 = http_request(p.port, "GET", "/eof-body", version="HTTP/1.0")
    assert r10.status == 200 and r10.body == want and r10.framing != "chunked", r10


def test_chunked_backend_response(start_proxy, backends) -> None:
    b = backends(1)[0]
    p = start_proxy([b], "--health-check-interval", "0")
    with Client(p.port) as c:
        r = c.request("GET", "/chunked")
        assert r.status == 200 and r.body == b"hello world", r
        assert c.request().body == b"b0"
    r10 = http_request(p.port, "GET", "/chunked", version="HTTP/1.0")
    assert r10.status == 200 and r10.body == b"hello world" and r10.framing != "chunked", r10


def test_http_1_0_client_keep_alive(start_proxy, backends) -> None:
    b = backends(1)[0]
    p = start_proxy([b], "--health-check-interval", "0")
    with connect(p.port) as sock:
        stream = HTTPStream(sock)
        sock.sendall(build_request(version="HTTP/1.0", headers=[("Connection", "keep-alive")]))
        r = stream.read_response()
        assert r.status == 200 and r.body == b"b0", r
        assert r.version == "HTTP/1.1", r  # our version, as the workers answer (RFC 9110 2.5)
        assert (r.header("connection") or "").lower() == "keep-alive", r
        if (r.header("connection") or "").lower() == "keep-alive":
            sock.sendall(build_request(version="HTTP/1.0"))
            assert stream.read_response().body == b"b0"
            assert stream.closed_by_server(3), "HTTP/1.0 without keep-alive: the proxy must close"
        else:
            assert stream.closed_by_server(3)


def test_repeated_identical_exchanges(start_proxy, backends) -> None:
    """The same request bytes and the same response head many times over: every response
    right, the counts right, and a connection idle past --upstream-timeout gets no stray bytes."""
    bs = backends(2)
    p = start_proxy(
        bs,
        "--strategy",
        "round_robin",
        "--health-check-interval",
        "0",
        "--upstream-timeout",
        "1",
        "--keep-alive",
        "10",
    )
    with Client(p.port) as c:
        got = [c.request("GET", "/const") for _ in range(20)]
        assert [r.status for r in got] == [200] * 20
        assert Counter(r.body for r in got) == {b"b0": 10, b"b1": 10}
        assert all(r.header("x-backend-server") == by_name(bs)[r.body.decode()].addr for r in got)
        assert not c.stream.wait_bytes(b"\r\n", 1.5), f"unsolicited bytes: {c.stream.buf!r}"
        assert not c.stream.eof, "the idle keep-alive connection was closed"
        r = c.request("GET", "/const")
        assert r.status == 200, r
    # the same bytes from another client address: its own X-Forwarded-For
    r = http_request(p.port, "GET", "/const", source="127.0.0.3")
    assert r.status == 200
    xffs = {rec.header("x-forwarded-for") for b in bs for rec in b.seen()}
    assert xffs == {"127.0.0.1", "127.0.0.3"}, xffs
    stats = p.stats()
    assert stats["requests"] == 22
    assert sum(s["responses"]["2xx"] for s in stats["backends"]) == 22
    assert all(b["in_flight"] == 0 for b in p.health()[1]["backends"])


# -- client and upstream connections -------------------------------------------------------------------------


def test_pipelined_requests_are_answered_in_order(start_proxy, backends) -> None:
    bs = backends(2)
    p = start_proxy(bs, "--strategy", "round_robin", "--health-check-interval", "0")
    with connect(p.port) as sock:
        sock.sendall(b"".join(build_request("GET", f"/p{i}") for i in range(1, 4)))
        stream = HTTPStream(sock)
        rs = [stream.read_response() for _ in range(3)]
    assert [r.status for r in rs] == [200] * 3
    assert [r.header("x-request-target") for r in rs] == ["/p1", "/p2", "/p3"]


def test_half_closed_client_gets_its_response_and_a_close(start_proxy, backends) -> None:
    """A client that shuts its sending side after the request (HTTP/1.0 style tools do) gets
    the response, then the proxy closes: no connection left open for --keep-alive."""
    b = backends(1, delay=0.2)[0]  # the EOF arrives while the exchange is in progress
    p = start_proxy([b], "--health-check-interval", "0", "--keep-alive", "30")
    got = exchange(p.port, build_request("GET", "/half"), 3)
    responses, _ = parse_responses(got)
    assert [r.status for r in responses] == [200], got
    assert got.closed, f"still open {got.elapsed:.1f} s after the response"


def test_queue_full_then_503_with_retry_after(start_proxy, backends) -> None:
    b = backends(1)[0]
    # A 1 s queue timeout: long enough for /lb-stats to show the connection waiting first.
    p = start_proxy([b], "--health-check-interval", "0", "--max-connections", "2", "--queue-timeout", "1")
    c1, c2 = Client(p.port), Client(p.port)
    try:
        assert c1.request().status == 200 and c2.request().status == 200
        with connect(p.port) as third:
            third.sendall(build_request("GET", "/"))
            # Queued first, refused when the queue timeout ends: the order proves it was the timeout.
            wait_for(lambda: p.stats()["queued"] == 1, 3, "one queued connection")
            r = HTTPStream(third).read_response(timeout=5)
        assert r.status == 503 and r.header("retry-after") == "1", r
    finally:
        c1.close()
        c2.close()


def test_queued_connection_is_served_when_a_slot_frees(start_proxy, backends) -> None:
    b = backends(1)[0]
    p = start_proxy([b], "--health-check-interval", "0", "--max-connections", "2", "--queue-timeout", "3")
    c1, c2 = Client(p.port), Client(p.port)
    try:
        assert c1.request().status == 200 and c2.request().status == 200
        with connect(p.port) as third:
            third.sendall(build_request("GET", "/third"))
            stream = HTTPStream(third)
            assert not stream.wait_bytes(b"\r\n", 0.3), "the third connection was served past the limit"
            wait_for(lambda: p.stats()["queued"] == 1, 3, "one queued connection")
            c1.close()
            r = stream.read_response(timeout=3)
            assert r.status == 200 and r.header("x-request-target") == "/third", r
    finally:
        c1.close()
        c2.close()


def test_upstream_connections_are_reused(start_proxy, backends) -> None:
    b = backends(1)[0]
    p = start_proxy([b], "--health-check-interval", "0")
    for _ in range(10):  # ten client connections, one after the other
        assert http_request(p.port).status == 200
    assert b.accepted <= 2, f"{b.accepted} backend connections for 10 sequential requests"


def test_upstream_keepalive_zero_keeps_no_idle_connection(start_proxy, backends) -> None:
    b = backends(1)[0]
    p = start_proxy([b], "--health-check-interval", "0", "--upstream-keepalive", "0")
    for _ in range(5):
        assert http_request(p.port).status == 200
    assert b.accepted == 5


def test_term_lets_an_in_flight_request_finish(start_proxy, backends) -> None:
    b = backends(1, delay=1.0)[0]
    p = start_proxy([b], "--health-check-interval", "0")
    result: list[Any] = []

    def one() -> None:
        try:
            result.append(http_request(p.port, "GET", "/slow", timeout=8))
        except (OSError, AssertionError) as exc:
            result.append(exc)

    t = threading.Thread(target=one)
    t.start()
    wait_for(lambda: b.in_flight == 1, 5, "the request at the backend")
    os.kill(p.pid, signal.SIGTERM)
    t.join(10)
    assert p.proc is not None and p.proc.wait(10) == 0, p.text()
    assert len(result) == 1 and isinstance(result[0], Response) and result[0].status == 200, result


def test_term_closes_idle_keepalive_connections_and_exits(start_proxy, backends) -> None:
    b = backends(1)[0]
    p = start_proxy([b], "--health-check-interval", "0", "--keep-alive", "30")
    with Client(p.port) as c:
        assert c.request().status == 200
        os.kill(p.pid, signal.SIGTERM)
        assert c.stream.closed_by_server(5), "the idle connection was kept open"
        assert p.proc is not None and p.proc.wait(10) == 0, p.text()


def burst_rounds(
    port: int, target: str, clients: int = 16, rounds: int = 40, until: Callable[[], bool] = lambda: False
) -> list[Response]:
    """Rounds of ``clients`` connections that each send one GET at the same moment (so the
    proxy reads them in one pass of its loop) and then read their responses; stops early once
    ``until()`` holds. Returns every response."""
    got: list[Response] = []
    socks = [connect(port) for _ in range(clients)]
    try:
        streams = [HTTPStream(s) for s in socks]
        request = build_request("GET", target)
        for _ in range(rounds):
            for s in socks:
                s.sendall(request)
            got.extend(st.read_response() for st in streams)
            if until():
                break
    finally:
        for s in socks:
            s.close()
    return got


@pytest.mark.parametrize("target", ["/const", "/"])
def test_simultaneous_gets_share_a_backend_connection_and_each_gets_one_answer(
    start_proxy, backends, target: str
) -> None:
    # /const: the same response head every time (relayed from the proxy's memo); /: a head with
    # a sequence number (parsed each time).
    [b] = backends(1)
    p = start_proxy([b], "--health-check-interval", "0")
    assert http_request(p.port, "GET", target).status == 200  # the head becomes known, and fast
    got = burst_rounds(p.port, target, until=lambda: stats_for(p.stats(), b.addr)["pipelined"] >= 5)
    s = stats_for(p.stats(), b.addr)
    assert s["pipelined"] >= 5, s
    assert [r.status for r in got] == [200] * len(got)
    assert {r.body for r in got} == {b"b0"}
    # Each request reached the backend exactly once, and nothing was retried.
    assert len([r for r in b.requests if r.target == target]) == len(got) + 1
    assert s["errors"] == 0 and s["retries"] == 0 and s["requests"] == len(got) + 1
    if target == "/":
        seqs = sorted(int(r.header("x-request-seq") or "0") for r in got)
        assert len(set(seqs)) == len(got), "a response was delivered twice"


def test_upstream_pipeline_1_sends_one_request_per_connection_at_a_time(start_proxy, backends) -> None:
    [b] = backends(1)
    p = start_proxy([b], "--health-check-interval", "0", "--upstream-pipeline", "1")
    http_request(p.port, "GET", "/const")
    got = burst_rounds(p.port, "/const", rounds=10)
    assert [r.status for r in got] == [200] * len(got)
    assert stats_for(p.stats(), b.addr)["pipelined"] == 0


def test_slow_answers_are_never_pipelined(start_proxy, backends) -> None:
    # Answered in 30 ms (over the 10 ms bound): a request is never made to wait behind one.
    [b] = backends(1, delay=0.03)
    p = start_proxy([b], "--health-check-interval", "0")
    http_request(p.port, "GET", "/const")
    got = burst_rounds(p.port, "/const", clients=8, rounds=5)
    assert [r.status for r in got] == [200] * len(got)
    assert stats_for(p.stats(), b.addr)["pipelined"] == 0


def test_answers_that_close_the_connection_are_never_pipelined(start_proxy, backends) -> None:
    [b] = backends(1)
    p = start_proxy([b], "--health-check-interval", "0")
    http_request(p.port, "GET", "/close")
    got = burst_rounds(p.port, "/close", clients=8, rounds=5)
    assert [r.status for r in got] == [200] * len(got)
    s = stats_for(p.stats(), b.addr)
    assert s["pipelined"] == 0 and s["errors"] == 0, s


def test_pipelined_gets_behind_a_dying_connection_are_sent_again(start_proxy, backends) -> None:
    # The backend answers the first request of each connection and then drops the connection
    # without answering the rest: the GETs queued behind it never got a byte, so they go
    # again (on connections of their own) and every client still gets a 200.
    [b] = backends(1, answers_per_connection=1)
    p = start_proxy([b], "--health-check-interval", "0", "--retries", "3", "--retry-budget", "1")
    http_request(p.port, "GET", "/const")
    got = burst_rounds(
        p.port, "/const", clients=8, rounds=20, until=lambda: stats_for(p.stats(), b.addr)["pipelined"] >= 3
    )
    s = stats_for(p.stats(), b.addr)
    assert [r.status for r in got] == [200] * len(got)
    assert s["pipelined"] >= 3 and s["retries"] >= 1, s


# -- admin endpoints and settings ----------------------------------------------------------------------------


def test_lb_health_and_lb_stats(start_proxy, backends) -> None:
    bs = backends(2)
    p = start_proxy(bs, "--strategy", "round_robin", "--health-check-interval", "0")
    with Client(p.port) as c:
        for _ in range(10):
            assert c.request().status == 200
        assert c.request("GET", "/missing-gets-200-anyway").status == 200
    status, health = p.health()
    assert status == 200
    assert health["status"] == "ok" and health["healthy"] == 2 and health["total"] == 2
    assert sorted(b["name"] for b in health["backends"]) == sorted(b.addr for b in bs)
    for hb in health["backends"]:
        assert hb["healthy"] is True and hb["in_flight"] == 0 and isinstance(hb["latency_ms"], (int, float))
    stats = p.stats()
    assert stats["strategy"] == "round_robin"
    assert stats["requests"] == 11 and stats["websockets"] == 0 and stats["queued"] == 0
    assert stats["connections"] >= 1
    per = [stats_for(stats, b.addr) for b in bs]
    assert sorted(s["requests"] for s in per) == [5, 6], per
    for s in per:
        assert s["errors"] == 0 and s["retries"] == 0
        assert s["responses"] == {"2xx": s["requests"], "3xx": 0, "4xx": 0, "5xx": 0}
        lat = s["latency_ms"]
        assert set(lat) >= {"p50", "p90", "p99", "max"}
        assert 0 <= lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"]
    assert http_request(p.admin_port, "GET", "/nope").status == 404


def test_stats_count_errors_by_class(start_proxy, backends) -> None:
    bad = backends(1, mode="malformed")[0]
    p = start_proxy([bad], "--health-check-interval", "0", "--retries", "0")
    assert http_request(p.port).status == 502
    s = stats_for(p.stats(), bad.addr)
    assert s["errors"] >= 1 or s["responses"]["5xx"] >= 1, s


def test_in_flight_shows_in_lb_health(start_proxy, backends) -> None:
    b = backends(1, delay=1.0)[0]
    p = start_proxy([b], "--health-check-interval", "0")
    t = threading.Thread(target=lambda: http_request(p.port, "GET", "/slow", timeout=5))
    t.start()
    try:
        wait_for(lambda: b.in_flight == 1, 5, "the request at the backend")
        assert p.health()[1]["backends"][0]["in_flight"] == 1
    finally:
        t.join(5)
    wait_for(lambda: p.health()[1]["backends"][0]["in_flight"] == 0, 3, "in_flight back to 0")


def test_retry_shows_in_lb_stats(start_proxy, backends) -> None:
    ok = backends(1)[0]
    dead = f"{HOST}:{refused_port()}"
    p = start_proxy([dead, ok.addr], "--strategy", "round_robin", "--health-check-interval", "0")
    for _ in range(4):
        assert http_request(p.port).status == 200
    stats = p.stats()
    assert stats["requests"] >= 4  # (counts tries: a retried request may count twice)
    dead_s, ok_s = stats_for(stats, dead), stats_for(stats, ok.addr)
    assert dead_s["errors"] >= 1, dead_s
    assert dead_s["retries"] + ok_s["retries"] >= 1, stats
    assert ok_s["responses"]["2xx"] == 4, ok_s


def test_admin_paths_on_the_public_port_go_to_a_backend(start_proxy, backends) -> None:
    b = backends(1)[0]
    p = start_proxy([b], "--health-check-interval", "0")
    for path in ("/lb-stats", "/lb-health"):
        r = http_request(p.port, "GET", path)
        assert r.status == 200 and r.body == b"b0", r
    assert [r.target for r in b.seen()] == ["/lb-stats", "/lb-health"]


def test_stats_bind_public_serves_admin_on_the_public_port(start_proxy, backends) -> None:
    b = backends(1)[0]
    p = start_proxy([b], "--health-check-interval", "0", "--stats-bind", "public", admin=False)
    r = http_request(p.port, "GET", "/lb-health")
    assert r.status == 200 and r.json()["total"] == 1, r
    assert b.seen() == []


def test_settings_from_the_environment(start_proxy, backends) -> None:
    bs = backends(2)
    p = start_proxy(
        None,
        env={
            "PREFORK_LB_BACKENDS": ",".join(b.addr for b in bs),
            "PREFORK_LB_STRATEGY": "round_robin",
            "PREFORK_LB_LB_HEADERS": "false",
            "PREFORK_LB_HEALTH_CHECK_INTERVAL": "0",
        },
    )
    assert p.stats()["strategy"] == "round_robin"
    rs = [http_request(p.port) for _ in range(4)]
    assert sorted(names(rs)) == ["b0", "b0", "b1", "b1"]
    assert all(r.header("x-backend-server") is None for r in rs)


def test_proxy_subcommand_needs_backends(tmp_path: Path) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "prefork_lb", "proxy", "-b", f"{HOST}:{free_port()}", "--stats-bind", "off"],
        cwd=ROOT,
        env=server_env(),
        capture_output=True,
        timeout=20,
        start_new_session=True,
    )
    assert r.returncode != 0
    err = r.stderr.decode()
    assert "backends" in err and "Traceback" not in err, err


@pytest.mark.parametrize(
    ("flags", "says"),
    [
        (["--backends", "127.0.0.1:80=0"], "invalid backend '127.0.0.1:80=0'"),
        (["--backends", "nope"], "invalid backend 'nope'"),
        (["--backends", "127.0.0.1:99999"], "invalid backend"),
        (["--backends", "127.0.0.1:80", "--forwarded-allow-ips", "10.0.0.0/33"], "10.0.0.0/33"),
        (["--backends", "127.0.0.1:80", "--strategy", "fastest"], "fastest"),
    ],
)
def test_bad_proxy_flags_are_one_clear_line(flags: list[str], says: str) -> None:
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "prefork_lb",
            "proxy",
            *flags,
            "-b",
            f"{HOST}:{free_port()}",
            "--stats-bind",
            "off",
        ],
        cwd=ROOT,
        env=server_env(),
        capture_output=True,
        timeout=20,
        start_new_session=True,
    )
    assert r.returncode != 0
    err = r.stderr.decode()
    assert says in err and "Traceback" not in err and len(err.strip().splitlines()) <= 3, err


# -- integrated mode: --dispatch proxy with real workers -----------------------------------------------------


@pytest.fixture
def integrated(start_proxy) -> ProxyProcess:
    p = start_proxy(
        None,
        "--dispatch",
        "proxy",
        "--workers",
        "2",
        "--strategy",
        "round_robin",
        "--retries",
        "2",
        app="prefork_lb.demo:app",
    )
    wait_for(lambda: len(p.worker_pids()) == 2 and p.proxy_pid(), 10, "2 workers and the proxy")
    wait_for(lambda: p.health()[1]["healthy"] == 2, 10, "2 healthy local backends")
    return p


def test_integrated_requests_reach_both_workers(integrated: ProxyProcess) -> None:
    p = integrated
    status, health = p.health()
    assert status == 200 and health["total"] == 2 and health["healthy"] == 2, health
    assert all(b["name"].startswith("127.0.0.1:") for b in health["backends"])
    pids = set()
    backends_seen = set()
    with Client(p.port) as c:
        for _ in range(10):
            r = c.request("GET", "/json")
            assert r.status == 200
            pids.add(r.json()["pid"])
            backends_seen.add(r.header("x-backend-server"))
    assert pids == set(p.worker_pids()), (pids, p.worker_pids())
    assert backends_seen == {b["name"] for b in health["backends"]}


def test_integrated_worker_killed_under_load(integrated: ProxyProcess) -> None:
    p = integrated
    victim = p.worker_pids()[0]
    with Load(p.port, threads=3, limit=500, seconds=4.0, target="/json") as load:
        load.wait_more(60)
        os.kill(victim, signal.SIGKILL)
        load.wait_more(120)
        wait_for(
            lambda: len(p.worker_pids()) == 2 and victim not in p.worker_pids(), 10, "a replacement worker"
        )
        load.wait_more(30)
    assert load.failures == [], load.failures[:10]
    wait_for(lambda: p.health()[1]["healthy"] == 2, 10, "2 healthy backends again")


def test_integrated_proxy_killed_is_replaced(integrated: ProxyProcess) -> None:
    p = integrated
    old = p.proxy_pid()
    assert old is not None
    os.kill(old, signal.SIGKILL)

    def gone() -> bool:
        try:
            return psutil.Process(old).status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return True

    wait_for(gone, 5, "the old proxy dead")
    # The master keeps the listener: a connection made now waits for the new proxy.
    r = http_request(p.port, "GET", "/json", timeout=10)
    assert r.status == 200, r
    new = wait_for(
        lambda: (lambda pid: pid if pid and pid != old else None)(p.proxy_pid()), 10, "a new proxy process"
    )
    assert new != old

    def serves() -> bool:
        try:
            return http_request(p.port, "GET", "/json", timeout=2).status == 200
        except (OSError, AssertionError):
            return False

    wait_for(serves, 10, "serving again")
    assert {http_request(p.port, "GET", "/json").status for _ in range(6)} == {200}
    assert p.proc is not None and p.proc.poll() is None


def test_integrated_term_exits_cleanly(integrated: ProxyProcess) -> None:
    p = integrated
    group = p.pid
    kids = [c.pid for c in p.children()]
    assert len(kids) == 3
    os.kill(p.pid, signal.SIGTERM)
    assert p.proc is not None
    assert p.proc.wait(15) == 0, p.text()

    def leftovers() -> list[int]:
        out = []
        for pid in kids:
            try:
                if os.getpgid(pid) == group and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                    out.append(pid)
            except (ProcessLookupError, psutil.NoSuchProcess):
                pass
        return out

    wait_for(lambda: not leftovers(), 5, "no process left")
    assert "Traceback" not in p.text(), p.text()


def test_integrated_worker_recycling_fails_no_request(start_proxy) -> None:
    p = start_proxy(
        None, "--dispatch", "proxy", "--workers", "2", "--max-requests", "25", app="prefork_lb.demo:app"
    )
    wait_for(lambda: p.health()[1]["healthy"] == 2, 10, "2 healthy local backends")
    first = set(p.worker_pids())
    with Load(p.port, threads=3, limit=1000, seconds=10.0, target="/json") as load:
        # the workers notice their count on their heartbeat (about once a second)
        wait_for(lambda: not first & set(p.worker_pids()), 8, "both workers recycled")
        load.wait_more(30)
    assert load.failures == [], load.failures[:10]
    assert "Traceback" not in p.text()


def test_integrated_sticky_cookie_survives_a_proxy_restart(start_proxy) -> None:
    p = start_proxy(
        None, "--dispatch", "proxy", "--workers", "2", "--strategy", "sticky", app="prefork_lb.demo:app"
    )
    wait_for(lambda: p.health()[1]["healthy"] == 2 and p.proxy_pid(), 10, "2 healthy workers")
    first = http_request(p.port, "GET", "/json")
    cookie = sticky_cookie(first)
    assert cookie, first
    pid = first.json()["pid"]
    assert {
        http_request(p.port, "GET", "/json", headers=[("Cookie", f"lb={cookie}")]).json()["pid"]
        for _ in range(6)
    } == {pid}
    old = p.proxy_pid()
    assert old is not None
    os.kill(old, signal.SIGKILL)
    wait_for(lambda: p.proxy_pid() not in (None, old), 10, "a new proxy process")

    def sticky_pid() -> int | None:
        try:
            r = http_request(p.port, "GET", "/json", headers=[("Cookie", f"lb={cookie}")], timeout=2)
        except (OSError, AssertionError):
            return None
        return r.json()["pid"] if r.status == 200 else None

    wait_for(lambda: sticky_pid() is not None and p.health()[1]["healthy"] == 2, 10, "serving again")
    assert {sticky_pid() for _ in range(6)} == {pid}


def two_free_ports() -> int:
    """A port P with P and P+1 free a moment ago."""
    for _ in range(50):
        base = free_port()
        try:
            with socket.socket() as s:
                s.bind((HOST, base + 1))
            return base
        except OSError:
            continue
    raise AssertionError("no two consecutive free ports")


def test_integrated_worker_base_port(start_proxy) -> None:
    base = two_free_ports()
    p = start_proxy(
        None,
        "--dispatch",
        "proxy",
        "--workers",
        "2",
        "--worker-base-port",
        str(base),
        app="prefork_lb.demo:app",
    )
    wait_for(lambda: p.health()[1]["healthy"] == 2, 10, "2 healthy local backends")
    assert sorted(b["name"] for b in p.health()[1]["backends"]) == [f"{HOST}:{base}", f"{HOST}:{base + 1}"]
    # the workers' own ports serve directly too (they are plain HTTP servers)
    assert http_request(base, "GET", "/json").status == 200


def test_integrated_with_a_remote_backend(start_proxy, backends) -> None:
    remote = backends(1)[0]
    p = start_proxy(
        [remote],
        "--dispatch",
        "proxy",
        "--workers",
        "2",
        "--strategy",
        "round_robin",
        *FAST_HEALTH,
        app="prefork_lb.demo:app",
    )
    wait_for(lambda: p.health()[1]["healthy"] == 3, 10, "2 workers and the remote backend healthy")
    servers = Counter(http_request(p.port, "GET", "/json").header("x-backend-server") for _ in range(9))
    assert servers[remote.addr] == 3 and len(servers) == 3, servers


def test_access_log_names_the_backend_and_the_status(start_proxy, backends, tmp_path) -> None:
    b = backends(1)[0]
    log = tmp_path / "access.log"
    p = start_proxy(
        [b],
        "--health-check-interval",
        "0",
        "--access-logfile",
        str(log),
        "--access-logformat",
        '%(h)s "%(r)s" %(s)s %({x-backend-server}o)s %({user-agent}i)s',
    )
    assert http_request(p.port, target="/logged?q=1", headers=[("User-Agent", "probe/1")]).status == 200
    wait_for(lambda: log.exists() and "/logged" in log.read_text(), 5.0, "access log line")
    line = [ln for ln in log.read_text().splitlines() if "/logged" in ln][0]
    assert line == f'127.0.0.1 "GET /logged?q=1 HTTP/1.1" 200 {b.addr} probe/1', line
