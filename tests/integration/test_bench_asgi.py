"""bench/mixed.py --interface asgi runs prefork_lb's own ASGI worker (``python -m prefork_lb ...
--interface asgi``): the offload app awaits offload_async in the worker's pool, every request
is answered, and the offload row is compared with the inline one."""

from __future__ import annotations

import subprocess
import sys

from tests.helpers import ROOT, server_env, spawn, stop_process


def test_mixed_offload_asgi_runs_on_the_prefork_lb_asgi_worker() -> None:
    servers = "prefork_lb asgi inline,prefork_lb asgi offload"
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
        line.split("|")[1].strip(): [c.strip() for c in line.split("|")]
        for line in out.decode().splitlines()
        if line.startswith("| ")
    }
    assert "did not start" not in text, text
    for name in servers.split(","):
        row = rows[name]
        assert int(row[2]) > 0 and int(row[7]) == 0, text  # sent, errors
    assert float(rows["prefork_lb asgi offload"][8]) > 0, text  # fast p99 vs the inline base
