"""The app every host of the multi-host rig serves (tests/netns.py, tests/multihost.py).

``GET /health`` answers ``ok``; ``GET /count`` adds one to the session's counter kept in the
Redis at ``PREFORK_LB_TEST_SESSION_STORE`` (tests/apps_sessions.py, shared by all hosts) and
answers ``{"count": N, "host": NAME}``; any other path answers ``{"host": NAME}``, NAME being
``PREFORK_LB_TEST_HOST``, so a test sees which host served it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from typing import Any

from prefork_lb.sessions import SessionMiddleware, store_from_url

HOST_NAME = os.environ.get("PREFORK_LB_TEST_HOST", "?")


def _reply(start_response: Callable[..., Any], body: bytes, status: str = "200 OK") -> list[bytes]:
    start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]


def _count(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    session = environ["prefork_lb.session"]
    session["count"] = session.get("count", 0) + 1
    return _reply(start_response, json.dumps({"count": session["count"], "host": HOST_NAME}).encode())


_STORE = os.environ.get("PREFORK_LB_TEST_SESSION_STORE")
_sessions = (
    SessionMiddleware(_count, store_from_url(_STORE, timeout=1.0), secret="a test secret that is long enough")
    if _STORE
    else None
)


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    path = environ.get("PATH_INFO", "/")
    if path == "/health":
        return _reply(start_response, b"ok")
    if path == "/count" and _sessions is not None:
        return _sessions(environ, start_response)
    return _reply(start_response, json.dumps({"host": HOST_NAME}).encode())
