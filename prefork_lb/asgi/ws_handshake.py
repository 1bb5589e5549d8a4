"""The WebSocket opening handshake (RFC 6455 section 4.2) and the ASGI ``websocket`` scope: pure,
no I/O.

:func:`check_handshake` validates the upgrade request the HTTP side has parsed and says why a
bad one is refused (a :class:`HandshakeError`, answered 400 before the app is called);
:func:`build_scope` makes the app's scope; :func:`accept_head` and :func:`response_head` write
the 101 that starts the connection and the plain responses that refuse it (403, 500, the
app's own denial response). :class:`WsSettings` reads the websocket options with their
defaults (uvicorn's: 16 MiB messages, a ping every 20 s, 20 s to answer it).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

from prefork_lb.http.request import Request

__all__ = [
    "GUID",
    "Handshake",
    "HandshakeError",
    "WsSettings",
    "accept_head",
    "accept_token",
    "build_scope",
    "check_handshake",
    "header_values",
    "response_head",
    "valid_header",
]

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455 section 1.3
SPEC_VERSION = "2.4"  # the ASGI websocket spec: reason on websocket.close and websocket.disconnect
# A header field's name (token) and value (no CR, LF or NUL), as the HTTP side writes them.
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_BAD_VALUE = re.compile(rb"[\r\n\x00]")
# Fields the server writes itself on every response it makes here: an app's copies are dropped.
_OWN_FIELDS = frozenset({b"content-length", b"transfer-encoding", b"connection"})


class HandshakeError(Exception):
    """The upgrade request is not a valid WebSocket handshake; str(exc) says why."""

    def __init__(self, message: str, headers: tuple[tuple[bytes, bytes], ...] = ()) -> None:
        super().__init__(message)
        self.headers = headers  # added to the 400 (Sec-WebSocket-Version for a wrong version)


@dataclass(frozen=True)
class Handshake:
    key: bytes  # Sec-WebSocket-Key, as sent
    subprotocols: list[str] = field(default_factory=list)  # in the client's order
    extensions: list[str] = field(default_factory=list)  # each offer, e.g. "permessage-deflate; ..."


@dataclass(frozen=True)
class WsSettings:
    max_size: int = 16 * 1024 * 1024  # the largest message accepted (bytes); bigger: close 1009
    ping_interval: float = 20.0  # seconds between server pings; 0: none
    ping_timeout: float = 20.0  # seconds a ping may go unanswered before close 1011; 0: forever
    per_message_deflate: bool = True  # accept permessage-deflate when the client offers it
    close_timeout: float = 5.0  # seconds to wait for the peer's close frame after ours
    server_header: bool = True
    app_name: str = ""  # the MODULE:APP the user gave, for error lines ("": the object's name)

    @classmethod
    def from_options(cls, options: Any) -> WsSettings:
        """From the worker's options; a field they do not have keeps its default."""
        d = cls()
        return cls(
            max_size=int(getattr(options, "ws_max_size", d.max_size)),
            ping_interval=float(getattr(options, "ws_ping_interval", d.ping_interval) or 0.0),
            ping_timeout=float(getattr(options, "ws_ping_timeout", d.ping_timeout) or 0.0),
            per_message_deflate=bool(getattr(options, "ws_per_message_deflate", d.per_message_deflate)),
            close_timeout=float(getattr(options, "ws_close_timeout", d.close_timeout)),
            server_header=bool(getattr(options, "server_header", d.server_header)),
            app_name=str(getattr(options, "app_name", "") or ""),
        )


def header_values(request: Request, name: str) -> list[bytes]:
    """The values of every ``name`` field (lower-case name), split at commas, stripped."""
    out: list[bytes] = []
    for lname, _, value in request.headers:
        if lname == name:
            out += [v.strip() for v in value.split(b",") if v.strip()]
    return out


def _single(request: Request, name: str) -> bytes | None:
    values = [value for lname, _, value in request.headers if lname == name]
    if len(values) > 1:
        raise HandshakeError(f"more than one {name} header")
    return values[0].strip() if values else None


def check_handshake(request: Request) -> Handshake:
    """The handshake of an upgrade request, or HandshakeError saying what is wrong with it."""
    if request.method != "GET":
        raise HandshakeError("a websocket handshake must be a GET")
    if request.version != "HTTP/1.1":
        raise HandshakeError("a websocket handshake needs HTTP/1.1")
    if b"websocket" not in [v.lower() for v in header_values(request, "upgrade")]:
        raise HandshakeError("Upgrade header does not name websocket")
    if b"upgrade" not in [v.lower() for v in header_values(request, "connection")]:
        raise HandshakeError("Connection header does not name upgrade")
    version = _single(request, "sec-websocket-version")
    if version != b"13":
        why = "missing Sec-WebSocket-Version" if version is None else "unsupported Sec-WebSocket-Version"
        raise HandshakeError(why, ((b"Sec-WebSocket-Version", b"13"),))
    key = _single(request, "sec-websocket-key")
    if key is None:
        raise HandshakeError("missing Sec-WebSocket-Key")
    try:
        raw = base64.b64decode(key, validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != 16:
        raise HandshakeError("invalid Sec-WebSocket-Key")
    protocols = [p.decode("latin-1") for p in header_values(request, "sec-websocket-protocol")]
    offers = [e.decode("latin-1") for e in header_values(request, "sec-websocket-extensions")]
    return Handshake(key, protocols, offers)


def accept_token(key: bytes) -> bytes:
    """Sec-WebSocket-Accept for Sec-WebSocket-Key ``key``."""
    return base64.b64encode(hashlib.sha1(key + GUID).digest())  # noqa: S324 (the protocol's hash)


def build_scope(scope_base: dict[str, Any], handshake: Handshake) -> dict[str, Any]:
    """The ``websocket`` scope: the keys shared with http scopes plus the websocket ones."""
    scope = dict(scope_base)
    scope.pop("method", None)  # an http key: a websocket scope has none
    scope["type"] = "websocket"
    asgi = dict(scope.get("asgi") or {})
    asgi.setdefault("version", "3.0")
    asgi["spec_version"] = SPEC_VERSION
    scope["asgi"] = asgi
    scope["scheme"] = "wss" if scope.get("scheme") in ("https", "wss") else "ws"
    scope.setdefault("http_version", "1.1")
    scope["subprotocols"] = list(handshake.subprotocols)
    extensions = dict(scope.get("extensions") or {})
    extensions["websocket.http.response"] = {}
    scope["extensions"] = extensions
    return scope


def valid_header(name: object, value: object) -> bool:
    """A header an app may add: bytes name (a token) and bytes value without CR/LF/NUL."""
    return (
        isinstance(name, bytes)
        and isinstance(value, bytes)
        and _TOKEN.fullmatch(name) is not None
        and _BAD_VALUE.search(value) is None
    )


def _server_line(settings: WsSettings) -> bytes:
    return b"Server: prefork_lb\r\n" if settings.server_header else b""


def accept_head(
    handshake: Handshake,
    settings: WsSettings,
    subprotocol: str | None = None,
    headers: list[tuple[bytes, bytes]] | None = None,
    extensions: bytes | None = None,
) -> bytes:
    """The 101 response: the accept token, the chosen subprotocol and extensions, the app's
    headers (already checked with :func:`valid_header`)."""
    lines = [
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n",
        b"Sec-WebSocket-Accept: " + accept_token(handshake.key) + b"\r\n",
        _server_line(settings),
    ]
    if subprotocol is not None:
        lines.append(b"Sec-WebSocket-Protocol: " + subprotocol.encode("latin-1") + b"\r\n")
    if extensions:
        lines.append(b"Sec-WebSocket-Extensions: " + extensions + b"\r\n")
    for name, value in headers or ():
        if name.lower() not in _OWN_FIELDS and name.lower() != b"sec-websocket-accept":
            lines.append(name + b": " + value + b"\r\n")
    lines.append(b"\r\n")
    return b"".join(lines)


def response_head(
    status: int, settings: WsSettings, body_size: int, headers: list[tuple[bytes, bytes]] | None = None
) -> bytes:
    """A response that refuses the upgrade and closes the connection: ``body_size`` bytes of
    body follow. The app's own framing and Connection fields are replaced by the server's."""
    try:
        phrase = HTTPStatus(status).phrase.encode("latin-1")
    except ValueError:
        phrase = b""
    lines = [b"HTTP/1.1 %d %s\r\n" % (status, phrase), _server_line(settings)]
    for name, value in headers or ():
        if name.lower() not in _OWN_FIELDS:
            lines.append(name + b": " + value + b"\r\n")
    lines.append(b"Content-Length: %d\r\nConnection: close\r\n\r\n" % body_size)
    return b"".join(lines)
