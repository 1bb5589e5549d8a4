"""contrib/systemd's units run the way systemd runs them: the socket unit's listener passed as
fd 3 (LISTEN_FDS, LISTEN_PID), NOTIFY_SOCKET pointed at a datagram socket the test owns, the
service's ExecStart command line (its interpreter and app swapped for this checkout's), then
READY=1 and MAINPID arrive, a request is served on the socket, ExecReload reloads (HUP) and TERM
to the main process (KillMode=mixed) stops it with exit status 0. Every wait has a deadline."""

from __future__ import annotations

import os
import shlex
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from prefork_lb.cli import parse
from tests.helpers import HOST, ROOT, free_port, http_get, kill_group, server_env, spawn, wait_for

UNITS = ROOT / "contrib" / "systemd"
APP = "tests.apps:hello"
# Like systemd after its fork: the listener as fd 3, LISTEN_PID this very pid, then exec.
LAUNCHER = (
    "import os, sys\n"
    "fd = int(sys.argv[1])\n"
    "os.dup2(fd, 3); os.close(fd); os.set_inheritable(3, True)\n"
    "os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS='1', LISTEN_FDNAMES='myapp.socket')\n"
    "os.execv(sys.argv[2], sys.argv[2:])\n"
)


def read_unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """A unit file: section -> key -> values (systemd allows repeated keys)."""
    out: dict[str, dict[str, list[str]]] = {}
    section = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            out.setdefault(section, {})
            continue
        key, _, value = line.partition("=")
        out[section].setdefault(key.strip(), []).append(value.strip())
    return out


@pytest.fixture(scope="module")
def service() -> dict[str, dict[str, list[str]]]:
    return read_unit(UNITS / "prefork_lb.service")


@pytest.fixture(scope="module")
def socket_unit() -> dict[str, dict[str, list[str]]]:
    return read_unit(UNITS / "prefork_lb.socket")


def exec_start(service: dict[str, dict[str, list[str]]], pidfile: Path) -> list[str]:
    """ExecStart for this machine: this Python, the test app, the pid file in a temp folder."""
    (line,) = service["Service"]["ExecStart"]
    argv = shlex.split(line)
    assert argv[0].endswith("/python") and argv[1:3] == ["-m", "prefork_lb"], argv
    argv[0] = sys.executable
    argv[3] = APP
    runtime = "/run/" + service["Service"]["RuntimeDirectory"][0]
    return [str(pidfile) if a == f"{runtime}/master.pid" else a for a in argv]


def test_the_units_say_what_the_docs_say(service: Any, socket_unit: Any) -> None:
    s = service["Service"]
    assert s["Type"] == ["notify"] and s["NotifyAccess"] == ["all"] and s["KillMode"] == ["mixed"]
    assert s["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert service["Unit"]["Requires"] == ["myapp.socket"]
    cfg = parse(shlex.split(s["ExecStart"][0])[3:], environ={})
    assert float(s["TimeoutStopSec"][0]) > cfg.shutdown_delay + cfg.graceful_timeout
    assert socket_unit["Socket"]["ListenStream"] == ["0.0.0.0:8000"]


def notifications(sock: socket.socket, want: str, seen: list[str]) -> str:
    """Read datagrams until one carries ``want`` (a deadline through the socket's timeout)."""
    for _ in range(100):
        msg = sock.recv(4096).decode()
        seen.append(msg)
        if want in msg.split("\n"):
            return msg
    raise AssertionError(f"no {want} among {seen}")


def test_exec_start_with_socket_activation_notify_reload_and_stop(
    service: Any, socket_unit: Any, tmp_path: Path
) -> None:
    port = free_port()
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((HOST, port))  # the unit's 0.0.0.0:8000, on a free loopback port here
    listener.listen(int(socket_unit["Socket"]["Backlog"][0]))
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify.sock"))
    notify.settimeout(30)
    argv = exec_start(service, tmp_path / "master.pid")
    log_path = tmp_path / "log"
    seen: list[str] = []
    with open(log_path, "wb") as log:
        proc = spawn(
            [sys.executable, "-c", LAUNCHER, str(listener.fileno()), *argv],
            cwd=ROOT,  # the unit's WorkingDirectory
            env=server_env({"NOTIFY_SOCKET": str(tmp_path / "notify.sock")}),
            stdout=log,
            stderr=subprocess.STDOUT,
            pass_fds=(listener.fileno(),),
        )
    listener.close()  # the server holds it now, as systemd would keep its own copy
    try:
        ready = notifications(notify, "READY=1", seen)
        mainpid = int(next(x for x in ready.split("\n") if x.startswith("MAINPID="))[8:])
        assert mainpid == proc.pid  # exec kept the pid systemd started
        assert int((tmp_path / "master.pid").read_text()) == mainpid
        assert {http_get(port)[0] for _ in range(5)} == {200}
        reload_cmd = shlex.split(service["Service"]["ExecReload"][0].replace("$MAINPID", str(mainpid)))
        assert subprocess.run(reload_cmd, timeout=10).returncode == 0
        wait_for(lambda: "Reload finished" in log_path.read_text(), 60, "the reload's last line")
        assert http_get(port)[0] == 200
        os.kill(mainpid, signal.SIGTERM)  # KillMode=mixed: TERM to the main process only
        notifications(notify, "STOPPING=1", seen)
        assert proc.wait(float(service["Service"]["TimeoutStopSec"][0])) == 0, log_path.read_text()
        assert "Listening at http://fd://3" in log_path.read_text()  # systemd's socket, not --bind
    finally:
        notify.close()
        kill_group(proc)
        proc.wait(5)
