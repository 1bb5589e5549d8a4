"""Response heads: status lines, Date, header validation and serialisation. No I/O.

The functions here sit on the per-request path, so they memoise what repeats (status lines,
lower-cased header names, the Date line within one second).
"""

from __future__ import annotations

import re
import time
from email.utils import formatdate
from http import HTTPStatus

from prefork_lb.http.framing import bodiless_status, parse_content_length

SERVER_LINE = "Server: prefork_lb\r\n"

_STATUS_LINES: dict[str, str] = {}


def status_line(status: str) -> str:
    """'200 OK' -> 'HTTP/1.1 200 OK\\r\\n', validated. Raises ValueError for a bad status."""
    line = _STATUS_LINES.get(status)
    if line is None:
        if not isinstance(status, str) or not _STATUS_RE.fullmatch(status):
            raise ValueError(f"invalid status {status!r}")
        line = f"HTTP/1.1 {status}\r\n"
        if len(_STATUS_LINES) < 256:
            _STATUS_LINES[status] = line
    return line


_STATUS_RE = re.compile(r"[1-5][0-9][0-9] [\t \x21-\x7e\x80-\xff]*")
_TOKEN_RE = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")

# Lower-cased names of response headers the app gave, validated as tokens on first sight.
_LNAMES: dict[str, str] = {}

# Hop-by-hop headers are the server's business (PEP 3333); we drop them from the app's list.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailers",
        "transfer-encoding",
        "upgrade",
    }
)


def header_lname(name: str) -> str:
    lname = _LNAMES.get(name)
    if lname is None:
        if not isinstance(name, str) or not _TOKEN_RE.fullmatch(name):
            raise ValueError(f"invalid header name {name!r}")
        lname = name.lower()
        if len(_LNAMES) < 1024:
            _LNAMES[name] = lname
    return lname


def check_header_values(joined: str, count: int) -> None:
    """``joined`` is count 'Name: value\\r\\n' lines: any other CR or LF is an injection."""
    if joined.count("\n") != count or joined.count("\r") != count:
        raise ValueError("header value contains CR or LF")


class AppHead:
    """What the app's status and headers come to, validated and serialised once."""

    __slots__ = ("prefix", "code", "length", "has_date", "has_server", "close", "bodiless")

    def __init__(
        self, prefix: str, code: int, length: int | None, has_date: bool, has_server: bool, close: bool
    ) -> None:
        self.prefix = prefix  # status line + the app's end-to-end header lines
        self.code = code
        self.length = length  # the app's Content-Length, if it gave one
        self.has_date = has_date
        self.has_server = has_server
        self.close = close  # the app asked for Connection: close
        self.bodiless = bodiless_status(code)  # 1xx/204/304: no body, no Content-Length of ours


_HEADS: dict[tuple[str, tuple[tuple[str, str], ...]], AppHead] = {}
_HEADS_MAX = 512


def app_head(status: str, headers: list[tuple[str, str]]) -> AppHead:
    """Validate and serialise an app's status and header list (memoised: most apps send the
    same few heads again and again). Raises ValueError/TypeError for what PEP 3333 forbids."""
    try:
        key = (status, tuple(headers))
        head = _HEADS.get(key)
    except TypeError:  # an unhashable header entry: let the slow path say what is wrong
        key = None
        head = None
    if head is not None:
        return head
    line = status_line(status)
    lines = []
    length: int | None = None
    has_date = has_server = close = False
    for name, value in headers:
        if type(value) is not str:
            raise TypeError(f"header value for {name!r} must be str, not {type(value).__name__}")
        lname = header_lname(name)
        if lname in HOP_BY_HOP:
            # The server owns hop-by-hop headers (PEP 3333); honour the app's wish to close.
            if lname == "connection" and "close" in value.lower():
                close = True
            continue
        if lname == "content-length":
            length = parse_content_length(value)
        elif lname == "date":
            has_date = True
        elif lname == "server":
            has_server = True
        lines.append(f"{name}: {value}\r\n")
    joined = "".join(lines)
    check_header_values(joined, len(lines))
    head = AppHead(line + joined, int(status[:3]), length, has_date, has_server, close)
    if key is not None:
        if len(_HEADS) >= _HEADS_MAX:
            _HEADS.clear()
        _HEADS[key] = head
    return head


_date_second = -1
# The Date line of the current second. Per-request code reads this attribute of the module;
# a server refreshes it from a timer a few times a second, so requests never read the clock.
current_date_line = ""


def refresh_date() -> str:
    global _date_second, current_date_line
    now = int(time.time())
    if now != _date_second:
        _date_second = now
        current_date_line = f"Date: {formatdate(now, usegmt=True)}\r\n"
    return current_date_line


def date_line() -> str:
    return refresh_date()


def reason(code: int) -> str:
    try:
        return HTTPStatus(code).phrase
    except ValueError:
        return "Unknown"


def simple_response(code: int, body: str = "", close: bool = True, extra: str = "") -> bytes:
    """A complete small response: error pages, 100 Continue aside."""
    data = (body or reason(code)).encode("utf-8") + b"\n"
    head = (
        f"HTTP/1.1 {code} {reason(code)}\r\n{date_line()}{SERVER_LINE}"
        f"Content-Type: text/plain; charset=utf-8\r\nContent-Length: {len(data)}\r\n{extra}"
        + ("Connection: close\r\n" if close else "")
        + "\r\n"
    )
    return head.encode("latin-1") + data


CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
