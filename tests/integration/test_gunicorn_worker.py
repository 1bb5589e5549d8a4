"""Real gunicorn running our worker class: gunicorn -k prefork_lb.gunicorn.Worker."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

pytest.importorskip("gunicorn")

from tests.helpers import free_port, spawn, stop_all, stop_process, wait_for  # noqa: E402


def get(port: int, path: str = "/", headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


class Gunicorn:
    def __init__(self, tmp: Path, app: str, *args: str, worker: str = "prefork_lb.gunicorn.Worker") -> None:
        self.port = free_port()
        self.log = tmp / "gunicorn.log"
        self._f = open(self.log, "wb")
        cmd = [
            sys.executable,
            "-m",
            "gunicorn",
            "-k",
            worker,
            "-b",
            f"127.0.0.1:{self.port}",
            "--control-socket",
            str(tmp / "ctl.sock"),
            # gunicorn waits 30 s by default for a worker to drain: the stop at the end of a
            # test would outlast stop_process's 15 s and end in SIGKILL (a test can override).
            "--graceful-timeout",
            "3",
            *args,
            app,
        ]
        self.proc = spawn(cmd, stdout=self._f, stderr=subprocess.STDOUT)

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_ready(self) -> None:
        def up() -> bool:
            assert self.proc.poll() is None, self.text()
            try:
                return get(self.port)[0] > 0
            except OSError:
                return False

        wait_for(up, what="gunicorn answering")

    def workers(self) -> list[int]:
        try:
            return sorted(
                c.pid for c in psutil.Process(self.proc.pid).children() if c.status() != psutil.STATUS_ZOMBIE
            )
        except psutil.NoSuchProcess:
            return []

    def stop(self) -> None:
        stop_process(self.proc, 15)
        self._f.close()


def starter(tmp_path: Path, worker: str = "prefork_lb.gunicorn.Worker") -> Iterator:
    """A fixture's body: yields a function that starts gunicorn (and waits until it answers);
    stops all it started afterwards."""
    started: list[Gunicorn] = []

    def _start(app: str, *args: str) -> Gunicorn:
        g = Gunicorn(tmp_path, app, *args, worker=worker)
        started.append(g)
        g.wait_ready()
        return g

    yield _start
    stop_all(started)


@pytest.fixture
def gunicorn(tmp_path: Path) -> Iterator:
    yield from starter(tmp_path)


def test_serves_and_writes_gunicorns_access_log(gunicorn) -> None:
    g = gunicorn(
        "prefork_lb.demo:app",
        "-w",
        "2",
        "--access-logfile",
        "-",
        "--access-logformat",
        "%(m)s %(U)s %(s)s %({x-test}i)s",
    )
    status, body = get(g.port, "/json", {"X-Test": "abc"})
    assert status == 200 and b'"pid"' in body
    wait_for(lambda: "GET /json 200 abc" in g.text(), what="access log line")
    g.proc.send_signal(signal.SIGTERM)
    assert g.proc.wait(timeout=40) == 0


def test_limits_and_strict_parsing_apply(gunicorn) -> None:
    g = gunicorn("prefork_lb.demo:app", "-w", "1", "--limit-request-line", "100")
    assert get(g.port, "/" + "a" * 200)[0] == 414
    with socket.create_connection(("127.0.0.1", g.port), timeout=5) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n")
        assert s.recv(100).startswith(b"HTTP/1.1 400")


def test_max_requests_restarts_the_worker(gunicorn) -> None:
    g = gunicorn("prefork_lb.demo:app", "-w", "1", "--max-requests", "5")
    (first,) = wait_for(lambda: g.workers(), what="worker")
    for _ in range(8):
        get(g.port)
    wait_for(lambda: g.workers() and first not in g.workers(), what="worker restarted")
    assert get(g.port)[0] == 200


def test_forwarded_proto_trusted_only_from_allowed_ips(gunicorn) -> None:
    g = gunicorn("tests.apps:scheme", "-w", "1", "--forwarded-allow-ips", "127.0.0.1")
    assert get(g.port, headers={"X-Forwarded-Proto": "https"}) == (200, b"https")
    assert get(g.port) == (200, b"http")
    g2 = gunicorn("tests.apps:scheme", "-w", "1", "--forwarded-allow-ips", "10.9.9.9")
    assert get(g2.port, headers={"X-Forwarded-Proto": "https"}) == (200, b"http")


def test_forwarded_proto_from_allowed_networks_and_the_forwarded_header(gunicorn) -> None:
    """gunicorn's forwarded_allow_ips takes networks too; Forwarded proto= counts as our own
    workers read it, secure_scheme_headers first."""
    g = gunicorn("tests.apps:scheme", "-w", "1", "--forwarded-allow-ips", "127.0.0.0/8")
    assert get(g.port, headers={"X-Forwarded-Proto": "https"}) == (200, b"https")
    assert get(g.port, headers={"Forwarded": "for=192.0.2.1;proto=https"}) == (200, b"https")
    assert get(g.port, headers={"X-Forwarded-Proto": "http", "Forwarded": "proto=https"}) == (200, b"http")
    assert get(g.port) == (200, b"http")
    g2 = gunicorn("tests.apps:scheme", "-w", "1", "--forwarded-allow-ips", "10.9.9.0/24")
    assert get(g2.port, headers={"Forwarded": "for=192.0.2.1;proto=https"}) == (200, b"http")


def test_str_body_is_a_500_and_the_log_names_the_mistake(gunicorn) -> None:
    g = gunicorn("tests.apps:str_body", "-w", "1")
    for path, mistake in (
        ("/yield", "yielded a str from its response iterable"),
        ("/write", "passed a str to write()"),
    ):
        assert get(g.port, path)[0] == 500
        line = f"Error handling request GET {path}: the app {mistake}, not bytes"
        wait_for(lambda line=line: line in g.text(), what="the log line naming the mistake")
    assert get(g.port, "/") == (200, b"ok")


def test_request_hooks_and_timeout_with_worker_abort(gunicorn, tmp_path: Path) -> None:
    out = tmp_path / "hooks.log"
    conf = tmp_path / "gconf.py"
    conf.write_text(
        f"OUT = {str(out)!r}\n"
        "def _w(line):\n"
        "    with open(OUT, 'a') as f:\n"
        "        f.write(line + '\\n')\n"
        "def post_worker_init(worker): _w('post_worker_init')\n"
        "def pre_request(worker, req): _w(f'pre {req.method} {req.path}')\n"
        "def post_request(worker, req, environ, resp): _w(f'post {req.path} {resp.status_code}')\n"
        "def worker_abort(worker): _w('worker_abort')\n"
    )
    g = gunicorn("tests.apps:block_loop", "-w", "1", "--timeout", "2", "-c", str(conf))
    (first,) = wait_for(lambda: g.workers(), what="worker")
    assert get(g.port, "/hello") == (200, b"ok")
    # post_request runs after the response went out: poll for its line, do not race it.
    text = wait_for(lambda: "post /hello 200" in (t := out.read_text()) and t, what="the post_request hook")
    assert "post_worker_init" in text and "pre GET /hello" in text and "post /hello 200" in text
    try:
        get(g.port, "/block")
    except OSError:
        pass  # the blocked worker is killed under this request
    wait_for(lambda: "WORKER TIMEOUT" in g.text(), what="gunicorn's timeout")
    wait_for(lambda: "worker_abort" in out.read_text(), what="worker_abort hook")
    wait_for(lambda: g.workers() and first not in g.workers(), what="replacement worker")


def test_offload_pool_in_gunicorn_workers(gunicorn) -> None:
    g = gunicorn("tests.apps:compute", "-w", "1")
    assert get(g.port, "/offload/20") == (200, b"6765")
    assert get(g.port, "/") == (200, b"ok")


def test_worker_int_hook_and_keepalive_timeout(gunicorn, tmp_path: Path) -> None:
    out = tmp_path / "int.log"
    conf = tmp_path / "gconf.py"
    conf.write_text(f"def worker_int(worker):\n    open({str(out)!r}, 'a').write('worker_int\\n')\n")
    g = gunicorn("prefork_lb.demo:app", "-w", "1", "--keep-alive", "1", "-c", str(conf))
    # keepalive: an idle kept-alive connection is closed after about a second. What proves it
    # is the server's close (EOF) well inside the 10 s socket deadline, by the same worker (so
    # not by a restart): no stopwatch.
    (serving,) = wait_for(lambda: g.workers(), what="worker")
    with socket.create_connection(("127.0.0.1", g.port), timeout=10) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        first = s.recv(65536)
        assert first.startswith(b"HTTP/1.1 200")
        s.settimeout(10)
        while s.recv(65536):  # TimeoutError (the test fails) if the server never closes
            pass
    (worker,) = wait_for(lambda: g.workers(), what="worker")
    assert worker == serving
    os.kill(worker, signal.SIGINT)
    wait_for(lambda: out.exists() and "worker_int" in out.read_text(), what="worker_int hook")


def test_offload_executor_from_prefork_lbs_env_name(gunicorn) -> None:
    """gunicorn parses its command line before it imports the worker class, so the executor is
    named by PREFORK_LB_OFFLOAD_EXECUTOR (here through gunicorn's own -e)."""
    g = gunicorn(
        "tests.apps_offload:app",
        "-w",
        "1",
        "-e",
        "PREFORK_LB_OFFLOAD_EXECUTOR=tests.apps_offload:thread_executor",
    )
    status, body = get(g.port, "/run/20")
    assert status == 200, body
    ran = json.loads(body)
    assert ran["ran"]["result"] == 6765 and ran["ran"]["thread"].startswith("test-executor"), ran
    assert ran["ran"]["pid"] == ran["worker"] in g.workers()  # a thread pool runs in the worker itself
    status, body = get(g.port, "/stats")
    assert json.loads(body)["stats"]["size"] == 4


@pytest.mark.parametrize(
    ("value", "must"),
    [
        (
            "tests.apps_offload:failing_factory",
            "PREFORK_LB_OFFLOAD_EXECUTOR tests.apps_offload:failing_factory: the factory raised RuntimeError",
        ),
        ("dask://nohost", "PREFORK_LB_OFFLOAD_EXECUTOR: expected dask://HOST:PORT, not 'dask://nohost'"),
    ],
)
def test_a_bad_offload_executor_stops_gunicorn_with_one_line(tmp_path: Path, value: str, must: str) -> None:
    g = Gunicorn(tmp_path, "tests.apps_offload:app", "-w", "1", "-e", f"PREFORK_LB_OFFLOAD_EXECUTOR={value}")
    try:
        wait_for(lambda: g.proc.poll() is not None, 60.0, "gunicorn to stop")
    finally:
        g.stop()
    assert g.proc.returncode == 4, g.text()  # gunicorn's "App failed to load."
    assert sum(must in line for line in g.text().splitlines()) == 1, g.text()
    assert "Traceback" not in g.text()
