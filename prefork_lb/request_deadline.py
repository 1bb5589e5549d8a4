"""--request-timeout for a worker whose event loop is blocked: the master's decision and its line.

A view that waits (I/O, a sleep, a lock) is interrupted in the worker by a ``gevent.Timeout``
at the deadline (prefork_lb.worker.connection). A view that computes, or sits in a C call that
holds the GIL, cannot be interrupted from inside: its worker's loop stops, and so do its
heartbeats. The master (prefork_lb.supervisor's ``check_timeouts``) then reads from the
scoreboard what it needs to know, with no help from the worker:

* the worker has a request in flight whose start (``REQ_START``) is more than
  --request-timeout + :data:`GRACE` ago, and
* its heartbeat is older than :data:`GRACE` (the worker beats at least every ``GRACE / 4`` while
  --request-timeout is set, see :func:`heartbeat_interval`): its loop does not answer, so the
  cooperative deadline, which would have fired by now, cannot.

Such a worker is aborted as the --timeout watchdog does it: SIGABRT, which faulthandler turns
into the Python stack of every thread in the error log, then SIGKILL; its slot gets a new
worker at once.

Invariant: never early. ``REQ_START`` is the start of the *latest* request of a worker with
several in flight; every request in flight started at or before it, so when the latest one is
past its deadline, all are. (The master's line names the latest request; the stack names the
view that blocks.) A loop that still runs beats, so a request that merely outlives its
deadline while its loop runs (an app that swallows the timeout) is never a reason to abort.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from prefork_lb.scoreboard import Scoreboard

__all__ = ["GRACE", "RequestClock", "abort_line", "clocks", "heartbeat_interval", "overdue"]

GRACE = 1.0  # seconds past the deadline, and without a heartbeat, before the master aborts


class RequestClock(NamedTuple):
    """What the master reads of one worker's entry (CLOCK_MONOTONIC times)."""

    entry: int
    in_flight: int
    req_start: float  # start of the latest request in flight
    heartbeat: float  # the worker's last beat


def clocks(board: Scoreboard, entries: Iterable[int]) -> list[RequestClock]:
    """The scoreboard's word on ``entries`` (a few loads each, no system call)."""
    return [RequestClock(i, board.in_flight(i), board.request_start(i), board.heartbeat(i)) for i in entries]


def overdue(
    clocks: Iterable[RequestClock], now: float, request_timeout: float, grace: float = GRACE
) -> list[int]:
    """The entries whose request is past ``request_timeout + grace`` while their heartbeat is
    older than ``grace``: workers to abort. None while --request-timeout is 0."""
    if request_timeout <= 0:
        return []
    limit = request_timeout + grace
    return [
        c.entry for c in clocks if c.in_flight > 0 and now - c.req_start > limit and now - c.heartbeat > grace
    ]


def heartbeat_interval(timeout: float, request_timeout: float) -> float:
    """How often a worker beats: a quarter of --timeout (at most 1 s), and often enough that a
    beat older than :data:`GRACE` means a blocked loop while --request-timeout is set."""
    interval = max(0.05, min(1.0, (timeout or 4.0) / 4))
    if request_timeout > 0:
        interval = min(interval, GRACE / 4)
    return interval


def abort_line(
    slot: int, pid: int, request: str, request_timeout: float, elapsed: float, blocked: float
) -> str:
    """The master's line for an aborted worker (its stack follows from the worker itself)."""
    return (
        f"Worker {slot} (pid {pid}) aborted: {request or 'a request'} over --request-timeout "
        f"{request_timeout:g}s ({elapsed:.1f} s; its event loop blocked for {blocked:.1f} s); "
        "its Python stack follows"
    )
