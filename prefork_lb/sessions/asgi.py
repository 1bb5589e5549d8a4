"""Server-side sessions for an ASGI app: ``ASGISessionMiddleware(app, store, secret=...)``.

The same sessions, cookie and rules as the WSGI middleware (prefork_lb.sessions.wsgi), for
``http`` scopes: the session is ``scope["session"]`` (where Starlette's own middleware puts
it), read from the store before the app is called and saved when the app sends
``http.response.start``. The stores are blocking clients, so both calls run in a thread
(``asyncio.to_thread``); each is bounded by the store's timeout. A store failure while reading
is raised where the app touches the session, as under WSGI; one while saving, from the app's
``send``. A SessionConflict or SessionStoreError the app does not catch, before its response
started, is answered 409 or 503.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from typing import Any

from prefork_lb.sessions.session import SessionConflict, SessionLifecycle, fallback_answer
from prefork_lb.sessions.stores import SessionStore, SessionStoreError

__all__ = ["ASGISessionMiddleware"]

log = logging.getLogger("prefork_lb.sessions")
Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class ASGISessionMiddleware:
    """Wraps an ASGI app; keyword arguments are :class:`SessionLifecycle`'s."""

    def __init__(
        self, app: ASGIApp, store: SessionStore, secret: str | bytes | Sequence[str | bytes], **options: Any
    ) -> None:
        self.app = app
        self.sessions = SessionLifecycle(store, secret, **options)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        cookie = b"; ".join(v for k, v in scope.get("headers", ()) if k.lower() == b"cookie")
        session = self.sessions.open(cookie.decode("latin-1") or None)
        if not session.new:
            try:
                await asyncio.to_thread(session.ensure_loaded)
            except SessionStoreError:
                pass  # kept by the session: raised where the app touches it
        scope["session"] = session
        https = scope.get("scheme") == "https"
        started = False

        async def send_with_session(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start" and not started:
                extra = await asyncio.to_thread(self.sessions.commit, session, https)
                headers = list(message.get("headers", ()))
                headers += [(k.lower().encode(), v.encode("latin-1")) for k, v in extra]
                message = {**message, "headers": headers}
                started = True
            await send(message)

        try:
            await self.app(scope, receive, send_with_session)
        except (SessionConflict, SessionStoreError) as exc:
            if started:
                raise
            status, reason, body = fallback_answer(exc)
            log.log(
                logging.INFO if status == 409 else logging.ERROR, "%s: answered %d %s", exc, status, reason
            )
            await send(
                {
                    "type": "http.response.start",
                    "status": status,
                    "headers": [
                        (b"content-type", b"text/plain"),
                        (b"content-length", str(len(body)).encode()),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": body})
