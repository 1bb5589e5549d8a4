"""The websocket test app (one ASGI app, routed by path) for tests/integration/asgi/.

Every websocket.disconnect the app receives is logged as ``disconnect PATH CODE REASON`` on
stderr, so that a test can see what the app was told.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

Receive = Any
Send = Any


def note(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


async def _until_disconnect(scope: dict[str, Any], receive: Receive) -> dict[str, Any]:
    while True:
        event = await receive()
        if event["type"] == "websocket.disconnect":
            note(f"disconnect {scope['path']} {event['code']} {event.get('reason', '')}")
            return dict(event)


async def echo(scope: dict[str, Any], receive: Receive, send: Send) -> None:
    await send({"type": "websocket.accept"})
    while True:
        event = await receive()
        if event["type"] == "websocket.disconnect":
            note(f"disconnect {scope['path']} {event['code']} {event.get('reason', '')}")
            return
        if event.get("text") is not None:
            await send({"type": "websocket.send", "text": event["text"]})
        else:
            await send({"type": "websocket.send", "bytes": event["bytes"]})


async def subprotocol(scope: dict[str, Any], receive: Receive, send: Send) -> None:
    chosen = scope["subprotocols"][-1] if scope["subprotocols"] else None
    await send({"type": "websocket.accept", "subprotocol": chosen, "headers": [(b"x-chosen", b"yes")]})
    await send(
        {
            "type": "websocket.send",
            "text": f"{scope['scheme']} {scope['path']} {scope['query_string'].decode()}",
        }
    )
    await _until_disconnect(scope, receive)


async def reject(scope: dict[str, Any], receive: Receive, send: Send) -> None:
    await send({"type": "websocket.close"})


async def deny(scope: dict[str, Any], receive: Receive, send: Send) -> None:
    headers = [(b"content-type", b"text/plain"), (b"x-why", b"no token")]
    await send({"type": "websocket.http.response.start", "status": 401, "headers": headers})
    await send({"type": "websocket.http.response.body", "body": b"token ", "more_body": True})
    await send({"type": "websocket.http.response.body", "body": b"required"})


async def close(scope: dict[str, Any], receive: Receive, send: Send) -> None:
    await send({"type": "websocket.accept"})
    await receive()  # one message, then the app closes
    await send({"type": "websocket.close", "code": 4001, "reason": "bye now"})
    await _until_disconnect(scope, receive)


async def crash(scope: dict[str, Any], receive: Receive, send: Send) -> None:
    await send({"type": "websocket.accept"})
    await receive()
    raise RuntimeError("boom")


async def crash_early(scope: dict[str, Any], receive: Receive, send: Send) -> None:
    raise RuntimeError("boom before accept")


async def invalid(scope: dict[str, Any], receive: Receive, send: Send) -> None:
    await send({"type": "websocket.accept"})
    await send({"type": "websocket.send"})  # neither bytes nor text


async def wait(scope: dict[str, Any], receive: Receive, send: Send) -> None:
    await send({"type": "websocket.accept"})
    await send({"type": "websocket.send", "text": "ready"})
    await _until_disconnect(scope, receive)


async def silent(scope: dict[str, Any], receive: Receive, send: Send) -> None:
    """Accepts and never reads: the inbox fills and reading pauses."""
    await send({"type": "websocket.accept"})
    await send({"type": "websocket.send", "text": "ready"})
    await asyncio.sleep(3600)


ROUTES = {
    "/echo": echo,
    "/subprotocol": subprotocol,
    "/reject": reject,
    "/deny": deny,
    "/close": close,
    "/crash": crash,
    "/crash-early": crash_early,
    "/invalid": invalid,
    "/wait": wait,
    "/silent": silent,
}


async def app(scope: dict[str, Any], receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        return
    if scope["type"] == "http":
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})
        return
    assert (await receive())["type"] == "websocket.connect"
    handler = ROUTES.get(scope["path"])
    if handler is None:
        await send({"type": "websocket.close"})
        return
    await handler(scope, receive, send)
