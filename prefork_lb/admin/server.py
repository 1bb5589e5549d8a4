"""The admin listener's HTTP side: a table of paths, an optional bearer token, nothing else.

:class:`AdminServer` serves the socket the master bound for --stats-bind with the standard
library's threading HTTP server (one short-lived thread per connection: scrapes and health
checks are rare and small). What it answers is :attr:`AdminServer.routes`, a dict from a path
to a function of the request returning a :class:`Reply`; a dashboard page or an event stream is
one more entry (see prefork_lb.admin.child, which fills the table).

Invariants: only GET and HEAD (405 otherwise); only the paths in the table (404 otherwise);
with --stats-token every request must carry ``Authorization: Bearer TOKEN`` (401 otherwise,
compared in constant time), except for the paths in :attr:`AdminServer.public` (the dashboard's
static page, which holds no data and fetches its data with the token, and the probes /livez and
/readyz, which a kubelet cannot easily send a token with); a client gets at most
:data:`CLIENT_TIMEOUT` seconds per read.
"""

from __future__ import annotations

import hmac
import http.server
import json
import logging
import socket
import socketserver
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("prefork_lb.error")

CLIENT_TIMEOUT = 10.0


@dataclass
class Reply:
    status: int
    body: bytes
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)


def json_reply(doc: Any, status: int = 200) -> Reply:
    return Reply(status, json.dumps(doc, indent=1).encode() + b"\n")


def text_reply(status: int, text: str, **headers: str) -> Reply:
    return Reply(status, text.encode() + b"\n", "text/plain; charset=utf-8", dict(headers))


Route = Callable[["http.server.BaseHTTPRequestHandler"], Reply]


def authorized(header: str | None, token: str | None) -> bool:
    """Whether an Authorization header carries ``token`` (always true without a token)."""
    if not token:
        return True
    scheme, _, given = (header or "").partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(given.strip().encode(), token.encode())


class _Listener(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, sock: socket.socket, handler: type[http.server.BaseHTTPRequestHandler]) -> None:
        http.server.HTTPServer.__init__(self, sock.getsockname(), handler, bind_and_activate=False)
        self.socket.close()  # the one socketserver made, unbound: ours is the master's listener
        self.socket = sock  # never bound or closed here

    def server_bind(self) -> None:  # pragma: no cover - never called (bind_and_activate=False)
        pass

    def server_close(self) -> None:
        pass  # the master keeps its listener; this process's copy closes when it exits


class AdminServer:
    def __init__(self, sock: socket.socket, token: str | None = None) -> None:
        self.routes: dict[str, Route] = {}
        self.public: set[str] = set()  # paths served without the token: pages that hold no data
        self.token = token
        sock.setblocking(True)
        self.listener = _Listener(sock, self._handler_class())

    def serve_forever(self) -> None:
        self.listener.serve_forever(poll_interval=0.5)

    def shutdown(self) -> None:
        self.listener.shutdown()

    def respond(self, handler: http.server.BaseHTTPRequestHandler) -> Reply:
        path = handler.path.split("?", 1)[0]
        if path not in self.public and not authorized(handler.headers.get("Authorization"), self.token):
            return text_reply(
                401, "a bearer token is required", **{"WWW-Authenticate": 'Bearer realm="prefork_lb"'}
            )
        route = self.routes.get(path)
        if route is None:
            return text_reply(404, "not found: try " + ", ".join(sorted(self.routes)))
        if handler.command not in ("GET", "HEAD"):
            return text_reply(405, "use GET", Allow="GET, HEAD")
        try:
            return route(handler)
        except Exception:
            log.exception("admin: %s failed", path)
            return text_reply(500, "internal error (see the error log)")

    def _handler_class(self) -> type[http.server.BaseHTTPRequestHandler]:
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            timeout = CLIENT_TIMEOUT

            def version_string(self) -> str:
                return "prefork_lb-admin"

            def handle_one_request(self) -> None:
                try:
                    super().handle_one_request()
                except OSError:
                    self.close_connection = True

            def _serve(self) -> None:
                reply = server.respond(self)
                self.send_response(reply.status)
                self.send_header("Content-Type", reply.content_type)
                self.send_header("Content-Length", str(len(reply.body)))
                self.send_header("Cache-Control", "no-store")
                for k, v in reply.headers.items():
                    self.send_header(k, v)
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(reply.body)

            do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _serve

            def log_message(self, format: str, *args: Any) -> None:
                log.debug("admin: %s", format % args)  # (a unix socket's client has no address)

        return Handler
