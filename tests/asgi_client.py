"""A tiny ASGI test client: drives an ASGI app with one ``http`` request, as a server would.
(prefork_lb has no ASGI worker yet; this is enough to test ASGI middleware.)"""

from __future__ import annotations

import asyncio
from typing import Any


def asgi_get(app: Any, cookie: str | None, scheme: str = "http") -> tuple[int, dict[bytes, bytes], bytes]:
    """One request through an ASGI app, as a server would drive it: (status, headers, body)."""
    headers = [(b"host", b"example.org")] + ([(b"cookie", cookie.encode())] if cookie else [])
    scope = {"type": "http", "method": "GET", "path": "/", "scheme": scheme, "headers": headers}
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    start, body = sent[0], b"".join(m.get("body", b"") for m in sent[1:])
    return start["status"], dict(start["headers"]), body
