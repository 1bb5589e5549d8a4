"""A deadline for one await of the proxy, on every Python the package supports (3.10 and up).

``asyncio.timeout`` is new in Python 3.11: on 3.10 the proxy's connects and health checks
would fail with an AttributeError inside a task nobody awaits, and every proxied request
would wait for ever. :func:`within` uses ``asyncio.timeout`` where there is one (no task is
made) and ``asyncio.wait_for`` on 3.10.

Invariants: a deadline that passes raises the builtin :class:`TimeoutError` on every version
(on 3.10 ``asyncio.TimeoutError`` is another class), so callers catch one name; ``None``
seconds is no deadline.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

__all__ = ["within"]

T = TypeVar("T")


async def within(seconds: float | None, aw: Awaitable[T]) -> T:
    """``await aw``, given up (cancelled) after ``seconds``: then TimeoutError."""
    timeout = getattr(asyncio, "timeout", None)  # looked up here, so a test can take it away
    if timeout is not None:
        async with timeout(seconds):
            return await aw
    try:
        return await asyncio.wait_for(aw, seconds)
    except asyncio.TimeoutError:  # not the builtin TimeoutError before 3.11
        raise TimeoutError(f"not done within {seconds} s") from None
