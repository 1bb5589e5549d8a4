"""OffloadPool: results, remote exceptions, pickling errors, timeouts, dead children, cleanup,
and (in a subprocess, so monkey-patching stays out of pytest) gevent cooperation."""

from __future__ import annotations

import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from prefork_lb.offload import OffloadError, OffloadPool, offload

DEADLINE_S = 15.0


def fib(n: int) -> int:
    return n if n < 2 else fib(n - 1) + fib(n - 2)


def add(a: int, b: int = 0) -> int:
    return a + b


def fail(message: str) -> None:
    raise ValueError(message)


def exit_hard(code: int) -> None:
    os._exit(code)


def segfault() -> None:
    ctypes.string_at(0)


def unpicklable_result() -> object:
    return threading.Lock()


def snooze(seconds: float) -> None:
    time.sleep(seconds)


def getpid() -> int:
    return os.getpid()


@pytest.fixture
def pool() -> Iterator[OffloadPool]:
    with OffloadPool(size=2) as p:
        yield p


def wait_gone(pids: list[int], deadline_s: float = DEADLINE_S) -> list[int]:
    """Poll until none of ``pids`` runs (zombies count as gone); returns those still running."""
    procs = []
    for pid in pids:
        try:
            procs.append(psutil.Process(pid))
        except psutil.NoSuchProcess:
            pass
    deadline = time.monotonic() + deadline_s
    while True:
        alive = []
        for proc in procs:
            try:
                # A zombie leader may still have threads exiting (holding its fds): wait for them.
                if proc.is_running() and (
                    proc.status() != psutil.STATUS_ZOMBIE or len(os.listdir(f"/proc/{proc.pid}/task")) > 1
                ):
                    alive.append(proc.pid)
            except (psutil.NoSuchProcess, FileNotFoundError):
                pass
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.02)


def test_submit_returns_result(pool: OffloadPool) -> None:
    assert pool.submit(add, 2, b=3) == 5
    assert pool.submit(fib, 15) == 610
    assert pool.submit(getpid) != os.getpid()


def test_map_keeps_order(pool: OffloadPool) -> None:
    assert pool.map(fib, range(12)) == [fib(i) for i in range(12)]
    assert pool.map(fib, []) == []
    assert len(pool.pids()) == 2


def test_exception_comes_back_with_remote_traceback(pool: OffloadPool) -> None:
    with pytest.raises(ValueError, match="from the child") as info:
        pool.submit(fail, "from the child")
    notes = "\n".join(getattr(info.value, "__notes__", []))
    assert "Remote traceback" in notes
    assert "in fail" in notes and "raise ValueError(message)" in notes
    assert pool.submit(add, 1) == 1  # the child is reused after an exception
    assert pool.stats()["restarts"] == 0


def test_unpicklable_function_names_it(pool: OffloadPool) -> None:
    with pytest.raises(TypeError, match="cannot pickle the function .*<lambda>"):
        pool.submit(lambda: 1)


def test_unpicklable_argument_names_it(pool: OffloadPool) -> None:
    with pytest.raises(TypeError, match="cannot pickle argument 1 of .*add"):
        pool.submit(add, 1, threading.Lock())
    with pytest.raises(TypeError, match="cannot pickle keyword argument 'b' of .*add"):
        pool.submit(add, 1, b=threading.Lock())


def test_unpicklable_result_names_it(pool: OffloadPool) -> None:
    with pytest.raises(TypeError, match="cannot pickle the result of .*unpicklable_result"):
        pool.submit(unpicklable_result)
    assert pool.submit(add, 2) == 2


def test_timeout_kills_and_replaces(pool: OffloadPool) -> None:
    first = pool.submit(getpid)
    with pytest.raises(TimeoutError, match="snooze did not finish within 0.2 s"):
        pool.submit(snooze, 60, timeout=0.2)
    assert pool.stats()["restarts"] == 1
    assert pool.submit(add, 4, 4) == 8
    assert pool.stats() == {"size": 2, "busy": 0, "idle": len(pool.pids()), "restarts": 1}
    assert not psutil.pid_exists(first) or first in pool.pids() or wait_gone([first]) == []


def test_child_exit_gives_error_and_is_replaced(pool: OffloadPool) -> None:
    with pytest.raises(OffloadError, match="worker process died .*exited with code 7"):
        pool.submit(exit_hard, 7)
    assert pool.stats()["restarts"] == 1
    assert pool.submit(add, 1, 1) == 2


def test_child_segfault_gives_error(pool: OffloadPool) -> None:
    with pytest.raises(OffloadError, match="worker process died .*killed by SIGSEGV"):
        pool.submit(segfault)
    assert pool.submit(add, 3) == 3


def test_child_killed_while_idle_is_replaced_silently(pool: OffloadPool) -> None:
    pid = pool.submit(getpid)
    os.kill(pid, signal.SIGKILL)
    assert wait_gone([pid]) == []
    assert pool.submit(getpid) != pid
    assert pool.stats()["restarts"] == 1


def test_close_leaves_no_child() -> None:
    with OffloadPool(size=3) as p:
        p.map(snooze, [0.05] * 3)
        pids = p.pids()
        assert len(pids) == 3
        assert {c.pid for c in psutil.Process().children()} >= set(pids)
    assert not set(pids) & {c.pid for c in psutil.Process().children()}
    assert wait_gone(pids) == []
    with pytest.raises(OffloadError, match="closed"):
        p.submit(add, 1)


def test_child_does_not_hold_listening_sockets() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.set_inheritable(True)  # the worst case: a listener meant to survive exec
        inode = os.fstat(listener.fileno()).st_ino
        with OffloadPool(size=1) as p:
            pid = p.submit(getpid)
            fd_dir = Path(f"/proc/{pid}/fd")
            targets = [os.readlink(fd_dir / name) for name in os.listdir(fd_dir)]
            assert f"socket:[{inode}]" not in targets
            assert not [c for c in psutil.Process(pid).net_connections() if c.status == psutil.CONN_LISTEN]


def test_concurrent_threads_share_the_pool(pool: OffloadPool) -> None:
    results: dict[int, int] = {}

    def call(i: int) -> None:
        results[i] = pool.submit(add, i, 100)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(DEADLINE_S)
    assert results == {i: i + 100 for i in range(6)}
    assert len(pool.pids()) <= 2


def test_module_level_offload() -> None:
    try:
        assert offload(add, 1, b=2) == 3
        assert offload.map(fib, [5, 6]) == [5, 8]
    finally:
        offload.close()


def test_default_pool_size_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PREFORK_LB_OFFLOAD_PROCESSES", "3")
    with OffloadPool() as p:
        assert p.stats()["size"] == 3
    monkeypatch.setenv("PREFORK_LB_OFFLOAD_PROCESSES", "zero")
    with pytest.raises(ValueError, match="PREFORK_LB_OFFLOAD_PROCESSES"):
        OffloadPool()


GEVENT_SCRIPT = """
from gevent import monkey
monkey.patch_all()

import json
import os
import sys
import time

import gevent

from prefork_lb.offload import OffloadPool


def fib(n):
    return n if n < 2 else fib(n - 1) + fib(n - 2)


def main():
    pid_file = sys.argv[1]
    pool = OffloadPool(size=2)
    pool.map(abs, [-1, -2])  # start both children
    ticks = []
    running = [True]

    def ticker():
        while running[0]:
            ticks.append(time.monotonic())
            gevent.sleep(0.01)

    tick = gevent.spawn(ticker)
    gevent.sleep(0)
    before = len(ticks)
    heavy = gevent.spawn(pool.submit, fib, 32)
    result = heavy.get()
    during = len(ticks) - before
    running[0] = False
    tick.join()
    with open(pid_file + ".tmp", "w") as f:
        json.dump(pool.pids(), f)
    os.rename(pid_file + ".tmp", pid_file)
    print(json.dumps({"result": result, "ticks": during}), flush=True)
    gevent.sleep(3600)  # the test SIGKILLs us here


if __name__ == "__main__":
    main()
"""


def test_gevent_hub_not_blocked_and_owner_sigkill_leaves_no_child(tmp_path: Path) -> None:
    script = tmp_path / "gevent_offload.py"
    script.write_text(textwrap.dedent(GEVENT_SCRIPT))
    pid_file = tmp_path / "pids.json"
    proc = subprocess.Popen(
        [sys.executable, str(script), str(pid_file)],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # the script prints once its pids are on disk
        assert line, f"script ended early with {proc.wait(DEADLINE_S)}"
        report = json.loads(line)
        assert report["result"] == 2178309  # fib(32)
        assert report["ticks"] > 5, report  # the hub kept running while the child computed
        pids = json.loads(pid_file.read_text())
        assert len(pids) == 2
        assert all(psutil.pid_exists(pid) for pid in pids)
        # Only the owner: its children share its process group, and must go on their own.
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(DEADLINE_S)
        assert wait_gone(pids) == []
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(DEADLINE_S)
        if proc.stdout is not None:
            proc.stdout.close()


def test_pool_processes_run_at_lower_priority() -> None:
    import psutil

    from prefork_lb.offload import OffloadPool

    with OffloadPool(size=1) as pool:
        assert pool.submit(abs, -1) == 1
        (pid,) = pool.pids()
        assert psutil.Process(pid).nice() >= psutil.Process().nice() + 10
