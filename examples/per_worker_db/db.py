"""The per-worker connection pool, held at module level so the app can reach it.

The config file's ``post_worker_init`` hook calls :func:`open_pool` in each worker, after the
fork and after the app is imported; ``worker_exit`` calls :func:`close_pool` as the worker exits.
The master never opens one: connections must not cross a fork (two processes on one socket or
one SQLite file handle corrupt each other's state), so each worker makes its own.

A pool rather than one connection: the worker serves many requests at once (one greenlet each),
and a connection serves one at a time. ``queue`` is the gevent-patched one in a worker, so a
request waiting for a free connection lets the others run.
"""

from __future__ import annotations

import logging
import os
import queue
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager

log = logging.getLogger("prefork_lb.error")


class Pool:
    """``size`` connections made by one process; :meth:`connection` lends one."""

    def __init__(self, path: str, size: int = 4) -> None:
        self.pid = os.getpid()  # the process that opened it: never used after a fork
        self.size = size
        self._idle: queue.LifoQueue[sqlite3.Connection] = queue.LifoQueue()
        for _ in range(size):
            # check_same_thread=False: greenlets of one thread share the pool
            self._idle.put(sqlite3.connect(path, timeout=10, check_same_thread=False))

    @contextmanager
    def connection(self, timeout: float = 5.0) -> Iterator[sqlite3.Connection]:
        if os.getpid() != self.pid:
            raise RuntimeError("this pool was opened in another process (before a fork)")
        conn = self._idle.get(timeout=timeout)
        try:
            yield conn
        finally:
            self._idle.put(conn)

    def close(self) -> int:
        closed = 0
        while True:
            try:
                self._idle.get_nowait().close()
            except queue.Empty:
                return closed
            closed += 1


_pool: Pool | None = None


def open_pool(path: str, size: int = 4) -> Pool:
    global _pool
    _pool = Pool(path, size)
    with _pool.connection() as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS hits (pid INTEGER)")
        conn.commit()
    log.info("Worker %d: opened %d SQLite connection(s) to %s", os.getpid(), size, path)
    return _pool


def pool() -> Pool:
    """The pool of this process (the app calls it per request)."""
    if _pool is None:
        raise RuntimeError("no pool in this process: open_pool() runs in post_worker_init")
    return _pool


def close_pool() -> None:
    global _pool
    if _pool is not None:
        closed = _pool.close()
        log.info("Worker %d: closed %d SQLite connection(s)", os.getpid(), closed)
        _pool = None
