"""Integrated mode: ``python -m prefork_lb APP --dispatch proxy`` with real workers. See
tests/integration/proxy/driver.py for the processes and clients; conftest.py for the fixtures.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
from collections import Counter

import psutil
import pytest

from tests.helpers import HOST, free_port, wait_for
from tests.integration.proxy.driver import (
    FAST_HEALTH,
    Client,
    Load,
    ProxyProcess,
    connect,
    http_request,
    sticky_cookie,
)
from tests.server import HTTPStream, Response


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
    with Load(p.port, threads=3, limit=5000, seconds=8.0, target="/json") as load:
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
    assert len(kids) == 4  # the proxy, the admin process and two workers
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
    with Load(p.port, threads=3, limit=10_000, seconds=10.0, target="/json") as load:
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
    """A port P with P and P+1 free a moment ago, for a server that binds with SO_REUSEADDR
    as ours does: without it, a connection of another test in TIME_WAIT on P+1 (connect()
    prefers the even ports that bind(0) leaves) would make a free port look taken."""
    for _ in range(200):
        base = free_port()
        try:
            with socket.socket() as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
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
        '%(h)s "%(r)s" %(s)s %(b)s %({x-backend-server}o)s %({user-agent}i)s',
    )
    r = http_request(p.port, target="/logged?q=1", headers=[("User-Agent", "probe/1")])
    assert r.status == 200 and r.body
    wait_for(lambda: log.exists() and "/logged" in log.read_text(), 5.0, "access log line")
    line = [ln for ln in log.read_text().splitlines() if "/logged" in ln][0]
    # %(b)s is the response's Content-Length, as in the JSON line's body size.
    assert line == f'127.0.0.1 "GET /logged?q=1 HTTP/1.1" 200 {len(r.body)} {b.addr} probe/1', line


def upload_and_read(port: int, path: str, size: int) -> Response:
    """POST ``size`` bytes to ``path`` as a client does that streams its upload from one thread
    and reads the answer in another: the answer, however early it comes."""
    sock = connect(port, 20)

    def send() -> None:
        try:
            sock.sendall(b"POST %s HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % (path.encode(), size))
            block = b"u" * 65536
            for _ in range(size // 65536):
                sock.sendall(block)
        except OSError:
            pass  # the other side stopped reading: the answer is what counts

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    try:
        return HTTPStream(sock, 20).read_response()
    finally:
        sock.close()
        sender.join(20)


@pytest.mark.parametrize(("path", "status"), [("/too-large", 413), ("/moved", 303)])
def test_an_upload_the_app_does_not_read_gets_the_apps_early_answer(
    start_proxy, path: str, status: int
) -> None:
    """8 MiB that the app does not read: it answers at once, and the worker closes the
    connection without reading the rest (which resets it). The client gets the app's answer,
    as it does from the worker directly, never 502; an upload the app reads still arrives."""
    p = start_proxy(None, "--dispatch", "proxy", "--workers", "1", app="tests.apps:answer_early")
    wait_for(lambda: p.health()[1]["healthy"] == 1, 10, "the worker up")
    size = 8 * 1024 * 1024
    for _ in range(3):
        r = upload_and_read(p.port, path, size)
        assert r.status == status and r.body.startswith(b"too large" if status == 413 else b"see"), r
    r = upload_and_read(p.port, "/read", size)
    assert r.status == 200 and r.body == str(size).encode(), r


def drain_line(p: ProxyProcess, pid: int) -> str | None:
    """The graceful stop's line of worker ``pid``, once it wrote it."""
    lines = [line for line in p.text().splitlines() if f"[{pid}] [INFO] Graceful stop: draining" in line]
    return lines[0] if lines else None


@pytest.mark.parametrize(
    ("app", "interface"),
    [("prefork_lb.demo:app", "wsgi"), ("tests.apps_asgi:behave", "asgi")],
    ids=["wsgi", "asgi"],
)
def test_integrated_a_reload_keeps_the_idle_grace_a_stop_skips(start_proxy, app: str, interface: str) -> None:
    """A reload's old worker keeps serving a moment while the proxy learns that it drains (its
    drain line says so); a stop of the whole server stops the proxy first, so the last
    worker's drain closes its idle connections at once (no such words in its line)."""
    p = start_proxy(None, "--dispatch", "proxy", "--workers", "1", "--interface", interface, app=app)
    wait_for(lambda: p.health()[1]["healthy"] == 1, 10, "a healthy local backend")
    (old,) = p.worker_pids()
    os.kill(p.pid, signal.SIGHUP)
    reload_line = wait_for(lambda: drain_line(p, old), 15, "the reload's drain line")
    assert reload_line.endswith("(serving 1 s more first, while the proxy learns of it)"), reload_line
    (new,) = wait_for(
        lambda: len(pids := p.worker_pids()) == 1 and old not in pids and pids, 15, "the new worker"
    )
    wait_for(lambda: p.health()[1]["healthy"] == 1, 10, "the new worker healthy")
    os.kill(p.pid, signal.SIGTERM)
    assert p.proc is not None and p.proc.wait(15) == 0, p.text()
    stop_line = drain_line(p, new)
    assert stop_line is not None and "more first" not in stop_line, p.text()
    assert "Traceback" not in p.text(), p.text()
