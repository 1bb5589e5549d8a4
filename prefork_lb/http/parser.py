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
* Expect values other than 100-continue (417);
* chunk extensions with an empty value, and the body of an Upgrade or CONNECT request, which
  httptools has llhttp skip: both through ``http.chunked`` (see :meth:`RequestParser._check_chunks`).

Any violation raises an :class:`~prefork_lb.http.errors.HTTPError` and the parser is dead:
the connection must be answered with that status and closed. Once a request that ends the
connection (Connection: close, HTTP/1.0 without keep-alive, an upgrade) is complete, the
parser stops and ignores what follows.
"""

from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass
from typing import Any, Final

import httptools

from prefork_lb.http.chunked import ChunkedScanner
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
from prefork_lb.http.request import MEMO_MAX, Request, RequestMemo, seen_before

__all__ = [
    "FORBIDDEN_TRAILERS",
    "MEMO_HEAD_MAX",
    "MEMO_MAX",
    "MISS_REST",
    "MISS_RUN",
    "Limits",
    "Request",
    "RequestMemo",
    "RequestParser",
    "lower_name",
    "seen_before",
]

MISS_RUN: Final = 256  # lookups in a row that find nothing before a RequestMemo rests,
MISS_REST: Final = 4096  # for this many requests (traffic whose heads do not repeat pays nothing)
MEMO_HEAD_MAX: Final = 2048  # the longest head worth keeping


@dataclass(frozen=True)
class Limits:
    """gunicorn's names and defaults; 0 means unlimited where noted."""

    request_line: int = 4094  # 0: unlimited
    request_fields: int = 100
    request_field_size: int = 8190  # 0: unlimited
    request_body: int = 0  # 0: unlimited
    require_host: bool = True

    @classmethod
    def from_config(cls, cfg: Any) -> Limits:
        """The limits the settings give (both engines, WSGI and ASGI, read them so)."""
        return cls(
            cfg.limit_request_line,
            cfg.limit_request_fields,
            cfg.limit_request_field_size,
            cfg.limit_request_body,
            cfg.require_host,
        )


# Lower-cased names of fields with framing, routing or authentication meaning: never allowed in
# a trailer section (RFC 9110 section 6.5.1).
FORBIDDEN_TRAILERS: Final = frozenset(
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

KNOWN_CODINGS: Final = frozenset(
    {b"chunked", b"identity", b"gzip", b"x-gzip", b"deflate", b"compress", b"x-compress"}
)

# absolute-form: scheme "://" authority [ path-abempty [ "?" query ] ]; the authority is a
# reg-name / IPv4 or an IP-literal, optional userinfo and port. llhttp has checked the rest.
_ABSOLUTE: Final = re.compile(
    rb"[A-Za-z][A-Za-z0-9+.\-]*://"
    rb"(?:[A-Za-z0-9\-._~%!$&'()*+,;=:]*@)?"
    rb"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-._~%!$&'()*+,;=]*)"
    rb"(?::[0-9]*)?"
    rb"(?:[/?#].*)?",
    re.S,
)
_AUTHORITY: Final = re.compile(rb"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-._~%!$&'()*+,;=]+):[0-9]+")

_METHODS: Final[dict[bytes, str]] = {}

# Memoised lower-casing of header names: clients send the same few names over and over.
_LOWER: Final[dict[bytes, str]] = {}
_LOWER_MAX: Final = 512
_GOOD_HOSTS: Final[set[bytes]] = set()  # Host values that passed valid_host (bounded by _LOWER_MAX)


def lower_name(name: bytes) -> str:
    s = _LOWER.get(name)
    if s is None:
        s = name.decode("latin-1").lower()
        if len(_LOWER) < _LOWER_MAX:
            _LOWER[name] = s
    return s


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
        "_scan",
        "_chunked_heads",
        "_head_end",
        "_ubody",
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
        # Chunk extensions (see _check_chunks): the scanner of the chunked body in progress,
        # the chunked heads completed in this feed, the last bytes fed while in a head.
        self._scan: ChunkedScanner | None = None
        self._chunked_heads = 0
        self._head_end = b""
        self._ubody: Request | None = None  # an Upgrade/CONNECT request whose body we read

    @property
    def between_requests(self) -> bool:
        """No request is partly parsed: the next byte fed starts a new one."""
        return self._cur is None and not self.stopped

    # -- feeding -------------------------------------------------------------------------------

    def feed(self, data: bytes) -> None:
        """Parse ``data``. Raises HTTPError for a malformed request, unless requests that came
        before it are still queued: those are served first, and the error waits in
        ``self.error`` for the caller to answer once the queue is empty."""
        memos = self.memos
        if memos is not None and self._cur is None and not memos.rest and not self.stopped:
            # The usual read: exactly one head accepted before (a memo key is one whole head).
            known = memos.get(data)
            if known is not None and self._ubody is None:
                memos.misses = 0
                self.requests.append(known)
                return
        if self.stopped:
            return
        if self._ubody is not None:
            self._upgrade_body(data)
            return
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
        entry = self._cur
        entry_in_head = self._in_head
        entry_size = entry.body_size if entry is not None else 0
        queued = len(self.requests)
        try:
            if entry_in_head or entry is None:
                # Bound the bytes an unfinished head may take (llhttp buffers nothing, but
                # we would keep reading forever otherwise).
                self._head_bytes += len(data)
                if self._head_bytes > self._head_cap:
                    raise HeaderFieldsTooLarge("request head too large")
            self._p.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            at = exc.args[0] if exc.args else len(data)
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
            if self._scan is not None or self._chunked_heads:
                if not self._check_chunks(data[:at], entry, entry_in_head, entry_size, queued):
                    return
            self.stopped = True
            self.tail = data[at:]
            if cur is not None and (cur.chunked or cur.content_length):
                # httptools made llhttp skip its body (it does for every upgrade): the body is
                # read here, with HTTP/1.1 framing; the other protocol starts after it.
                self.stopped = False
                cur.complete = False
                self._ubody = cur
                self._scan = ChunkedScanner(FORBIDDEN_TRAILERS) if cur.chunked else None
                tail, self.tail = self.tail, b""
                self._upgrade_body(tail)
            return
        except HTTPError as exc:
            self._fail(exc)
        except httptools.HttpParserCallbackError as exc:
            ctx = exc.__context__
            self._fail(ctx if isinstance(ctx, HTTPError) else BadRequest(str(exc)))
        except httptools.HttpParserError as exc:
            if not self.stopped:  # (else: data after a request that closes the connection: ignored)
                self._fail(BadRequest(str(exc)))
        if self._in_head:  # a head's blank line may come split across reads: keep its last bytes
            self._head_end = (self._head_end + data)[-3:] if entry_in_head else data[-3:]
        if (self._scan is not None or self._chunked_heads) and self.error is None:
            if not self._check_chunks(data, entry, entry_in_head, entry_size, queued):
                return
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

    # -- chunked bodies httptools does not show us ---------------------------------------------

    def _check_chunks(
        self, data: bytes, entry: Request | None, entry_in_head: bool, entry_size: int, queued: int
    ) -> bool:
        """Follow the chunked bodies in ``data`` (just parsed by llhttp, so well framed) to check
        their chunk extensions, which llhttp does not pass on. Runs only for a feed that had a
        chunked head or chunked body bytes. ``entry*``: the request in progress when ``data``
        came, whether it was in its head and its body size then; ``queued``: the requests
        queued then. False: a bad extension was found and the request refused."""
        self._chunked_heads = 0
        order = [entry] if entry is not None else []
        order += [r for r in list(self.requests)[queued:] if r is not entry]
        if self._cur is not None and self._cur is not entry and self._cur not in order:
            order.append(self._cur)
        pos = 0
        n = len(data)
        for req in order:
            if req is not entry or entry_in_head:
                if req is entry:  # its head began in an earlier feed
                    prev = self._head_end
                    at = (prev + data).find(b"\r\n\r\n")
                    end = at + 4 - len(prev)
                else:
                    while data.startswith(b"\r\n", pos):
                        pos += 2  # empty lines before a request line (RFC 9112 section 2.2)
                    at = data.find(b"\r\n\r\n", pos)
                    end = at + 4
                if at == -1 or req.upgrade:
                    return True  # the head goes on, or what follows is not ours to check
                pos = end
                self._scan = ChunkedScanner() if req.chunked else None
            elif not req.chunked:
                pos += (req.content_length or 0) - entry_size
                continue
            scan = self._scan
            if scan is not None:
                try:
                    end = scan.scan(data, pos)
                except HTTPError as exc:
                    self._scan = None
                    self._reject(req, exc)
                    return False
                if end == -1:
                    return True
                self._scan = None
                pos = end
            elif req.content_length:
                pos += req.content_length
            if pos >= n:
                break
        return True

    def _upgrade_body(self, data: bytes) -> None:
        """Body bytes of the Upgrade/CONNECT request ``_ubody``; once it is complete, the rest
        of ``data`` is the other protocol's (``tail``)."""
        req = self._ubody
        assert req is not None
        scan = self._scan
        lim = self.limits.request_body
        sink = self._ubody_bytes
        try:
            if scan is not None:
                end = scan.scan(data, 0, sink)
            else:
                need = (req.content_length or 0) - req.body_size
                sink(data[:need])
                end = need if len(data) >= need else -1
        except HTTPError as exc:
            self._ubody = self._scan = None
            self._reject(req, exc)
            return
        if lim and req.body_size > lim:
            self._ubody = self._scan = None
            self._reject(req, PayloadTooLarge("request body too large"))
            return
        if end != -1:
            req.complete = True
            self._ubody = self._scan = None
            self.stopped = True
            self.tail = data[end:]

    def _ubody_bytes(self, body: bytes) -> None:
        req = self._ubody
        if body and req is not None:
            req.body_size += len(body)
            if not req.discard:
                req.chunks.append(body)

    def _reject(self, req: Request, exc: HTTPError) -> None:
        """``req`` turned out malformed: it and whatever came after it are dropped, and the
        error answered once the requests before it are (:meth:`_fail`)."""
        requests = self.requests
        if req in requests:
            while requests[-1] is not req:
                requests.pop()
            requests.pop()
        self._cur = None
        self._fail(exc)

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
            self._chunked_heads += 1
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
