"""A WSGI app whose view blocks the worker's loop: it computes instead of waiting.

``/burn/S`` runs a pure-Python loop for S seconds (no cooperative wait: gevent cannot switch
away from it, yet the interpreter still lets a real thread run at every switch interval);
anything else answers at once. Used by the admission tests (a full worker must answer 503 while
its loop is blocked).
"""

from __future__ import annotations

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
