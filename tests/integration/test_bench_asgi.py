"""The ASGI benchmarks run: bench/mixed.py --interface asgi on prefork_lb's own ASGI worker
(``python -m prefork_lb ... --interface asgi``: the offload app awaits offload_async in the
worker's pool, every request is answered, and the offload row is compared with the inline one);
bench/asgi.py --pin, every server on the first usable CPU and wrk on the others
(bench.harness.pinned / split_cpus, taskset), still measuring each server."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from bench import harness
from tests.helpers import ROOT, server_env, spawn, stop_process


def test_mixed_offload_asgi_runs_on_the_prefork_lb_asgi_worker() -> None:
    servers = "prefork_lb asgi inline,prefork_lb asgi offload"
    cmd = [sys.executable, "bench/mixed.py", "--scenario", "offload", "--interface", "asgi"]
    cmd += ["--servers", servers, "--duration", "1", "--rate", "10", "--workers", "1", "--no-save"]
    out, text = run_bench(cmd)
    rows = {
        line.split("|")[1].strip(): [c.strip() for c in line.split("|")]
        for line in out.splitlines()
        if line.startswith("| ")
    }
    assert "did not start" not in text, text
    for name in servers.split(","):
        row = rows[name]
        assert int(row[2]) > 0 and int(row[7]) == 0, text  # sent, errors
    assert float(rows["prefork_lb asgi offload"][8]) > 0, text  # fast p99 vs the inline base


def run_bench(cmd: list[str]) -> tuple[str, str]:
    """Run a bench script to its end (120 s at most): its stdout, and stdout + stderr; it must
    exit 0."""
    proc = spawn(
        cmd, env=server_env({"PYTHONPATH": str(ROOT)}), stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        out, err = proc.communicate(timeout=120)
    finally:
        stop_process(proc, 5)
    text = out.decode() + err.decode()
    assert proc.returncode == 0, text
    return out.decode(), text


def test_pinned_prefixes_taskset_with_the_cpus_and_leaves_an_unpinned_command_alone() -> None:
    assert harness.pinned(["wrk", "-t1"], None) == ["wrk", "-t1"]
    assert harness.pinned(["wrk", "-t1"], [3, 1]) == ["taskset", "--cpu-list", "1,3", "wrk", "-t1"]


def test_split_cpus_gives_the_server_the_first_cpu_and_the_load_generator_the_rest() -> None:
    usable = sorted(os.sched_getaffinity(0))
    split = harness.split_cpus()
    if len(usable) < 2:
        assert split is None
    else:
        assert split == (usable[:1], usable[1:])
    assert harness.split_cpus(len(usable)) is None


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="--pin needs 2 CPUs")
def test_bench_asgi_pin_measures_each_server_on_its_own_cpu() -> None:
    cmd = [sys.executable, "bench/asgi.py", "--pin", "--parts", "http", "--duration", "1", "--warmup", "0"]
    cmd += ["--rounds", "1", "--connections", "8", "--servers", "prefork_lb,uvicorn", "--no-save"]
    out, text = run_bench(cmd)
    usable = sorted(os.sched_getaffinity(0))
    assert f"pinned: yes: servers on CPU {usable[:1]}, load generator on CPU {usable[1:]}" in text, text
    rows = {}
    for line in out.splitlines():
        cells = [c.strip() for c in line.split("|")[1:-1]]
        if line.startswith("| ") and len(cells) == 10 and cells[1] == "1":  # the HTTP table, round 1
            rows[cells[0]] = cells
    for name in ("prefork_lb", "uvicorn"):
        assert rows[name][-1] == "ok", text  # status
        assert int(rows[name][2].replace(",", "")) > 0, text  # req/s
        assert rows[name][5] == "0", text  # errors
