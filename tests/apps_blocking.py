"""A WSGI app whose view blocks the worker's loop: it computes instead of waiting.

``/burn/S`` runs a pure-Python loop for S seconds (no cooperative wait: gevent cannot switch
away from it, yet the interpreter still lets a real thread run at every switch interval);
anything else answers at once. Used by the admission tests (a full worker must answer 503 while
its loop is blocked). ``asgi_app`` is its ASGI twin, whose ``/burn/S`` waits cooperatively: an
ASGI worker admits requests on the loop the app runs on, so a view that blocks that loop
blocks everything, admission included (what the master's heartbeat watchdog is for).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from typing import Any

StartResponse = Callable[..., Any]


def burn(seconds: float) -> int:
    """Spin for ``seconds`` in Python bytecode; the number of rounds done."""
    end = time.monotonic() + seconds
    rounds = 0
    while time.monotonic() < end:
        rounds += 1
    return rounds


def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    parts = environ["PATH_INFO"].strip("/").split("/")
    body = b"ok"
    if parts[0] == "burn":
        body = str(burn(float(parts[1]))).encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


async def asgi_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return  # (lifespan: not supported, the worker goes on without)
    parts = scope["path"].strip("/").split("/")
    if parts[0] == "burn":
        await asyncio.sleep(float(parts[1]))
    headers = [(b"content-type", b"text/plain"), (b"content-length", b"2")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": b"ok"})
