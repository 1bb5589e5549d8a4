"""The worker's admission guard: a real OS thread that answers 503 for the worker while a view
blocks its loop and the worker is full (--max-concurrency and --queue-size taken).

Why a thread: with a listener of its own (reuseport) or shared by the workers (shared), nothing
but the worker can take the connections queued on it, and a view that computes (or sits in a C
call) stops the worker's gevent loop, so clients past the limits waited for every request before
theirs instead of getting the promised 503 at once. The master holds those listeners too, but it
stays a supervisor that does no I/O on requests (see docs/design.md, "Admission control").

What the thread does, and nothing else: it polls the worker's listeners (a duplicate of each
descriptor) every :data:`PERIOD` seconds. When connections are queued there and the loop has not
ticked (``Server.tick``, written by a greenlet every ``TICK`` seconds) for :data:`STALE` seconds,
the loop is blocked: the thread accepts what is queued; while the worker has room
(``Server.room_while_blocked``) it parks the connection for the loop (``Server.parked``, served
when the loop runs again), past it it refuses the connection with 503 (prefork_lb.admission).

Invariants:

* the thread runs Python only briefly, a few times a second at most; it needs the GIL, which a
  pure-Python view lets go every switch interval (a C call that holds the GIL stops it too);
* it never takes a connection while the loop ticks, so the hot path is the loop's alone: no
  lock, no extra system call per request;
* it only uses the unpatched thread, poll, sleep and socket (gevent's would switch greenlets of
  the loop's hub from another thread); it never changes the listeners' blocking mode (shared
  with the loop's descriptors);
* in shared mode a connection is only taken after it waited :data:`CONFIRM` more seconds in the
  queue, so an idle sibling worker (which accepts within microseconds) keeps getting them.
"""

from __future__ import annotations

import _socket
import logging
import os
import select
import time
from collections import deque
from typing import Any, Protocol

from prefork_lb.admission import Shedder

__all__ = ["AdmissionGuard"]

log = logging.getLogger("prefork_lb.error")

PERIOD = 0.05  # seconds between looks at the listeners
STALE = 0.15  # the loop has not ticked this long: it is blocked
CONFIRM = 0.05  # shared listener: a connection still queued this much later is nobody's
BATCH = 256  # connections taken per look


class Guarded(Protocol):
    """What the guard reads and writes of its server (prefork_lb.worker.server.Server)."""

    tick: float  # CLOCK_MONOTONIC of the loop's last tick
    parked: deque[tuple[Any, Any, float]]  # (socket, address, when) accepted here for the loop
    board: Any  # the worker's scoreboard entry, or None

    def room_while_blocked(self) -> int: ...


def _original(module: str, name: str) -> Any:
    try:
        from gevent import monkey

        return monkey.get_original(module, name)
    except ImportError:  # pragma: no cover - the worker always has gevent
        return getattr(__import__(module), name)


class AdmissionGuard:
    """One thread per worker with admission control and listeners (not for handoff channels:
    there the dispatcher refuses)."""

    def __init__(self, server: Guarded, shared: bool) -> None:
        self.server = server
        self.shared = shared
        self.listeners: list[Any] = []  # _socket.socket duplicates of the loop's listeners
        self.stopping = False
        self.started = False
        self.refused = 0

    def add(self, fd: int) -> None:
        """Watch the listener ``fd`` (duplicated: the loop keeps its own descriptor)."""
        self.listeners.append(_socket.socket(fileno=os.dup(fd)))
        if not self.started:
            self.started = True
            _original("_thread", "start_new_thread")(self._run, ())

    def stop(self) -> None:
        """Stop taking connections, now: the duplicates close here (a listener being removed
        must not keep queueing for a descriptor nobody accepts on); the thread ends within
        PERIOD. A closed ``_socket.socket`` fails every call, so the thread cannot touch
        whatever later gets the same descriptor number."""
        self.stopping = True
        for ls in self.listeners:
            ls.close()

    # -- the thread -------------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._loop()
        except Exception:  # never let the guard take the worker down
            if not self.stopping:  # (stopping: its listeners closed under it)
                log.exception("admission guard stopped")

    def _loop(self) -> None:
        sleep = _original("time", "sleep")
        poller = _original("select", "poll")()
        pollin = select.POLLIN
        shedder = Shedder(lambda fd: poller.register(fd, pollin), poller.unregister)
        mine: dict[int, Any] = {}
        server = self.server
        try:
            while not self.stopping:
                for ls in self.listeners[len(mine) :]:
                    mine[ls.fileno()] = ls
                    poller.register(ls.fileno(), pollin)
                events = poller.poll(PERIOD * 1000)
                now = time.monotonic()
                queued = []
                for fd, _ in events:
                    ls = mine.get(fd)
                    if ls is not None:
                        queued.append(ls)
                    else:
                        shedder.readable(fd, now)
                shedder.expire(now)
                if not queued or self.stopping:
                    continue
                if now - server.tick < STALE:
                    sleep(PERIOD)  # the loop runs: it takes them itself
                    continue
                if self.shared:
                    sleep(CONFIRM)
                if not sum(self._take(ls, shedder, time.monotonic()) for ls in queued):
                    sleep(PERIOD)  # readable yet nothing to take (EMFILE, a sibling took it)
        finally:
            shedder.close_all()
            for ls in self.listeners:
                ls.close()

    def _take(self, ls: Any, shedder: Shedder, now: float) -> int:
        """Accept what is queued on ``ls``: park it or refuse it. The number taken."""
        server = self.server
        taken = 0
        for _ in range(BATCH):
            if self.stopping or now - server.tick < STALE:
                break  # the loop is back
            try:
                fd, addr = ls._accept()
            except OSError:  # nothing queued any more (BlockingIOError), or gone
                break
            taken += 1
            sock = _socket.socket(ls.family, ls.type, ls.proto, fileno=fd)
            if server.room_while_blocked() > 0:
                server.parked.append((sock, addr, time.monotonic()))
            else:
                self.refused += 1
                board = server.board
                if board is not None:
                    board.shed()
                shedder.refuse(sock, now)
        return taken
