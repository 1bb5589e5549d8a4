"""A Dask LocalCluster for the offload-executor tests: ``python -m tests.dask_cluster PORT``.

:class:`DaskCluster` runs it from a test in its own process group (tests.helpers.spawn), waits
for its READY line with a deadline and stops (or SIGKILLs) the whole group; where
``distributed`` is not installed the test is skipped, saying how to install it.

Prints ``READY tcp://127.0.0.1:PORT`` once the scheduler and its worker are up, then runs until
SIGTERM or SIGINT. The worker runs in this process (``processes=False``): its tasks report this
pid, never a prefork_lb worker's.
"""

from __future__ import annotations

import importlib.util
import signal
import subprocess
import sys
from pathlib import Path

INSTALL = "pip install 'prefork_lb[dask]'"


class DaskCluster:
    """One LocalCluster (scheduler and one in-process worker) on a free loopback port."""

    def __init__(self, workdir: Path) -> None:
        Path(workdir).mkdir(parents=True, exist_ok=True)
        self.log_path = Path(workdir) / "dask-cluster.log"
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def spec(self) -> str:
        """The --offload-executor value naming this cluster's scheduler."""
        return f"dask://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, port: int = 0) -> DaskCluster:
        """Start on ``port`` (0: a free one, retried if taken meanwhile)."""
        import pytest

        from tests.helpers import free_port, server_env, spawn, wait_for

        # Look for it without importing it: importing distributed installs tblib's pickling of
        # exceptions into this (the test) process, which changes what other tests see.
        if importlib.util.find_spec("distributed") is None:
            pytest.skip(f"distributed (dask) is not installed: {INSTALL}")
        for attempt in range(3):
            self.port = port or free_port()
            with open(self.log_path, "ab") as log:
                self.proc = spawn(
                    [sys.executable, "-m", "tests.dask_cluster", str(self.port)],
                    env=server_env(),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            wait_for(
                lambda: self.proc is not None and (self.proc.poll() is not None or self.ready()),
                60.0,
                f"the Dask cluster on port {self.port}",
            )
            if self.ready():
                return self
            text = self.log_text()
            self.stop()
            if port or "already in use" not in text and "Address in use" not in text or attempt == 2:
                raise AssertionError(f"the Dask cluster did not start:\n{text}")
        return self

    def ready(self) -> bool:
        return "READY" in self.log_text()

    def log_text(self) -> str:
        try:
            return self.log_path.read_text("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def kill(self) -> None:
        """SIGKILL the whole group: the scheduler disappears without a word."""
        from tests.helpers import kill_group

        if self.proc is not None:
            kill_group(self.proc)
            self.proc.wait(20)

    def stop(self) -> None:
        from tests.helpers import stop_process

        if self.proc is not None:
            stop_process(self.proc, 20)


def main() -> None:
    from distributed import LocalCluster

    port = int(sys.argv[1])
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    cluster = LocalCluster(
        n_workers=1,
        threads_per_worker=4,
        processes=False,
        host="127.0.0.1",
        scheduler_port=port,
        dashboard_address=None,
    )
    print("READY", cluster.scheduler_address, flush=True)
    signal.sigwait({signal.SIGTERM, signal.SIGINT})
    cluster.close()


if __name__ == "__main__":
    main()
