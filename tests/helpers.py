"""The helpers every test that runs real processes shares: ports, polling, process groups.

* :func:`free_port` / :func:`free_port_v6`: a loopback port the kernel just handed out.
* :func:`wait_for`: poll a predicate until it is truthy, with a deadline (never a bare sleep).
* :func:`spawn`: start a command from the repository root in its own process group, so that
  :func:`stop_process` (TERM, then KILL of the whole group) and :func:`kill_group` can always
  clean up everything it started, workers included.
* :func:`server_env`: our environment without the settings that would change a server's
  behaviour, and with no admin listener (``PREFORK_LB_STATS_BIND=off``: tests that want one
  pass ``--stats-bind`` with a free port, which the command line's value overrides); :func:`start_on_free_port`: retry a start when the port was taken meanwhile.
* :func:`listen_ports` / :func:`unread_requests`: what the kernel holds for a server, to
  poll for "these connections are queued" instead of sleeping until they probably are.
* ``DISPATCH_MODES``: the modes every mode-parametrized test runs in, read from the package.

Invariants: everything talks to 127.0.0.1 (or ::1) only; every wait has a deadline; every
process started through :func:`spawn` leads its own group and is killed with it.
"""

from __future__ import annotations

import concurrent.futures
import http.client
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import psutil

from prefork_lb.dispatch import DISPATCH_MODES as _MODES

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
DISPATCH_MODES: list[str] = list(_MODES)
T = TypeVar("T")


def free_port() -> int:
    """A port that was free a moment ago (bind port 0 and let the kernel pick)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def free_port_v6() -> int:
    """Like :func:`free_port`, on ::1."""
    with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
        s.bind(("::1", 0))
        return int(s.getsockname()[1])


def wait_for(
    pred: Callable[[], T], timeout: float = 20.0, what: str = "a condition", interval: float = 0.02
) -> T:
    """Poll ``pred`` until it returns something truthy and return that; AssertionError after
    ``timeout`` seconds. The default is generous because the machines running the suite are
    shared: a passing test returns as soon as the condition holds, whatever the timeout."""
    deadline = time.monotonic() + timeout
    for _ in range(int(timeout / interval) + 2):
        value = pred()
        if value:
            return value
        if time.monotonic() >= deadline:
            break
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def spawn(cmd: Sequence[str], **popen: Any) -> subprocess.Popen[bytes]:
    """``subprocess.Popen(cmd)`` from the repository root, leading a new process group (a new
    session), so that a test can signal and kill everything it started with ``os.killpg``."""
    popen.setdefault("cwd", ROOT)
    return subprocess.Popen(list(cmd), start_new_session=True, **popen)


def kill_group(proc: subprocess.Popen[Any]) -> None:
    """SIGKILL whatever is left of ``proc``'s process group (nothing left is fine)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def stop_process(
    proc: subprocess.Popen[Any], timeout: float = 10.0, group: bool = True, sig: int = signal.SIGTERM
) -> int | None:
    """SIGTERM (or ``sig``) the process group (``group=False``: its leader only, which stops its
    children itself), wait up to ``timeout``, then SIGKILL whatever is left in the group.
    Returns the leader's exit code."""
    if proc.poll() is None:
        try:
            (os.killpg if group else os.kill)(proc.pid, sig)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pass
    # Workers die with their master (PDEATHSIG); anything left in the group goes now.
    kill_group(proc)
    if proc.poll() is None:
        proc.wait(5)
    return proc.returncode


def server_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for a server: ours without settings that would change its behaviour.
    No admin process unless asked for: servers started at once would share its default port
    (and the control socket its default path)."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("PREFORK_LB_") and k not in ("WEB_CONCURRENCY", "PYTHONUNBUFFERED")
    }
    env["PREFORK_LB_STATS_BIND"] = "off"
    env["PREFORK_LB_CONTROL_SOCKET"] = "off"  # the default path is one per user
    env.update(extra or {})
    return env


def start_on_free_port(
    launch: Callable[[int], bool], log_text: Callable[[], str], stop: Callable[[], object], what: str
) -> None:
    """Start a server with ``launch(port)`` (True once it is ready) on a port from free_port().
    The port may be taken between free_port() and the server's bind: then stop it and try
    another, three times at most. Any other failure raises with the server's log."""
    for attempt in range(3):
        if launch(free_port()):
            return
        text = log_text()
        stop()
        if "already in use" not in text or attempt == 2:
            raise AssertionError(f"{what} did not start:\n{text}")


def listen_ports(pid: int) -> set[int]:
    """The TCP ports that ``pid`` and its descendants listen on (their workers' slot sockets,
    the proxy's per-slot backends, ...)."""
    ports: set[int] = set()
    try:
        procs = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return ports
    for proc in procs:
        try:
            conns = proc.net_connections(kind="tcp")
        except psutil.Error:
            continue
        ports.update(c.laddr.port for c in conns if c.status == psutil.CONN_LISTEN)
    return ports


def unread_requests(ports: set[int]) -> int:
    """How many requests sit unread on established IPv4 connections to one of ``ports``:
    connections waiting in an accept queue, or accepted by a process that is stopped (from
    /proc/net/tcp, the kernel's own table: rx_queue is the unread byte count).

    A connection may hold more than one request: the proxy pipelines requests to a backend
    that is slow to answer. The tests send one request repeatedly, so every request arriving
    at one port has the same size; a connection holding ``n`` times the smallest unread count
    seen on its port holds ``n`` requests.
    """
    unread: dict[int, list[int]] = {}
    with open("/proc/net/tcp") as f:
        next(f)  # the header line
        for line in f:
            fields = line.split()
            local, state, queues = fields[1], fields[3], fields[4]
            port, rx = int(local.rsplit(":", 1)[1], 16), int(queues.split(":")[1], 16)
            if state == "01" and port in ports and rx > 0:
                unread.setdefault(port, []).append(rx)
    return sum(rx // min(sizes) for sizes in unread.values() for rx in sizes)


def http_get(port: int, path: str = "/", timeout: float = 5.0) -> tuple[int, bytes]:
    """One GET on a new connection to 127.0.0.1:``port``: (status, body)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def shared_processes(make: Callable[..., Any]) -> Any:
    """The body of a session fixture: ``get(*args, **kw)`` starts ``make(*args, **kw)`` (a
    ServerProcess-like object: start(), stop(), alive, log_text()) once per distinct arguments
    and hands the same one out again; every one is stopped at the end."""
    procs: dict[str, Any] = {}

    def get(*args: Any, **kw: Any) -> Any:
        key = repr((args, sorted(kw.items())))
        proc = procs.get(key)
        if proc is None:
            proc = procs[key] = make(*args, **kw)
            proc.start()
        assert proc.alive, f"shared server {args} {kw} died:\n{proc.log_text()}"
        return proc

    try:
        yield get
    finally:
        stop_all(list(procs.values()))


def owned_processes(make: Callable[..., Any]) -> Any:
    """The body of a test's fixture: ``start(*args, **kw)`` starts a fresh ``make(*args, **kw)``
    (as for shared_processes) and returns what its start() returns; all are stopped at the end."""
    procs: list[Any] = []

    def start(*args: Any, **kw: Any) -> Any:
        proc = make(*args, **kw)
        procs.append(proc)
        return proc.start()

    try:
        yield start
    finally:
        stop_all(procs)


def stop_all(procs: Sequence[Any]) -> None:
    """Stop each of ``procs`` at once (one thread each), so that the end of a session with
    dozens of shared servers takes as long as the slowest stop, not their sum. A process that
    has ``discard()`` (a stop nobody watches: no graceful drain, see ServerProcess.discard) is
    stopped with it, else with ``stop()``. The first exception, if any, is raised after all
    have been stopped."""
    stops = [getattr(proc, "discard", proc.stop) for proc in procs]
    if len(stops) <= 1:
        for stop in stops:
            stop()
        return
    with concurrent.futures.ThreadPoolExecutor(len(stops)) as pool:
        futures = [pool.submit(stop) for stop in stops]
    for future in futures:
        future.result()
