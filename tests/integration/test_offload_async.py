"""offload_async on a Dask LocalCluster (tests.dask_cluster), from an asyncio process set up the
way a worker child sets itself up (tests.offload_async_driver): the task runs on the cluster,
its exception comes back, and a scheduler SIGKILLed while a task is in flight gives
OffloadError to the awaiting task quickly, never a hang, as it does to the tasks after it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.dask_cluster import DaskCluster
from tests.helpers import ROOT, server_env, spawn, stop_process, wait_for


def read_checks(out: Path) -> dict[str, dict[str, Any]]:
    lines = out.read_text().splitlines()
    return {c["check"]: c for c in (json.loads(line) for line in lines if line.startswith("{"))}


def test_offload_async_on_dask_and_a_scheduler_that_disappears(tmp_path: Path) -> None:
    cluster = DaskCluster(tmp_path / "dask").start()
    out = tmp_path / "driver.out"
    gates = tmp_path / "gates"
    gates.mkdir()
    env = server_env({"PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))})
    with open(out, "wb") as f:
        proc = spawn(
            [sys.executable, "-m", "tests.offload_async_driver", str(gates), cluster.spec],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=f,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for(lambda: "IN_FLIGHT" in out.read_text() or proc.poll() is not None, 90.0, "a task in flight")
        checks = read_checks(out)
        assert "crashed" not in checks, out.read_text()
        ran = checks["result"]["value"]
        assert ran["result"] == 6765 and ran["pid"] == cluster.pid != checks["result"]["pid"], checks
        assert ran["dask_worker"].startswith("tcp://127.0.0.1:")
        error = checks["error"]["error"]
        assert (error["type"], error["message"]) == ("ValueError", "as asked")
        assert checks["sync_refused"]["error"]["type"] == "RuntimeError"

        cluster.kill()
        # Bounded well inside the driver's own 60 s bound per await: a hang fails here.
        wait_for(lambda: proc.poll() is not None, 45.0, "the driver to finish after the scheduler died")
        assert proc.returncode == 0, out.read_text()
        lost = read_checks(out)["scheduler_lost"]
        assert lost["in_flight"]["error"]["type"] == "OffloadError", lost
        assert "lost the Dask scheduler" in lost["in_flight"]["error"]["message"]
        for later in lost["later"]:
            assert later.get("error", {}).get("type") == "OffloadError", lost
        assert "DONE" in out.read_text()
    finally:
        stop_process(proc, 10)
        cluster.stop()
