"""The session demo app the integration tests serve (tests/integration/test_sessions.py).

``GET /count`` adds one to the session's counter and answers ``{"count": N, "pid": PID,
"unavailable": bool}``; a store failure is answered 503 with the error's message (which names
the store's address). The store is ``PREFORK_LB_TEST_SESSION_STORE`` (a URL for
prefork_lb.sessions.store_from_url), with a 1 s timeout; ``PREFORK_LB_TEST_SESSION_ON_ERROR``
is the middleware's ``on_error``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from typing import Any

from prefork_lb.sessions import SessionMiddleware, SessionStoreError, store_from_url


def _count(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    session = environ["prefork_lb.session"]
    try:
        session["count"] = session.get("count", 0) + 1
        body = json.dumps({"count": session["count"], "pid": os.getpid(), "unavailable": session.unavailable})
        # The session is saved here: a store failure while saving is raised here too.
        start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    except SessionStoreError as exc:
        body = f"session store error: {exc}\n"
        start_response(
            "503 Service Unavailable", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))]
        )
    return [body.encode()]


app = SessionMiddleware(
    _count,
    store_from_url(os.environ["PREFORK_LB_TEST_SESSION_STORE"], timeout=1.0),
    secret="a test secret that is long enough",
    on_error=os.environ.get("PREFORK_LB_TEST_SESSION_ON_ERROR", "raise"),
)
