"""``DaskExecutor``: a ``concurrent.futures.Executor`` running tasks on a Dask distributed cluster.

The only module that imports ``distributed``. The client is asynchronous and lives on its own
native thread running an asyncio loop: under gevent's monkey-patching a ``threading.Thread`` is
a greenlet, on which Dask's own IO-loop thread never makes progress, so the thread is started
with the unpatched ``_thread.start_new_thread``. ``submit`` hands a coroutine to that loop and
returns the ``concurrent.futures.Future`` of ``asyncio.run_coroutine_threadsafe``: callers wait
on it with ``prefork_lb.offload.external.wait_future``, never blocking gevent's loop.

Invariants (a scheduler that disappears gives ``OffloadError`` quickly, never a hang):
- connecting is bounded by ``connect_timeout`` (the Client's own timeout and an outer
  ``asyncio.wait_for``); one connection attempt at a time; for ``retry_after`` seconds after a
  failed one, tasks fail at once with the same error instead of trying again;
- a running task watches the client: once it is no longer ``running`` (the scheduler's
  connection is lost, the client reconnects or closes), the task fails with ``OffloadError``
  within ``poll_interval``, as it does when Dask cancels it for a lost connection; the next task connects afresh once the old client has closed;
- a cancelled future (the caller's timeout) cancels the Dask task, best effort.
"""

from __future__ import annotations

import _thread
import asyncio
import concurrent.futures
import contextlib
import inspect
import platform
import time
from collections.abc import Callable
from typing import Any

import distributed

from prefork_lb.offload.pool import OffloadError, _gevent_active

__all__ = ["DaskExecutor"]

_Client: Any = distributed.Client  # distributed's typing is partial: read it as Any

_CLOSING = ("closing", "closed", "failed")


class DaskExecutor(concurrent.futures.Executor):
    """Tasks on the Dask scheduler at ``address`` (``tcp://HOST:PORT``); connects on first use."""

    def __init__(
        self,
        address: str,
        connect_timeout: float = 5.0,
        retry_after: float = 1.0,
        poll_interval: float = 0.1,
    ) -> None:
        self.address = address
        self.connect_timeout = connect_timeout
        self.retry_after = retry_after
        self.poll_interval = poll_interval
        self._client: Any = None
        self._failure: tuple[float, str] | None = None
        self._connecting: asyncio.Lock | None = None
        self._shutdown = False
        # distributed reports platform.uname().processor when connecting, which runs a
        # subprocess: under gevent only possible from the main thread's hub, so compute it here.
        platform.uname().processor  # noqa: B018 - cached on the uname result
        self._loop = self._start_thread()

    @property
    def size(self) -> int:
        """The threads of the cluster's workers, as last seen (0 before connecting)."""
        client = self._client
        if client is None:
            return 0
        try:  # asynchronous: the client's cached copy, refreshed every few seconds
            try:
                info = client.scheduler_info(n_workers=-1)
            except TypeError:  # distributed before 2025: no n_workers
                info = client.scheduler_info()
            workers = info.get("workers", {})
        except Exception:
            return 0
        return sum(int(w.get("nthreads", 0)) for w in workers.values())

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> concurrent.futures.Future[Any]:
        if self._shutdown:
            raise RuntimeError("cannot schedule new futures after shutdown")
        return asyncio.run_coroutine_threadsafe(self._run(fn, args, kwargs), self._loop)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        if self._shutdown:
            return
        self._shutdown = True
        future = asyncio.run_coroutine_threadsafe(self._close(), self._loop)
        if wait:
            with contextlib.suppress(Exception):
                future.result(self.connect_timeout)

    # -- on the loop's thread ----------------------------------------------------------------------

    @staticmethod
    def _start_thread() -> asyncio.AbstractEventLoop:
        """Start the client's thread; its loop, made there (under gevent, its selector belongs
        to that thread's own hub), once it exists."""
        made: list[asyncio.AbstractEventLoop] = []
        if _gevent_active():
            from gevent import monkey

            lock = monkey.get_original("_thread", "allocate_lock")()
            start = monkey.get_original("_thread", "start_new_thread")
        else:
            lock = _thread.allocate_lock()
            start = _thread.start_new_thread

        def run() -> None:
            loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            made.append(loop)
            lock.release()
            loop.run_forever()

        lock.acquire()
        start(run, ())
        lock.acquire()  # a real lock: released as soon as the loop exists
        return made[0]

    async def _run(self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        client = await self._connected()
        name = getattr(fn, "__qualname__", repr(fn))
        future = client.submit(fn, *args, pure=False, **kwargs)
        task = asyncio.ensure_future(_result_of(future))
        try:
            while True:
                done, _ = await asyncio.wait({task}, timeout=self.poll_interval)
                if done:
                    try:
                        return task.result()
                    except concurrent.futures.CancelledError as exc:  # Dask's FutureCancelledError
                        raise OffloadError(
                            f"offload: lost the Dask scheduler at {self.address} while running {name}: {exc}"
                        ) from exc
                if client.status != "running":
                    raise OffloadError(
                        f"offload: lost the Dask scheduler at {self.address} while running "
                        f"{name} (client {client.status})"
                    )
        finally:
            if not task.done():
                task.cancel()
                with contextlib.suppress(Exception):
                    cancelled = client.cancel([future])
                    if inspect.isawaitable(cancelled):
                        asyncio.ensure_future(cancelled)

    async def _connected(self) -> Any:
        """A running client: the current one, or a new one (bounded), or OffloadError."""
        client = self._client
        if client is not None and client.status == "running":
            return client
        if client is not None and client.status not in _CLOSING:
            raise OffloadError(
                f"offload: not connected to the Dask scheduler at {self.address} ({client.status})"
            )
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            if self._client is not None and self._client.status == "running":
                return self._client
            failure = self._failure
            if failure is not None and time.monotonic() - failure[0] < self.retry_after:
                raise OffloadError(failure[1])
            try:
                self._client = await asyncio.wait_for(
                    _Client(
                        self.address, asynchronous=True, timeout=self.connect_timeout, set_as_default=False
                    ),
                    self.connect_timeout + 1,
                )
            except Exception as exc:
                message = (
                    f"offload: cannot reach the Dask scheduler at {self.address}: "
                    f"{type(exc).__name__}: {exc}".rstrip(": ")
                )
                self._failure = (time.monotonic(), message)
                raise OffloadError(message) from exc
            self._failure = None
            return self._client

    async def _close(self) -> None:
        client, self._client = self._client, None
        try:
            if client is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(client.close(), self.connect_timeout)
        finally:
            self._loop.stop()


async def _result_of(future: Any) -> Any:
    return await future
