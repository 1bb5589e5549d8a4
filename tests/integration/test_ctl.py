"""``prefork_lb ctl`` against real servers over their control socket (--control-socket).

Each test starts a server (or a standalone proxy in front of recording backends), runs
``python -m prefork_lb ctl --socket PATH ...`` as a subprocess and asserts on what a user sees:
its output and exit code, the process list, /lb-stats and /metrics, where requests went. The
robustness tests talk to the socket directly: bad JSON, an oversized line, a client that never
writes, 100 clients at once. Every wait polls with a deadline.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import DISPATCH_MODES, ROOT, http_get, server_env, wait_for
from tests.integration.conftest import StartServer
from tests.integration.proxy.backends import Backend
from tests.integration.proxy.driver import ProxyProcess
from tests.server import ServerProcess

APP = "tests.apps:hello"


def ctl(sock: Path, *args: str, timeout: float = 90.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "prefork_lb", "ctl", "--socket", str(sock), *args],
        env=server_env({"PYTHONPATH": str(ROOT)}),
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )


def ctl_json(sock: Path, *args: str) -> dict[str, Any]:
    r = ctl(sock, "--json", *args)
    assert r.returncode == 0, r
    doc: dict[str, Any] = json.loads(r.stdout)
    return doc


def raw(sock: Path, data: bytes, timeout: float = 20.0) -> dict[str, Any]:
    """Send bytes on a new connection; the first answer line, as JSON."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(str(sock))
        s.sendall(data)
        buf = b""
        while b"\n" not in buf:
            chunk = s.recv(65536)
            assert chunk, f"closed without an answer (got {buf!r})"
            buf += chunk
    doc: dict[str, Any] = json.loads(buf.partition(b"\n")[0])
    return doc


@pytest.fixture
def sock_path() -> Iterator[Path]:
    # A short path of its own (unix socket paths are limited to about 100 bytes).
    d = Path(tempfile.mkdtemp(prefix="plb-ctl-", dir="/tmp"))
    yield d / "ctl.sock"
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def server(start_server: StartServer, sock_path: Path) -> Iterator[ServerProcess]:
    srv = start_server(APP, "-w", "2", "--control-socket", str(sock_path))
    wait_for(lambda: len(ready_workers(sock_path)) == 2, 30, "2 ready workers")
    yield srv


@pytest.fixture(params=DISPATCH_MODES)
def any_mode(request: pytest.FixtureRequest, start_server: StartServer, sock_path: Path) -> ServerProcess:
    srv = start_server(APP, "-w", "2", "--dispatch", request.param, "--control-socket", str(sock_path))
    wait_for(lambda: len(ready_workers(sock_path)) == 2, 30, "2 ready workers")
    return srv


def ready_workers(sock: Path) -> list[int]:
    """The pids of the ready workers ctl reports ([] while it cannot say)."""
    r = ctl(sock, "--json", "status")
    if r.returncode != 0:
        return []
    return sorted(w["pid"] for w in json.loads(r.stdout)["workers"] if w["state"] == "ready")


# -- the server ----------------------------------------------------------------------------------


def test_socket_is_private(server: ServerProcess, sock_path: Path) -> None:
    st = os.stat(sock_path)
    assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600


def test_status_lists_the_real_worker_pids(any_mode: ServerProcess, sock_path: Path) -> None:
    server = any_mode
    pids = server.children_titled("worker")
    r = ctl(sock_path, "status")
    assert r.returncode == 0, r
    assert f"master {server.pid}" in r.stdout
    for pid in pids:
        assert str(pid) in r.stdout
    doc = ctl_json(sock_path, "workers")
    assert sorted(w["pid"] for w in doc["workers"]) == pids
    assert all(w["rss"] > 0 and w["state"] == "ready" for w in doc["workers"])


def test_scale_up_and_down(server: ServerProcess, sock_path: Path) -> None:
    r = ctl(sock_path, "scale", "+1")
    assert r.returncode == 0 and "3 workers ready" in r.stdout, r
    wait_for(lambda: len(server.children_titled("worker")) == 3, 20, "3 worker processes")
    r = ctl(sock_path, "scale", "-1")
    assert r.returncode == 0, r
    wait_for(lambda: len(server.children_titled("worker")) == 2, 20, "2 worker processes")
    r = ctl(sock_path, "scale", "1")
    assert r.returncode == 0, r
    wait_for(lambda: len(server.children_titled("worker")) == 1, 20, "1 worker process")


def test_reload_starts_new_workers(any_mode: ServerProcess, sock_path: Path) -> None:
    server = any_mode
    before = set(server.children_titled("worker"))
    r = ctl(sock_path, "reload")
    assert r.returncode == 0 and "reloaded: every worker was replaced" in r.stdout, r
    now = ready_workers(sock_path)
    assert len(now) == 2 and not set(now) & before
    wait_for(lambda: set(server.children_titled("worker")) == set(now), 30, "the old workers gone")
    assert http_get(server.port)[0] == 200


def test_reload_whose_workers_fail_exits_1(
    start_server: StartServer, sock_path: Path, tmp_path: Path
) -> None:
    (tmp_path / "ctlapp.py").write_text("from tests.apps import hello as app\n")
    srv = start_server(
        "ctlapp:app", "--control-socket", str(sock_path), env={"PYTHONPATH": f"{tmp_path}:{ROOT}"}
    )
    before = srv.children_titled("worker")
    (tmp_path / "ctlapp.py").write_text("raise RuntimeError('broken on purpose')\n")
    r = ctl(sock_path, "reload")
    assert r.returncode == 1, r
    assert "reload failed" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert srv.children_titled("worker") == before  # the old worker serves on
    assert http_get(srv.port)[0] == 200


def test_reopen_logs(start_server: StartServer, sock_path: Path, tmp_path: Path) -> None:
    log = tmp_path / "error.log"
    srv = start_server(APP, "--control-socket", str(sock_path), "--error-logfile", str(log))
    wait_for(lambda: log.exists() and "Ready" in log.read_text(), 20, "the error log")
    log.rename(tmp_path / "error.log.1")
    r = ctl(sock_path, "reopen-logs")
    assert r.returncode == 0 and str(srv.pid) in r.stdout, r
    wait_for(log.exists, 20, "a new error log")
    ctl(sock_path, "scale", "+1")
    wait_for(lambda: "scale to 2" in log.read_text(), 20, "the master writing to the new log")


def test_stop_ends_the_server(server: ServerProcess, sock_path: Path) -> None:
    r = ctl(sock_path, "stop", "--graceful-timeout", "5")
    assert r.returncode == 0 and "stopped" in r.stdout, r
    assert server.proc is not None
    assert server.proc.wait(20) == 0
    # The workers drained for the 5 s asked for, and said so (not the --graceful-timeout 30 s).
    drains = [line for line in server.log_text().splitlines() if "Graceful stop: draining" in line]
    assert len(drains) == 2 and all(line.endswith("up to 5 s") for line in drains), drains
    assert not sock_path.exists()
    r = ctl(sock_path, "status")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r


# -- mistakes: one line, exit 2 ------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ("scale",),
        ("scale", "lots"),
        ("scale", "500"),
        ("frobnicate",),
        ("status", "extra"),
        ("--nope", "status"),
        ("backend", "drain", "10.0.0.1:80"),  # no proxy here
        ("stop", "--graceful-timeout", "soon"),
    ],
)
def test_mistakes_get_one_line_and_exit_2(
    server: ServerProcess, sock_path: Path, args: tuple[str, ...]
) -> None:
    r = ctl(sock_path, *args)
    assert r.returncode == 2, r
    assert r.stdout == "" and len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr, r
    assert server.alive


def test_no_server_is_one_line_exit_2(sock_path: Path) -> None:
    r = ctl(sock_path, "status")
    assert r.returncode == 2 and "no control socket" in r.stderr and len(r.stderr.splitlines()) == 1, r


# -- a client cannot crash or hang the master ------------------------------------------------------


def test_bad_requests_are_refused_and_the_server_goes_on(server: ServerProcess, sock_path: Path) -> None:
    assert raw(sock_path, b"{not json\n")["ok"] is False
    assert raw(sock_path, b"[1, 2]\n")["ok"] is False
    assert raw(sock_path, b'{"cmd": "scale", "workers": {"x": 1}}\n')["exit"] == 2
    assert "longer" in raw(sock_path, b"x" * 70000)["error"]
    assert raw(sock_path, b'{"cmd": "status"}\n')["ok"] is True


def test_an_idle_client_does_not_block_others(server: ServerProcess, sock_path: Path) -> None:
    admin = server.children_titled("admin")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as idle:
        idle.connect(str(sock_path))  # and never writes
        r = ctl(sock_path, "status")
        assert r.returncode == 0, r
        idle.settimeout(30)
        assert idle.recv(10) == b""  # the server hangs up on it (its read timeout)
    assert server.children_titled("admin") == admin


def test_100_concurrent_clients_are_all_answered(server: ServerProcess, sock_path: Path) -> None:
    admin = server.children_titled("admin")
    answers: list[dict[str, Any]] = []
    errors: list[BaseException] = []

    def one() -> None:
        try:
            answers.append(raw(sock_path, b'{"cmd": "workers"}\n', timeout=60))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=one) for _ in range(100)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(90)
    assert not errors and len(answers) == 100
    assert all(a["ok"] and len(a["workers"]) == 2 for a in answers)
    assert server.children_titled("admin") == admin


# -- the proxy -----------------------------------------------------------------------------------


@pytest.fixture
def proxy(tmp_path: Path, sock_path: Path) -> Iterator[Callable[..., tuple[ProxyProcess, list[Backend]]]]:
    made: list[Backend] = []
    started: list[ProxyProcess] = []

    def start(n: int = 2) -> tuple[ProxyProcess, list[Backend]]:
        bs = [Backend(name=f"b{i}").start() for i in range(n)]
        made.extend(bs)
        args = ["proxy", "--backends", ",".join(b.addr for b in bs), "--strategy", "round_robin"]
        args += ["--health-check-interval", "0"]
        p = ProxyProcess(tmp_path, [*args, "--control-socket", str(sock_path)])
        started.append(p)
        return p.start(), bs

    try:
        yield start
    finally:
        for p in started:
            p.stop()
        for b in made:
            b.stop()


def backend_doc(p: ProxyProcess, name: str) -> dict[str, Any]:
    return next(b for b in p.stats()["backends"] if b["name"] == name)


def send(p: ProxyProcess, n: int) -> None:
    for _ in range(n):
        assert http_get(p.port)[0] == 200


def test_backend_disable_drain_enable_weight(proxy: Any, sock_path: Path) -> None:
    p, (b0, b1) = proxy()
    r = ctl(sock_path, "backend", "disable", b1.addr)
    assert r.returncode == 0 and "disabled" in r.stdout, r
    assert backend_doc(p, b1.addr)["state"] == "disabled"
    seen = len(b1.requests)
    send(p, 10)
    assert len(b1.requests) == seen  # nothing goes to a disabled backend
    assert len(b0.requests) >= 10
    listed = ctl(sock_path, "backend", "list")
    assert listed.returncode == 0 and "disabled" in listed.stdout

    assert ctl(sock_path, "backend", "enable", b1.addr).returncode == 0
    send(p, 10)
    assert len(b1.requests) > seen

    assert ctl(sock_path, "backend", "drain", b0.addr).returncode == 0
    assert backend_doc(p, b0.addr)["state"] == "draining"
    seen = len(b0.requests)
    send(p, 5)
    assert len(b0.requests) == seen

    r = ctl(sock_path, "backend", "weight", b1.addr, "7")
    assert r.returncode == 0 and "weight 7" in r.stdout, r
    assert backend_doc(p, b1.addr)["weight"] == 7
    status, body = http_get(p.admin_port, "/metrics")
    assert status == 200
    text = body.decode()
    assert f'prefork_lb_backend_weight{{backend="{b1.addr}"}} 7.0' in text
    assert f'prefork_lb_backend_state{{backend="{b0.addr}",state="draining"}} 1.0' in text

    r = ctl(sock_path, "backend", "disable", "10.9.9.9:1")
    assert r.returncode == 2 and "unknown backend" in r.stderr and len(r.stderr.splitlines()) == 1, r


def test_standalone_proxy_add_and_remove(proxy: Any, sock_path: Path) -> None:
    p, (b0,) = proxy(1)
    extra = Backend(name="extra").start()
    try:
        r = ctl(sock_path, "backend", "add", extra.addr)
        assert r.returncode == 0 and "added" in r.stdout, r
        assert backend_doc(p, extra.addr)["state"] == "up"
        send(p, 10)
        assert extra.requests  # round robin reaches the new backend
        r = ctl(sock_path, "backend", "add", extra.addr)
        assert r.returncode == 2 and "already" in r.stderr, r
        r = ctl(sock_path, "backend", "remove", extra.addr)
        assert r.returncode == 0 and "removed" in r.stdout, r
        assert [b["name"] for b in p.stats()["backends"]] == [b0.addr]
        seen = len(extra.requests)
        send(p, 5)
        assert len(extra.requests) == seen
        r = ctl(sock_path, "status")
        assert r.returncode == 0 and b0.addr in r.stdout and extra.addr not in r.stdout, r
    finally:
        extra.stop()


def test_integrated_proxy_drains_a_local_worker_slot(start_server: StartServer, sock_path: Path) -> None:
    srv = start_server(APP, "-w", "2", "--dispatch", "proxy", "--control-socket", str(sock_path))

    def two_backends() -> dict[str, Any] | None:
        d = ctl_json(sock_path, "status")
        return d if len(d["backends"]) == 2 else None

    doc = wait_for(two_backends, 20, "2 local backends")
    by_slot = {b["slot"]: b["name"] for b in doc["backends"]}
    r = ctl(sock_path, "backend", "drain", by_slot[1])
    assert r.returncode == 0 and "draining" in r.stdout, r

    def sent() -> dict[int, int]:
        return {b["slot"]: b["requests"] for b in ctl_json(sock_path, "backend", "list")["backends"]}

    before = sent()
    for _ in range(10):
        assert http_get(srv.port)[0] == 200
    after = sent()
    assert after[1] == before[1] and after[0] == before[0] + 10  # only slot 0 got them
    r = ctl(sock_path, "backend", "remove", by_slot[0])
    assert r.returncode == 2 and "scale the workers" in r.stderr, r


def test_usr2_hands_the_control_socket_to_the_new_master(server: ServerProcess, sock_path: Path) -> None:
    old = server.pid
    os.kill(old, signal.SIGUSR2)
    assert server.proc is not None and server.proc.wait(30) == 0  # it drains once the new one is ready

    def new_master() -> int | None:
        r = ctl(sock_path, "--json", "status")
        pid = json.loads(r.stdout)["master"]["pid"] if r.returncode == 0 else None
        return pid if pid not in (None, old) else None

    pid = wait_for(new_master, 30, "the new master answering on the control socket")
    assert stat.S_IMODE(os.stat(sock_path).st_mode) == 0o600
    r = ctl(sock_path, "stop")
    assert r.returncode == 0 and str(pid) in r.stdout, r


def test_standalone_proxy_reload_waits_for_the_new_proxy(proxy: Any, sock_path: Path) -> None:
    p, _ = proxy(1)
    old = p.proxy_pid()
    r = ctl(sock_path, "reload")
    assert r.returncode == 0 and "reloaded: the proxy process was replaced" in r.stdout, r
    new = [
        r
        for r in ctl_json(sock_path, "status")["processes"]
        if r["role"] == "helper" and r["state"] == "ready"
    ]
    assert {r["pid"] for r in new} - {old}  # a new proxy is ready (the old one drains, then exits)
    r = ctl(sock_path, "scale", "+1")
    assert r.returncode == 2 and "no workers" in r.stderr, r


def test_an_added_backend_is_checking_until_its_first_health_check(tmp_path: Path, sock_path: Path) -> None:
    b0 = Backend(name="b0").start()
    hang, good, bad = (
        Backend(name="hang", mode="hang"),
        Backend(name="good"),
        Backend(name="bad", health_status=503),
    )
    for b in (hang, good, bad):
        b.start()
    args = ["proxy", "--backends", b0.addr, "--strategy", "round_robin", "--health-check-interval", "1"]
    p = ProxyProcess(tmp_path, [*args, "--health-check-timeout", "30", "--control-socket", str(sock_path)])
    try:
        p.start()
        for b in (hang, good, bad):
            r = ctl(sock_path, "backend", "add", b.addr)
            assert r.returncode == 0 and "added" in r.stdout, r
        # The hanging one's first check never ends (within the test): it stays "checking", gets
        # no traffic (a request sent to it would hang), and /lb-health says why it is not up.
        wait_for(lambda: backend_doc(p, good.addr)["state"] == "up", 10, "the good backend up")
        wait_for(lambda: backend_doc(p, bad.addr)["state"] == "down", 10, "the bad backend down")
        assert backend_doc(p, hang.addr)["state"] == "checking"
        listed = ctl(sock_path, "backend", "list")
        assert listed.returncode == 0 and "checking" in listed.stdout, listed
        (row,) = [b for b in p.health()[1]["backends"] if b["name"] == hang.addr]
        assert not row["healthy"] and row["reason"] == "waiting for its first health check", row
        send(p, 6)
        served = {b.name: sum(r.target == "/" for r in b.requests) for b in (b0, good, bad)}
        assert served == {"b0": 3, "good": 3, "bad": 0}, served  # (health checks are on /health)
    finally:
        p.stop()
        for b in (b0, hang, good, bad):
            b.stop()


def test_backend_changes_outlive_a_reload_of_the_proxy(proxy: Any, sock_path: Path) -> None:
    p, (b0, b1) = proxy()
    extra = Backend(name="extra").start()
    try:
        assert ctl(sock_path, "backend", "disable", b1.addr).returncode == 0
        assert ctl(sock_path, "backend", "add", f"{extra.addr}=3").returncode == 0
        old = p.proxy_pid()
        r = ctl(sock_path, "reload")
        assert r.returncode == 0, r
        ready = [
            r["pid"]
            for r in ctl_json(sock_path, "status")["processes"]
            if r["role"] == "helper" and r["state"] == "ready"
        ]
        assert set(ready) - {old}
        states = {b["name"]: (b["state"], b["weight"]) for b in p.stats()["backends"]}
        assert states == {b0.addr: ("up", 1), b1.addr: ("disabled", 1), extra.addr: ("up", 3)}
        seen = len(b1.requests)
        send(p, 8)
        assert len(b1.requests) == seen and extra.requests
    finally:
        extra.stop()
