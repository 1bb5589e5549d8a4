"""What a websocket app may send, when, and what each event asks the server to do: pure, no I/O.

:class:`AppSide` follows the app through the ASGI ``websocket`` send events (spec 2.4):

    CONNECTING --websocket.accept--> OPEN --websocket.send--> OPEN
    CONNECTING --websocket.close--> CLOSED                    (the server answers 403)
    CONNECTING --websocket.http.response.start--> RESPONDING  (the app's own denial response)
    RESPONDING --websocket.http.response.body (more_body)--> RESPONDING, else --> CLOSED
    OPEN --websocket.close--> CLOSED

:meth:`AppSide.step` checks one event against that and its fields and returns the action for the
protocol to carry out (:class:`Accept`, :class:`Send`, :class:`Close`, :class:`Deny`,
:class:`DenyBody`), or raises :class:`AppEventError` whose text names the event and what is
wrong with it: the server logs that line and ends the connection (1011 after accept, 500
before). :func:`close_code` checks a close code an app may send; :func:`disconnect` makes the
event the app receives when the connection ends.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

from prefork_lb.asgi.ws_handshake import valid_header

__all__ = [
    "message_frame",
    "CLOSED",
    "CONNECTING",
    "OPEN",
    "RESPONDING",
    "Accept",
    "AppEventError",
    "AppSide",
    "Close",
    "Deny",
    "DenyBody",
    "Send",
    "close_code",
    "disconnect",
]

CONNECTING, OPEN, RESPONDING, CLOSED = "connecting", "open", "responding", "closed"
MAX_REASON = 123  # bytes of UTF-8 a close frame has room for after its code
# Codes an endpoint may put in a close frame (RFC 6455 section 7.4, the IANA registry): 1004-1006
# and 1015 are reserved or only ever reported locally; 3000-4999 are for libraries and apps.
_SENDABLE = frozenset({1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014})


class AppEventError(Exception):
    """The app sent an event that is invalid here; str(exc) names the event and the problem."""


@dataclass(frozen=True)
class Accept:
    subprotocol: str | None
    headers: list[tuple[bytes, bytes]]


@dataclass(frozen=True)
class Send:
    data: str | bytes


@dataclass(frozen=True)
class Close:
    code: int
    reason: str
    before_accept: bool  # the handshake is refused: the server answers 403


@dataclass(frozen=True)
class Deny:
    status: int
    headers: list[tuple[bytes, bytes]]


@dataclass(frozen=True)
class DenyBody:
    body: bytes
    more: bool


Action = Accept | Send | Close | Deny | DenyBody


def close_code(code: object) -> int:
    """A close code the app may send, or AppEventError."""
    if isinstance(code, bool) or not isinstance(code, int):
        raise AppEventError(f"code must be an int, not {type(code).__name__}")
    if code not in _SENDABLE and not 3000 <= code <= 4999:
        raise AppEventError(f"code {code} may not be sent in a close frame")
    return code


def _reason(value: object) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise AppEventError(f"reason must be a str, not {type(value).__name__}")
    raw = value.encode("utf-8")
    if len(raw) > MAX_REASON:
        raise AppEventError(f"reason is {len(raw)} bytes of UTF-8, more than {MAX_REASON}")
    return value


def _headers(value: object) -> list[tuple[bytes, bytes]]:
    if value is None:
        return []
    try:
        pairs = [tuple(h) for h in value]  # type: ignore[attr-defined]
    except TypeError:
        raise AppEventError("headers must be an iterable of [name, value] pairs") from None
    out: list[tuple[bytes, bytes]] = []
    for pair in pairs:
        if len(pair) != 2 or not valid_header(pair[0], pair[1]):
            raise AppEventError(f"invalid header {pair!r}: needs a bytes token name and a bytes value")
        out.append((pair[0], pair[1]))
    return out


def disconnect(code: int, reason: str = "") -> dict[str, Any]:
    """The websocket.disconnect event for a connection that ended with ``code``."""
    return {"type": "websocket.disconnect", "code": code, "reason": reason}


class AppSide:
    """Where the app is in the send sequence; :meth:`step` moves it on by one event."""

    __slots__ = ("offered", "state")

    def __init__(self, offered: list[str]) -> None:
        self.offered = offered  # the subprotocols the client asked for
        self.state = CONNECTING

    def step(self, message: object) -> Action:
        if not isinstance(message, dict):
            raise AppEventError(f"an event must be a dict, not {type(message).__name__}")
        kind = message.get("type")
        try:
            action = self._step(kind, message)
        except AppEventError as exc:
            raise AppEventError(f"{kind!r}: {exc}") from None
        return action

    def _step(self, kind: object, message: dict[str, Any]) -> Action:
        state = self.state
        if state == CONNECTING:
            if kind == "websocket.accept":
                return self._accept(message)
            if kind == "websocket.close":
                self.state = CLOSED
                return Close(1000, _reason(message.get("reason")), before_accept=True)
            if kind == "websocket.http.response.start":
                return self._deny(message)
            raise AppEventError("expected websocket.accept, websocket.close or websocket.http.response.start")
        if state == OPEN:
            if kind == "websocket.send":
                return Send(self._data(message))
            if kind == "websocket.close":
                self.state = CLOSED
                code = message.get("code")
                code = 1000 if code is None else close_code(code)
                return Close(code, _reason(message.get("reason")), before_accept=False)
            raise AppEventError("expected websocket.send or websocket.close after accept")
        if state == RESPONDING:
            if kind != "websocket.http.response.body":
                raise AppEventError("expected websocket.http.response.body")
            body = message.get("body", b"")
            if not isinstance(body, bytes):
                raise AppEventError(f"body must be bytes, not {type(body).__name__}")
            more = bool(message.get("more_body", False))
            if not more:
                self.state = CLOSED
            return DenyBody(body, more)
        raise AppEventError("the connection is already closed")

    def _accept(self, message: dict[str, Any]) -> Accept:
        sub = message.get("subprotocol")
        if sub is not None:
            if not isinstance(sub, str):
                raise AppEventError(f"subprotocol must be a str, not {type(sub).__name__}")
            if sub not in self.offered:
                raise AppEventError(f"subprotocol {sub!r} was not offered by the client")
        headers = _headers(message.get("headers"))
        self.state = OPEN
        return Accept(sub, headers)

    def _deny(self, message: dict[str, Any]) -> Deny:
        status = message.get("status")
        if isinstance(status, bool) or not isinstance(status, int) or not 100 <= status <= 999:
            raise AppEventError(f"status must be an int from 100 to 999, not {status!r}")
        if status < 200 or status == 101:
            raise AppEventError(f"status {status} cannot deny a websocket handshake")
        headers = _headers(message.get("headers"))
        self.state = RESPONDING
        return Deny(status, headers)

    @staticmethod
    def _data(message: dict[str, Any]) -> str | bytes:
        data, text = message.get("bytes"), message.get("text")
        if (data is None) == (text is None):
            raise AppEventError("needs exactly one of bytes and text")
        if data is not None:
            if not isinstance(data, bytes | bytearray | memoryview):
                raise AppEventError(f"bytes must be bytes, not {type(data).__name__}")
            return bytes(data)
        if not isinstance(text, str):
            raise AppEventError(f"text must be a str, not {type(text).__name__}")
        return text


def message_frame(data: str | bytes) -> bytes:
    """A whole message as one unmasked server frame (RFC 6455 section 5.2: FIN, the text or
    binary opcode, the length in 7, 16 or 64 bits), the bytes wsproto writes for it when no
    extension was agreed: the echo path builds it without wsproto's per-frame objects."""
    if isinstance(data, str):
        payload = data.encode("utf-8")
        first = 0x81
    else:
        payload = data
        first = 0x82
    n = len(payload)
    if n <= 125:
        return bytes((first, n)) + payload
    if n <= 0xFFFF:
        return struct.pack("!BBH", first, 126, n) + payload
    return struct.pack("!BBQ", first, 127, n) + payload
