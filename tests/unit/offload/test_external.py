"""--offload-executor: the setting's parsing, making an executor from it, ExecutorOffload's rules
(a ThreadPoolExecutor standing for the external executor) and, in a monkey-patched subprocess,
the gevent wait adapter (a future completed by a native thread wakes only its greenlet)."""

from __future__ import annotations

import concurrent.futures
import json
import os
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

import prefork_lb.offload as offload_module
from prefork_lb.config import Config
from prefork_lb.offload import OffloadError, external
from prefork_lb.settings.base import ConfigError, offload_executor
from tests import apps_offload

ROOT = Path(__file__).resolve().parents[3]


@pytest.mark.parametrize(
    ("value", "parsed"),
    [
        (None, None),
        ("", None),
        ("local", None),
        (" LOCAL ", None),
        ("dask://127.0.0.1:8786", "dask://127.0.0.1:8786"),
        ("dask://scheduler.internal:1", "dask://scheduler.internal:1"),
        ("dask://[::1]:8786", "dask://[::1]:8786"),
        ("tests.apps_offload:thread_executor", "tests.apps_offload:thread_executor"),
        ("pkg.mod:Factory.make", "pkg.mod:Factory.make"),
    ],
)
def test_offload_executor_setting_accepts(value: str | None, parsed: str | None) -> None:
    assert offload_executor(value) == parsed


@pytest.mark.parametrize(
    "value",
    [
        "dask://",
        "dask://host",
        "dask://host:0",
        "dask://host:70000",
        "dask://host:port",
        "http://h:1",
        "mod",
        "a b:c",
        "mod:",
        ":f",
    ],
)
def test_offload_executor_setting_refuses(value: str) -> None:
    with pytest.raises(ValueError):
        offload_executor(value)


def test_offload_executor_default_is_the_local_pool_and_env_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Config().offload_executor is None
    assert Config.offload_executor.env == "PREFORK_LB_OFFLOAD_EXECUTOR"
    cfg = Config()
    with pytest.raises(ConfigError, match="offload_executor"):
        cfg.set("offload_executor", "dask://nohost", "command line")


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("no_such_module_9f2e:factory", "cannot import no_such_module_9f2e"),
        ("tests.apps_offload:nope", "tests.apps_offload has no nope"),
        ("tests.apps_offload:not_an_executor", "not a concurrent.futures.Executor"),
        ("tests.apps_offload:failing_factory", "the factory raised RuntimeError: no executor today"),
    ],
)
def test_make_executor_refuses_with_one_line(spec: str, message: str) -> None:
    with pytest.raises(external.ExecutorSetupError) as info:
        external.make_executor(spec)
    text = str(info.value)
    assert message in text and "\n" not in text and text.startswith(f"--offload-executor {spec}")


@pytest.fixture
def configured() -> Iterator[external.ExecutorOffload]:
    runner = external.configure("tests.apps_offload:thread_executor")
    assert runner is not None
    try:
        yield runner
    finally:
        external.close_configured()


def test_offload_runs_on_the_configured_executor(configured: external.ExecutorOffload) -> None:
    assert external.configured() is configured
    ran = offload_module(apps_offload.where_fib, 10)
    assert ran["result"] == 55
    assert ran["thread"].startswith("test-executor")  # not this thread, not a pool process
    assert offload_module.map(apps_offload.fib, range(8)) == [0, 1, 1, 2, 3, 5, 8, 13]
    assert offload_module.stats() == {"size": 4, "busy": 0, "idle": 4, "restarts": 0}


def test_errors_propagate_as_the_pool_s_do(configured: external.ExecutorOffload) -> None:
    with pytest.raises(ValueError, match="as asked"):
        offload_module(apps_offload.fail, "as asked")


def test_timeout_raises_timeout_error_and_cancels(configured: external.ExecutorOffload) -> None:
    gate = threading.Event()
    try:
        blockers = [configured.executor.submit(gate.wait, 30) for _ in range(4)]  # every thread busy
        with pytest.raises(TimeoutError, match="did not finish within 0.05 s"):
            offload_module(apps_offload.fib, 5, timeout=0.05)
    finally:
        gate.set()
    assert all(f.result(20) for f in blockers)


def test_a_closed_or_broken_executor_gives_offload_error() -> None:
    runner = external.ExecutorOffload(concurrent.futures.ThreadPoolExecutor(1), "a test executor")
    runner.close()
    with pytest.raises(OffloadError, match="closed"):
        runner.submit(abs, -1)
    shut = concurrent.futures.ThreadPoolExecutor(1)
    shut.shutdown()
    runner = external.ExecutorOffload(shut, "a shut executor")
    with pytest.raises(OffloadError, match="refused the task"):
        runner.submit(abs, -1)
    assert runner.stats()["restarts"] == 1

    class Lost(concurrent.futures.Executor):
        def submit(self, fn, /, *args, **kwargs):  # type: ignore[no-untyped-def]
            future: concurrent.futures.Future[int] = concurrent.futures.Future()
            future.set_exception(concurrent.futures.BrokenExecutor("its workers died"))
            return future

    with pytest.raises(OffloadError, match="its workers died"):
        external.ExecutorOffload(Lost(), "a lost executor").submit(abs, -1)


def test_close_falls_back_to_the_local_pool(configured: external.ExecutorOffload) -> None:
    offload_module.close()
    assert external.configured() is None
    assert configured._closed


def test_dask_without_distributed_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "distributed", None)  # import distributed -> ImportError
    monkeypatch.delitem(sys.modules, "prefork_lb.offload.dask", raising=False)
    with pytest.raises(external.ExecutorSetupError, match=r"needs the 'distributed' package"):
        external.make_executor("dask://127.0.0.1:8786")


GEVENT_SCRIPT = """
from gevent import monkey
monkey.patch_all()

import concurrent.futures
import json
import threading

import gevent

from prefork_lb.offload import external, offload

start_native = monkey.get_original("_thread", "start_new_thread")
allocate_lock = monkey.get_original("_thread", "allocate_lock")


def ticks_while(greenlet, count):
    # Count loop turns while greenlet waits; proves the hub ran while it was parked.
    n = 0
    while n < count and not greenlet.dead:
        gevent.sleep(0.001)
        n += 1
    return n


def main():
    report = {}
    # A future completed by a native thread, released only once the loop has turned.
    future = concurrent.futures.Future()
    gate = allocate_lock()
    gate.acquire()

    def complete():
        gate.acquire()
        future.set_result(42)

    start_native(complete, ())
    waiter = gevent.spawn(external.wait_future, future, 30)
    report["ticks_waiting"] = ticks_while(waiter, 20)
    gate.release()
    report["woken"] = waiter.get(timeout=30)
    report["result"] = future.result(0)

    never = concurrent.futures.Future()
    waiter = gevent.spawn(external.wait_future, never, 0.2)
    report["ticks_timeout"] = ticks_while(waiter, 20)
    report["timed_out"] = waiter.get(timeout=30) is False

    external.configure("tests.apps_offload:thread_executor")
    from tests.apps_offload import fib
    report["offloaded"] = gevent.spawn(offload, fib, 20).get(timeout=30)
    release = threading.Event()  # the slow task ends only when the loop has turned
    slow = gevent.spawn(offload, release.wait, 30)
    report["ticks_offload"] = ticks_while(slow, 20)
    release.set()
    report["slept"] = slow.get(timeout=30)
    never = threading.Event()
    try:
        offload(never.wait, 30, timeout=0.1)
    except TimeoutError as exc:
        report["timeout"] = type(exc).__name__
    never.set()
    print(json.dumps(report), flush=True)


main()
"""


def test_gevent_wait_adapter_parks_only_the_greenlet(tmp_path: Path) -> None:
    script = tmp_path / "gevent_wait.py"
    script.write_text(textwrap.dedent(GEVENT_SCRIPT))
    proc = subprocess.run(
        [sys.executable, str(script)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["ticks_waiting"] == 20  # the loop turned while the greenlet waited
    assert report["woken"] is True and report["result"] == 42
    assert report["ticks_timeout"] >= 1 and report["timed_out"]
    assert report["offloaded"] == 6765
    assert report["ticks_offload"] == 20 and report["slept"] is True
    assert report["timeout"] == "TimeoutError"
