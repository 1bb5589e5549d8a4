"""Real session stores for the tests: ``redis-server`` and ``memcached`` on free loopback ports.

:class:`StoreProcess` starts one in its own process group (tests.helpers.spawn), waits until it
answers (Redis ``PING``, Memcached ``version``) with a deadline, and stops the whole group.
Where the binary is missing the test is skipped, saying how to install it (.ci/run does).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
from pathlib import Path

import psutil
import pytest

from tests.helpers import HOST, free_port, spawn, stop_process, wait_for

INSTALL = "apt-get install -y redis-server memcached"


class StoreProcess:
    """One redis-server or memcached for a test."""

    def __init__(self, kind: str, workdir: Path) -> None:
        self.kind = kind
        self.binary = {"redis": "redis-server", "memcached": "memcached"}[kind]
        self.log_path = Path(workdir) / f"{self.binary}.log"
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"{self.kind}://{HOST}:{self.port}"

    def command(self) -> list[str]:
        if self.kind == "redis":
            return [self.binary, "--bind", HOST, "--port", str(self.port), "--save", "", "--appendonly", "no"]
        # memcached refuses to run as root unless told which user to become.
        user = ["-u", "nobody"] if os.geteuid() == 0 else []
        return [self.binary, *user, "-l", HOST, "-p", str(self.port), "-U", "0"]

    def start(self) -> StoreProcess:
        if shutil.which(self.binary) is None:
            pytest.skip(f"{self.binary} is not installed (install it with: {INSTALL})")
        for attempt in range(3):
            self.port = free_port()
            with open(self.log_path, "ab") as log:
                self.proc = spawn(self.command(), stdin=subprocess.DEVNULL, stdout=log, stderr=log)
            try:
                wait_for(
                    lambda: self.proc is not None and (self.proc.poll() is not None or self.answers()),
                    20.0,
                    f"{self.binary} on port {self.port}",
                )
            except AssertionError:
                self.stop()
                raise
            if self.proc.poll() is None:
                return self
            if attempt == 2:
                raise AssertionError(f"{self.binary} did not start:\n{self.log_path.read_text()}")
        return self

    def answers(self) -> bool:
        """Whether the server answers its ping (PING / version) right now."""
        ask, good = (b"PING\r\n", b"+PONG") if self.kind == "redis" else (b"version\r\n", b"VERSION")
        try:
            with socket.create_connection((HOST, self.port), timeout=1.0) as sock:
                sock.sendall(ask)
                return sock.recv(64).startswith(good)
        except OSError:
            return False

    def pause(self) -> None:
        """SIGSTOP: it keeps its port (connections are accepted by the kernel) but never answers."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGSTOP)
        # kill() returns once the signal is sent; a thread running on another CPU can still
        # answer a request until every thread has stopped (CI saw memcached answer one).
        proc = psutil.Process(self.proc.pid)

        def stopped() -> bool:  # every thread (Linux: /proc/TID reads as a process)
            return all(psutil.Process(t.id).status() == psutil.STATUS_STOPPED for t in proc.threads())

        wait_for(stopped, 10, "every thread of the store stopped")

    def resume(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGCONT)

    def stop(self) -> None:
        if self.proc is not None:
            try:
                os.kill(self.proc.pid, signal.SIGCONT)  # a stopped process would not see TERM
            except ProcessLookupError:
                pass
            stop_process(self.proc)
