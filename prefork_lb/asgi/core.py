"""What an ASGI connection and its request cycles read of their server, per request.

:class:`ServerCore` declares those attributes, and makes a request's task (:meth:`spawn`);
prefork_lb.asgi.server.AsgiServer is a ServerCore that sets them and does the rest (listeners,
the ticker, admission, drain). prefork_lb.asgi.http and prefork_lb.asgi.cycle type their server
as a ServerCore: compiled, each read is a field access instead of a lookup by name, and neither
module imports the server (which imports them).

Invariant: nothing here does I/O; the attributes are set once by AsgiServer.__init__ (``now``,
``date``, ``heads``, ``draining``, ``in_flight`` and ``served`` change as the server runs).
"""

from __future__ import annotations

import asyncio
import contextvars
import sys
from collections.abc import Coroutine
from typing import Any, Final

from prefork_lb.asgi.options import AsgiOptions
from prefork_lb.http.parser import RequestMemo

# The name of every request's task: asyncio.current_task().get_name() in an app.
TASK_NAME: Final = "prefork_lb request"
# Read once (compiled code compares sys.version_info at run time: not per request).
_EAGER: Final = sys.version_info >= (3, 12)  # asyncio.Task(eager_start=...)
_CONTEXT: Final = sys.version_info >= (3, 11)  # asyncio.Task(context=...)


class ServerCore:
    """The fields of an ASGI server that its connections and cycles read (see AsgiServer)."""

    app: Any
    app_name: str  # module:qualname, for the log lines
    options: AsgiOptions
    loop: asyncio.AbstractEventLoop
    context: contextvars.Context  # every request's task starts in a copy of it
    hooks: Any
    hook_started: Any  # the hooks' bound methods, or None
    hook_finished: Any
    hook_timed: bool  # request_finished reads the duration it is given
    hook_opened: Any
    hook_received: Any
    state: dict[str, Any]  # the lifespan state, copied into each scope
    connections: set[Any]  # the HttpConnections open
    in_flight: int
    served: int
    draining: bool
    request_memo: RequestMemo
    websocket: Any  # the WebSocket protocol class (prefork_lb.asgi.websocket), or None
    now: float  # the ticker's clock
    date: bytes  # the current Date header line
    heads: dict[Any, tuple[Any, ...]]  # serialised response heads (prefork_lb.asgi.cycle)
    idle_timeout: float  # how long a kept-alive connection waits for its next request
    admission_limit: int  # --max-concurrency (0: none)

    # What AsgiServer does for a connection or a cycle (not per request, or only under
    # --max-concurrency): declared here so that their callers are typed too.

    async def admit(self, conn: Any = None) -> int:
        """A place in the app for a request of ``conn`` (prefork_lb.asgi.cycle's REFUSED,
        ADMITTED or QUEUED)."""
        raise NotImplementedError

    def release(self) -> None:
        """A request that had a place left the app."""
        raise NotImplementedError

    def connection_closed(self, conn: Any) -> None:
        """``conn`` (an HttpConnection) was lost."""
        raise NotImplementedError

    def upgraded(self, conn: Any, proto: Any) -> None:
        """``conn`` became the WebSocket protocol ``proto``."""
        raise NotImplementedError

    def spawn(self, coro: Coroutine[Any, Any, None], context: contextvars.Context) -> asyncio.Task[None]:
        """A request's task, started in ``context`` (a copy of :attr:`context`). Eager on 3.12+:
        the app runs at once, in the read callback, up to its first real wait, so a response
        sent without waiting skips the loop's ready queue; it still is a Task of its own
        (current_task() as usual). Named (TASK_NAME): a task made without a name formats
        "Task-<n>" for itself, a string per request that nothing reads. (A method, not a
        functools.partial: compiled, a direct call, without merging keyword dicts per request.)"""
        if _EAGER:
            return asyncio.Task(coro, loop=self.loop, eager_start=True, name=TASK_NAME, context=context)  # type: ignore[call-arg,unused-ignore]
        if _CONTEXT:
            return asyncio.Task(coro, loop=self.loop, name=TASK_NAME, context=context)  # type: ignore[call-arg,unused-ignore]
        # (3.10: a task takes no context; it copies the one it is made in)
        return context.run(asyncio.Task, coro, loop=self.loop, name=TASK_NAME)
