"""Runs prefork_lb.asgi.server.AsgiServer in a process of its own, for the ASGI engine's tests.

``python -m tests.asgi_server MODULE:APP [OPTIONS_JSON]`` listens on a free loopback port, runs
the app's lifespan (mode auto) and prints ``PORT <n>`` once it serves; SIGTERM drains (5 s) and
exits. :class:`AsgiProcess` starts it in its own process group and stops it (TERM, then KILL).
"""

from __future__ import annotations

import asyncio
import importlib
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.helpers import kill_group, stop_process, wait_for

ROOT = Path(__file__).resolve().parent.parent


def _options(spec: dict[str, Any]) -> Any:
    from prefork_lb.asgi.options import AsgiOptions
    from prefork_lb.http.parser import Limits

    limits = spec.pop("limits", None)
    opts = AsgiOptions(**spec)
    if limits is not None:
        opts.limits = Limits(**limits)
    return opts


async def _serve(app: Any, opts: Any) -> None:
    from prefork_lb.asgi.lifespan import Lifespan, LifespanFailed
    from prefork_lb.asgi.server import AsgiServer

    loop = asyncio.get_running_loop()
    lifespan = Lifespan(app, os.environ.get("ASGI_LIFESPAN", "auto"))
    try:
        await lifespan.startup()
    except LifespanFailed as exc:
        print(f"lifespan failed: {exc}", file=sys.stderr, flush=True)
        sys.exit(3)
    lsock = socket.socket()
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(128)
    server = AsgiServer(app, opts, loop, state=lifespan.state)
    server.add_listener(lsock)
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    print(f"PORT {lsock.getsockname()[1]}", flush=True)
    await stop.wait()
    done = await server.drain(5.0)
    await lifespan.shutdown()
    print(f"drained {done} served {server.served}", flush=True)


def main() -> None:
    import logging

    import uvloop

    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(message)s")
    module, _, name = sys.argv[1].partition(":")
    app = getattr(importlib.import_module(module), name)
    opts = _options(json.loads(sys.argv[2]) if len(sys.argv) > 2 else {})
    uvloop.run(_serve(app, opts))


class AsgiProcess:
    """One AsgiServer process (stderr and stdout to files under ``workdir``)."""

    def __init__(
        self, app: str, options: dict[str, Any] | None, workdir: Path, env: dict[str, str] | None = None
    ) -> None:
        self.app = app
        self.options = options or {}
        self.workdir = workdir
        self.calls_path = workdir / "calls.txt"
        self.log_path = workdir / "stderr.txt"
        self.out_path = workdir / "stdout.txt"
        self.env = env or {}
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0

    def start(self, timeout: float = 15.0) -> AsgiProcess:
        env = dict(os.environ, PYTHONPATH=str(ROOT), ASGI_CALLS=str(self.calls_path), **self.env)
        with open(self.out_path, "wb") as out, open(self.log_path, "wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "tests.asgi_server", self.app, json.dumps(self.options)],
                stdout=out,
                stderr=err,
                cwd=ROOT,
                env=env,
                start_new_session=True,
            )
        line = wait_for(lambda: self._port_line(), timeout, "the ASGI server's PORT line")
        self.port = int(line.split()[1])
        return self

    def _port_line(self) -> str:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"the ASGI server exited {self.proc.returncode}:\n{self.log_text()}")
        for line in self.out_path.read_text().splitlines():
            if line.startswith("PORT "):
                return line
        return ""

    def calls(self) -> list[str]:
        try:
            return self.calls_path.read_text("latin-1").splitlines()
        except FileNotFoundError:
            return []

    def log_text(self) -> str:
        return self.log_path.read_text("utf-8", "replace")

    def out_text(self) -> str:
        return self.out_path.read_text("utf-8", "replace")

    def wait_log(self, text: str, timeout: float = 5.0) -> str:
        return wait_for(
            lambda: self.log_text() if text in self.log_text() else "", timeout, f"{text!r} in stderr"
        )

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        try:
            return stop_process(self.proc, timeout=10.0)
        finally:
            if self.proc.poll() is None:
                kill_group(self.proc)


if __name__ == "__main__":
    main()
