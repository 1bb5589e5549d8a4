"""A FastAPI app, written as its users write one (served by tests/integration/asgi/)."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import BackgroundTasks, Depends, FastAPI, File, HTTPException, Request, UploadFile, WebSocket
from fastapi.responses import PlainTextResponse, StreamingResponse
from pydantic import BaseModel
from starlette.websockets import WebSocketDisconnect

DONE_TASKS: set[str] = set()  # what the background tasks recorded, per worker process


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
    yield {"greeting": "hello from lifespan", "started": True}


app = FastAPI(lifespan=lifespan)


class Item(BaseModel):
    name: str
    price: float
    tags: list[str] = []


def lifespan_greeting(request: Request) -> str:
    return str(request.state.greeting)


@app.get("/")
async def root() -> dict[str, str]:
    return {"hello": "world"}


@app.get("/items/{item_id}")
async def read_item(item_id: int, q: str | None = None, limit: int = 10) -> dict[str, Any]:
    if item_id == 404:
        raise HTTPException(status_code=404, detail="no such item", headers={"X-Item": "missing"})
    return {"item_id": item_id, "q": q, "limit": limit}


@app.post("/items", status_code=201)
async def create_item(item: Item) -> dict[str, Any]:
    return {"created": item.model_dump(), "total": round(item.price * len(item.tags or [""]), 2)}


@app.post("/upload")
async def upload(file: Annotated[UploadFile, File()]) -> dict[str, Any]:
    digest, size = hashlib.sha256(), 0
    while chunk := await file.read(256 * 1024):
        digest.update(chunk)
        size += len(chunk)
    return {
        "filename": file.filename,
        "content_type": file.content_type,
        "size": size,
        "sha256": digest.hexdigest(),
    }


@app.get("/stream")
async def stream(n: int = 5) -> StreamingResponse:
    async def chunks() -> AsyncIterator[bytes]:
        for i in range(n):
            yield f"chunk {i}\n".encode()
            await asyncio.sleep(0)

    return StreamingResponse(chunks(), media_type="text/plain", headers={"X-Chunks": str(n)})


@app.get("/events")
async def events(n: int = 3) -> StreamingResponse:
    async def sse() -> AsyncIterator[str]:
        for i in range(n):
            yield f'id: {i}\nevent: tick\ndata: {{"n": {i}}}\n\n'
            await asyncio.sleep(0.01)

    return StreamingResponse(sse(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


def record(name: str) -> None:
    DONE_TASKS.add(name)


@app.post("/tasks/{name}", status_code=202)
async def queue_task(name: str, background_tasks: BackgroundTasks) -> dict[str, str]:
    background_tasks.add_task(record, name)
    return {"queued": name}


@app.get("/tasks/{name}")
async def task_status(name: str) -> dict[str, bool]:
    return {"ran": name in DONE_TASKS}


@app.get("/state")
async def state(greeting: Annotated[str, Depends(lifespan_greeting)]) -> dict[str, str]:
    return {"greeting": greeting}


@app.get("/text", response_class=PlainTextResponse)
async def text() -> str:
    return "plain text, caf\u00e9"


@app.websocket("/ws")
async def ws_echo(websocket: WebSocket) -> None:
    offered = websocket.scope.get("subprotocols") or []
    await websocket.accept(subprotocol="echo" if "echo" in offered else None)
    try:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
            if message.get("text") == "close":
                await websocket.close(code=4001, reason="asked to close")
                return
            if message.get("text") is not None:
                await websocket.send_text("echo: " + message["text"])
            else:
                await websocket.send_bytes(message.get("bytes") or b"")
    except WebSocketDisconnect:
        return
