"""The master with real processes, in every dispatch mode: respawn, signals, no orphans,
queued connections surviving a worker's death, zero failures across a reload."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tests.helpers import (
    DISPATCH_MODES,
    ROOT,
    free_port,
    http_get,
    kill_group,
    listen_ports,
    spawn,
    stop_all,
    stop_process,
    unread_requests,
    wait_for,
)

MODES = DISPATCH_MODES
# The same master tests over both interfaces (--interface auto): the ASGI app answers /json too.
HELPERS = (
    "prefork_lb: dispatcher",
    "prefork_lb: proxy",
    "prefork_lb: admin",
)  # children that are not workers


def get(port: int, path: str = "/json", timeout: float = 5.0) -> tuple[int, bytes]:
    return http_get(port, path, timeout)


class Master:
    def __init__(self, tmp: Path, *args: str, app: str = "prefork_lb.demo:app") -> None:
        self.port = free_port()
        self.log = tmp / "master.log"
        self._log_f = open(self.log, "wb")
        if "proxy" in args and "--stats-bind" not in args:
            args = (*args, "--stats-bind", "off")  # the default admin port may be taken here
        cmd = [sys.executable, "-m", "prefork_lb", app, "-b", f"127.0.0.1:{self.port}", *args]
        # No control socket: its default path is one per user, and its admin process would
        # add a child (and a child_exit hook call) to what these tests watch.
        env = dict(os.environ, PREFORK_LB_CONTROL_SOCKET="off")
        self.proc = spawn(cmd, stdout=self._log_f, stderr=subprocess.STDOUT, env=env)
        self.pid = self.proc.pid

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_ready(self) -> None:
        wait_for(lambda: "Ready:" in self.text() or self.proc.poll() is not None, what="master ready")
        assert self.proc.poll() is None, self.text()

    def workers(self) -> list[int]:
        """Worker pids (the handoff dispatcher and the proxy, also children, are not)."""
        pids = []
        try:
            for c in psutil.Process(self.pid).children():
                try:
                    title = " ".join(c.cmdline())
                    if c.status() != psutil.STATUS_ZOMBIE and not any(h in title for h in HELPERS):
                        pids.append(c.pid)
                except psutil.NoSuchProcess:
                    pass
        except psutil.NoSuchProcess:
            return []
        return sorted(pids)

    def dispatcher(self) -> int | None:
        try:
            for c in psutil.Process(self.pid).children():
                if "prefork_lb: dispatcher" in " ".join(c.cmdline()):
                    return c.pid
        except psutil.NoSuchProcess:
            pass
        return None

    def signal(self, sig: int) -> None:
        os.kill(self.pid, sig)

    def stop(self) -> None:
        stop_process(self.proc, 10, group=False)  # the master stops its children itself
        self._log_f.close()

    def discard(self) -> None:
        """The fixtures' stop after a test (see tests/server.py ServerProcess.discard): QUIT,
        a fast stop with no drain to wait out."""
        stop_process(self.proc, 10, group=False, sig=signal.SIGQUIT)
        self._log_f.close()


LOAD_SECONDS = 150.0
# Per thread. The time bound is the one that ends a load in practice: a fast client used up
# 20,000 in under 40 s while a drain took its 10 s (CI, Python 3.12), and the test read the
# load's end as a server that stopped answering.
LOAD_REQUESTS = 200_000


class Load:
    """Four client threads, each sending GET /json in a loop (new connection each), counting
    answers and failures, until the block ends. Bounded: LOAD_SECONDS and LOAD_REQUESTS per
    thread, more than a test's own waits add up to on a slow machine (a load that ended by
    itself first would read as a server that stopped answering)."""

    def __init__(self, port: int, log: Path | None = None) -> None:
        self.port = port
        self.log = log  # the master's log, quoted when a wait fails
        self.ok = [0]
        self.failures: list[str] = []
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._client) for _ in range(4)]
        self.started = time.monotonic()
        self.ended: list[str] = []  # why each thread stopped

    def _client(self) -> None:
        deadline = time.monotonic() + LOAD_SECONDS
        for _ in range(LOAD_REQUESTS):
            if self.stop.is_set():
                break
            if time.monotonic() >= deadline:
                self.ended.append("time")
                return
            try:
                status, _ = get(self.port)
                if status == 200:
                    self.ok[0] += 1
                else:
                    self.failures.append(str(status))
            except OSError as exc:
                self.failures.append(repr(exc))
        else:
            self.ended.append("count")
            return
        self.ended.append("stopped")

    def served(self) -> int:
        return self.ok[0]

    def wait_more(self, n: int = 50) -> None:
        seen = self.served()
        try:
            wait_for(lambda: self.served() > seen + n, what=f"{n} more requests served")
        except AssertionError as exc:
            tail = self.log.read_text(errors="replace")[-3000:] if self.log is not None else ""
            raise AssertionError(
                f"{exc}: {self.served() - seen} in the wait, {self.served()} in all, "
                f"{time.monotonic() - self.started:.1f} s into the load, threads ended: {self.ended}, "
                f"failures: {self.failures[-8:]}; the master's log ends:\n{tail}"
            ) from None

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=30)


def start_masters(
    tmp_path: Path, default_app: str = "prefork_lb.demo:app", stats_off: bool = False
) -> Iterator:
    """The body of a ``start`` fixture: ``start(*args, ready=True, app=default_app)`` starts a
    Master (waiting for Ready: unless ``ready`` is False); each is stopped at the end.
    ``stats_off``: ``--stats-bind off`` unless the args name one (no admin process among the
    children a test watches)."""
    started: list[Master] = []

    def _start(*args: str, ready: bool = True, app: str = default_app) -> Master:
        if stats_off and "--stats-bind" not in args:
            args = (*args, "--stats-bind", "off")
        m = Master(tmp_path, *args, app=app)
        started.append(m)
        if ready:
            m.wait_ready()
        return m

    try:
        yield _start
    finally:
        stop_all(started)


@pytest.fixture
def start(tmp_path: Path) -> Iterator:
    yield from start_masters(tmp_path)


MASTER_CASES = [(mode, app) for mode in MODES for app in ("wsgi", "asgi")]
# The same master tests over both interfaces (--interface auto): the ASGI app answers /json too.
APP_PATHS = {"wsgi": "prefork_lb.demo:app", "asgi": "tests.apps_asgi_worker:app"}


@pytest.fixture(scope="module", params=MASTER_CASES, ids=[f"{m}-{a}" for m, a in MASTER_CASES])
def two_workers(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    """``get()``: one ``-w 2`` master per (mode, interface) that the mode x interface tests take
    turns on (pytest runs every test of one case before starting the next case's master): each
    leaves it with two workers; a test that ends it (TERM) or leaves it otherwise gets the next
    test a fresh one. Starting a master per test cost ~2 s each, 40 times."""
    mode, app = request.param
    masters = contextlib.contextmanager(start_masters)
    with masters(tmp_path_factory.mktemp("master"), APP_PATHS[app]) as starter:
        current: list[Master] = []

        def get() -> Master:
            if current and current[0].proc.poll() is None:
                try:
                    wait_for(lambda: len(current[0].workers()) == 2, 5, "2 workers")
                    return current[0]
                except AssertionError:
                    pass  # left in a bad state by a failed test: start another
            # --graceful-timeout: test_reload_under_load_fails_no_request's old workers drain.
            current[:] = [starter("-w", "2", "--dispatch", mode, "--graceful-timeout", "10")]
            return current[0]

        yield get


def test_killed_worker_is_replaced_and_serving_continues(two_workers) -> None:
    m = two_workers()
    seen = len(m.text())
    first = wait_for(lambda: len(m.workers()) == 2 and m.workers(), what="2 workers")
    os.kill(first[0], signal.SIGKILL)
    wait_for(lambda: len(m.workers()) == 2 and first[0] not in m.workers(), what="replacement")
    statuses = {get(m.port)[0] for _ in range(20)}
    assert statuses == {200}
    assert "died unexpectedly: killed by SIGKILL" in m.text()[seen:]


def test_connections_queued_for_a_dead_worker_are_served(two_workers) -> None:
    """A stopped worker accepts nothing; connections wait in the kernel. When it is killed,
    its replacement (reuseport: same slot socket, kept by the master) or the other worker
    (shared) serves them: no request is lost."""
    m = two_workers()
    workers = wait_for(lambda: len(m.workers()) == 2 and m.workers(), what="2 workers")
    victim = workers[0]
    os.kill(victim, signal.SIGSTOP)
    results: list[int] = []
    sent = [0]
    lock = threading.Lock()

    def one() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", m.port, timeout=20)
        try:
            try:
                conn.request("GET", "/json")
            finally:  # sent, or failed to send (then its result is -1)
                with lock:
                    sent[0] += 1
            resp = conn.getresponse()
            status = resp.status
            resp.read()
        except OSError:
            status = -1
        finally:
            conn.close()
        with lock:
            results.append(status)

    threads = [threading.Thread(target=one) for _ in range(16)]
    for t in threads:
        t.start()
    # Kill the victim once every request is either answered or queued in the kernel behind it
    # (unread bytes on a connection to one of the server's ports; the proxy may pipeline two
    # requests on one connection to the stopped worker), not after a guessed sleep.
    ports = listen_ports(m.pid)
    wait_for(
        lambda: sent[0] == 16 and len(results) + unread_requests(ports) >= 16,
        what="every request answered or queued behind the stopped worker",
    )
    os.kill(victim, signal.SIGKILL)
    for t in threads:
        t.join(timeout=30)
    assert results.count(200) == 16, results


def test_reload_under_load_fails_no_request(two_workers) -> None:
    m = two_workers()
    old = wait_for(lambda: len(m.workers()) == 2 and m.workers(), what="2 workers")
    with Load(m.port, m.log) as load:
        load.wait_more()
        m.signal(signal.SIGHUP)
        wait_for(
            lambda: len(set(m.workers()) - set(old)) == 2 and not set(m.workers()) & set(old),
            what="old workers replaced",
        )
        load.wait_more()
    assert load.failures == []


def test_ttin_ttou(two_workers) -> None:
    m = two_workers()
    wait_for(lambda: len(m.workers()) == 2, what="2 workers")
    m.signal(signal.SIGTTIN)
    wait_for(lambda: len(m.workers()) == 3, what="3 workers after TTIN")
    m.signal(signal.SIGTTOU)
    wait_for(lambda: len(m.workers()) == 2, what="2 workers after TTOU")
    assert {get(m.port)[0] for _ in range(10)} == {200}


def test_sigkill_of_the_master_takes_the_workers_down(start) -> None:
    m = start("-w", "2")
    workers = wait_for(lambda: len(m.workers()) == 2 and m.workers(), what="2 workers")
    m.signal(signal.SIGKILL)
    m.proc.wait(timeout=5)

    def gone() -> bool:
        for p in workers:
            try:
                if psutil.Process(p).status() != psutil.STATUS_ZOMBIE:
                    return False
            except psutil.NoSuchProcess:
                pass
        return True

    wait_for(gone, timeout=5, what="workers exit after the master's SIGKILL")


def test_boot_failure_exits_with_one_line(start) -> None:
    m = start("-w", "2", ready=False, app="prefork_lb.demo:missing")
    assert m.proc.wait(timeout=20) == 2
    lines = [ln for ln in m.text().splitlines() if ln.startswith("prefork_lb: error:")]
    assert lines == ["prefork_lb: error: module 'prefork_lb.demo' has no attribute 'missing'"]
    assert "Traceback" not in m.text()


def test_max_requests_recycles_without_failures(start) -> None:
    m = start("-w", "1", "--max-requests", "20")
    first = wait_for(lambda: m.workers(), what="worker")
    statuses = [get(m.port)[0] for _ in range(60)]
    assert statuses == [200] * 60
    wait_for(lambda: m.workers() and m.workers()[0] not in first, what="recycled worker")
    assert "asking to be replaced" in m.text()


def test_process_titles(start) -> None:
    m = start("-w", "1")
    (w,) = wait_for(lambda: m.workers(), what="worker")
    assert psutil.Process(m.pid).cmdline()[0].startswith("prefork_lb: master [prefork_lb.demo:app]")
    assert psutil.Process(w).cmdline()[0].startswith("prefork_lb: worker 0 [prefork_lb.demo:app]")


@pytest.mark.parametrize("mode", MODES)
def test_usr2_binary_upgrade_under_load(start, tmp_path: Path, mode: str) -> None:
    pidfile = tmp_path / "master.pid"
    m = start("-w", "2", "--dispatch", mode, "-p", str(pidfile))
    old_workers = wait_for(lambda: len(m.workers()) == 2 and m.workers(), what="2 workers")
    with Load(m.port, m.log) as load:
        load.wait_more()
        m.signal(signal.SIGUSR2)
        # The old master exits (0) once the new one is ready and has asked it to drain.
        assert m.proc.wait(timeout=30) == 0
        new_pid = int(pidfile.read_text())
        assert new_pid != m.pid

        def new_children() -> list[int]:
            return [
                c.pid
                for c in psutil.Process(new_pid).children()
                if not any(h in " ".join(c.cmdline()) for h in HELPERS)
            ]

        new_workers = wait_for(lambda: len(new_children()) == 2 and new_children(), what="new workers")
        assert not set(new_workers) & set(old_workers)
        load.wait_more()  # served by the new master
    assert load.failures == []
    assert "Binary upgrade: asking the old master" in m.text()


def test_systemd_socket_activation_and_notify(tmp_path: Path) -> None:
    port = free_port()
    notify_path = str(tmp_path / "notify.sock")
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(notify_path)
    notify.settimeout(20)
    # Like systemd: the listener is fd 3, LISTEN_PID is the pid that execs the server.
    launcher = (
        "import os, socket, sys\n"
        f"s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(('127.0.0.1', {port})); s.listen(64)\n"
        "os.dup2(s.fileno(), 3); os.set_inheritable(3, True)\n"
        "os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS='1')\n"
        "os.execv(sys.executable, [sys.executable, '-m', 'prefork_lb', 'prefork_lb.demo:app', '-w', '2',"
        " '-b', '127.0.0.1:1'])\n"
    )
    log = open(tmp_path / "log", "wb")
    proc = spawn(
        [sys.executable, "-c", launcher],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=dict(os.environ, NOTIFY_SOCKET=notify_path),
    )
    try:
        msg = notify.recv(1024).decode()
        assert "READY=1" in msg
        assert {get(port)[0] for _ in range(10)} == {200}
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
    finally:
        notify.close()
        log.close()
        kill_group(proc)
        proc.wait(timeout=5)


def test_config_file_hooks_run_in_order(start, tmp_path: Path) -> None:
    out = tmp_path / "hooks.log"
    conf = tmp_path / "conf.py"
    conf.write_text(
        "import os\n"
        f"OUT = {str(out)!r}\n"
        "def _w(line):\n"
        "    with open(OUT, 'a') as f:\n"
        "        f.write(line + '\\n')\n"
        "workers = 1\n"
        "def on_starting(server): _w('on_starting')\n"
        "def pre_fork(server, worker): _w(f'pre_fork {worker.slot}')\n"
        "def post_fork(server, worker): _w(f'post_fork {worker.slot} {worker.pid == os.getpid()}')\n"
        "def post_worker_init(worker): _w('post_worker_init')\n"
        "def when_ready(server): _w('when_ready')\n"
        "def worker_exit(server, worker): _w('worker_exit')\n"
        "def child_exit(server, worker): _w('child_exit')\n"
        "def on_exit(server): _w('on_exit')\n"
    )
    m = start("-c", str(conf))
    wait_for(lambda: out.exists() and "when_ready" in out.read_text(), what="when_ready hook")
    m.signal(signal.SIGTERM)
    assert m.proc.wait(timeout=15) == 0
    lines = out.read_text().splitlines()
    assert lines[:2] == ["on_starting", "pre_fork 0"]
    assert lines[-1] == "on_exit"
    for expected in ("post_fork 0 True", "post_worker_init", "when_ready", "worker_exit", "child_exit"):
        assert expected in lines, lines
    assert lines.index("worker_exit") < lines.index("child_exit")


def test_run_api_serves_an_app_object(tmp_path: Path) -> None:
    port = free_port()
    script = tmp_path / "serve.py"
    script.write_text(
        "import prefork_lb\n"
        "def app(environ, start_response):\n"
        "    start_response('200 OK', [('Content-Type', 'text/plain')])\n"
        "    return [b'from run()']\n"
        "if __name__ == '__main__':\n"
        f"    raise SystemExit(prefork_lb.run(app, bind=['127.0.0.1:{port}'], workers=2))\n"
    )
    log = open(tmp_path / "log", "wb")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = spawn([sys.executable, str(script)], stdout=log, stderr=subprocess.STDOUT, env=env)
    try:

        def answer():
            try:
                return get(port, "/")
            except OSError:
                return None

        assert wait_for(answer, what="run() serving") == (200, b"from run()")
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
    finally:
        log.close()
        kill_group(proc)
        proc.wait(timeout=5)


def _run_script(tmp_path: Path, source: str) -> tuple[subprocess.Popen[bytes], Path]:
    """Start ``python serve.py`` (``source``) in its own process group; (process, its log)."""
    script = tmp_path / "serve.py"
    script.write_text(source)
    log_path = tmp_path / "log"
    with open(log_path, "wb") as log:
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        proc = spawn([sys.executable, str(script)], stdout=log, stderr=subprocess.STDOUT, env=env)
    return proc, log_path


def test_run_api_takes_hooks_as_a_config_file_does(tmp_path: Path) -> None:
    """run(app, post_fork=f, ...): the hooks run where a config file's would (the worker's
    show in its response, the master's in the file it writes)."""
    port = free_port()
    out = tmp_path / "hooks.txt"
    proc, log_path = _run_script(
        tmp_path,
        "import prefork_lb\n"
        "HOOKED = []\n"
        "def post_fork(server, worker): HOOKED.append(f'post_fork {worker.slot}')\n"
        "def post_worker_init(worker): HOOKED.append('post_worker_init')\n"
        f"def when_ready(server): open({str(out)!r}, 'a').write('when_ready\\n')\n"
        "def app(environ, start_response):\n"
        "    start_response('200 OK', [('Content-Type', 'text/plain')])\n"
        "    return [','.join(HOOKED).encode()]\n"
        "if __name__ == '__main__':\n"
        f"    raise SystemExit(prefork_lb.run(app, bind=['127.0.0.1:{port}'], workers=1,\n"
        "        post_fork=post_fork, post_worker_init=post_worker_init, when_ready=when_ready))\n",
    )
    try:

        def answer() -> tuple[int, bytes] | None:
            assert proc.poll() is None, log_path.read_text(errors="replace")
            try:
                return get(port, "/")
            except OSError:
                return None

        assert wait_for(answer, what="run() serving") == (200, b"post_fork 0,post_worker_init")
        wait_for(lambda: out.exists() and out.read_text() == "when_ready\n", what="the when_ready hook")
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
    finally:
        kill_group(proc)
        proc.wait(timeout=5)


def test_run_api_refuses_an_asgi_app_under_interface_wsgi_with_one_line(tmp_path: Path) -> None:
    proc, log_path = _run_script(
        tmp_path,
        "import prefork_lb\n"
        "async def app(scope, receive, send):\n"
        "    pass\n"
        "if __name__ == '__main__':\n"
        f"    raise SystemExit(prefork_lb.run(app, bind=['127.0.0.1:{free_port()}'], workers=2,"
        " interface='wsgi'))\n",
    )
    try:
        assert proc.wait(timeout=20) == 2
    finally:
        kill_group(proc)
    text = log_path.read_text(errors="replace")
    lines = [ln for ln in text.splitlines() if ln.startswith("prefork_lb: error:")]
    assert lines == [
        "prefork_lb: error: app 'app' is an ASGI application (async def app(scope, receive, send)), "
        "not a WSGI one: start it with --interface asgi (or auto)"
    ], text
    assert "Traceback" not in text


def test_ttou_and_ttin_under_load_fail_no_request(two_workers) -> None:
    """Removing a worker slot drains it: in reuseport mode the master steers new connections
    away from the slot (BPF) and its worker accepts what was queued before closing."""
    m = two_workers()
    m.signal(signal.SIGTTIN)
    wait_for(lambda: len(m.workers()) == 3, what="3 workers")
    with Load(m.port, m.log) as load:
        for n_after, sig in (
            (2, signal.SIGTTOU),
            (1, signal.SIGTTOU),
            (2, signal.SIGTTIN),
            (1, signal.SIGTTOU),
        ):
            m.signal(sig)
            wait_for(lambda n=n_after: len(m.workers()) == n, what=f"{n_after} workers")
            load.wait_more(30)
    assert load.failures == []
    m.signal(signal.SIGTTIN)  # back to the two workers the next test takes
    wait_for(lambda: len(m.workers()) == 2, what="2 workers again")


def test_term_exits_zero_and_leaves_no_process(two_workers) -> None:
    """Last of the mode x interface tests: it ends the case's master."""
    m = two_workers()
    workers = wait_for(lambda: len(m.workers()) == 2 and m.workers(), what="2 workers")
    m.signal(signal.SIGTERM)
    assert m.proc.wait(timeout=15) == 0
    wait_for(
        lambda: (
            not any(
                psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE for p in workers
            )
        ),
        what="workers gone",
    )


@pytest.mark.parametrize(
    ("interface", "app", "path", "frame"),
    [
        ("wsgi", "tests.apps:block_loop", "/block?who=me", "in block_loop"),
        # time.sleep in an async def stops the loop, so the heartbeat: the same abort.
        ("asgi", "tests.apps_asgi_worker:app", "/block?30", "apps_asgi_worker.py"),
    ],
    ids=["wsgi", "asgi"],
)
def test_blocked_worker_is_aborted_and_the_log_names_the_request(
    start, interface: str, app: str, path: str, frame: str
) -> None:
    m = start("-w", "1", "--timeout", "2", "--interface", interface, app=app)
    (victim,) = wait_for(lambda: m.workers(), what="worker")
    try:
        get(m.port, path, timeout=10)
    except OSError:
        pass  # the worker was killed under this request: the connection drops
    wait_for(lambda: m.workers() and victim not in m.workers(), what="replacement")
    log = wait_for(
        lambda: "WORKER TIMEOUT" in m.text() and frame in m.text() and m.text(),
        what="timeout log with the stack",
    )
    assert f"while serving GET {path}" in log
    assert get(m.port, "/")[0] == 200


@pytest.mark.parametrize("mode", MODES)
def test_several_binds_ipv4_ipv6_and_unix(start, tmp_path: Path, mode: str) -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback")
    p6 = free_port()
    path = str(tmp_path / "app.sock")
    m = start("-w", "2", "--dispatch", mode, "-b", f"[::1]:{p6}", "-b", f"unix:{path}")
    assert get(m.port)[0] == 200
    conn = http.client.HTTPConnection("::1", p6, timeout=5)
    try:
        conn.request("GET", "/json")
        assert conn.getresponse().status == 200
    finally:
        conn.close()
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(5)
        s.connect(path)
        s.sendall(b"GET /json HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    assert data.startswith(b"HTTP/1.1 200 OK")
    m.signal(signal.SIGTERM)
    assert m.proc.wait(timeout=15) == 0
    assert not os.path.exists(path), "the unix socket file is removed on exit"


def test_killed_dispatcher_is_replaced(start) -> None:
    m = start("-w", "2", "--dispatch", "handoff")
    first = wait_for(m.dispatcher, what="dispatcher")
    assert get(m.port)[0] == 200
    os.kill(first, signal.SIGKILL)
    wait_for(lambda: m.dispatcher() not in (None, first), what="new dispatcher")
    # Connections queued while no dispatcher ran wait in the listener, owned by the master.
    assert {get(m.port, timeout=10)[0] for _ in range(20)} == {200}
    assert "died unexpectedly" in m.text()


@pytest.mark.parametrize(
    "strategy",
    ["round_robin", "weighted_round_robin", "least_connections", "random", "p2c", "least_latency", "hash"],
)
def test_handoff_with_each_strategy(start, strategy: str) -> None:
    m = start("-w", "2", "--dispatch", "handoff", "--strategy", strategy)
    pids = set()
    for _ in range(40):
        status, body = get(m.port)
        assert status == 200
        pids.add(json.loads(body)["pid"])
    workers = set(m.workers())
    assert pids <= workers
    if strategy != "hash":  # hash keeps one client (127.0.0.1) on one worker, by design
        assert pids == workers, f"{strategy} used only {pids} of {workers}"
    else:
        assert len(pids) == 1


# -- the offload pool inside real workers -------------------------------------------------


def test_offloaded_computation_does_not_stall_other_requests(start) -> None:
    m = start("-w", "1", "--offload-processes", "1", app="tests.apps:compute")
    assert get(m.port, "/offload/20") == (200, b"6765")
    done: list[tuple[int, bytes]] = []
    t = threading.Thread(target=lambda: done.append(get(m.port, "/offload/31", timeout=60)))
    t.start()
    # While fib(31) runs in the pool, the worker keeps answering.
    quick = 0
    deadline = time.monotonic() + 30
    while not done and time.monotonic() < deadline:
        assert get(m.port, "/", timeout=5) == (200, b"ok")
        quick += 1
    t.join(timeout=60)
    assert done == [(200, b"1346269")]
    assert quick >= 3, "the worker answered nothing while the pool computed"


def test_pool_processes_die_with_their_worker(start) -> None:
    m = start("-w", "1", "--offload-processes", "2", app="tests.apps:compute")
    assert get(m.port, "/offload/15")[0] == 200
    info = json.loads(get(m.port, "/pids")[1])
    pool = info["pool"]
    assert pool, "the pool started"
    os.kill(info["worker"], signal.SIGKILL)

    def gone() -> bool:
        for pid in pool:
            try:
                if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                    return False
            except psutil.NoSuchProcess:
                pass
        return True

    wait_for(gone, timeout=10, what="pool processes exit after their worker's SIGKILL")
    wait_for(lambda: get(m.port, "/offload/10") == (200, b"55"), what="the replacement worker's pool")


def test_graceful_stop_leaves_no_pool_process(start) -> None:
    m = start("-w", "1", "--offload-processes", "2", app="tests.apps:compute")
    assert get(m.port, "/offload/12")[0] == 200
    pool = json.loads(get(m.port, "/pids")[1])["pool"]
    assert pool
    m.signal(signal.SIGTERM)
    assert m.proc.wait(timeout=20) == 0

    def gone() -> bool:
        return not any(
            psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE for p in pool
        )

    wait_for(gone, timeout=10, what="pool processes gone after a graceful stop")


# -- overload ---------------------------------------------------------------------------------


def test_admission_control_answers_503_past_concurrency_and_queue(start) -> None:
    """Three concurrent requests, one place and one queue slot: whichever comes third is
    refused at once with 503 and Retry-After; the other two are served. "At once" is shown by
    the order of the answers: the 503 comes before the first 2 s request is done."""
    m = start("-w", "1", "--max-concurrency", "1", "--queue-size", "1", app="tests.apps:overload")
    results: list[tuple[int, str | None]] = []  # in the order the answers came
    lock = threading.Lock()

    def one() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", m.port, timeout=20)
        try:
            conn.request("GET", "/sleep/2")
            resp = conn.getresponse()
            resp.read()
            with lock:
                results.append((resp.status, resp.getheader("Retry-After")))
        finally:
            conn.close()

    threads = [threading.Thread(target=one) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert sorted(r[0] for r in results) == [200, 200, 503]
    (refused,) = [r for r in results if r[0] == 503]
    assert refused[1] == "1" and results[0] == refused, "refused at once, with Retry-After"


def test_request_timeout_gives_504(start) -> None:
    m = start("-w", "1", "--request-timeout", "0.5", app="tests.apps:overload")
    status, body = get(m.port, "/sleep/5", timeout=10)
    # The 504 is the timeout's outcome: the app itself would answer 200 after 5 s.
    assert status == 504 and b"too long" in body
    assert get(m.port, "/")[0] == 200
    assert "Request past --request-timeout: GET /sleep/5" in m.text()


def test_max_rss_recycles_without_failures(start) -> None:
    m = start("-w", "1", "--max-rss", "150", "--max-rss-jitter", "0.2", app="tests.apps:overload")
    first = int(get(m.port, "/pid")[1])
    assert get(m.port, "/leak/200")[0] == 200
    statuses = []

    def replaced() -> bool:
        statuses.append(get(m.port, "/pid")[0])
        return get(m.port, "/pid")[1] != str(first).encode()

    wait_for(replaced, timeout=20, what="worker recycled for its memory")
    assert set(statuses) == {200}
    assert "over --max-rss 150 MiB" in m.text()


@pytest.mark.parametrize(
    ("app", "interface"),
    [("tests.apps:overload", "wsgi"), ("tests.apps_asgi_worker:app", "asgi")],
    ids=["wsgi", "asgi"],
)
def test_autoscaling_adds_under_load_and_removes_when_quiet(start, app: str, interface: str) -> None:
    m = start(
        "-w",
        "1",
        "--max-workers",
        "2",
        "--autoscale-up-after",
        "0.5",
        "--autoscale-down-after",
        "1",
        "--interface",
        interface,
        app=app,  # (each sleeps cooperatively on /sleep/S)
    )
    wait_for(lambda: len(m.workers()) == 1, what="1 worker")
    stop = threading.Event()

    def client() -> None:
        deadline = time.monotonic() + 20
        while not stop.is_set() and time.monotonic() < deadline:
            get(m.port, "/sleep/0.3", timeout=10)

    threads = [threading.Thread(target=client) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        wait_for(lambda: len(m.workers()) == 2, what="a second worker under load")
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=20)
    wait_for(lambda: len(m.workers()) == 1, what="back to the minimum when quiet")
    log = m.text()
    assert "Autoscale: 2 workers" in log and "Autoscale: 1 workers" in log
