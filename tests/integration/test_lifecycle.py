"""The master's lifecycle as a user sees it, with real processes: a reload whose new code fails
and the reload after it, a second server started on an address the first one holds, and the
log lines that say what happened (reload finished, master exiting, autoscaling that holds)."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import pytest

from tests.helpers import DISPATCH_MODES, free_port, http_get, server_env, spawn, stop_process, wait_for

APP = """\
import os

VERSION = {version!r}


def app(environ, start_response):
    body = f"{{VERSION}} {{os.getpid()}}".encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
"""
BROKEN = "raise RuntimeError('a half-written deploy')\n"


def get(port: int, path: str = "/", timeout: float = 5.0) -> tuple[int, bytes]:
    return http_get(port, path, timeout)


class Master:
    """``python -m prefork_lb APP -b 127.0.0.1:PORT ARGS`` in its own process group, its
    stdout and stderr in one log file."""

    def __init__(self, log: Path, port: int, app: str, *args: str, env: dict[str, str] | None = None) -> None:
        self.port = port
        self.log = log
        self._log_f = open(log, "wb")  # noqa: SIM115 - closed by stop()
        cmd = [sys.executable, "-m", "prefork_lb", app, "-b", f"127.0.0.1:{port}", *args]
        self.proc = spawn(cmd, stdout=self._log_f, stderr=subprocess.STDOUT, env=server_env(env))
        self.pid = self.proc.pid

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_ready(self) -> None:
        wait_for(lambda: "Ready:" in self.text() or self.proc.poll() is not None, what="master ready")
        assert self.proc.poll() is None, self.text()

    def wait_log(self, text: str, timeout: float = 20.0) -> None:
        wait_for(lambda: text in self.text(), timeout, f"{text!r} in the master's log")

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def stop(self) -> int | None:
        code = stop_process(self.proc, 10, group=False)  # the master stops its children itself
        self._log_f.close()
        return code


@pytest.fixture
def start(tmp_path: Path) -> Iterator:
    started: list[Master] = []

    def _start(
        app: str, *args: str, port: int = 0, ready: bool = True, env: dict[str, str] | None = None
    ) -> Master:
        m = Master(tmp_path / f"master{len(started)}.log", port or free_port(), app, *args, env=env)
        started.append(m)
        if ready:
            m.wait_ready()
        return m

    yield _start
    for m in started:
        m.stop()


def answer(port: int) -> tuple[str, int]:
    status, body = get(port)
    assert status == 200, body
    version, pid = body.decode().split()
    return version, int(pid)


def test_a_failed_reload_leaves_the_next_reload_and_recycling_working(start, tmp_path: Path) -> None:
    appdir = tmp_path / "app"
    appdir.mkdir()
    source = appdir / "reloadapp.py"
    source.write_text(APP.format(version="v1"))
    m = start(
        "reloadapp:app",
        "-w",
        "1",
        "--max-requests",
        "30",
        "--chdir",
        str(appdir),
        env={"PYTHONDONTWRITEBYTECODE": "1"},
    )
    version, first = answer(m.port)
    assert version == "v1"

    source.write_text(BROKEN)
    m.signal(signal.SIGHUP)
    m.wait_log("Replacement for worker 0 failed to boot")
    assert "a half-written deploy" in m.text()
    assert answer(m.port) == ("v1", first), "the old worker keeps serving"

    # Recycling resumes: past --max-requests the worker is replaced, by the code now on disk.
    source.write_text(APP.format(version="v2-fixed"))
    # (The replacement serves beside the old worker until that one has drained: wait for it to go.)
    wait_for(
        lambda: answer(m.port) and first not in children(m), what="the worker recycled after 30 requests"
    )
    assert answer(m.port)[0] == "v2-fixed"

    # And the next HUP reloads.
    source.write_text(APP.format(version="v3-reloaded"))
    m.signal(signal.SIGHUP)
    wait_for(lambda: answer(m.port)[0] == "v3-reloaded", what="the reloaded code answering")
    m.wait_log("Reload finished: 1 worker replaced\n")
    assert "Reload finished: 0 workers replaced; 1 kept the running code" in m.text()

    m.signal(signal.SIGTERM)
    assert m.proc.wait(timeout=20) == 0
    assert f"Master (pid {m.pid}) exiting: exit code 0" in m.text()


def test_each_failed_replacement_of_a_reload_is_logged_with_its_own_traceback(start, tmp_path: Path) -> None:
    # The replacements start together and fail together: their messages come on the boot pipe
    # in one read, and each failure still gets its line and its traceback.
    appdir = tmp_path / "app"
    appdir.mkdir()
    source = appdir / "reloadapp.py"
    source.write_text(APP.format(version="v1"))
    m = start("reloadapp:app", "-w", "3", "--chdir", str(appdir), env={"PYTHONDONTWRITEBYTECODE": "1"})
    assert answer(m.port)[0] == "v1"

    source.write_text(BROKEN)
    m.signal(signal.SIGHUP)
    for slot in range(3):
        m.wait_log(f"Replacement for worker {slot} failed to boot")
    records = m.text().split("Replacement for worker ")[1:]
    assert len(records) == 3, m.text()
    for record in records:
        line, _, rest = record.partition("\n")
        assert "a half-written deploy" in line and "the old worker keeps serving" in line, record
        assert rest.startswith("Traceback (most recent call last):"), record
        assert "RuntimeError: a half-written deploy" in rest.split("\n[")[0], record
    assert answer(m.port)[0] == "v1", "the old workers keep serving"


def children(m: Master) -> set[int]:
    """The master's live children."""
    pids = set()
    try:
        for c in psutil.Process(m.pid).children():
            try:
                if c.status() != psutil.STATUS_ZOMBIE:
                    pids.add(c.pid)
            except psutil.NoSuchProcess:
                pass
    except psutil.NoSuchProcess:
        pass
    return pids


def pids_answering(port: int, want: set[int]) -> set[int]:
    """Send /pid requests, eight at a time on new connections, until every pid in ``want``
    has answered one (AssertionError after the deadline). Returns the pids seen."""
    seen: set[int] = set()

    def one(_: int) -> int:
        status, body = get(port, "/pid")
        assert status == 200, body
        return int(body)

    def every_pid() -> bool:
        with ThreadPoolExecutor(8) as pool:
            seen.update(pool.map(one, range(8)))
        return want <= seen

    wait_for(every_pid, what=f"answers from each of {sorted(want)}")
    return seen


@pytest.mark.parametrize("mode", DISPATCH_MODES)
def test_a_second_server_on_a_bound_address_exits_2_and_leaves_the_first_alone(start, mode: str) -> None:
    extra = ("--stats-bind", "off") if mode == "proxy" else ()
    first = start("tests.apps:overload", "-w", "2", "--dispatch", mode, *extra)
    workers = wait_for(lambda: worker_pids(first), what="2 workers")
    pids_answering(first.port, workers)

    second = start("tests.apps:overload", "-w", "2", "--dispatch", mode, *extra, port=first.port, ready=False)
    wait_for(lambda: second.proc.poll() is not None, what="the second server to give up")
    assert second.proc.returncode == 2, second.text()
    assert second.text().splitlines() == [
        f"prefork_lb: error: address 127.0.0.1:{first.port} is already in use (--bind)"
    ]
    # The first server's listeners are untouched: it answers, and both workers get traffic.
    assert worker_pids(first) == workers
    pids_answering(first.port, workers)


def worker_pids(m: Master) -> set[int]:
    """The master's worker children (not the dispatcher or the proxy), once there are two."""
    pids = set()
    try:
        for c in psutil.Process(m.pid).children():
            try:
                title = " ".join(c.cmdline())
            except psutil.NoSuchProcess:
                continue
            if "prefork_lb: worker" in title:
                pids.add(c.pid)
    except psutil.NoSuchProcess:
        return set()
    return pids if len(pids) == 2 else set()


def test_a_steady_load_on_one_worker_does_not_make_autoscaling_flap(start) -> None:
    """One client sending request after request saturates one worker: autoscaling adds one,
    then keeps two (it used to remove it a second later, add it again, and so on)."""
    m = start(
        "tests.apps:overload",
        "-w",
        "1",
        "--max-workers",
        "3",
        "--autoscale-up-after",
        "0.5",
        "--autoscale-down-after",
        "1",
    )
    stop = threading.Event()
    served = [0]

    def client() -> None:
        deadline = time.monotonic() + 60
        while not stop.is_set() and time.monotonic() < deadline:
            get(m.port, "/sleep/0.05", timeout=10)
            served[0] += 1

    t = threading.Thread(target=client)
    t.start()
    try:
        m.wait_log("Autoscale: 2 workers")
        # A load, not a synchronisation: many down-after periods of steady load.
        seen = served[0]
        wait_for(lambda: served[0] > seen + 100, timeout=60, what="100 more requests")
    finally:
        stop.set()
        t.join(timeout=20)
    assert "Autoscale: 1 workers" not in m.text()
    assert "Autoscale: 3 workers" not in m.text()
