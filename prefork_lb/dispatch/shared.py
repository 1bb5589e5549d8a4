"""``--dispatch shared``: one listener per address, opened by the master, inherited by every worker.

The kernel wakes workers accepting on the same socket; each worker accepts in turns with the
others (``shared_accept``) so one busy worker does not take every connection. One accept queue
outlives any worker: a worker's death loses nothing queued. No helper process.
"""

from __future__ import annotations

from typing import ClassVar

from prefork_lb.dispatch.base import DispatchMode


class SharedMode(DispatchMode):
    name: ClassVar[str] = "shared"
    shared_accept: ClassVar[bool] = True
