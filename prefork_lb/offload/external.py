"""Offload to an executor outside the local pool: a Dask cluster, or any ``concurrent.futures.Executor``.

``--offload-executor`` (``cfg.offload_executor``, checked by ``settings.base.offload_executor``) names it: ``dask://HOST:PORT`` (a Dask
distributed scheduler, ``prefork_lb.offload.dask``) or ``MODULE:FACTORY``, a function of no
arguments returning a ``concurrent.futures.Executor``. Each worker makes its own after fork
(``configure()``, at boot); ``prefork_lb.offload(fn, *args)`` then runs there (``configured()``
is the hook the package's ``__call__`` asks first).

``ExecutorOffload`` gives an executor the local pool's face (``submit``/``map``/``stats``/
``close``) and its rules: ``timeout`` counts from submission and raises ``TimeoutError`` (the
task is cancelled where the executor can); what ``fn`` raises is raised; an executor that cannot
run the task (shut down, broken, a lost scheduler, a cancelled future) gives ``OffloadError``.

Waiting never blocks gevent's loop: ``wait_future`` parks the greenlet on an ``AsyncResult``
that the future's done-callback (run in whatever thread completes it) sets through
``hub.loop.run_callback_threadsafe``; without gevent it is ``future.result(timeout)``; an
asyncio task awaits ``asyncio.wrap_future`` instead (``prefork_lb.offload.aio``), and
``settle`` applies the same rules to the outcome.

Invariants: importing this module imports neither gevent nor dask; a configured executor
belongs to the process that made it (forgotten in a forked child, like the default pool).
"""

from __future__ import annotations

import atexit
import concurrent.futures
import importlib
import os
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from prefork_lb.offload import wire
from prefork_lb.offload.counters import CANCELLED, COMPLETED, FAILED, TASKS, TIMED_OUT
from prefork_lb.offload.pool import OffloadError, _gevent_active

__all__ = [
    "ExecutorOffload",
    "ExecutorSetupError",
    "close_configured",
    "configure",
    "configured",
    "make_executor",
    "wait_future",
]

DASK_SCHEME = "dask://"


class ExecutorSetupError(Exception):
    """The configured executor could not be made (one line, reported at a worker's boot)."""


def make_executor(spec: str) -> tuple[concurrent.futures.Executor, str]:
    """(the executor, a description) for a spec the setting has checked; ExecutorSetupError with one line if
    the module does not import, the factory is missing or returns no Executor, or dask is not
    installed. Makes no connection: a Dask client connects on first use."""
    if spec.startswith(DASK_SCHEME):
        try:
            from prefork_lb.offload.dask import DaskExecutor
        except ImportError as exc:
            raise ExecutorSetupError(
                f"--offload-executor {spec}: needs the 'distributed' package "
                f"(pip install 'prefork_lb[dask]'): {exc}"
            ) from exc
        address = "tcp://" + spec[len(DASK_SCHEME) :]
        return DaskExecutor(address), f"Dask scheduler {address}"
    module_name, _, attr = spec.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except ImportError as exc:
        raise ExecutorSetupError(f"--offload-executor {spec}: cannot import {module_name}: {exc}") from exc
    except AttributeError as exc:
        raise ExecutorSetupError(f"--offload-executor {spec}: {module_name} has no {attr}") from exc
    try:
        executor = obj()
    except Exception as exc:
        raise ExecutorSetupError(
            f"--offload-executor {spec}: the factory raised {type(exc).__name__}: {exc}"
        ) from exc
    if not isinstance(executor, concurrent.futures.Executor):
        raise ExecutorSetupError(
            f"--offload-executor {spec}: the factory returned {type(executor).__name__}, "
            "not a concurrent.futures.Executor"
        )
    return executor, spec


def wait_future(future: concurrent.futures.Future[Any], timeout: float | None) -> bool:
    """Wait until ``future`` is done, at most ``timeout`` seconds; True if it is. Under gevent
    only the calling greenlet waits: the done-callback wakes it through the hub, thread-safely."""
    if future.done():
        return True
    if not _gevent_active():
        concurrent.futures.wait([future], timeout=timeout)
        return future.done()
    import gevent
    from gevent.event import AsyncResult

    hub = gevent.get_hub()
    woken = AsyncResult()
    future.add_done_callback(lambda _f: hub.loop.run_callback_threadsafe(woken.set, True))
    woken.wait(timeout)
    return future.done()


class ExecutorOffload:
    """An executor with the local pool's face and rules (see the module's docstring)."""

    def __init__(self, executor: concurrent.futures.Executor, description: str) -> None:
        self.executor = executor
        self.description = description
        self._owner_pid = os.getpid()
        self._lock = threading.Lock()
        self._busy = 0
        self._restarts = 0  # tasks lost to the executor (OffloadError), as the pool counts
        self._closed = False

    def submit(
        self, fn: Callable[..., Any], /, *args: Any, timeout: float | None = None, **kwargs: Any
    ) -> Any:
        """Run ``fn(*args, **kwargs)`` on the executor and return its result (or raise what it
        raised); past ``timeout`` seconds from submission, cancel it and raise TimeoutError."""
        return self._result(self._submit(fn, args, kwargs), wire.describe(fn), timeout)

    def map(self, fn: Callable[..., Any], iterable: Iterable[Any], timeout: float | None = None) -> list[Any]:
        """``[fn(x) for x in iterable]`` on the executor, in order; each ``timeout`` counts from
        its submission. The first failure is raised; the tasks still pending are cancelled."""
        name = wire.describe(fn)
        futures = [self._submit(fn, (item,), {}) for item in iterable]
        try:
            return [self._result(f, name, timeout) for f in futures]
        finally:
            for f in futures:
                f.cancel()
                if not getattr(f, "prefork_lb_ended", True):  # never waited for: a sibling failed
                    _ended(f, CANCELLED)

    def stats(self) -> dict[str, int]:
        """As the pool's: ``size`` is the executor's worker count where it says (else 0)."""
        size = getattr(self.executor, "_max_workers", None) or getattr(self.executor, "size", 0)
        size = size if isinstance(size, int) else 0
        busy = self._busy
        return {"size": size, "busy": busy, "idle": max(0, size - busy), "restarts": self._restarts}

    def close(self) -> None:
        """Shut the executor down without waiting for running tasks. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if os.getpid() == self._owner_pid:
            self.executor.shutdown(wait=False, cancel_futures=True)

    # -- steps -----------------------------------------------------------------------------------

    def _submit(
        self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> concurrent.futures.Future[Any]:
        if self._closed or os.getpid() != self._owner_pid:
            raise OffloadError(f"offload: the executor ({self.description}) is closed")
        try:
            future = self.executor.submit(fn, *args, **kwargs)
        except OffloadError:
            raise
        except (RuntimeError, concurrent.futures.BrokenExecutor) as exc:
            self._lost()
            raise OffloadError(f"offload: the executor ({self.description}) refused the task: {exc}") from exc
        with self._lock:
            self._busy += 1
        TASKS.submitted()  # counted as the local pool's (prefork_lb.offload.counters)
        future.prefork_lb_started = time.monotonic()  # type: ignore[attr-defined]
        future.prefork_lb_ended = False  # type: ignore[attr-defined]

        def finished(_f: concurrent.futures.Future[Any]) -> None:
            with self._lock:
                self._busy -= 1

        future.add_done_callback(finished)
        return future

    def _result(self, future: concurrent.futures.Future[Any], name: str, timeout: float | None) -> Any:
        try:
            done = wait_future(future, timeout)
        except BaseException:  # the greenlet was killed (request timeout, shutdown): let it go
            self.abandon(future)
            raise
        return self.settle(future, name, timeout, done)

    @staticmethod
    def abandon(future: concurrent.futures.Future[Any]) -> None:
        """The caller stopped waiting (interrupted, cancelled): cancel the task where the
        executor can, and count it cancelled."""
        future.cancel()
        _ended(future, CANCELLED)

    def settle(
        self, future: concurrent.futures.Future[Any], name: str, timeout: float | None, done: bool
    ) -> Any:
        """The result of a future waited for (``done``: it finished within ``timeout``), by the
        rules above: TimeoutError (cancelled), OffloadError, what ``fn`` raised, or its value.
        Shared by the gevent/thread wait here and the asyncio one (``prefork_lb.offload.aio``)."""
        if not done:
            future.cancel()
            _ended(future, TIMED_OUT)
            raise TimeoutError(
                f"offload: {name} did not finish within {timeout} s (on {self.description}; cancelled)"
            )
        if future.cancelled():
            self._lost()
            _ended(future, FAILED)
            raise OffloadError(f"offload: {name} was cancelled on {self.description}")
        error = future.exception()
        if error is None:
            _ended(future, COMPLETED, answered=True)
            return future.result()
        _ended(
            future, FAILED, answered=not isinstance(error, (OffloadError, concurrent.futures.BrokenExecutor))
        )
        if isinstance(error, OffloadError):
            self._lost()
            raise error
        if isinstance(error, (concurrent.futures.BrokenExecutor, concurrent.futures.CancelledError)):
            self._lost()
            raise OffloadError(f"offload: {self.description} could not run {name}: {error}") from error
        raise error

    def _lost(self) -> None:
        with self._lock:
            self._restarts += 1


def _ended(future: concurrent.futures.Future[Any], outcome: int, answered: bool = False) -> None:
    """Count a task's end once (its duration, from submission, when the executor answered)."""
    if getattr(future, "prefork_lb_ended", True):
        return
    future.prefork_lb_ended = True  # type: ignore[attr-defined]
    TASKS.ended(outcome, time.monotonic() - future.prefork_lb_started if answered else None)  # type: ignore[attr-defined]


_configured: ExecutorOffload | None = None


def configure(spec: str | None) -> ExecutorOffload | None:
    """Make this process's executor from ``--offload-executor`` (None: the local pool); what
    ``prefork_lb.offload(...)`` runs on from now. ExecutorSetupError: one line to report."""
    global _configured
    close_configured()
    if spec is None:
        return None
    executor, description = make_executor(spec)
    _configured = ExecutorOffload(executor, description)
    return _configured


def configured() -> ExecutorOffload | None:
    """This process's configured executor, or None (then offload uses the local pool)."""
    runner = _configured
    if runner is None or runner._owner_pid != os.getpid():
        return None
    return runner


def close_configured() -> None:
    global _configured
    runner, _configured = _configured, None
    if runner is not None:
        runner.close()


def _forget_after_fork() -> None:
    global _configured
    _configured = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_after_fork)
atexit.register(close_configured)
