"""``Slots``: the pool's count of free children, waited for by threads and by asyncio tasks alike.

A ``threading.BoundedSemaphore`` (what ``OffloadPool`` outside gevent always used) that an asyncio
task can also wait on without blocking its loop: ``await slots.acquire_async()``. Threads keep
``acquire()``/``release()`` unchanged, so sync ``offload()`` from threads and ``offload_async``
from a loop share one pool and one limit.

Invariants:
- an asyncio waiter is queued *before* it tries a non-blocking acquire, so a release between its
  try and its wait is never lost;
- every ``release()`` wakes at most one queued waiter (taking it off the queue, from any thread,
  through ``loop.call_soon_threadsafe``); a waiter woken but then cancelled, or that found a slot
  without waiting, passes the wake-up on, so no waiter sleeps while a slot is free;
- asyncio is imported only when a task waits: a pool process never imports it.
"""

from __future__ import annotations

import collections
import threading
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import asyncio

__all__ = ["Slots"]


class Slots(threading.BoundedSemaphore):
    """``size`` slots; ``acquire_async()`` is the asyncio spelling of ``acquire()``."""

    def __init__(self, size: int) -> None:
        super().__init__(size)
        self._waiters: collections.deque[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = (
            collections.deque()
        )
        self._waiters_lock = threading.Lock()

    def release(self, n: int = 1) -> None:
        super().release(n)
        for _ in range(n):
            self._wake_one()

    async def acquire_async(self) -> None:
        """Take a slot, parking only the calling task until one is free."""
        import asyncio

        loop = asyncio.get_running_loop()
        while True:
            waiter: asyncio.Future[None] = loop.create_future()
            entry = (loop, waiter)
            with self._waiters_lock:
                self._waiters.append(entry)
            if self.acquire(blocking=False):
                self._leave(entry)
                return
            try:
                await waiter
            except BaseException:  # cancelled: the task stops waiting
                self._leave(entry)
                raise
            # Woken: a slot was released; another thread may have taken it first, so try again.

    def waiting(self) -> int:
        """How many asyncio tasks are queued for a slot now."""
        with self._waiters_lock:
            return len(self._waiters)

    def _leave(self, entry: tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]) -> None:
        """Take ``entry`` off the queue; if a release had already woken it, wake the next one."""
        with self._waiters_lock:
            try:
                self._waiters.remove(entry)
                return
            except ValueError:
                pass  # a release took it off the queue: its wake-up belongs to someone else now
        self._wake_one()

    def _wake_one(self) -> None:
        with self._waiters_lock:
            if not self._waiters:
                return
            loop, waiter = self._waiters.popleft()
        try:
            loop.call_soon_threadsafe(_resolve, waiter)
        except RuntimeError:  # that loop is closed: its task is gone, wake the next one
            self._wake_one()


def _resolve(waiter: Any) -> None:
    if not waiter.done():
        waiter.set_result(None)
