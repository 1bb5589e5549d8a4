"""The ASGI lifespan protocol: the app's startup and shutdown, run once per worker process.

Modes, as uvicorn's ``--lifespan``: ``on`` (the app must support it: an exception is a failed
startup), ``off`` (never sent), ``auto`` (an app that raises on the lifespan scope before it
sends anything does not support lifespan: logged at info, and the worker goes on without).

Invariants: :meth:`Lifespan.startup` returns once the app sent lifespan.startup.complete (or
does not support lifespan), else raises :class:`LifespanFailed`, whose text is the one line to
log; ``state`` is the dict the app filled in its scope["state"], which every request's scope
gets a shallow copy of; :meth:`Lifespan.shutdown` never raises (a failure is logged).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

__all__ = ["MODES", "Lifespan", "LifespanFailed", "failure_line"]

log = logging.getLogger("prefork_lb.error")

MODES = ("auto", "on", "off")


class LifespanFailed(Exception):
    """The app's startup failed; str(exc) is the one line to log."""


def failure_line(exc: LifespanFailed) -> str:
    """The one line that says why a startup failed. Starlette (FastAPI) reports a failure with
    the whole traceback as its message: its last line (``RuntimeError: no database``) names
    the problem, its first (``Traceback (most recent call last):``) does not."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    if not lines:
        return "the app's lifespan startup failed"
    head = lines[0]
    if len(lines) > 1 and head.endswith("Traceback (most recent call last):"):
        return head[: -len("Traceback (most recent call last):")] + lines[-1]
    return head


class Lifespan:
    """Drives one app's lifespan scope: ``await startup()`` before serving, ``await shutdown()`` after."""

    def __init__(self, app: Any, mode: str = "auto") -> None:
        if mode not in MODES:
            raise ValueError(f"lifespan mode must be one of {', '.join(MODES)}, not {mode!r}")
        self.app = app
        self.mode = mode
        self.state: dict[str, Any] = {}
        self.supported = mode != "off"
        self._events: asyncio.Queue[dict[str, Any]] | None = None
        self._task: asyncio.Task[None] | None = None
        self._started: asyncio.Event | None = None
        self._stopped: asyncio.Event | None = None
        self._sent = False  # the app sent an event
        self._complete = False  # it sent lifespan.startup.complete
        self._startup_failed: str | None = None
        self._shutdown_failed: str | None = None
        self._error: Exception | None = None

    async def startup(self) -> None:
        if self.mode == "off":
            return
        self._events = asyncio.Queue()
        self._started = asyncio.Event()
        self._stopped = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._main())
        await self._events.put({"type": "lifespan.startup"})
        await self._started.wait()
        if self._startup_failed is not None:
            raise LifespanFailed(f"the app's lifespan startup failed: {self._startup_failed}")
        if self._complete:
            return
        error = self._error
        if error is not None:
            if self.mode == "on" or self._sent:
                raise LifespanFailed(f"the app's lifespan startup raised {type(error).__name__}: {error}")
            self.supported = False
        else:
            self.supported = False  # it returned without a word: nothing to shut down

    async def _main(self) -> None:
        scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"}, "state": self.state}
        try:
            await self.app(scope, self._receive, self._send)
        except Exception as exc:  # reported by startup/shutdown; SystemExit & co. go through
            self._error = exc
            if self.mode == "auto" and not self._sent:
                log.info(
                    "the app does not support the ASGI lifespan protocol (it raised %s); going on without it",
                    type(exc).__name__,
                )
            elif self._started is not None and self._started.is_set() and self._startup_failed is None:
                log.error("the app's lifespan raised after startup", exc_info=exc)
        finally:
            assert self._started is not None and self._stopped is not None
            self._started.set()
            self._stopped.set()

    async def _receive(self) -> dict[str, Any]:
        assert self._events is not None
        return await self._events.get()

    async def _send(self, message: dict[str, Any]) -> None:
        assert self._started is not None and self._stopped is not None
        self._sent = True
        kind = message.get("type") if isinstance(message, dict) else None
        if kind == "lifespan.startup.complete":
            self._complete = True
            self._started.set()
        elif kind == "lifespan.startup.failed":
            self._startup_failed = str(message.get("message", "")) or "(no message)"
            self._started.set()
        elif kind == "lifespan.shutdown.complete":
            self._stopped.set()
        elif kind == "lifespan.shutdown.failed":
            self._shutdown_failed = str(message.get("message", "")) or "(no message)"
            self._stopped.set()
        else:
            raise RuntimeError(f"unexpected lifespan event {kind!r}")

    async def shutdown(self) -> None:
        task = self._task
        if task is None or not self.supported or self._stopped is None or task.done():
            return
        assert self._events is not None
        await self._events.put({"type": "lifespan.shutdown"})
        await self._stopped.wait()
        if self._shutdown_failed is not None:
            log.error("the app's lifespan shutdown failed: %s", self._shutdown_failed)
        elif self._error is not None:
            log.error("the app's lifespan shutdown raised %s: %s", type(self._error).__name__, self._error)
