"""Strict HTTP/1.x request parsing on top of httptools (llhttp), with no I/O.

The caller feeds bytes with :meth:`RequestParser.feed`; complete request heads appear, in order,
in ``parser.requests`` (a deque of :class:`Request`) and their bodies accumulate in each
request's ``chunks`` until ``complete`` is set. Pipelined requests simply queue up. Bytes are
only parsed when the caller feeds them, so a caller that reads from the socket only when it
needs more data gets backpressure for free.

llhttp already refuses most smuggling vectors (CL+TE, duplicate or signed Content-Length, TE
not ending in chunked, obs-fold, bare CR/LF, whitespace before a colon, control characters,
bad chunk framing). This module adds what it lets through:

* limits: request line (414), header count and field size (431), body size (413), and a cap
  on the bytes of an unfinished head so a client cannot make us buffer without bound;
* exactly one Host on HTTP/1.1 (RFC 9112 section 3.2), and a valid one (``http.host``), at most
  one Content-Type;
* Transfer-Encoding on HTTP/1.0, codings other than chunked (501), chunked applied twice;
* request-target forms: origin, absolute (checked authority), authority only for CONNECT,
  asterisk only for OPTIONS; versions other than 1.0 and 1.1;
* trailer fields that must never be trailers (Host, framing, authentication);
* Expect values other than 100-continue (417).

Any violation raises an :class:`~prefork_lb.http.errors.HTTPError` and the parser is dead:
the connection must be answered with that status and closed. Once a request that ends the
connection (Connection: close, HTTP/1.0 without keep-alive, an upgrade) is complete, the
parser stops and ignores what follows.
"""

from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass
from typing import Any

import httptools

from prefork_lb.http.errors import (
    BadRequest,
    ExpectationFailed,
    HeaderFieldsTooLarge,
    HTTPError,
    NotImplementedCoding,
    PayloadTooLarge,
    URITooLong,
)
from prefork_lb.http.host import valid_host

MISS_RUN = 256  # lookups in a row that find nothing before a RequestMemo rests,
MISS_REST = 4096  # for this many requests (traffic whose heads do not repeat pays nothing)
MEMO_MAX = 256  # request (and response) heads a memo keeps before it starts over
MEMO_HEAD_MAX = 2048  # the longest head worth keeping


@dataclass(frozen=True)
class Limits:
    """gunicorn's names and defaults; 0 means unlimited where noted."""

    request_line: int = 4094  # 0: unlimited
    request_fields: int = 100
    request_field_size: int = 8190  # 0: unlimited
    request_body: int = 0  # 0: unlimited
    require_host: bool = True


# Lower-cased names of fields with framing, routing or authentication meaning: never allowed in
# a trailer section (RFC 9110 section 6.5.1).
FORBIDDEN_TRAILERS = frozenset(
    {
        "host",
        "content-length",
        "transfer-encoding",
        "trailer",
        "connection",
        "keep-alive",
        "te",
        "upgrade",
        "expect",
        "authorization",
        "proxy-authorization",
        "cookie",
        "set-cookie",
        "content-encoding",
        "content-range",
        "max-forwards",
    }
)

KNOWN_CODINGS = frozenset(
    {b"chunked", b"identity", b"gzip", b"x-gzip", b"deflate", b"compress", b"x-compress"}
)

# absolute-form: scheme "://" authority [ path-abempty [ "?" query ] ]; the authority is a
# reg-name / IPv4 or an IP-literal, optional userinfo and port. llhttp has checked the rest.
_ABSOLUTE = re.compile(
    rb"[A-Za-z][A-Za-z0-9+.\-]*://"
    rb"(?:[A-Za-z0-9\-._~%!$&'()*+,;=:]*@)?"
    rb"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-._~%!$&'()*+,;=]*)"
    rb"(?::[0-9]*)?"
    rb"(?:[/?#].*)?",
    re.S,
)
_AUTHORITY = re.compile(rb"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-._~%!$&'()*+,;=]+):[0-9]+")

_METHODS: dict[bytes, str] = {}

# Memoised lower-casing of header names: clients send the same few names over and over.
_LOWER: dict[bytes, str] = {}
_LOWER_MAX = 512
_GOOD_HOSTS: set[bytes] = set()  # Host values that passed valid_host (bounded by _LOWER_MAX)


def lower_name(name: bytes) -> str:
    s = _LOWER.get(name)
    if s is None:
        s = name.decode("latin-1").lower()
        if len(_LOWER) < _LOWER_MAX:
            _LOWER[name] = s
    return s


class Request:
    """One request: its head, and its body as it arrives."""

    __slots__ = (
        "method",
        "target",
        "version",
        "headers",
        "keep_alive",
        "content_length",
        "chunked",
        "expect_continue",
        "upgrade",
        "chunks",
        "body_size",
        "complete",
        "discard",
        "host",
        "content_type",
        "memo",
    )

    def __init__(self) -> None:
        self.method = ""
        self.target = b""
        self.version = "HTTP/1.1"
        self.headers: list[tuple[str, bytes, bytes]] = []  # (lower name, raw name, value)
        self.keep_alive = True
        self.content_length: int | None = None
        self.chunked = False
        self.expect_continue = False
        self.upgrade = False
        self.chunks: list[bytes] = []
        self.body_size = 0
        self.complete = False
        self.discard = False  # the app is done with it: drop further body bytes
        self.host: bytes | None = None
        self.content_type: bytes | None = None
        # Set on a request kept in a parser memo: the callers' cache of what they derive from
        # it (the proxy's rewritten head, the worker's environ), since the same object comes back.
        self.memo: dict[object, Any] | None = None

    def split_target(self) -> tuple[bytes, bytes]:
        """(path, query) of the request-target, not percent-decoded; fragment dropped."""
        t = self.target
        if t[:1] != b"/":
            if t == b"*" or self.method == "CONNECT":
                return b"", b""
            # absolute-form: drop scheme://authority
            rest = t.split(b"://", 1)[1]
            cut = len(rest)
            for sep in (b"/", b"?", b"#"):
                i = rest.find(sep)
                if i != -1 and i < cut:
                    cut = i
            t = rest[cut:]
            if t[:1] != b"/":
                t = b"/" + t
        hash_at = t.find(b"#")
        if hash_at != -1:
            t = t[:hash_at]
        q = t.find(b"?")
        if q == -1:
            return t, b""
        return t[:q], t[q + 1 :]


class RequestMemo(dict[bytes, Request | None]):
    """Whole bodiless requests by their exact bytes: the Request once they came twice, None
    after the first time. Shared by the parsers of one process that have the same limits.
    While lookups keep finding nothing it rests, so heads that never repeat cost next to
    nothing."""

    __slots__ = ("misses", "rest")

    def __init__(self) -> None:
        super().__init__()
        self.misses = 0
        self.rest = 0


def seen_before(memos: dict[bytes, Any], key: bytes) -> bool:
    """The rule of the head memos (requests here, responses in the proxy): a head is kept the
    second time it comes. True: ``key`` came once before, and the caller stores its value now;
    False: only the bytes are noted. A memo full at MEMO_MAX starts over."""
    if len(memos) >= MEMO_MAX:
        memos.clear()
    if key in memos:
        return True
    memos[key] = None
    return False


def _plain(req: Request) -> bool:
    """A whole request with no body that leaves the connection open: one a memo may keep."""
    return (
        req.complete
        and not req.body_size
        and not req.chunked
        and not req.content_length
        and req.keep_alive
        and not req.upgrade
        and not req.expect_continue
    )


class RequestParser:
    """Feeds bytes to llhttp and queues validated :class:`Request` objects."""

    __slots__ = (
        "_p",
        "limits",
        "requests",
        "_cur",
        "_head_bytes",
        "_in_head",
        "_head_cap",
        "_nfields",
        "stopped",
        "_url_len",
        "_trailers",
        "error",
        "tail",
        "memos",
    )

    def __init__(self, limits: Limits | None = None, memos: RequestMemo | None = None) -> None:
        self.limits = limits or Limits()
        # Requests seen at least twice, by their exact bytes (None: seen once), shared by every
        # parser with these limits (see feed). None: no memo.
        self.memos = memos
        self._p = httptools.HttpRequestParser(self)
        self.requests: deque[Request] = deque()
        self._cur: Request | None = None
        self._in_head = False
        self._head_bytes = 0
        lim = self.limits
        line = lim.request_line or 65536
        field = lim.request_field_size or 65536
        self._head_cap = line + 4 + lim.request_fields * (field + 4) + 4
        self._nfields = 0
        self._url_len = 0
        self._trailers = False
        self.stopped = False  # no further requests will be parsed on this connection
        self.error: HTTPError | None = None  # an error behind requests still to be served
        self.tail = b""  # bytes that came after an upgrade request (a tunnel's first bytes)

    @property
    def between_requests(self) -> bool:
        """No request is partly parsed: the next byte fed starts a new one."""
        return self._cur is None and not self.stopped

    # -- feeding -------------------------------------------------------------------------------

    def feed(self, data: bytes) -> None:
        """Parse ``data``. Raises HTTPError for a malformed request, unless requests that came
        before it are still queued: those are served first, and the error waits in
        ``self.error`` for the caller to answer once the queue is empty."""
        if self.stopped:
            return
        memos = self.memos
        if memos is not None and (self._cur is not None or memos.rest):
            if self._cur is None:
                memos.rest -= 1
            memos = None  # in the middle of a request, or the memo rests: parse as usual
        before = 0
        whole = False  # data is exactly one head, not found in the memo
        if memos is not None:
            # Whole bodiless requests accepted before, one after another (pipelined): parsing
            # them again would give the same requests, so hand out those (memos only ever hold
            # accepted ones). llhttp parses from the first one that is not known.
            requests = self.requests
            pos = 0
            size = len(data)
            while True:
                end = data.find(b"\r\n\r\n", pos) + 4
                if not 4 <= end - pos <= MEMO_HEAD_MAX:
                    break
                whole = end == size and not pos
                known = memos.get(data if whole else data[pos:end])
                if known is None:
                    break
                whole = False
                memos.misses = 0
                requests.append(known)
                if end == size:
                    return
                pos = end
            if pos:
                data = data[pos:]
            else:
                memos.misses += 1
                if memos.misses >= MISS_RUN:
                    memos.misses = 0
                    memos.rest = MISS_REST
            before = len(requests)
        try:
            if self._in_head or self._cur is None:
                # Bound the bytes an unfinished head may take (llhttp buffers nothing, but
                # we would keep reading forever otherwise).
                self._head_bytes += len(data)
                if self._head_bytes > self._head_cap:
                    raise HeaderFieldsTooLarge("request head too large")
            self._p.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            self.tail = data[exc.args[0] :] if exc.args else b""
            # CONNECT or an Upgrade request: llhttp stops after it. We serve it as an
            # ordinary request and then close, since what follows is not HTTP/1.
            # llhttp pauses after the upgrade request is complete (on_message_complete has run
            # and cleared _cur): the request is then the last one queued.
            cur = self._cur or (self.requests[-1] if self.requests else None)
            if cur is not None:
                cur.keep_alive = False
                cur.upgrade = True
                if not cur.complete:
                    cur.complete = True
            self.stopped = True
        except HTTPError as exc:
            self._fail(exc)
        except httptools.HttpParserCallbackError as exc:
            ctx = exc.__context__
            self._fail(ctx if isinstance(ctx, HTTPError) else BadRequest(str(exc)))
        except httptools.HttpParserError as exc:
            if self.stopped:  # data after a request that closes the connection: ignore
                return
            self._fail(BadRequest(str(exc)))
        if memos is not None and self._cur is None and not self.stopped:
            found = len(self.requests) - before
            if found == 1 and whole:  # the usual case: no list, no split
                req = self.requests[-1]
                if _plain(req):
                    self._keep(data, req)
            elif found > 1:
                self._remember(data, before)

    def _remember(self, data: bytes, first: int) -> None:
        """Keep the requests from ``first`` on, which ``data`` was exactly, if each is whole, has
        no body and leaves the connection open. With no body bytes among them, the requests'
        bytes are cut apart at each blank line."""
        found = list(self.requests)[first:]
        if not all(map(_plain, found)):
            return
        pieces = data.split(b"\r\n\r\n")
        if len(pieces) != len(found) + 1 or pieces[-1]:
            return
        for req, piece in zip(found, pieces, strict=False):
            if len(piece) + 4 <= MEMO_HEAD_MAX:
                self._keep(piece + b"\r\n\r\n", req)

    def _keep(self, key: bytes, req: Request) -> None:
        memos = self.memos
        assert memos is not None
        if seen_before(memos, key):
            req.memo = {}
            memos[key] = req

    def _fail(self, exc: HTTPError) -> None:
        self.stopped = True
        cur = self._cur
        if any(r is not cur for r in self.requests):
            self.error = exc
            return
        raise exc

    # -- llhttp callbacks ----------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._cur = Request()
        self._in_head = True
        self._nfields = 0
        self._url_len = 0
        self._trailers = False

    def on_url(self, url: bytes) -> None:
        cur = self._cur
        assert cur is not None
        self._url_len += len(url)
        lim = self.limits.request_line
        if lim and self._url_len > lim:
            raise URITooLong("request line too long")
        cur.target = cur.target + url if cur.target else url

    def on_header(self, name: bytes, value: bytes) -> None:
        cur = self._cur
        assert cur is not None
        if value[-1:] in (b" ", b"\t"):
            value = value.rstrip(b" \t")  # llhttp strips leading OWS only (RFC 9110 5.5)
        lname = _LOWER.get(name) or lower_name(name)
        lim = self.limits
        # Counted as "Name: value\r\n", as gunicorn counts a field line with its CRLF.
        if lim.request_field_size and len(name) + len(value) + 4 > lim.request_field_size:
            raise HeaderFieldsTooLarge(f"header field {lname} too large")
        if self._trailers:
            if lname in FORBIDDEN_TRAILERS:
                raise BadRequest(f"{lname} is not allowed in a trailer")
            return  # trailers are validated, then dropped: WSGI has no place for them
        self._nfields += 1
        if self._nfields > lim.request_fields:
            raise HeaderFieldsTooLarge("too many header fields")
        if lname == "host":
            if cur.host is not None:
                raise BadRequest("more than one Host header")
            if value not in _GOOD_HOSTS:  # the rule is a regex: remember the few hosts served
                if not valid_host(value):
                    raise BadRequest("invalid Host header")
                if len(_GOOD_HOSTS) < _LOWER_MAX:
                    _GOOD_HOSTS.add(value)
            cur.host = value
        elif lname == "content-type":
            if cur.content_type is not None:
                raise BadRequest("more than one Content-Type header")
            cur.content_type = value
        elif lname == "transfer-encoding":
            cur.chunked = True  # checked in on_headers_complete
        elif lname == "content-length":
            cur.content_length = int(value)  # llhttp accepted only digits, once
        elif lname == "expect":
            if value.lower() != b"100-continue":
                raise ExpectationFailed("unsupported expectation")
            cur.expect_continue = True
        cur.headers.append((lname, name, value))

    def on_headers_complete(self) -> None:
        cur = self._cur
        assert cur is not None
        p = self._p
        self._in_head = False
        self._trailers = True  # any on_header from now on belongs to a trailer section
        self._head_bytes = 0
        version = p.get_http_version()
        if version == "1.1":
            cur.version = "HTTP/1.1"
        elif version == "1.0":
            cur.version = "HTTP/1.0"
        else:
            raise BadRequest(f"unsupported HTTP version {version}")
        raw_method = p.get_method()
        method = _METHODS.get(raw_method)
        if method is None:
            method = _METHODS[raw_method] = raw_method.decode("ascii")  # llhttp knows ~46: bounded
        cur.method = method
        cur.keep_alive = p.should_keep_alive()
        lim = self.limits
        # The request line without its CRLF: METHOD SP target SP HTTP/x.y
        if self._url_len + len(method) + 10 > (lim.request_line or 1 << 62):
            raise URITooLong("request line too long")
        target = cur.target
        if target[:1] != b"/" or method == "CONNECT":
            _check_target(method, target)
        if cur.host is None and lim.require_host and cur.version == "HTTP/1.1":
            raise BadRequest("missing Host header")
        if cur.chunked:
            if cur.version == "HTTP/1.0":
                raise BadRequest("Transfer-Encoding is not allowed in HTTP/1.0")
            codings = []
            for lname, _, value in cur.headers:
                if lname == "transfer-encoding":
                    codings += [c.strip().lower() for c in value.split(b",")]
            # llhttp made sure chunked comes last. Registered codings before it are passed to
            # the app untouched (as gunicorn does); unknown ones get 501.
            if codings.count(b"chunked") != 1:
                raise BadRequest("chunked applied more than once")
            for c in codings:
                if c not in KNOWN_CODINGS:
                    raise NotImplementedCoding("unsupported transfer coding")
        elif cur.content_length is not None and lim.request_body and cur.content_length > lim.request_body:
            raise PayloadTooLarge("request body too large")
        self.requests.append(cur)

    def on_body(self, body: bytes) -> None:
        cur = self._cur
        assert cur is not None
        cur.body_size += len(body)
        lim = self.limits.request_body
        if lim and cur.body_size > lim:
            raise PayloadTooLarge("request body too large")
        if not cur.discard:
            cur.chunks.append(body)

    def on_message_complete(self) -> None:
        cur = self._cur
        assert cur is not None
        cur.complete = True
        self._in_head = False
        self._cur = None
        if not cur.keep_alive:
            self.stopped = True


def _check_target(method: str, target: bytes) -> None:
    """Validate a request-target that is not in origin-form."""
    if target == b"*":
        if method != "OPTIONS":
            raise BadRequest("asterisk-form is only for OPTIONS")
        return
    if method == "CONNECT":
        if not _AUTHORITY.fullmatch(target):
            raise BadRequest("invalid authority-form target")
        return
    if not _ABSOLUTE.fullmatch(target):
        raise BadRequest("invalid request target")
