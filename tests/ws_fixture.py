"""The websocket test server (tests/ws_server.py) run for a test: :func:`ws_servers` is the body
of a test module's ``ws_server(*args)`` fixture, which starts one in its own process group, ready
once it has written its port, and stops every one it started (TERM, then KILL) after the test."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

from tests.helpers import spawn, stop_process, wait_for


class WsServer:
    def __init__(self, workdir: Path, args: tuple[str, ...]) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.port_file = workdir / "port"
        self.err_path = workdir / "stderr.log"
        with open(self.err_path, "wb") as err:
            self.proc = spawn(
                [sys.executable, "-m", "tests.ws_server", str(self.port_file), *args],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
            )
        wait_for(lambda: self.port_file.exists() or self.proc.poll() is not None, 20, "the ws server's port")
        assert self.proc.poll() is None, self.log_text()
        self.port = int(self.port_file.read_text())

    def url(self, path: str) -> str:
        return f"ws://127.0.0.1:{self.port}{path}"

    def log_text(self) -> str:
        return self.err_path.read_text("utf-8", "replace")

    def wait_log(self, text: str, timeout: float = 10.0) -> str:
        return wait_for(lambda: self.log_text() if text in self.log_text() else "", timeout, repr(text))


def ws_servers(tmp_path: Path) -> Iterator[Callable[..., WsServer]]:
    started: list[WsServer] = []

    def start(*args: str) -> WsServer:
        srv = WsServer(tmp_path / f"ws{len(started)}", args)
        started.append(srv)
        return srv

    try:
        yield start
    finally:
        for srv in started:
            stop_process(srv.proc)
