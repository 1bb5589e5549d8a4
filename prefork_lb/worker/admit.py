"""A connection's place in its worker's admission control and load counts (a mixin of
prefork_lb.worker.connection.Connection).

Invariant: a request moves from one of the scoreboard's load counts to the next (fresh, maybe
queued, in flight) by being counted in the next one before it is counted out of the last. The
handoff dispatcher reads those counts from another process at any moment; a request counted in
neither, even for an instant, would look like room for one more connection than
--max-concurrency plus --queue-size allow (tests/unit/test_load_accounting.py).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import gevent.lock

from prefork_lb.admission import BUSY_DETAIL, RETRY_AFTER
from prefork_lb.http.errors import HTTPError, ServiceUnavailable

if TYPE_CHECKING:
    from prefork_lb.worker.options import ServerView


class AdmissionPlace:
    """Admission (a place in the app, the queue, or 503) and the fresh count of a connection."""

    __slots__ = ()  # (the connection has the slot)

    server: ServerView
    # Whether the scoreboard still counts this connection as fresh (connection_opened): until
    # its first request counts as in flight, queued or refused (see _unfresh).
    counted_fresh: bool

    # (The connection's own; pragma: the stubs are never called.)
    def _send_error(self, exc: HTTPError, retry_after: int = 0) -> None:  # pragma: no cover
        raise NotImplementedError

    def _unfresh(self) -> None:  # pragma: no cover
        raise NotImplementedError

    def _admit(self, admission: gevent.lock.BoundedSemaphore) -> float:
        """Take a place in the app, waiting in the queue if there is room there; else 503.
        When it waited since (CLOCK_MONOTONIC), 0.0 when it did not, -1 when it refused."""
        if admission.acquire(blocking=False):
            return 0.0
        server = self.server
        board = server.board
        if server.waiting >= server.options.queue_size:
            if board is not None:
                board.shed()
            self._send_error(ServiceUnavailable(BUSY_DETAIL), retry_after=RETRY_AFTER)
            return -1.0
        since = time.monotonic()
        server.waiting += 1
        if board is not None:
            board.queued(1)  # the dispatcher's load: a queued request is not in flight yet
            if self.counted_fresh:
                self._unfresh()
        try:
            admission.acquire()
        except BaseException:
            if board is not None:
                board.queued(-1)
            raise
        finally:
            server.waiting -= 1
        # (The queue's count drops in the connection's _handle_request, once the request counts
        # as in flight.)
        return since
