"""A Starlette app, written as its users write one (served by tests/integration/asgi/)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket


@asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
    yield {"db": "connected"}


async def homepage(request: Request) -> Response:
    return PlainTextResponse("Hello, Starlette")


async def user(request: Request) -> Response:
    return JSONResponse(
        {
            "user": request.path_params["username"],
            "query": dict(request.query_params.multi_items()),
            "state": request.state.db,
        }
    )


async def echo(request: Request) -> Response:
    body = await request.body()
    return Response(body, media_type=request.headers.get("content-type", "application/octet-stream"))


async def cookies(request: Request) -> Response:
    response = JSONResponse({"seen": request.cookies.get("visit")})
    response.set_cookie("visit", "1", httponly=True)
    response.set_cookie("theme", "dark", samesite="strict")
    return response


async def numbers(request: Request) -> Response:
    async def gen() -> AsyncIterator[bytes]:
        for i in range(100):
            yield b"%d\n" % i

    return StreamingResponse(gen(), media_type="text/plain")


async def moved(request: Request) -> Response:
    return RedirectResponse("/", status_code=301)


async def ws_echo(websocket: WebSocket) -> None:
    await websocket.accept()
    async for text in websocket.iter_text():
        if text == "bye":
            await websocket.close(code=1000)
            return
        await websocket.send_text(text.upper())


app = Starlette(
    routes=[
        Route("/", homepage),
        Route("/users/{username}", user),
        Route("/echo", echo, methods=["POST", "PUT"]),
        Route("/cookies", cookies),
        Route("/numbers", numbers),
        Route("/old", moved),
        WebSocketRoute("/ws", ws_echo),
    ],
    lifespan=lifespan,
)
