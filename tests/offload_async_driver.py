"""A process that uses offload the way an asyncio worker does: ``python -m tests.offload_async_driver
GATE_DIR [EXECUTOR]`` (``PREFORK_LB_TEST_UVLOOP=1``: on a uvloop loop). Not gevent-patched: it sets offload up with ``WorkerOffload`` (2 pool
processes; EXECUTOR is an --offload-executor value, or none for the local pool), then runs
``asyncio.run`` over the checks below and prints one JSON line per check, ``{"check": name, ...}``,
then ``DONE``.

A check records what a user would see (results, exception types and messages, the pool's stats,
counts of a ticker task); no check may hang: each is bounded by ``asyncio.wait_for`` (a hang is
recorded as ``"hang": true``). ``scheduler_lost`` (only with a ``dask://`` executor) starts a slow
task, prints ``IN_FLIGHT`` and waits for the test to kill the scheduler.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import threading
import time
import traceback
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import prefork_lb
from prefork_lb.offload import offload
from prefork_lb.offload.counters import CANCELLED, OUTCOMES, TASKS
from prefork_lb.offload.lifecycle import WorkerOffload
from tests import apps_offload

BOUND_S = 60.0  # no check may take longer: far beyond what a passing one needs


def emit(check: str, **data: Any) -> None:
    print(json.dumps({"check": check, **data}), flush=True)


def described(exc: BaseException) -> dict[str, Any]:
    return {"type": type(exc).__name__, "message": str(exc), "notes": getattr(exc, "__notes__", [])}


async def attempt(awaitable: Awaitable[Any]) -> dict[str, Any]:
    """{"value": ...} or {"error": {...}}, or {"hang": true} past BOUND_S."""
    try:
        return {"value": await asyncio.wait_for(awaitable, BOUND_S)}
    except asyncio.TimeoutError as exc:
        if "did not finish within" in str(exc):  # offload's own TimeoutError, not the bound's
            return {"error": described(exc)}
        return {"hang": True}
    except Exception as exc:
        return {"error": described(exc)}


def stats() -> dict[str, int]:
    return offload.stats()


async def check_result() -> None:
    emit("result", pid=os.getpid(), **await attempt(prefork_lb.offload_async(apps_offload.where_fib, 20)))


async def check_error() -> None:
    emit("error", **await attempt(prefork_lb.offload_async(apps_offload.fail, "as asked")))


async def check_timeout(gate: Path) -> None:
    # The gate never opens: the task is still running at its deadline.
    got = await attempt(prefork_lb.offload_async(apps_offload.wait_gate, str(gate), 30.0, timeout=0.3))
    gate.write_text("")  # let an abandoned executor thread end
    timeout_stats = stats()
    # A thread executor can't stop a running task: wait (bounded) for the abandoned one to see
    # the gate and end, so the next check's counts start from an idle executor.
    deadline = time.monotonic() + 30
    while stats()["busy"] and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    emit("timeout", **got, stats=timeout_stats)


async def check_breakage() -> None:
    emit("breakage", **await attempt(prefork_lb.offload_async(apps_offload.die, 3)), stats=stats())


async def check_concurrent() -> None:
    ns = [10 + i % 8 for i in range(50)]
    got = await attempt(asyncio.gather(*(prefork_lb.offload_async(apps_offload.fib, n) for n in ns)))
    emit("concurrent", **got, expected=[apps_offload.fib(n) for n in ns], stats=stats())


async def check_ticker(gate: Path) -> None:
    """A long job that only ends once a ticker task on this loop has ticked 20 times: the loop
    must keep running while the job is awaited."""
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1
            if ticks == 20:
                gate.write_text("")

    ticker = asyncio.create_task(tick())
    try:
        got = await attempt(prefork_lb.offload_async(apps_offload.wait_gate, str(gate), 30.0))
    finally:
        ticker.cancel()
    emit("ticker", **got, ticks=ticks)


async def check_cancel(gate: Path) -> None:
    before = TASKS.tasks[CANCELLED]
    task = asyncio.create_task(prefork_lb.offload_async(apps_offload.wait_gate, str(gate), 30.0))
    started = Path(f"{gate}.started")
    for _ in range(int(BOUND_S / 0.01)):
        if started.exists() or task.done():
            break
        await asyncio.sleep(0.01)
    runner_pid = int(started.read_text() or 0) if started.exists() else 0
    task.cancel()
    try:
        await task
        outcome = "returned"
    except asyncio.CancelledError:
        outcome = "cancelled"
    gate.write_text("")  # an executor's thread cannot be stopped: let it end
    alive = True
    if runner_pid != os.getpid():  # a pool process: killed and replaced
        try:
            os.kill(runner_pid, 0)
        except ProcessLookupError:
            alive = False
    after = await attempt(prefork_lb.offload_async(apps_offload.fib, 15))
    emit(
        "cancel",
        outcome=outcome,
        runner_alive=alive,
        counted_cancelled=TASKS.tasks[CANCELLED] - before,
        then=after,
        stats=stats(),
    )


async def check_sync_call_refused() -> None:
    try:
        offload(apps_offload.fib, 3)
    except RuntimeError as exc:
        emit("sync_refused", error=described(exc))
        return
    emit("sync_refused", error=None)


def check_sync_call_from_a_thread() -> None:
    """offload() from a plain thread (no running loop there) still works in such a process."""
    box: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: box.setdefault("value", offload(apps_offload.fib, 12)))
    thread.start()
    thread.join(BOUND_S)
    emit("sync_thread", value=box.get("value"))


async def check_scheduler_lost(gate: Path) -> None:
    task = asyncio.ensure_future(attempt(prefork_lb.offload_async(apps_offload.wait_gate, str(gate), 60.0)))
    started = Path(f"{gate}.started")
    for _ in range(int(BOUND_S / 0.01)):
        if started.exists() or task.done():
            break
        await asyncio.sleep(0.01)
    print("IN_FLIGHT", flush=True)  # the test now kills the scheduler
    in_flight = await task
    later = [await attempt(prefork_lb.offload_async(apps_offload.fib, 10)) for _ in range(3)]
    emit("scheduler_lost", in_flight=in_flight, later=later)


async def main(gates: Path, executor: str | None) -> None:
    checks: list[Callable[[], Awaitable[None]]] = [check_result, check_error, check_sync_call_refused]
    if executor is not None and executor.startswith("dask://"):
        checks.append(lambda: check_scheduler_lost(gates / "lost"))
    else:
        checks += [
            lambda: check_timeout(gates / "timeout"),
            check_concurrent,
            lambda: check_ticker(gates / "ticker"),
            lambda: check_cancel(gates / "cancel"),
        ]
        if executor is None:
            checks.append(check_breakage)
    for check in checks:
        try:
            await check()
        except Exception:
            emit("crashed", traceback=traceback.format_exc())
    await asyncio.get_running_loop().run_in_executor(None, check_sync_call_from_a_thread)
    emit("counters", **dict(zip(OUTCOMES, TASKS.tasks, strict=True)))
    emit("loop", name=type(asyncio.get_running_loop()).__module__)


if __name__ == "__main__":
    gates, executor = Path(sys.argv[1]), (sys.argv[2] if len(sys.argv) > 2 else None)
    cfg = SimpleNamespace(offload_processes=2, workers=1, offload_executor=executor)
    setup = WorkerOffload.from_config(cfg)
    error = setup.start_executor()
    if error is not None:
        print("SETUP", error, flush=True)
        sys.exit(2)
    if os.environ.get("PREFORK_LB_TEST_UVLOOP") == "1":
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    try:
        asyncio.run(main(gates, executor))
    finally:
        setup.close()
    print("DONE", flush=True)
