"""Servers for the real-framework ASGI tests (tests/integration/asgi/test_frameworks.py):
uvicorn (the reference) and prefork_lb.

The ``framework_server`` fixture (:func:`framework_servers`): ``framework_server(kind, app)`` starts ``kind`` ("uvicorn" or "prefork_lb") serving ``app`` (a
key of :data:`APPS`) once per session, on a free 127.0.0.1 port, in its own process group, with
tests/apps/asgi/ on its PYTHONPATH, with each server's default lifespan handling (uvicorn's
``auto``: Django has no lifespan support). Ready when ``GET /`` gets any HTTP answer (polled, 20 s
deadline, given up early when the server exits). Every server is stopped at the end (TERM to the
group, KILL after 10 s). A server that does not start fails every test that asks for it with the
same message (its command and log tail), without being tried again.
"""

from __future__ import annotations

import http.client
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.helpers import HOST, ROOT, server_env, spawn, start_on_free_port, stop_all, stop_process

APPS_DIR = ROOT / "tests" / "apps" / "asgi"
APPS = {
    "fastapi": "fastapi_app:app",
    "starlette": "starlette_app:app",
    "django": "djproject.asgi:application",
}
READY_TIMEOUT = 20.0


def command(kind: str, app: str, port: int) -> list[str]:
    """The command line that serves ``app`` with server ``kind`` on 127.0.0.1:``port``."""
    if kind == "uvicorn":
        return [
            *(sys.executable, "-m", "uvicorn", "--http", "httptools", "--loop", "uvloop"),
            *("--ws", "wsproto", "--host", HOST, "--port", str(port), app),
        ]
    if kind == "prefork_lb":
        return [
            sys.executable,
            "-m",
            "prefork_lb",
            app,
            "--interface",
            "asgi",
            "-w",
            "1",
            "--bind",
            f"{HOST}:{port}",
        ]
    raise ValueError(f"unknown server kind {kind!r}")


class FrameworkServer:
    """One server process (and its workers) serving one framework app."""

    def __init__(self, kind: str, app: str, workdir: Path) -> None:
        self.kind, self.app, self.workdir = kind, app, workdir
        self.log_path = workdir / "server.log"
        self.port = 0
        self.cmd: list[str] = []
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://{HOST}:{self.port}"

    def log_text(self) -> str:
        try:
            return self.log_path.read_text("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def start(self) -> FrameworkServer:
        start_on_free_port(self._launch, self.log_text, self.stop, f"{self.kind} serving {self.app}")
        return self

    def _launch(self, port: int) -> bool:
        self.port = port
        self.cmd = command(self.kind, self.app, port)
        # One hash seed for both servers: what apps print from a set (Starlette's Allow header)
        # comes out in the same order.
        env = server_env({"PYTHONPATH": f"{ROOT}:{APPS_DIR}", "PYTHONUNBUFFERED": "1", "PYTHONHASHSEED": "0"})
        with open(self.log_path, "wb") as log:
            self.proc = spawn(
                self.cmd, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
            )
        return self._wait_ready()

    def _wait_ready(self) -> bool:
        assert self.proc is not None
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline and self.proc.poll() is None:
            conn = http.client.HTTPConnection(HOST, self.port, timeout=2.0)
            try:
                conn.request("GET", "/", headers={"Connection": "close"})
                conn.getresponse().read()
                return True
            except (OSError, http.client.HTTPException):
                time.sleep(0.05)
            finally:
                conn.close()
        return False

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, timeout=10.0)


StartFramework = Callable[[str, str], FrameworkServer]


def framework_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StartFramework]:
    """The body of the session fixture ``framework_server`` (see the module docstring)."""
    servers: dict[tuple[str, str], FrameworkServer] = {}
    failures: dict[tuple[str, str], str] = {}

    def get(kind: str, app: str) -> FrameworkServer:
        key = (kind, app)
        if key in failures:
            pytest.fail(failures[key], pytrace=False)
        srv = servers.get(key)
        if srv is None:
            srv = FrameworkServer(kind, APPS[app], tmp_path_factory.mktemp(f"{kind}-{app}"))
            try:
                servers[key] = srv.start()
            except AssertionError:
                tail = "\n    ".join(srv.log_text().strip().splitlines()[-15:]) or "(empty)"
                hint = (
                    " (the ASGI worker, open issue 15, is not in this tree yet?)"
                    if kind == "prefork_lb"
                    else ""
                )
                failures[key] = (
                    f"{kind} did not serve {APPS[app]}{hint}: exit status "
                    f"{srv.proc.returncode if srv.proc else None}\n  command: {' '.join(srv.cmd)}\n"
                    f"  log tail:\n    {tail}"
                )
            if key in failures:
                pytest.fail(failures[key], pytrace=False)
        assert srv.proc is not None and srv.proc.poll() is None, (
            f"{kind} serving {app} died:\n{srv.log_text()}"
        )
        return srv

    try:
        yield get
    finally:
        stop_all(list(servers.values()))
