"""ASGI apps for the tests that run the ASGI worker under the master (tests/integration/asgi/).

``app`` answers as prefork_lb.demo:app does on /json (so the master's tests run unchanged over
both interfaces), sleeps cooperatively on /sleep?S and /sleep/S, blocks the loop on /block?S (time.sleep in
an async def: the heartbeat stops), waits on /hold until the file PREFORK_LB_TEST_GATE names exists, says its lifespan state on /state and its root_path on
/root, echoes websockets (noting the code of their websocket.disconnect in the file named by
PREFORK_LB_TEST_CALLS, as its lifespan shutdown). ``lifespan_fails`` refuses its startup;
``no_lifespan`` raises on the lifespan scope; ``asgi2`` is an ASGI 2 class; ``not_an_app`` and
``async_gen`` are neither interface.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from typing import Any

_served = 0


async def _reply(send: Any, status: int, body: bytes, ctype: bytes = b"application/json") -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", ctype), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def _lifespan(receive: Any, send: Any, state: dict[str, Any]) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            state["started_by"] = os.getpid()
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            _note(f"lifespan shutdown {os.getpid()}")
            await send({"type": "lifespan.shutdown.complete"})
            return


def _note(line: str) -> None:
    path = os.environ.get("PREFORK_LB_TEST_CALLS")
    if path:
        with open(path, "a") as f:
            f.write(line + "\n")


async def _echo(receive: Any, send: Any) -> None:
    """A websocket echo that notes the close code its websocket.disconnect carried."""
    await receive()  # websocket.connect
    await send({"type": "websocket.accept"})
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            _note(f"ws disconnect {message['code']} {os.getpid()}")
            return
        await send({"type": "websocket.send", "text": message.get("text"), "bytes": message.get("bytes")})


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    global _served
    if scope["type"] == "lifespan":
        await _lifespan(receive, send, scope.get("state", {}))
        return
    if scope["type"] == "websocket":
        await _echo(receive, send)
        return
    path = scope["path"]
    qs = scope.get("query_string", b"").decode()
    _served += 1
    if path == "/sleep":
        await asyncio.sleep(float(qs or "1"))
    elif path.startswith("/sleep/"):  # (as tests.apps:overload's /sleep/S)
        await asyncio.sleep(float(path[len("/sleep/") :]))
    elif path == "/block":
        time.sleep(float(qs or "1"))  # blocks the loop: what the heartbeat watchdog is for
    elif path == "/hold":  # (as tests.apps:overload's /hold: until the gate file exists, 30 s at most)
        gate, deadline = os.environ["PREFORK_LB_TEST_GATE"], time.monotonic() + 30
        while not os.path.exists(gate) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
    if path == "/state":
        body = json.dumps(dict(scope.get("state", {}))).encode()
    elif path.endswith("/root"):
        body = json.dumps({"root_path": scope.get("root_path", ""), "path": path}).encode()
    else:
        body = json.dumps({"pid": os.getpid(), "served": _served, "path": path}).encode()
    await _reply(send, 200, body)


async def lifespan_fails(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        await receive()
        await send({"type": "lifespan.startup.failed", "message": "no database at db.invalid"})
        return
    await _reply(send, 200, b"{}")


async def no_lifespan(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """An app that knows only http (as many hand-written ones): it raises on the lifespan scope."""
    if scope["type"] != "http":
        raise ValueError(f"unsupported scope {scope['type']!r}")
    await _reply(send, 200, b'{"path": "/json"}')


class asgi2:  # noqa: N801 - named as an app attribute
    """ASGI 2: made with the scope, awaited with (receive, send)."""

    def __init__(self, scope: dict[str, Any]) -> None:
        self.scope = scope

    async def __call__(self, receive: Any, send: Any) -> None:
        if self.scope["type"] == "lifespan":
            message = await receive()
            await send({"type": message["type"] + ".complete"})
            return
        await _reply(send, 200, b'{"asgi": 2}')


not_an_app = {"routes": []}


async def async_gen(scope: dict[str, Any], receive: Any, send: Any) -> Any:
    yield b""
