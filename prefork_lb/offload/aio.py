"""``offload_async``: the offload pool (or the configured executor) awaited from asyncio code.

``await prefork_lb.offload_async(fn, *args, timeout=5, **kw)`` runs ``fn(*args, **kw)`` where
``prefork_lb.offload(...)`` would (the executor ``--offload-executor`` configured in this
process, else the per-process default pool) and parks only the awaiting task. The rules are
``offload``'s: ``timeout`` counts from the hand-off and raises ``TimeoutError``; what ``fn``
raises is raised (with the remote traceback as a note, from the local pool); ``OffloadError``
when the task could not be run (its process died, the pool or executor is closed or broken, a
Dask scheduler is lost: quickly, never a hang).

How the task waits, without a thread blocked per call:

- the local pool: the task takes a slot (``Slots.acquire_async``) and a child, writes the task
  frame and reads the response with ``loop.add_writer``/``add_reader`` on the child's socket,
  the deadline a ``loop.call_later``; the children, frames and bookkeeping are the pool's own
  (``OffloadPool``), so threads calling ``offload()`` share the same children and limit;
- an executor: ``asyncio.wrap_future`` on the ``concurrent.futures.Future`` it returns (its
  done-callback wakes the loop thread-safely); ``ExecutorOffload.settle`` gives the outcome.

Cancelling the awaiting task abandons the job: a pool child running it is killed and replaced
(its state is unknown, as after a timeout), an executor's future is cancelled where it can be;
either way the task is counted ``cancelled``.

Invariants: only for a process that gevent has not patched (a gevent worker calls
``offload()``, which parks its greenlet): a pool made under gevent refuses with RuntimeError;
every fd registered with the loop is unregistered before the call returns or raises.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from typing import Any

from prefork_lb.offload import wire
from prefork_lb.offload.counters import CANCELLED, COMPLETED, FAILED, TASKS, TIMED_OUT
from prefork_lb.offload.default import default_pool
from prefork_lb.offload.external import ExecutorOffload, configured
from prefork_lb.offload.pool import OffloadError, OffloadPool, _Child, _Job

__all__ = ["offload_async", "run_on_executor", "run_on_pool"]


class _Expired(Exception):
    """Internal: a wait on a child's socket ran past the task's deadline."""


async def offload_async(
    fn: Callable[..., Any], /, *args: Any, timeout: float | None = None, **kwargs: Any
) -> Any:
    """Run ``fn(*args, **kwargs)`` on this process's executor or default pool; see the module."""
    runner = configured()
    if runner is not None:
        return await run_on_executor(runner, fn, args, kwargs, timeout)
    return await run_on_pool(default_pool(), fn, args, kwargs, timeout)


async def run_on_pool(
    pool: OffloadPool,
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    timeout: float | None,
) -> Any:
    """One task on ``pool``'s children, awaited on the running loop (``OffloadPool.submit``'s
    rules)."""
    if pool._gevent:
        raise RuntimeError(
            "offload_async: this pool was made under gevent's monkey-patching; "
            "in a gevent worker call offload(fn, *args), which parks only the greenlet"
        )
    pool._check_usable()
    fn_name = wire.describe(fn)
    payload = wire.dumps_task(fn, fn_name, args, kwargs)
    loop = asyncio.get_running_loop()
    await pool._slots.acquire_async()
    try:
        child = pool._take_child()
    except BaseException:
        pool._slots.release()
        raise
    job = _Job(0, pool._new_id(), fn_name, timeout)
    TASKS.submitted()
    answered = False
    try:
        await _write_all(loop, child, wire.frame(payload, job.task_id, wire.KIND_TASK), job.deadline)
        while not wire.frame_ready(child.buffer):
            await _readable(loop, child.fd, job.deadline)
            pool._fill(child, job)  # OffloadError on EOF: the child died (discarded)
        answered = True
        took = time.monotonic() - job.started
        try:
            result = pool._finish(child, job)
        except BaseException:
            TASKS.ended(FAILED, took)
            raise
        TASKS.ended(COMPLETED, took)
        return result
    except _Expired:
        TASKS.ended(TIMED_OUT)
        pool._discard(child)
        raise TimeoutError(
            f"offload: {fn_name} did not finish within {timeout} s (worker pid {child.pid} killed and replaced)"
        ) from None
    except OffloadError:
        if not answered:
            TASKS.ended(FAILED)
        raise
    except BaseException:
        if not answered:  # cancelled (or interrupted) while the child runs it: state unknown
            TASKS.ended(CANCELLED)
            pool._discard(child)
        raise
    finally:
        pool._slots.release()


async def run_on_executor(
    runner: ExecutorOffload,
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    timeout: float | None,
) -> Any:
    """One task on a configured executor, awaited through ``asyncio.wrap_future``."""
    future = runner._submit(fn, args, kwargs)
    waited = asyncio.wrap_future(future)
    waited.add_done_callback(_consume)  # an outcome nobody awaits any more is not logged
    try:
        await asyncio.wait({waited}, timeout=timeout)
    except BaseException:  # the awaiting task was cancelled
        runner.abandon(future)
        raise
    return runner.settle(future, wire.describe(fn), timeout, future.done())


def _consume(waited: asyncio.Future[Any]) -> None:
    if not waited.cancelled():
        waited.exception()


async def _write_all(
    loop: asyncio.AbstractEventLoop, child: _Child, data: bytes, deadline: float | None
) -> None:
    """Write a frame to the child's socket, waiting on the loop while its buffer is full. A
    child already gone is left for the read to report (EOF: how it died), as the pool does."""
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(child.fd, view) :]
        except BlockingIOError:
            await _ready(loop, child.fd, deadline, write=True)
        except OSError:
            return


async def _readable(loop: asyncio.AbstractEventLoop, fd: int, deadline: float | None) -> None:
    await _ready(loop, fd, deadline, write=False)


async def _ready(loop: asyncio.AbstractEventLoop, fd: int, deadline: float | None, write: bool) -> None:
    """Wait until ``fd`` is readable (writable), or raise _Expired at ``deadline``."""
    signal: asyncio.Future[bool] = loop.create_future()
    (loop.add_writer if write else loop.add_reader)(fd, _resolve, signal, True)
    timer = None
    if deadline is not None:
        timer = loop.call_later(max(0.0, deadline - time.monotonic()), _resolve, signal, False)
    try:
        ready = await signal
    finally:
        (loop.remove_writer if write else loop.remove_reader)(fd)
        if timer is not None:
            timer.cancel()
    if not ready:
        raise _Expired


def _resolve(signal: asyncio.Future[bool], value: bool) -> None:
    if not signal.done():
        signal.set_result(value)
