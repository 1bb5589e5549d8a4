"""The bundled demo app: `python -m prefork_lb prefork_lb.demo:app`. Its page shows which worker
(process id) served it, so reloads and balancing can be watched from a browser or curl."""

from __future__ import annotations

import html
import json
import os
from collections.abc import Callable, Iterable
from typing import Any

_served = 0


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    global _served
    _served += 1
    path = environ.get("PATH_INFO", "/")
    if path == "/health":
        body = b"ok\n"
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
        return [body]
    if path == "/json":
        body = json.dumps({"pid": os.getpid(), "served": _served, "path": path}).encode()
        start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
        return [body]
    if path == "/echo":
        data = environ["wsgi.input"].read()
        start_response(
            "200 OK", [("Content-Type", "application/octet-stream"), ("Content-Length", str(len(data)))]
        )
        return [data]
    page = (
        "<!doctype html><title>prefork_lb demo</title>"
        "<h1>Hello from prefork_lb</h1>"
        f"<p>Served by worker pid <b>{os.getpid()}</b>, request number {_served} of this worker.</p>"
        f"<p>You asked for <code>{html.escape(path)}</code>. Try <a href=/json>/json</a>.</p>"
    ).encode()
    start_response(
        "200 OK", [("Content-Type", "text/html; charset=utf-8"), ("Content-Length", str(len(page)))]
    )
    return [page]
