"""The real CLI sizes itself from the CPUs it may use (issue 14 item 4): a server started under
``taskset -c 0`` on a machine with more CPUs runs one worker, and ``--max-rss N%`` without a
cgroup memory limit is refused at start with one line."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from prefork_lb import resources
from tests.helpers import free_port, http_get, kill_group, server_env, spawn, stop_process, wait_for


def live_children(pid: int) -> list[psutil.Process]:
    try:
        kids = psutil.Process(pid).children()
    except psutil.NoSuchProcess:
        return []
    out = []
    for c in kids:
        try:
            if c.status() != psutil.STATUS_ZOMBIE:
                out.append(c)
        except psutil.NoSuchProcess:
            pass
    return out


@pytest.mark.skipif(shutil.which("taskset") is None, reason="needs util-linux taskset")
def test_default_workers_follow_the_affinity_mask(tmp_path: Path) -> None:
    proc, port, log = start_on_cpu_0(tmp_path, "prefork_lb.demo:app")
    try:
        wait_for(lambda: "Ready:" in log.read_text() or proc.poll() is not None, what="the server ready")
        text = log.read_text()
        assert "Ready: 1 worker serving" in text, text
        assert http_get(port)[0] == 200
        workers = [c for c in live_children(proc.pid) if "worker" in " ".join(c.cmdline())]
        assert len(workers) == 1, [c.cmdline() for c in live_children(proc.pid)]
    finally:
        stop_process(proc)
        kill_group(proc)


@pytest.mark.skipif(shutil.which("taskset") is None, reason="needs util-linux taskset")
def test_offload_pool_default_follows_the_affinity_mask(tmp_path: Path) -> None:
    # one worker on one usable CPU: auto is 1 (os.cpu_count() // 1 would be every host CPU)
    proc, port, log = start_on_cpu_0(tmp_path, "tests.apps:compute", "-w", "1")
    try:
        wait_for(lambda: "Ready:" in log.read_text() or proc.poll() is not None, what="the server ready")
        assert http_get(port, "/pool-size") == (200, b"1"), log.read_text()
    finally:
        stop_process(proc)
        kill_group(proc)


def start_on_cpu_0(tmp_path: Path, app: str, *args: str) -> tuple[subprocess.Popen[bytes], int, Path]:
    """The server under ``taskset -c 0`` (one usable CPU), its stderr in a file."""
    log = tmp_path / "err.log"
    port = free_port()
    with log.open("wb") as err:
        proc = spawn(
            ["taskset", "-c", "0", sys.executable, "-m", "prefork_lb", app, "-b", f"127.0.0.1:{port}", *args],
            env=server_env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    return proc, port, log


@pytest.mark.skipif(resources.memory_limit() is not None, reason="this machine has a cgroup memory limit")
def test_max_rss_percent_without_a_memory_limit_is_one_line_and_exit_2() -> None:
    proc = spawn(
        [sys.executable, "-m", "prefork_lb", "prefork_lb.demo:app", "--max-rss", "80%"],
        env=server_env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        out, err = proc.communicate(timeout=20)
    finally:
        kill_group(proc)
    assert proc.returncode == 2
    assert err.decode() == "prefork_lb: error: --max-rss 80%: no cgroup memory limit found; give a size\n"
    assert out == b""
