"""Fixtures of the chaos suite: the dispatch modes, a server started per test, the results file.

* ``DISPATCH_MODES`` (from tests/helpers.py, which reads the package's list): every scenario
  runs once per mode (the ``mode`` fixture).
* ``server(mode, *flags)``: starts ``python -m prefork_lb tests.chaos.apps:app`` on a free
  127.0.0.1 port in its own process group, with a fresh ledger file (see tests/chaos/apps.py),
  waits for ``Ready:``, and stops the whole group afterwards (TERM, then KILL).
* ``chaos_results``: a session-wide list of result rows; at the end of the session they are
  written once with ``bench.harness.write_results("chaos", rows, meta)`` to bench/results/.
* ``CHAOS_DURATION`` (seconds, default 20) shortens the timed scenarios; ``CHAOS_MODES``
  (comma-separated) runs other dispatch modes than ``DISPATCH_MODES``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from bench import harness
from tests.helpers import DISPATCH_MODES, free_port, server_env, spawn, stop_process, wait_for

APP = "tests.chaos.apps:app"
# CHAOS_MODES=a,b runs those modes instead (a subset, or one not in the list yet).
MODES = [m for m in os.environ.get("CHAOS_MODES", "").split(",") if m] or DISPATCH_MODES
DURATION = float(os.environ.get("CHAOS_DURATION", "20"))


class Server:
    """One prefork_lb master with its log and ledger files."""

    def __init__(self, workdir: Path, mode: str, flags: tuple[str, ...]) -> None:
        self.mode = mode
        self.port = free_port()
        self.log = workdir / "server.log"
        self.ledger = workdir / "ledger"
        self.ledger.touch()
        args = ["--dispatch", mode, "--graceful-timeout", "5", *flags]
        if mode == "proxy":  # the proxy's admin listener defaults to a fixed port
            args += ["--stats-bind", f"127.0.0.1:{free_port()}"]
        env = server_env({"CHAOS_LEDGER": str(self.ledger)})
        self.cmd = [sys.executable, "-m", "prefork_lb", APP, "-b", f"127.0.0.1:{self.port}", *args]
        with open(self.log, "wb") as out:
            self.proc = spawn(
                self.cmd, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT
            )
        self.pid = self.proc.pid

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_ready(self, workers: int) -> None:
        wait_for(lambda: "Ready:" in self.text() or self.proc.poll() is not None, what="Ready: in the log")
        assert self.proc.poll() is None, self.text()
        wait_for(lambda: len(self.workers()) == workers, what=f"{workers} workers")

    def workers(self) -> list[int]:
        """Live worker pids: children of the master that are not its dispatcher, proxy or admin process."""
        pids = []
        try:
            children = psutil.Process(self.pid).children()
        except psutil.NoSuchProcess:
            return []
        for c in children:
            try:
                title = " ".join(c.cmdline())
                helper = any(h in title for h in ("dispatcher", "proxy", "prefork_lb: admin"))
                if c.status() != psutil.STATUS_ZOMBIE and not helper:
                    pids.append(c.pid)
            except psutil.Error:
                pass
        return sorted(pids)

    def signal(self, sig: int) -> None:
        os.kill(self.pid, sig)

    def ledger_counts(self) -> Counter[str]:
        return Counter(line.split()[0] for line in self.ledger.read_text().splitlines() if line.strip())

    def stop(self) -> None:
        try:
            # A worker left stopped by a failed test must be able to act on its TERM.
            os.killpg(self.pid, signal.SIGCONT)
        except ProcessLookupError:
            pass
        # TERM to the master only: it stops its workers in the order the mode needs (handoff:
        # the dispatcher first); a TERM to the whole group would race with it.
        stop_process(self.proc, 15, group=False)


@pytest.fixture(params=MODES)
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Callable[..., Server]]:
    started: list[Server] = []

    def start(mode: str, *flags: str, workers: int = 2) -> Server:
        srv = Server(tmp_path, mode, ("-w", str(workers), *flags))
        started.append(srv)
        srv.wait_ready(workers)
        return srv

    try:
        yield start
    finally:
        for srv in started:
            srv.stop()


@pytest.fixture(scope="session")
def chaos_results() -> Iterator[list[dict[str, Any]]]:
    rows: list[dict[str, Any]] = []
    started = time.monotonic()
    yield rows
    if not rows:
        return
    meta = {
        "title": "Chaos suite (tests/chaos)",
        "machine": harness.machine_info(),
        "params": {
            "CHAOS_DURATION (s)": DURATION,
            "modes": ", ".join(MODES),
            "session wall time (s)": round(time.monotonic() - started, 1),
        },
        "commands": {"suite": "python -m pytest -m slow tests/chaos"},
        "notes": [
            "Load: paced client threads on 127.0.0.1 in the test process (see tests/chaos/client.py); "
            "POSTs carry a unique X-Request-Id, which the app appends to a ledger when it starts executing it.",
            "sent: requests the load client sent; failed: requests without a complete response (and, except "
            "in the burst, without status 200); failed_unattributed: failed requests that had not reached the "
            "worker that died (target 0); duplicates: ids executed more than once (target 0).",
            "p99_ms: of the completed requests of the scenario's measured traffic (nearest rank).",
            "Timing numbers come from a 2-CPU machine shared with other work: compare rows within one run.",
        ],
    }
    md, _ = harness.write_results("chaos", rows, meta)
    print(f"\nchaos results: {md}")
