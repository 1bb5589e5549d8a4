"""bench/mixed.py --interface asgi, on the bench's own asyncio server (bench/asgi_server.py): the
ASGI offload app awaits offload_async in a process set up as a worker child is, every request
is answered, and a server that does not start is left out of the table with a line saying why
(here prefork_lb's ASGI rows, where --interface is not known yet; once the ASGI worker lands
they run, and the test only asks that the bench's own rows are there)."""

from __future__ import annotations

import subprocess
import sys

from tests.helpers import ROOT, server_env, spawn, stop_process


def test_mixed_offload_asgi_runs_on_the_bench_asyncio_server() -> None:
    servers = "prefork_lb asgi offload,bench asyncio offload"
    cmd = [sys.executable, "bench/mixed.py", "--scenario", "offload", "--interface", "asgi"]
    cmd += ["--servers", servers, "--duration", "1", "--rate", "10", "--workers", "1", "--no-save"]
    proc = spawn(
        cmd, env=server_env({"PYTHONPATH": str(ROOT)}), stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        out, err = proc.communicate(timeout=120)
    finally:
        stop_process(proc, 5)
    text = out.decode() + err.decode()
    assert proc.returncode == 0, text
    rows = {
        line.split("|")[1].strip(): line.split("|")
        for line in out.decode().splitlines()
        if line.startswith("| ")
    }
    floor = rows["bench asyncio offload"]
    assert int(floor[2]) > 0 and int(floor[7]) == 0, text  # sent, errors
    assert "prefork_lb asgi offload" in rows or "[prefork_lb asgi offload] did not start, left out" in text
