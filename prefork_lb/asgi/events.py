"""The pure parts of the ASGI HTTP cycle: the scope of a request, the validation of the events
an app sends, and the response head they come to. No I/O (prefork_lb.asgi.http does that).

Invariants:

* A scope's keys are the ASGI 3.0 HTTP connection scope's (spec_version 2.4); ``headers`` hold
  lower-cased names and raw values, both bytes, in the order they came, less names with "_"
  (dropped by both engines).
* An event the app may not send now raises :class:`AppEventError`, whose message names the
  event and why, before anything of it goes out.
* A response head is validated and serialised once per distinct (status, headers) pair
  (memoised, bounded), like prefork_lb.http.response.app_head does for WSGI apps; hop-by-hop
  headers are the server's and dropped, an app's ``Connection: close`` is honoured.
"""

from __future__ import annotations

import re
from typing import Any, Final
from urllib.parse import unquote_to_bytes

from prefork_lb.http.errors import AppEventError
from prefork_lb.http.forwarded import forwarded_scheme
from prefork_lb.http.framing import bodiless_status
from prefork_lb.http.parser import Request
from prefork_lb.http.response import reason

__all__ = [
    "ASGI",
    "EXTENSIONS",
    "AppEventError",
    "AsgiHead",
    "body_of",
    "connection_scope",
    "request_scope",
    "response_head",
    "scope_memo_key",
    "trailer_lines",
]

ASGI: Final = {"version": "3.0", "spec_version": "2.4"}
EXTENSIONS: Final[dict[str, dict[str, Any]]] = {"http.response.trailers": {}, "http.response.pathsend": {}}
HTTP_VERSIONS: Final = {"HTTP/1.1": "1.1", "HTTP/1.0": "1.0"}
SCOPE_MEMO: Final = "asgi scope"  # the key of a memoised request's scope entries in Request.memo

_TOKEN_RE: Final = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_BAD_VALUE: Final = re.compile(rb"[\x00\r\n]")
HOP_BY_HOP: Final = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailers",
        b"transfer-encoding",
        b"upgrade",
    }
)


def connection_scope(client: Any, server: Any, root_path: str, scheme: str) -> dict[str, Any]:
    """The keys every request on one connection shares."""
    return {
        "type": "http",
        "asgi": ASGI,
        "http_version": "1.1",
        "scheme": scheme,
        "server": server,
        "client": client,
        "root_path": root_path,
        "extensions": EXTENSIONS,
    }


def _decode_path(path: bytes) -> str:
    if b"%" in path:
        path = unquote_to_bytes(path)
    try:
        return path.decode("utf-8")
    except UnicodeDecodeError:
        return path.decode("latin-1")


def _request_part(req: Request, root_path: str, forwarded: bool) -> dict[str, Any]:
    target = req.target
    if target[:1] != b"/" or b"?" in target or b"%" in target or b"#" in target:
        raw_path, query = req.split_target()
        path = _decode_path(raw_path)
    else:
        raw_path, query = target, b""
        path = target.decode("latin-1")
    if root_path and not (path == root_path or path.startswith(root_path + "/")):
        # The proxy in front took the mount point off: the path is the full one (ASGI 2.4).
        path = root_path + path
        raw_path = root_path.encode("utf-8") + raw_path
    # A name with "_" is dropped, as the WSGI engine drops it (its CGI key would collide with
    # the "-" spelling): the two engines give an app the same headers.
    headers = [(raw.lower(), value) for lname, raw, value in req.headers if "_" not in lname]
    part: dict[str, Any] = {
        "http_version": HTTP_VERSIONS.get(req.version, "1.1"),
        "method": req.method,
        "path": path,
        "raw_path": raw_path,
        "query_string": query,
        "headers": headers,
    }
    if forwarded:
        xfp = fwd = None
        for lname, _raw, value in req.headers:
            if lname == "x-forwarded-proto":
                xfp = value.decode("latin-1") if xfp is None else xfp + "," + value.decode("latin-1")
            elif lname == "forwarded":
                fwd = value.decode("latin-1") if fwd is None else fwd + "," + value.decode("latin-1")
        scheme = forwarded_scheme(xfp, fwd)
        if scheme is not None:
            part["scheme"] = scheme
    return part


def scope_memo_key(root_path: str, forwarded: bool) -> tuple[str, str, bool]:
    """The key of a memoised request's scope entries (a connection makes it once)."""
    return (SCOPE_MEMO, root_path, forwarded)


def scope_part(
    req: Request, root_path: str, forwarded: bool, key: tuple[str, str, bool] | None = None
) -> dict[str, Any]:
    """The scope keys of ``req`` itself (memoised on its head when it has a memo); ``key``:
    scope_memo_key's. Shared: read it, never change it."""
    memo = req.memo
    if memo is None:
        return _request_part(req, root_path, forwarded)
    if key is None:
        key = (SCOPE_MEMO, root_path, forwarded)
    part = memo.get(key)
    if part is None:
        part = memo[key] = _request_part(req, root_path, forwarded)
    return part


def merged_scope(base: dict[str, Any], part: dict[str, Any]) -> dict[str, Any]:
    """A connection's keys and a request's: the template scope_of copies."""
    merged = base.copy()
    merged.update(part)
    return merged


def scope_of(merged: dict[str, Any], part: dict[str, Any], state: dict[str, Any] | None) -> dict[str, Any]:
    """The app's own scope from merged_scope(base, part): its own header list (the app may
    change it, never the memo's) and, with a lifespan ``state``, a shallow copy of that."""
    scope = merged.copy()
    scope["headers"] = list(part["headers"])
    if state is not None:
        scope["state"] = state.copy()
    return scope


def request_scope(
    base: dict[str, Any],
    req: Request,
    root_path: str,
    forwarded: bool,
    state: dict[str, Any] | None,
    key: tuple[str, str, bool] | None = None,
) -> dict[str, Any]:
    """The scope of ``req`` on a connection whose shared keys are ``base``; ``state``: the
    lifespan state, of which the scope gets a shallow copy; ``key``: scope_memo_key's."""
    part = scope_part(req, root_path, forwarded, key)
    return scope_of(merged_scope(base, part), part, state)


class AsgiHead:
    """What an app's http.response.start comes to, validated and serialised once."""

    __slots__ = ("prefix", "code", "length", "has_date", "has_server", "close", "bodiless")

    def __init__(
        self, prefix: bytes, code: int, length: int | None, has_date: bool, has_server: bool, close: bool
    ) -> None:
        self.prefix = prefix  # status line + the app's end-to-end header lines
        self.code = code
        self.length = length
        self.has_date = has_date
        self.has_server = has_server
        self.close = close
        self.bodiless = bodiless_status(code)


_HEADS: Final[dict[Any, AsgiHead]] = {}
_HEADS_MAX = 512
_STATUS: Final[dict[int, bytes]] = {}


def _status_line(status: Any) -> bytes:
    line = _STATUS.get(status)
    if line is None:
        if type(status) is not int or not 100 <= status <= 599:
            raise AppEventError(f"http.response.start with an invalid status {status!r} (an int 100-599)")
        line = b"HTTP/1.1 %d %s\r\n" % (status, reason(status).encode("latin-1"))
        _STATUS[status] = line
    return line


def response_head(status: Any, headers: Any) -> AsgiHead:
    """Validate and serialise an http.response.start's status and headers (memoised)."""
    # Per response: the key costs no copy of a list of (name, value) tuples (the usual shape);
    # pairs given as lists are turned into tuples, anything else iterable is listed first.
    try:
        if type(headers) is not list:
            headers = list(headers)  # (an iterator would be spent by the key)
        key: Any = (status, *headers)
        head = _HEADS.get(key)
    except TypeError:
        try:
            key = (status, *map(tuple, headers))
            head = _HEADS.get(key)
        except TypeError:
            key = head = None
    if head is not None:
        return head
    line = _status_line(status)
    try:
        pairs = [(n, v) for n, v in headers]
    except (TypeError, ValueError):
        raise AppEventError("http.response.start with headers that are not (name, value) pairs") from None
    out, length, has_date, has_server, close = _header_lines(pairs)
    out.insert(0, line)
    head = AsgiHead(b"".join(out), status, length, has_date, has_server, close)
    # (A key that could not be made means a header that is not bytes: refused above.)
    if len(_HEADS) >= _HEADS_MAX:
        _HEADS.clear()
    _HEADS[key] = head
    return head


def _header_lines(pairs: list[tuple[Any, Any]]) -> tuple[list[bytes], int | None, bool, bool, bool]:
    """The app's end-to-end header lines, its Content-Length, whether it gave Date and Server,
    and whether it asked to close."""
    out = []
    length: int | None = None
    has_date = has_server = close = False
    for name, value in pairs:
        if type(name) is not bytes or type(value) is not bytes:
            raise AppEventError(f"http.response.start with a header that is not bytes: {name!r}: {value!r}")
        if not _TOKEN_RE.fullmatch(name):
            raise AppEventError(f"http.response.start with an invalid header name {name!r}")
        if _BAD_VALUE.search(value):
            raise AppEventError(f"http.response.start with CR, LF or NUL in the value of {name!r}")
        lname = name.lower()
        if lname in HOP_BY_HOP:
            if lname == b"connection" and b"close" in value.lower():
                close = True
            continue
        if lname == b"content-length":
            length = _content_length(value)
        elif lname == b"date":
            has_date = True
        elif lname == b"server":
            has_server = True
        out.append(b"%s: %s\r\n" % (name, value))
    return out, length, has_date, has_server, close


def _content_length(value: bytes) -> int:
    if not value.isdigit():
        raise AppEventError(f"http.response.start with an invalid Content-Length {value!r}")
    return int(value)


def body_of(message: Any) -> tuple[bytes, bool]:
    """(body, more_body) of an http.response.body event."""
    body = message.get("body", b"")
    if type(body) is not bytes:
        if isinstance(body, (bytearray, memoryview)):
            body = bytes(body)
        else:
            hint = ": encode it (e.g. text.encode('utf-8'))" if isinstance(body, str) else ""
            raise AppEventError(f"http.response.body with a {type(body).__name__} body, not bytes{hint}")
    return body, bool(message.get("more_body", False))


def trailer_lines(message: Any) -> bytes:
    """The header lines of an http.response.trailers event."""
    out = []
    for pair in message.get("headers", ()):
        try:
            name, value = pair
        except (TypeError, ValueError):
            raise AppEventError(
                "http.response.trailers with headers that are not (name, value) pairs"
            ) from None
        if (
            type(name) is not bytes
            or type(value) is not bytes
            or not _TOKEN_RE.fullmatch(name)
            or _BAD_VALUE.search(value)
        ):
            raise AppEventError(f"http.response.trailers with an invalid trailer {name!r}: {value!r}")
        out.append(b"%s: %s\r\n" % (name, value))
    return b"".join(out)
