"""A per-process pool of processes for CPU-heavy functions, usable from gevent code.

The public face is this module, and it is one object: the module itself is callable. Every
documented spelling reaches it::

    from prefork_lb import offload          # or: import prefork_lb.offload as offload
    offload(fn, *args, timeout=5, **kw)     # fn(*args, **kw) in this process's default pool
    offload.map(fn, items, timeout=None)    # [fn(x) for x in items], in order, in parallel
    offload.stats()                         # {"size", "busy", "idle", "restarts"}
    offload.close()                         # close the default pool (the next call makes one)
    await offload_async(fn, *args, timeout=5, **kw)  # the same, from asyncio code (not gevent)
    environ["prefork_lb.offload"]           # in a worker's WSGI environ: this same module
    from prefork_lb.offload import offload  # this same module, too

    prefork_lb.OffloadPool(size=N)          # a pool of one's own: submit, map, stats, pids, close
    prefork_lb.offload.OffloadError         # the pool could not run the task

Type checkers see a module as not callable: ``from prefork_lb.offload import offload`` gives the
same object typed as ``OffloadModule``. ``default_pool()`` gives the default pool itself (made on
first use), ``default_pool_if_started()`` gives it only if something has used it (else None).

The package: ``pool`` is the parent side (``OffloadPool``), ``default`` the per-process default
pool, ``child`` the code the pool's processes run (stdlib only), ``wire`` the frames between them;
``external`` an executor outside the pool (``--offload-executor``: ``dask`` or MODULE:FACTORY)
that the module's calls use instead of the default pool once a worker has configured one;
``aio`` the asyncio face (``offload_async``, also ``prefork_lb.offload_async``); ``lifecycle``
what a worker process (gevent or asyncio) calls to size, start, report and stop all this.

Called from inside a running asyncio event loop, ``offload(...)`` and ``offload.map(...)`` would
block that loop for the whole task: they raise RuntimeError naming ``offload_async`` instead
(from a thread of the loop's executor they run as anywhere else).

Invariants: the module object is the callable (its class is ``OffloadModule``, set below, as
``sys.modules`` hands the same object to every importer); importing it starts no process;
``map``, ``stats`` and ``close`` are methods of that class, so no module-level name may take them.
"""

from __future__ import annotations

import sys
import types
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, cast

from prefork_lb.offload.default import close_default_pool, default_pool, default_pool_if_started
from prefork_lb.offload.pool import OffloadError, OffloadPool

if TYPE_CHECKING:
    from prefork_lb.offload.external import ExecutorOffload

__all__ = [
    "OffloadError",
    "OffloadPool",
    "default_pool",
    "default_pool_if_started",
    "offload",
    "offload_async",
]


class OffloadModule(types.ModuleType):
    """The class of ``prefork_lb.offload``: calling the module, or its ``map``, ``stats`` and
    ``close``, acts on the per-process default pool."""

    def __call__(
        self, fn: Callable[..., Any], /, *args: Any, timeout: float | None = None, **kwargs: Any
    ) -> Any:
        """Run ``fn(*args, **kwargs)`` in the default pool: see ``OffloadPool.submit``."""
        _refuse_inside_event_loop("offload(fn, *args)")
        return _runner().submit(fn, *args, timeout=timeout, **kwargs)

    def map(self, fn: Callable[..., Any], iterable: Iterable[Any], timeout: float | None = None) -> list[Any]:
        """``OffloadPool.map`` on the default pool."""
        _refuse_inside_event_loop("offload.map(fn, items)")
        return _runner().map(fn, iterable, timeout=timeout)

    def stats(self) -> dict[str, int]:
        """``OffloadPool.stats`` of the default pool (which this starts, if nothing has)."""
        return _runner().stats()

    def close(self) -> None:
        """Close the default pool (the next call makes a new one) and a configured executor
        (the next call uses the default pool)."""
        from prefork_lb.offload.external import close_configured

        close_configured()
        close_default_pool()

    # An old private name, kept for pool processes started by code loaded before an upgrade.
    @property
    def _child_main(self) -> Callable[[], None]:
        """A pool process started by code loaded before an in-place upgrade still runs
        ``from prefork_lb.offload import _child_main``: give it the child's entry point."""
        from prefork_lb.offload.child import main

        return main


async def offload_async(
    fn: Callable[..., Any], /, *args: Any, timeout: float | None = None, **kwargs: Any
) -> Any:
    """``await offload_async(fn, *args)``: ``offload(fn, *args)`` for asyncio code, parking only
    the awaiting task (``prefork_lb.offload.aio``)."""
    from prefork_lb.offload.aio import offload_async as run

    return await run(fn, *args, timeout=timeout, **kwargs)


def _refuse_inside_event_loop(call: str) -> None:
    """A blocking call on an asyncio loop's thread would stall every task of that loop."""
    asyncio = sys.modules.get("asyncio")  # never imported here: a loop implies it is loaded
    if asyncio is not None and asyncio._get_running_loop() is not None:
        raise RuntimeError(
            f"{call} would block the running asyncio event loop until the task ends: "
            "use 'await prefork_lb.offload_async(fn, *args)' in async code "
            "(or call offload from a thread: loop.run_in_executor)"
        )


def _runner() -> OffloadPool | ExecutorOffload:
    """What the module's calls run on: the executor --offload-executor configured in this
    process (``prefork_lb.offload.external``, imported here so that pool processes, which
    import this package, never load it), else the default pool."""
    from prefork_lb.offload.external import configured

    runner = configured()
    return default_pool() if runner is None else runner


sys.modules[__name__].__class__ = OffloadModule
offload = cast(OffloadModule, sys.modules[__name__])
