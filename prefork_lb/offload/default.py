"""The per-process default pool: the one ``prefork_lb.offload(fn, *args)`` runs on.

Invariants:
- nothing is started until something uses it: ``default_pool()`` makes it on first use, sized
  by ``PREFORK_LB_OFFLOAD_PROCESSES`` (else the usable CPUs, ``prefork_lb.resources``); ``default_pool_if_started()``
  only looks;
- it belongs to this process: after ``fork()`` the child forgets the inherited one (the pool
  module has dropped its fds) and makes its own on first use; one closed directly is replaced
  on the next use too;
- it is closed at interpreter exit, and so are the children of pools garbage-collected unclosed
  (reaped).
"""

from __future__ import annotations

import atexit
import os
import threading

from prefork_lb.offload.pool import OffloadPool, reap_orphans

__all__ = ["close_default_pool", "default_pool", "default_pool_if_started"]

_pool: OffloadPool | None = None
_lock = threading.Lock()


def default_pool() -> OffloadPool:
    """This process's default pool, created on first use (again after a fork)."""
    global _pool
    with _lock:
        pool = _pool
        if pool is None or pool._closed or pool._owner_pid != os.getpid():
            pool = _pool = OffloadPool()
        return pool


def default_pool_if_started() -> OffloadPool | None:
    """This process's default pool if something has used it, else None (asking starts nothing):
    what a worker's heartbeat reads to report the pool's use."""
    return _pool


def close_default_pool() -> None:
    """Close the default pool (the next use makes a new one); reap orphaned pool children."""
    global _pool
    with _lock:
        pool, _pool = _pool, None
    if pool is not None:
        pool.close()
    reap_orphans()


def _forget_after_fork() -> None:
    global _pool
    _pool = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_after_fork)
atexit.register(close_default_pool)
