"""ASGI apps for the ASGI engine's tests (tests/asgi_server.py runs them in AsgiServer).

``echo`` describes the request as JSON and records one line per call in the file named by
ASGI_CALLS (as tests/apps.py does for WSGI), so a test can tell that a request never reached the
app. ``behave`` picks what to do from the path: the wrong event sequences, streaming, trailers,
pathsend, sleeps for timeouts and admission, a wait for http.disconnect.
"""

from __future__ import annotations

import asyncio
import json
import os
from typing import Any

Scope = dict[str, Any]


def _record(line: str) -> None:
    path = os.environ.get("ASGI_CALLS")
    if path:
        with open(path, "a", encoding="latin-1") as f:
            f.write(line + "\n")


async def _read_body(receive: Any) -> bytes:
    body = b""
    while True:
        msg = await receive()
        if msg["type"] == "http.disconnect":
            raise ConnectionError("client went away")
        body += msg.get("body", b"")
        if not msg.get("more_body"):
            return body


def describe(scope: Scope, body: bytes) -> dict[str, Any]:
    return {
        "type": scope["type"],
        "asgi": scope["asgi"],
        "http_version": scope["http_version"],
        "method": scope["method"],
        "scheme": scope["scheme"],
        "path": scope["path"],
        "raw_path": scope["raw_path"].decode("latin-1"),
        "query_string": scope["query_string"].decode("latin-1"),
        "root_path": scope["root_path"],
        "headers": [[n.decode("latin-1"), v.decode("latin-1")] for n, v in scope["headers"]],
        "client": list(scope["client"]) if scope["client"] else None,
        "server": list(scope["server"]) if scope["server"] else None,
        "state": sorted(scope.get("state", {})),
        "extensions": sorted(scope.get("extensions", {})),
        "body": body.decode("latin-1"),
    }


async def _json(send: Any, data: Any, status: int = 200) -> None:
    out = json.dumps(data).encode()
    await send(
        {"type": "http.response.start", "status": status, "headers": [(b"content-type", b"application/json")]}
    )
    await send({"type": "http.response.body", "body": out})


async def echo(scope: Scope, receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    body = await _read_body(receive)
    _record(f"{scope['method']} {scope['raw_path'].decode('latin-1')}")
    await _json(send, describe(scope, body))


async def lifespan_state(scope: Scope, receive: Any, send: Any) -> None:
    """Sets state["db"] at startup; echoes otherwise."""
    if scope["type"] == "lifespan":
        while True:
            msg = await receive()
            if msg["type"] == "lifespan.startup":
                scope["state"]["db"] = "connected"
                await send({"type": "lifespan.startup.complete"})
            else:
                await send({"type": "lifespan.shutdown.complete"})
                return
    await echo(scope, receive, send)


START = {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]}


async def behave(scope: Scope, receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    path = scope["path"]
    query = scope["query_string"].decode()
    _record(f"{scope['method']} {path}")
    if path == "/stream":
        await send(START)
        for i in range(int(query or 3)):
            await send({"type": "http.response.body", "body": b"part%d\n" % i, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
    elif path == "/big":
        await send(START)
        chunk = b"x" * 65536
        for _ in range(int(query or 64)):
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
    elif path == "/upload":  # reads the body in pieces, reporting each piece's size
        sizes = []
        while True:
            msg = await receive()
            sizes.append(len(msg.get("body", b"")))
            if not msg.get("more_body"):
                break
        await _json(send, {"total": sum(sizes), "events": len(sizes)})
    elif path == "/ignore-body":
        await send(START)
        await send({"type": "http.response.body", "body": b"ignored"})
    elif path == "/trailers":
        await send({**START, "trailers": True})
        await send({"type": "http.response.body", "body": b"data", "more_body": True})
        await send({"type": "http.response.body", "body": b""})
        await send({"type": "http.response.trailers", "headers": [(b"x-checksum", b"abc")]})
    elif path == "/pathsend":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.pathsend", "path": query})
    elif path == "/sleep":
        await asyncio.sleep(float(query or 1))
        _record("done sleep")
        await send(START)
        await send({"type": "http.response.body", "body": b"slept"})
    elif path == "/sleep-after-start":
        await send(START)
        await send({"type": "http.response.body", "body": b"begun", "more_body": True})
        await asyncio.sleep(float(query or 1))
        await send({"type": "http.response.body", "body": b"never"})
    elif path == "/wait-disconnect":
        msg = await receive()  # the (empty) body
        msg = await receive()
        _record(f"got {msg['type']}")
    elif path == "/close":
        await send({"type": "http.response.start", "status": 200, "headers": [(b"connection", b"close")]})
        await send({"type": "http.response.body", "body": b"bye"})
    elif path == "/status":
        await send({"type": "http.response.start", "status": int(query), "headers": []})
        await send({"type": "http.response.body", "body": b"body of %d" % int(query)})
    elif path.startswith("/bad/"):
        await BAD[path[5:]](send)
    elif path == "/raise":
        raise RuntimeError("raise-marker-4c1d")
    elif path == "/raise-after-start":
        await send(START)
        await send({"type": "http.response.body", "body": b"first", "more_body": True})
        raise RuntimeError("raise-late-marker-5e2f")
    else:
        await send(START)
        await send({"type": "http.response.body", "body": b"hello"})


async def _body_before_start(send: Any) -> None:
    await send({"type": "http.response.body", "body": b"x"})


async def _two_starts(send: Any) -> None:
    await send(START)
    await send(START)


async def _str_body(send: Any) -> None:
    await send(START)
    await send({"type": "http.response.body", "body": "text"})


async def _unknown(send: Any) -> None:
    await send({"type": "http.response.bogus"})


async def _no_start(send: Any) -> None:
    return None


async def _swallowed(send: Any) -> None:
    try:
        await send({"type": "http.response.body", "body": b"x"})
    except RuntimeError:
        pass


async def _late_str(send: Any) -> None:
    await send(START)
    await send({"type": "http.response.body", "body": b"ok", "more_body": True})
    await send({"type": "http.response.body", "body": "text"})


BAD = {
    "body-before-start": _body_before_start,
    "two-starts": _two_starts,
    "str-body": _str_body,
    "unknown": _unknown,
    "no-start": _no_start,
    "swallowed": _swallowed,
    "late-str": _late_str,
}
