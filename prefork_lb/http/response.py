"""Response heads: status lines, Date, header validation and serialisation. No I/O.

The functions here sit on the per-request path, so they memoise what repeats (status lines,
lower-cased header names, the Date line within one second).
"""

from __future__ import annotations

import re
import time
from email.utils import formatdate
from http import HTTPStatus

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
HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization",
                        "te", "trailers", "transfer-encoding", "upgrade"})


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


_date_second = -1
_date_line = ""


def refresh_date() -> str:
    """Recompute the Date line if the second changed. A server calls this from a timer a few
    times a second, so the per-request path reads a string instead of the clock."""
    global _date_second, _date_line
    now = int(time.time())
    if now != _date_second:
        _date_second = now
        _date_line = f"Date: {formatdate(now, usegmt=True)}\r\n"
    return _date_line


def date_line() -> str:
    return _date_line or refresh_date()


def reason(code: int) -> str:
    try:
        return HTTPStatus(code).phrase
    except ValueError:
        return "Unknown"


def simple_response(code: int, body: str = "", close: bool = True, extra: str = "") -> bytes:
    """A complete small response: error pages, 100 Continue aside."""
    data = (body or reason(code)).encode("utf-8") + b"\n"
    head = (f"HTTP/1.1 {code} {reason(code)}\r\n{date_line()}{SERVER_LINE}"
            f"Content-Type: text/plain; charset=utf-8\r\nContent-Length: {len(data)}\r\n{extra}"
            + ("Connection: close\r\n" if close else "") + "\r\n")
    return head.encode("latin-1") + data


CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
