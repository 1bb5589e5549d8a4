"""The master's records of its children and of a reload: plain data the supervisor
(prefork_lb.supervisor) keeps and the arbiter reads; no I/O."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import ClassVar

log = logging.getLogger("prefork_lb.error")


@dataclass
class WorkerProc:
    """The master's record of one child (worker or helper); config hooks receive it as ``worker``.
    ``worker.log`` is the error log, as gunicorn's hooks have it (``worker.log.info(...)``)."""

    log: ClassVar[logging.Logger] = log

    pid: int
    slot: int
    entry: int
    started: float
    ready: bool = False
    term_at: float = 0.0  # when we asked it to stop (0: never)
    abort_at: float = 0.0  # when we sent SIGABRT for a missed heartbeat
    replaced_by: int = 0  # pid of the worker taking over its slot
    replaces: int = 0  # pid of the worker it takes over from
    reload_gen: int = 0  # the reload generation it was started in
    retry_at: float = 0.0  # its recycling replacement failed to boot: no new one before this
    interface: str = ""  # a worker's: wsgi or asgi (prefork_lb.interface)


@dataclass
class ReloadProgress:
    """One HUP's rolling replacement, counted for the line that says it finished."""

    generation: int
    replaced: int = 0  # workers whose successor took over their slot
    failed: int = 0  # workers kept serving because their successor failed to boot
    helper: bool = False  # the dispatcher or the proxy was replaced too

    def summary(self, helper_name: str) -> str:
        line = f"Reload finished: {self.replaced} worker{'' if self.replaced == 1 else 's'} replaced"
        if self.helper:
            line += f" and the {helper_name}"
        if self.failed:
            line += (
                f"; {self.failed} kept the running code (the new one failed to boot; "
                "fix it and send HUP again)"
            )
        return line


class BootError(Exception):
    """A worker could not load the app: the master stops with ``code`` (2 or 3) and one line,
    after ``detail`` (the app's traceback, when it raised on import)."""

    def __init__(self, message: str, code: int, detail: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.detail = detail
