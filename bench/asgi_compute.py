"""Benchmark ASGI apps: the async twins of bench.apps' mixed and compute apps.

``compute_inline`` computes fib(27) on the event loop (every other request on that worker waits);
``compute_offload`` awaits it with ``prefork_lb.offload_async`` (the loop serves meanwhile);
``mixed`` spins 1 ms / 50 ms of CPU on the loop, as bench.apps:mixed does. Each answers the
lifespan protocol (startup, shutdown) so that any ASGI server may run it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from bench.apps import BODY, _fib, _spin

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def _answer(send: Send, body: bytes) -> None:
    headers = [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def compute_inline(scope: Scope, receive: Receive, send: Send) -> None:
    """/compute: fib(27) on the event loop; anything else: trivial."""
    if scope["type"] == "lifespan":
        return await _lifespan(receive, send)
    body = str(_fib(27)).encode() if scope["path"] == "/compute" else BODY
    await _answer(send, body)


async def compute_offload(scope: Scope, receive: Receive, send: Send) -> None:
    """/compute: fib(27) awaited from the worker's offload pool (or executor); anything else: trivial."""
    if scope["type"] == "lifespan":
        return await _lifespan(receive, send)
    if scope["path"] == "/compute":
        from prefork_lb import offload_async

        body = str(await offload_async(_fib, 27)).encode()
    else:
        body = BODY
    await _answer(send, body)


async def mixed(scope: Scope, receive: Receive, send: Send) -> None:
    """/slow: about 50 ms of CPU on the loop; anything else: about 1 ms."""
    if scope["type"] == "lifespan":
        return await _lifespan(receive, send)
    _spin(0.050 if scope["path"] == "/slow" else 0.001)
    await _answer(send, BODY)
