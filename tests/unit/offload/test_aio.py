"""offload_async and what an asyncio worker calls to set offload up (WorkerOffload).

The end-to-end checks run ``tests.offload_async_driver`` in a subprocess that is set up the way
a worker child sets itself up (``WorkerOffload.from_config`` + ``start_executor``, no gevent),
once with the local pool and once with a MODULE:FACTORY executor (a ThreadPoolExecutor); each
test reads one check's JSON line. ``Slots`` (threads and tasks sharing the pool's limit) and
``WorkerOffload`` are driven in this process. The Dask cluster's case is an integration test
(tests/integration/test_offload_async.py)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

import prefork_lb
from prefork_lb.offload import aio, offload
from prefork_lb.offload.lifecycle import ENV_PROCESSES, WorkerOffload
from prefork_lb.offload.slots import Slots

ROOT = Path(__file__).resolve().parents[3]
FACTORY = "tests.apps_offload:thread_executor"


def run_driver(workdir: Path, *args: str, uvloop: bool = False) -> dict[str, dict[str, Any]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFORK_LB_")}
    if uvloop:
        env["PREFORK_LB_TEST_UVLOOP"] = "1"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    proc = subprocess.run(
        [sys.executable, "-m", "tests.offload_async_driver", str(workdir), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    lines = proc.stdout.splitlines()
    assert proc.returncode == 0 and lines and lines[-1] == "DONE", proc.stdout + proc.stderr
    checks = {c["check"]: c for c in (json.loads(line) for line in lines if line.startswith("{"))}
    assert "crashed" not in checks, checks["crashed"]["traceback"]
    return checks


@pytest.fixture(scope="module", params=["local", "local-uvloop", "factory"])
def checks(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    kind, _, loop = request.param.partition("-")
    if loop:
        pytest.importorskip("uvloop")
    args = () if kind == "local" else (FACTORY,)
    result = run_driver(tmp_path_factory.mktemp("gates"), *args, uvloop=bool(loop))
    assert result["loop"]["name"] == ("uvloop" if loop else "asyncio.unix_events"), result["loop"]
    result["kind"] = kind
    return result


def test_a_cpu_heavy_result_comes_back(checks: dict[str, Any]) -> None:
    got = checks["result"]
    assert got["value"]["result"] == 6765, got
    if checks["kind"] == "local":
        assert got["value"]["pid"] != got["pid"]  # in a pool process
    else:
        assert got["value"]["thread"].startswith("test-executor")


def test_the_functions_exception_is_raised_in_the_awaiting_task(checks: dict[str, Any]) -> None:
    error = checks["error"]["error"]
    assert (error["type"], error["message"]) == ("ValueError", "as asked")
    if checks["kind"] == "local":  # with the pool process's traceback
        assert "Remote traceback (offload worker pid" in error["notes"][0]
        assert "in fail\n    raise ValueError(message)" in error["notes"][0]


def test_past_its_timeout_the_task_is_abandoned_with_timeout_error(checks: dict[str, Any]) -> None:
    got = checks["timeout"]
    assert got["error"]["type"] == "TimeoutError", got
    assert got["error"]["message"].startswith(
        "offload: tests.apps_offload.wait_gate did not finish within 0.3 s"
    )
    if checks["kind"] == "local":
        assert "killed and replaced" in got["error"]["message"]
        assert got["stats"]["busy"] == 0 and got["stats"]["restarts"] >= 1


def test_a_pool_process_that_dies_gives_offload_error(checks: dict[str, Any]) -> None:
    if checks["kind"] != "local":
        pytest.skip("the pool's own processes only")
    got = checks["breakage"]
    assert got["error"]["type"] == "OffloadError", got
    assert "worker process died running tests.apps_offload.die: exited with code 3" in got["error"]["message"]
    assert got["stats"]["busy"] == 0


def test_fifty_concurrent_awaits_all_answer_in_order(checks: dict[str, Any]) -> None:
    got = checks["concurrent"]
    assert got.get("value") == got["expected"] and len(got["expected"]) == 50, got
    assert got["stats"]["busy"] == 0
    if checks["kind"] == "local":  # never more processes than the pool's size
        assert got["stats"]["size"] == 2 and got["stats"]["idle"] <= 2


def test_the_loop_keeps_running_while_a_long_job_is_awaited(checks: dict[str, Any]) -> None:
    # The job ends only once the ticker on the awaiting loop has ticked 20 times.
    got = checks["ticker"]
    assert got.get("value") == "opened" and got["ticks"] >= 20, got


def test_cancelling_the_awaiting_task_abandons_the_job(checks: dict[str, Any]) -> None:
    got = checks["cancel"]
    assert got["outcome"] == "cancelled" and got["counted_cancelled"] == 1, got
    assert got["then"] == {"value": 610}  # the pool (or executor) still serves
    if checks["kind"] == "local":  # the process running it is killed and replaced
        assert got["runner_alive"] is False and got["stats"]["busy"] == 0


def test_plain_offload_on_the_loop_points_to_offload_async(checks: dict[str, Any]) -> None:
    error = checks["sync_refused"]["error"]
    assert error["type"] == "RuntimeError" and "await prefork_lb.offload_async(fn, *args)" in error["message"]
    assert checks["sync_thread"]["value"] == 144  # from a thread it runs as anywhere


def test_every_task_is_counted_once(checks: dict[str, Any]) -> None:
    c = checks["counters"]
    assert c["submitted"] == c["completed"] + c["failed"] + c["timed_out"] + c["cancelled"], c
    assert c["timed_out"] == 1 and c["cancelled"] == 1


# -- in this process --------------------------------------------------------------------------


def test_offload_and_map_refuse_inside_a_running_loop_and_start_no_pool() -> None:
    async def main() -> list[str]:
        messages = []
        for call in (lambda: offload(pow, 2, 3), lambda: offload.map(abs, [1])):
            with pytest.raises(RuntimeError, match="would block the running asyncio event loop") as info:
                call()
            messages.append(str(info.value))
        return messages

    messages = asyncio.run(main())
    assert messages[0].startswith("offload(fn, *args) ") and messages[1].startswith("offload.map(fn, items) ")
    assert prefork_lb.offload_async is prefork_lb.offload.offload_async


def test_offload_async_refuses_a_pool_made_under_gevent() -> None:
    pool: Any = SimpleNamespace(_gevent=True)
    with pytest.raises(RuntimeError, match="in a gevent worker call offload"):
        asyncio.run(aio.run_on_pool(pool, pow, (2, 3), {}, None))


def test_slots_wake_a_waiting_task_when_a_thread_releases() -> None:
    slots = Slots(1)
    slots.acquire()  # a thread's offload() holds the only slot

    async def main() -> int:
        waiter = asyncio.create_task(slots.acquire_async())
        while not slots.waiting():
            await asyncio.sleep(0)
        threading.Thread(target=slots.release).start()
        await asyncio.wait_for(waiter, 30)
        return slots.waiting()

    assert asyncio.run(main()) == 0
    assert not slots.acquire(blocking=False)  # the task holds it now
    slots.release()


def test_slots_a_cancelled_waiter_passes_its_wake_up_on() -> None:
    slots = Slots(1)

    async def main() -> bool:
        await slots.acquire_async()
        first = asyncio.create_task(slots.acquire_async())
        second = asyncio.create_task(slots.acquire_async())
        while slots.waiting() < 2:
            await asyncio.sleep(0)
        slots.release()  # wakes first ...
        first.cancel()  # ... which is cancelled before it runs: second must get the slot
        await asyncio.wait_for(second, 30)
        return first.cancelled()

    assert asyncio.run(main()) is True
    assert slots.waiting() == 0 and not slots.acquire(blocking=False)


def test_worker_offload_sizes_the_pool_from_the_config(monkeypatch: pytest.MonkeyPatch) -> None:
    import prefork_lb.resources

    monkeypatch.delenv(ENV_PROCESSES, raising=False)
    monkeypatch.setattr(prefork_lb.resources, "cpu_count", lambda: 8)
    auto = WorkerOffload.from_config(SimpleNamespace(offload_processes=-1, workers=3, offload_executor=None))
    assert (auto.processes, auto.offered, os.environ[ENV_PROCESSES]) == (2, True, "2")
    off = WorkerOffload.from_config(SimpleNamespace(offload_processes=0, workers=1, offload_executor=None))
    assert (off.processes, off.offered, off.start_executor()) == (0, False, None)
    ext = WorkerOffload.from_config(SimpleNamespace(offload_processes=0, workers=1, offload_executor="x:y"))
    assert ext.offered


def test_worker_offload_a_bad_factory_is_one_line() -> None:
    setup = WorkerOffload(1, "tests.apps_offload:failing_factory")
    assert setup.start_executor() == (
        "--offload-executor tests.apps_offload:failing_factory: the factory raised RuntimeError: no executor today"
    )


def test_worker_offload_reports_nothing_before_the_pool_is_used(monkeypatch: pytest.MonkeyPatch) -> None:
    from prefork_lb.offload import counters, default

    monkeypatch.setattr(default, "_pool", None)
    monkeypatch.setattr(counters.TASKS, "tasks", [0] * len(counters.OUTCOMES))
    written: list[Any] = []
    WorkerOffload.report(SimpleNamespace(offload=lambda *a: written.append(a)))
    assert written == []
