"""The raw ASGI app every server in bench/asgi.py serves (no framework: the server's own cost).

``app``: HTTP: a fixed 13-byte ``Hello, World!`` with Content-Type and Content-Length (the
keep-alive fast path), whatever the method and path; WebSocket: accept, then echo every
message back as it came (text as text, bytes as bytes) until the client goes; lifespan: startup
and shutdown complete at once (so no server logs a lifespan error).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

BODY = b"Hello, World!"
_START = {
    "type": "http.response.start",
    "status": 200,
    "headers": [(b"content-type", b"text/plain"), (b"content-length", str(len(BODY)).encode())],
}
_BODY = {"type": "http.response.body", "body": BODY, "more_body": False}


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    kind = scope["type"]
    if kind == "http":
        await send(_START)
        await send(_BODY)
    elif kind == "websocket":
        await _echo(receive, send)
    elif kind == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return


async def _echo(receive: Receive, send: Send) -> None:
    if (await receive())["type"] != "websocket.connect":
        return
    await send({"type": "websocket.accept"})
    while True:
        message = await receive()
        if message["type"] != "websocket.receive":
            return  # websocket.disconnect
        text = message.get("text")
        if text is not None:
            await send({"type": "websocket.send", "text": text})
        else:
            await send({"type": "websocket.send", "bytes": message.get("bytes") or b""})
