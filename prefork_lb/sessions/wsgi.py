"""Server-side sessions for a WSGI app: ``SessionMiddleware(app, store, secret=...)``.

The app finds its :class:`~prefork_lb.sessions.session.Session` in
``environ["prefork_lb.session"]``. When the app calls ``start_response`` the session is saved
if it changed, and ``Set-Cookie`` is added (a new or changed session; ``Secure`` when
``wsgi.url_scheme`` is ``https``, which prefork_lb's workers set from a trusted proxy's
``X-Forwarded-Proto`` per ``--forwarded-allow-ips``). A response started with ``exc_info`` (an
error page) saves nothing.

A save that loses the concurrent-write rule raises SessionConflict from ``start_response``, and
a store failure raises SessionStoreError where the app touches the session: the app may catch
either. What it does not catch, the middleware answers: 409 for a conflict, 503 for the store
(logged with the store's address, which the client is not shown). That fallback covers what
is raised while the app is called; an app returning a generator that only then calls
``start_response`` raises to the server instead (a 500).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from prefork_lb.sessions.session import SessionConflict, SessionLifecycle, fallback_answer
from prefork_lb.sessions.stores import SessionStore, SessionStoreError

__all__ = ["ENVIRON_KEY", "SessionMiddleware"]

log = logging.getLogger("prefork_lb.sessions")
ENVIRON_KEY = "prefork_lb.session"
WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class SessionMiddleware:
    """Wraps a WSGI app; keyword arguments are :class:`SessionLifecycle`'s (cookie_name, ttl,
    secure, samesite, path, domain, on_error)."""

    def __init__(
        self, app: WSGIApp, store: SessionStore, secret: str | bytes | Sequence[str | bytes], **options: Any
    ) -> None:
        self.app = app
        self.sessions = SessionLifecycle(store, secret, **options)

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        session = self.sessions.open(environ.get("HTTP_COOKIE"))
        environ[ENVIRON_KEY] = session
        https = environ.get("wsgi.url_scheme") == "https"
        started = False

        def start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            nonlocal started
            if exc_info is None:
                headers = [*headers, *self.sessions.commit(session, https)]
            write = start_response(status, headers, exc_info)
            started = True
            return write

        try:
            return self.app(environ, start)
        except (SessionConflict, SessionStoreError) as exc:
            if started:
                raise
            status, reason, body = fallback_answer(exc)
            log.log(
                logging.INFO if status == 409 else logging.ERROR, "%s: answered %d %s", exc, status, reason
            )
            headers = [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))]
            start_response(f"{status} {reason}", headers, sys.exc_info())
            return [body]
