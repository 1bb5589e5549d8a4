"""Admission control's shared parts: when a worker is full, and how a refused connection is
answered by whoever stands in for a worker whose loop cannot answer.

``--max-concurrency`` requests run in a worker's app at once and ``--queue-size`` more wait for a
place; past both a request gets 503 with ``Retry-After`` at once. The worker's loop enforces it
for the requests it reads (prefork_lb.worker.connection). When a view blocks that loop (it
computes, or a C call holds it), others answer for it, with what is here:

* the worker's guard thread (prefork_lb.worker.guard; reuseport and shared dispatch) refuses
  connections queued on the worker's listener;
* the handoff dispatcher refuses connections when every ready worker is full;
* the proxy refuses requests when every local worker has its limit in flight.

:func:`limit` and :func:`room` are the one decision, pure; :class:`Shedder` answers refused
connections from a poll loop without ever blocking it.

Invariants: stdlib only (the dispatcher and the proxy import it; no gevent); a refused
connection gets the 503 once its first bytes arrive (never before the client spoke), then a
half-close, and is read until the client closes or :data:`LINGER` passes, so the client reads the
503 instead of a reset; a socket handed to a :class:`Shedder` is closed by it, exactly once.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any

from prefork_lb.http.response import refresh_date, simple_response

__all__ = ["BUSY_DETAIL", "LINGER", "RETRY_AFTER", "Shedder", "busy_response", "limit", "room"]

RETRY_AFTER = 1  # seconds, the Retry-After of every 503 for a full server
BUSY_DETAIL = "server busy, try again"
FIRST_BYTES_WAIT = 2.0  # a refused connection that says nothing this long is closed unanswered
LINGER = 1.0  # after the 503, read (and drop) what the client still sends this long at most


def limit(max_concurrency: int, queue_size: int) -> int:
    """Requests one worker may hold, in its app and waiting (0: no limit)."""
    return max_concurrency + max(0, queue_size) if max_concurrency > 0 else 0


def room(max_concurrency: int, queue_size: int, held: int) -> int:
    """Requests one worker can still take when it holds ``held`` (in its app, waiting, or on
    their way to it); 0 or less: the next one gets 503. Unlimited: a large number."""
    cap = limit(max_concurrency, queue_size)
    return cap - held if cap else 1 << 30


def busy_response() -> bytes:
    """The 503 a full server answers, with Retry-After, closing the connection."""
    refresh_date()  # the callers have no date timer of their own
    return simple_response(503, BUSY_DETAIL, extra=f"Retry-After: {RETRY_AFTER}\r\n")


class _Refused:
    __slots__ = ("sock", "deadline", "answered")

    def __init__(self, sock: Any, deadline: float) -> None:
        self.sock = sock
        self.deadline = deadline
        self.answered = False


class Shedder:
    """Refused connections on their way out, driven by the caller's poll loop.

    ``watch(fd)`` / ``unwatch(fd)`` register a descriptor for readability in the caller's
    poller; the caller passes each readable descriptor to :meth:`readable` (True: it was one of
    ours) and calls :meth:`expire` now and then. Sockets only need ``fileno``, ``setblocking``,
    ``recv``, ``send``, ``shutdown`` and ``close`` (the stdlib's, or ``_socket``'s in a thread
    of a monkey-patched process).
    """

    def __init__(self, watch: Callable[[int], object], unwatch: Callable[[int], object]) -> None:
        self._watch = watch
        self._unwatch = unwatch
        self._socks: dict[int, _Refused] = {}
        self.refused = 0  # connections answered 503 (or closed unanswered when silent)

    def __len__(self) -> int:
        return len(self._socks)

    def refuse(self, sock: Any, now: float) -> None:
        """Take ``sock`` (an accepted connection) to answer 503 and close."""
        self.refused += 1
        try:
            sock.setblocking(False)
            fd = sock.fileno()
        except OSError:
            sock.close()
            return
        self._socks[fd] = _Refused(sock, now + FIRST_BYTES_WAIT)
        self._watch(fd)
        self.readable(fd, now)  # the request is usually there already

    def readable(self, fd: int, now: float) -> bool:
        """``fd`` can be read: answer, drop what came, or close on EOF. False: not ours."""
        r = self._socks.get(fd)
        if r is None:
            return False
        try:
            data = r.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return True
        except OSError:
            self._close(fd)
            return True
        if not data:
            self._close(fd)
        elif not r.answered:
            r.answered = True
            r.deadline = now + LINGER
            try:
                r.sock.send(busy_response())  # small: fits any socket buffer
                r.sock.shutdown(socket.SHUT_WR)
            except OSError:
                self._close(fd)
        return True

    def expire(self, now: float) -> None:
        """Close what is past its deadline (silent, or lingering long enough)."""
        for fd in [fd for fd, r in self._socks.items() if now >= r.deadline]:
            self._close(fd)

    def close_all(self) -> None:
        for fd in list(self._socks):
            self._close(fd)

    def _close(self, fd: int) -> None:
        r = self._socks.pop(fd)
        try:
            self._unwatch(fd)
        except (OSError, KeyError, ValueError):
            pass
        try:
            r.sock.close()
        except OSError:
            pass
