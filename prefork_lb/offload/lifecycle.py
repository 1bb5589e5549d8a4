"""What a worker process does for offload, whatever serves its requests (gevent or asyncio).

A worker child (``prefork_lb.worker.child.WorkerChild``; an asyncio worker the same way) calls::

    from prefork_lb.offload.lifecycle import WorkerOffload

    offload = WorkerOffload.from_config(cfg)  # at boot, before the app is imported: sizes the pool
    error = offload.start_executor()          # after the app is imported (its --chdir, sys.path)
    if error: ...                             # one line for the boot pipe; exit EXIT_APP_LOAD
    if offload.offered: ...                   # put prefork_lb.offload in the environ / scope
    offload.report(entry)                     # each heartbeat: the pool's use into the scoreboard
    offload.close()                           # at exit, after draining: ends pool and executor

``from_config`` reads ``--offload-processes`` (``cfg.offload_processes``: -1 auto, the usable
CPUs divided among ``cfg.workers``, at least 1; 0 no pool offered) and exports the size as
``PREFORK_LB_OFFLOAD_PROCESSES``, which the default pool reads when it is first used: nothing is
started at boot (pool processes are fresh interpreters, they inherit neither a gevent hub nor an
event loop nor a listener, and exit with the worker). ``start_executor`` makes this process's
``--offload-executor`` (``cfg.offload_executor``), after fork, never in the master.

Afterwards ``prefork_lb.offload(fn, *args)`` (gevent, threads) and ``await
prefork_lb.offload_async(fn, *args)`` (asyncio) both run on what this set up.

Invariants: importing this module starts nothing and imports neither gevent nor asyncio;
``report`` writes only when some pool of the process has been used (as the heartbeat always did).
"""

from __future__ import annotations

import os
from typing import Any

__all__ = ["ENV_PROCESSES", "WorkerOffload"]

ENV_PROCESSES = "PREFORK_LB_OFFLOAD_PROCESSES"


class WorkerOffload:
    """One worker process's offload set-up: the pool's size and the configured executor."""

    def __init__(self, processes: int, executor: str | None) -> None:
        self.processes = processes  # 0: no pool offered
        self.executor = executor  # an --offload-executor spec, or None: the local pool

    @classmethod
    def from_config(cls, cfg: Any) -> WorkerOffload:
        """Size this process's pool from ``cfg`` (exported for the default pool to read)."""
        n = cfg.offload_processes
        if n < 0:
            from prefork_lb.resources import cpu_count, server_workers

            n = max(1, cpu_count() // max(1, server_workers(cfg)))
        if n:
            os.environ[ENV_PROCESSES] = str(n)
        return cls(n, cfg.offload_executor)

    @property
    def offered(self) -> bool:
        """Whether the app is offered ``prefork_lb.offload`` (environ, scope): a pool or an executor."""
        return bool(self.processes) or self.executor is not None

    def start_executor(self) -> str | None:
        """Make the configured executor in this process; None, or the one line saying why not
        (a factory that does not import, raises, returns no Executor; dask not installed)."""
        if self.executor is None:
            return None
        from prefork_lb.offload import external

        try:
            external.configure(self.executor)
        except external.ExecutorSetupError as exc:
            return str(exc)
        return None

    @staticmethod
    def report(entry: Any) -> None:
        """Copy the pool's use (busy, idle, size; the task counters) into a scoreboard entry
        (``WorkerEntry.offload``), once something in this process has offloaded."""
        from prefork_lb.offload import default_pool_if_started
        from prefork_lb.offload.counters import SUBMITTED, TASKS
        from prefork_lb.offload.external import configured

        pool = configured() or default_pool_if_started()  # --offload-executor, or the pool
        if pool is not None or TASKS.tasks[SUBMITTED]:  # any pool of this process was used
            st = pool.stats() if pool is not None else {}
            entry.offload(st.get("busy", 0), st.get("idle", 0), st.get("size", 0), TASKS.words())

    @staticmethod
    def close() -> None:
        """End the default pool's processes and the executor (the next use would start anew)."""
        from prefork_lb.offload import offload

        offload.close()
