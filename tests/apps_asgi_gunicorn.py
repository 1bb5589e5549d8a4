"""FastAPI apps for gunicorn running prefork_lb.gunicorn.AsgiWorker (tests/integration/test_gunicorn_asgi_worker.py).

``app``: JSON with the worker's pid on /, a StreamingResponse on /stream, lifespan state on
/state, the scheme and root_path on /scope, a cooperative wait on /sleep?s=S, ``offload_async`` on /offload/N, a view that blocks
the loop on /block (time.sleep in an async def: gunicorn's timeout is for it), a WebSocket echo
on /ws; every request the app sees is counted on /seen. ``startup_fails``: its lifespan raises.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request, WebSocket
from fastapi.responses import StreamingResponse
from starlette.websockets import WebSocketDisconnect

from prefork_lb import offload_async

SEEN: list[str] = []  # paths this worker's app was called with


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
    yield {"greeting": "hello from lifespan", "started_by": os.getpid()}


app = FastAPI(lifespan=lifespan)


@app.middleware("http")
async def count(request: Request, call_next: Any) -> Any:
    SEEN.append(request.url.path)
    return await call_next(request)


@app.get("/")
async def root() -> dict[str, Any]:
    return {"hello": "world", "pid": os.getpid()}


@app.get("/seen")
async def seen() -> list[str]:
    return SEEN


async def counted(n: int) -> AsyncIterator[bytes]:
    for i in range(n):
        await asyncio.sleep(0)  # each chunk its own send
        yield b"chunk %d\n" % i


@app.get("/stream")
async def stream(n: int = 5) -> StreamingResponse:
    return StreamingResponse(counted(n), media_type="text/plain")


@app.get("/state")
async def state(request: Request) -> dict[str, Any]:
    return {"greeting": request.state.greeting, "started_by": request.state.started_by, "pid": os.getpid()}


@app.get("/scope")
async def scope(request: Request) -> dict[str, Any]:
    return {"scheme": request.url.scheme, "root_path": request.scope.get("root_path", "")}


def fib(n: int) -> int:
    return n if n < 2 else fib(n - 1) + fib(n - 2)


@app.get("/offload/{n}")
async def offloaded(n: int) -> dict[str, int]:
    return {"fib": await offload_async(fib, n)}


@app.get("/sleep")
async def sleep(s: float = 1.0) -> dict[str, Any]:
    await asyncio.sleep(s)  # cooperative: the loop goes on notifying gunicorn
    return {"slept": s, "pid": os.getpid()}


@app.get("/block")
async def block() -> dict[str, str]:
    time.sleep(60)  # blocks the event loop: the worker stops notifying gunicorn
    return {"blocked": "no longer"}


@app.websocket("/ws")
async def ws_echo(websocket: WebSocket) -> None:
    await websocket.accept()
    try:
        while True:
            await websocket.send_text("echo: " + await websocket.receive_text())
    except WebSocketDisconnect:
        return


@asynccontextmanager
async def failing_lifespan(app: FastAPI) -> AsyncIterator[None]:
    raise RuntimeError("no database at db.invalid")
    yield  # pragma: no cover


startup_fails = FastAPI(lifespan=failing_lifespan)
