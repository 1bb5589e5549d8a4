"""Rewriting request and response heads as they cross the proxy; pure, no I/O.

:class:`RequestRewriter` turns a request parsed by :class:`~prefork_lb.http.parser.RequestParser`
into the exact bytes of the head sent upstream; :class:`ResponseRewriter` does the same for a
backend's response head on its way to the client. Both run once per request, so each makes a
single pass over the header list, looks names up in a precomputed dict and builds the head with
one ``b"".join``.

Invariants of every head produced here:

* framing is re-done by the proxy: at most one of ``Content-Length`` / ``Transfer-Encoding``,
  never both, and it matches what the engine will send (the engine re-chunks chunked bodies;
  codings before ``chunked``, such as gzip, describe the content and are kept); a request that
  came with neither goes up with neither (RFC 9110 section 8.6: a proxy sends the framing the
  client sent, and a request without framing has no content);
* no hop-by-hop field (RFC 9110 section 7.6.1: Connection, Keep-Alive, Proxy-Connection, TE,
  Transfer-Encoding, Upgrade, Trailer) and no field named in the sender's ``Connection`` header
  crosses, except the ones the proxy writes itself (framing, ``Connection: close`` /
  ``keep-alive`` / ``Upgrade``) and the :data:`PROTECTED` ones, which a client cannot make us
  drop by naming them in ``Connection``;
* client-supplied forwarding headers (X-Forwarded-For/-Proto/-Host, Forwarded, X-Real-IP) reach
  a backend only from a trusted peer (:class:`~prefork_lb.proxy.peers.TrustedPeers`); from
  anyone else they are replaced, so a backend can rely on the last X-Forwarded-For entry being
  the real peer.

The request line goes upstream as ``METHOD target HTTP/1.1`` with the target as the client sent
it (absolute-form included: servers must accept it). ``Expect: 100-continue`` is never forwarded: the proxy answers ``100 Continue`` to the client
itself and streams the body, so the backend sees an ordinary request (and never a second,
out-of-place 100 for us to filter).
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Protocol

from prefork_lb.proxy.peers import TrustedPeers, forwarded_value, peer_forms

__all__ = [
    "HOP_BY_HOP",
    "PROTECTED",
    "ParsedRequest",
    "RequestRewriter",
    "ResponseRewriter",
    "TrustedPeers",
    "cookie_value",
    "peer_forms",
    "split_connection_tokens",
]

# Lower-case names of hop-by-hop fields (RFC 9110 section 7.6.1, plus the non-standard
# Proxy-Connection that old clients still send).
HOP_BY_HOP: frozenset[str] = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "transfer-encoding",
        "upgrade",
        "trailer",
    }
)

# Fields a client must not be able to strip by listing them in Connection: the forwarding
# headers (otherwise `Connection: X-Forwarded-For` from a trusted hop would erase the chain) and
# Host (the backend routes on it).
PROTECTED: frozenset[str] = frozenset(
    {
        "x-forwarded-for",
        "x-forwarded-proto",
        "x-forwarded-host",
        "forwarded",
        "x-real-ip",
        "host",
    }
)

# Connection tokens that never name an end-to-end field: nothing more to strip for them.
_PLAIN_TOKENS = HOP_BY_HOP | PROTECTED | {"close"}

_CACHE_MAX = 1024  # bound of the small memo dicts below (Connection values, names)


class ParsedRequest(Protocol):
    """What the rewriter reads from a :class:`prefork_lb.http.parser.Request`."""

    method: str
    target: bytes
    version: str
    headers: list[tuple[str, bytes, bytes]]
    host: bytes | None
    content_length: int | None
    chunked: bool


# -- Connection tokens ------------------------------------------------------------------------

_TOKENS: dict[bytes, frozenset[str]] = {}


def _tokens(value: bytes) -> frozenset[str]:
    toks = _TOKENS.get(value)
    if toks is None:
        toks = frozenset(
            t for t in (p.strip(b" \t").decode("latin-1").lower() for p in value.split(b",")) if t
        )
        if len(_TOKENS) < _CACHE_MAX:
            _TOKENS[value] = toks
    return toks


def split_connection_tokens(values: list[bytes]) -> frozenset[str]:
    """The lower-case tokens of one or more Connection header values (comma lists, OWS)."""
    if len(values) == 1:
        return _tokens(values[0])
    out: set[str] = set()
    for v in values:
        out |= _tokens(v)
    return frozenset(out)


# -- request side -----------------------------------------------------------------------------

# What the request loop does with a field, by lower-case name; absent means "copy it".
_DROP, _CONN, _UPGRADE, _TE, _XFF, _FWD, _XFP, _XFH, _VIA = range(9)

_REQ_COMMON = {
    "connection": _CONN,
    "upgrade": _UPGRADE,
    "transfer-encoding": _TE,
    "keep-alive": _DROP,
    "proxy-connection": _DROP,
    "te": _DROP,
    "trailer": _DROP,
    "content-length": _DROP,
    "expect": _DROP,
    "via": _VIA,
}
_REQ_UNTRUSTED = {
    **_REQ_COMMON,
    "x-forwarded-for": _DROP,
    "x-forwarded-proto": _DROP,
    "x-forwarded-host": _DROP,
    "forwarded": _DROP,
    "x-real-ip": _DROP,
}
_REQ_TRUSTED = {
    **_REQ_COMMON,
    "x-forwarded-for": _XFF,
    "x-forwarded-proto": _XFP,
    "x-forwarded-host": _XFH,
    "forwarded": _FWD,
}

_TE_CHUNKED = b"Transfer-Encoding: chunked\r\n"


def _content_length(n: int) -> bytes:
    return b"Content-Length: " + str(n).encode() + b"\r\n"


def _te_line(values: list[bytes]) -> bytes:
    """The upstream Transfer-Encoding for a chunked request: the engine de-chunks and re-chunks
    the body, but other codings (gzip before chunked) describe the content and must stay."""
    if len(values) == 1 and values[0].lower() == b"chunked":
        return _TE_CHUNKED
    codings = [c for c in (p.strip(b" \t") for v in values for p in v.split(b",")) if c]
    kept = [c for c in codings if c.lower() not in (b"chunked", b"identity")]
    if not kept:
        return _TE_CHUNKED
    return b"Transfer-Encoding: " + b", ".join(kept) + b", chunked\r\n"


class RequestRewriter:
    """Builds the upstream request head (see the module docstring for the rules)."""

    __slots__ = ("trusted", "lb_headers", "via", "via10", "name", "_by_line", "_lines", "_codes", "_tails")

    def __init__(
        self,
        *,
        trusted: TrustedPeers,
        lb_headers: bool = True,
        via: bytes = b"1.1 prefork_lb",
        name: bytes = b"prefork_lb",
        drop: str | None = None,
    ) -> None:
        self.trusted = trusted
        self.lb_headers = lb_headers
        self.via = via
        # Via records the protocol *received* (RFC 9110 section 7.6.3): 1.0 for an HTTP/1.0 client.
        self.via10 = b"1.0 " + via[4:] if via.startswith(b"1.1 ") else via
        self.name = name
        self._by_line = b"X-Forwarded-By: " + name + b"\r\n"
        self._lines: dict[str, bytes] = {}  # method -> b"METHOD "
        self._tails: dict[tuple[str, str, bytes | None, str], bytes] = {}
        # A client's X-Forwarded-By is replaced by ours when we add one.
        by = {"x-forwarded-by": _DROP} if lb_headers else {}
        # ``drop``: a further field the caller replaces (the request id header: the exchange
        # adds the canonical id's line itself).
        if drop is not None:
            by[drop] = _DROP
        self._codes = ({**_REQ_UNTRUSTED, **by}, {**_REQ_TRUSTED, **by})  # indexed by trust

    def head(
        self,
        req: ParsedRequest,
        peer_ip: str,
        scheme: str,
        websocket: bool = False,
        authority: bytes | None = None,
    ) -> bytes:
        """The complete upstream request head, request line to the blank line. ``authority``
        (the address the client connected to) is the Host sent for a request that named none
        (HTTP/1.0, or --require-host false): RFC 9112 section 3.3 rebuilds the target URI so."""
        return self._head(req, req.headers, peer_ip, scheme, websocket, True, authority)

    def _head(
        self,
        req: ParsedRequest,
        headers: list[tuple[str, bytes, bytes]],
        peer_ip: str,
        scheme: str,
        websocket: bool,
        check_conn: bool,
        authority: bytes | None = None,
    ) -> bytes:
        codes = self._codes[peer_ip in self.trusted]
        start = self._lines.get(req.method)
        if start is None:
            start = self._lines[req.method] = req.method.encode("ascii") + b" "  # llhttp: ~46 methods
        out = [start, req.target, b" HTTP/1.1\r\n"]
        add = out.extend
        conn: list[bytes] | None = None
        upgrade: bytes | None = None
        te: list[bytes] | None = None
        xff: list[bytes] | None = None
        fwd: list[bytes] | None = None
        via: list[bytes] | None = None
        has_xfp = has_xfh = False
        get = codes.get
        for lname, raw, value in headers:
            code = get(lname)
            if code is None:
                add((raw, b": ", value, b"\r\n"))
            elif code == _DROP:
                continue
            elif code == _CONN:
                if conn is None:
                    conn = [value]
                else:
                    conn.append(value)
            elif code == _VIA:
                if via is None:
                    via = [value]
                else:
                    via.append(value)
            elif code == _UPGRADE:
                upgrade = value if upgrade is None else upgrade + b", " + value
            elif code == _TE:
                if te is None:
                    te = [value]
                else:
                    te.append(value)
            elif code == _XFF:
                if value:
                    if xff is None:
                        xff = [value]
                    else:
                        xff.append(value)
            elif code == _FWD:
                if value:
                    if fwd is None:
                        fwd = [value]
                    else:
                        fwd.append(value)
            else:
                # _XFP / _XFH from a trusted peer: theirs describe the original client; keep.
                if code == _XFP:
                    has_xfp = True
                else:
                    has_xfh = True
                add((raw, b": ", value, b"\r\n"))
        if conn is not None and check_conn:
            extra = split_connection_tokens(conn) - _PLAIN_TOKENS
            if extra:
                # Rare: the client named end-to-end fields to drop. Redo without them.
                kept = [h for h in headers if h[0] not in extra]
                return self._head(req, kept, peer_ip, scheme, websocket, False, authority)

        host = req.host
        if host is None and authority is not None:
            out.append(b"Host: " + authority + b"\r\n")
            host = authority
        if xff is None and fwd is None and via is None and not has_xfp and not has_xfh:
            # The common case depends only on these four: memoised, since a keep-alive client
            # sends request after request with the same ones.
            key = (peer_ip, scheme, host, req.version)
            tail = self._tails.get(key)
            if tail is None:
                tail = self._forwarding(peer_ip, scheme, host, req.version, None, None, None, False, False)
                if len(self._tails) >= _CACHE_MAX:
                    self._tails.clear()
                self._tails[key] = tail
            out.append(tail)
        else:
            out.append(self._forwarding(peer_ip, scheme, host, req.version, xff, fwd, via, has_xfp, has_xfh))
        if websocket and upgrade is not None:
            add((b"Connection: Upgrade\r\nUpgrade: ", upgrade, b"\r\n"))
        if req.chunked:
            out.append(_te_line(te) if te is not None else _TE_CHUNKED)
        elif req.content_length is not None:
            out.append(_content_length(req.content_length))
        out.append(b"\r\n")
        return b"".join(out)

    def _forwarding(
        self,
        peer_ip: str,
        scheme: str,
        host: bytes | None,
        version: str,
        xff: list[bytes] | None,
        fwd: list[bytes] | None,
        via: list[bytes] | None,
        has_xfp: bool,
        has_xfh: bool,
    ) -> bytes:
        """X-Forwarded-*, Forwarded, Via and X-Forwarded-By, given what the client sent of them."""
        # Upstream is HTTP/1.1, which needs a Host: an empty one when the client (HTTP/1.0, or
        # --require-host false) named no authority and the caller gave none (head()).
        out: list[bytes] = [] if host is not None else [b"Host: \r\n"]
        add = out.extend
        xff_ip, for_value = peer_forms(peer_ip)
        if xff is not None:
            if xff_ip:
                xff.append(xff_ip)
            add((b"X-Forwarded-For: ", b", ".join(xff), b"\r\n"))
        elif xff_ip:
            add((b"X-Forwarded-For: ", xff_ip, b"\r\n"))
        proto = scheme.encode("ascii")
        if not has_xfp:
            add((b"X-Forwarded-Proto: ", proto, b"\r\n"))
        if host is not None and not has_xfh:
            add((b"X-Forwarded-Host: ", host, b"\r\n"))
        element = b"for=" + for_value + b";proto=" + proto
        if host is not None:
            element += b";host=" + forwarded_value(host)
        if fwd is not None:
            fwd.append(element)
            add((b"Forwarded: ", b", ".join(fwd), b"\r\n"))
        else:
            add((b"Forwarded: ", element, b"\r\n"))
        mine = self.via10 if version == "HTTP/1.0" else self.via
        if via is not None:
            via.append(mine)
            add((b"Via: ", b", ".join(via), b"\r\n"))
        else:
            add((b"Via: ", mine, b"\r\n"))
        if self.lb_headers:
            out.append(self._by_line)
        return b"".join(out)


# -- response side ----------------------------------------------------------------------------

_R_KEEP, _R_DROP, _R_CONN, _R_VIA, _R_UPGRADE, _R_BACKEND = range(6)

_RESP_CODES = {
    "connection": _R_CONN,
    "keep-alive": _R_DROP,
    "proxy-connection": _R_DROP,
    "te": _R_DROP,
    "transfer-encoding": _R_DROP,
    "upgrade": _R_UPGRADE,
    "trailer": _R_DROP,
    "content-length": _R_DROP,
    "via": _R_VIA,
    "x-backend-server": _R_BACKEND,
}


def _resp_code(raw: bytes, codes: dict[str, int], names: dict[bytes, int]) -> int:
    """What to do with response field ``raw``; memoised in ``names`` (raw name -> code) because
    backends repeat the same names."""
    code = codes.get(raw.decode("latin-1").lower(), _R_KEEP)
    if len(names) < _CACHE_MAX:
        names[raw] = code
    return code


def _reason(status: int) -> bytes:
    try:
        return HTTPStatus(status).phrase.encode("ascii")
    except ValueError:
        return b""


class ResponseRewriter:
    """Builds the response head sent to the client.

    ``framing`` is decided by the engine: ``"length"`` (``Content-Length: content_length``),
    ``"chunked"`` (``Transfer-Encoding: chunked``, the engine re-chunks), ``"close"`` (the body
    runs until the connection closes; no framing header) or ``"none"`` (no body: 1xx, 204, 304
    or a response to HEAD). For ``"none"`` the backend's Content-Length, passed in
    ``content_length``, is kept on a 304 or a HEAD response, where it tells the size the body
    would have (RFC 9110 section 8.6); never on 1xx or 204, where it is forbidden.
    """

    __slots__ = ("lb_headers", "via", "_status", "_codes", "_names")

    def __init__(
        self, *, lb_headers: bool = True, via: bytes = b"1.1 prefork_lb", drop: str | None = None
    ) -> None:
        self.lb_headers = lb_headers
        self.via = via
        self._status: dict[tuple[int, bytes], bytes] = {}
        # ``drop``: a further field the caller replaces (the request id header, whose line the
        # exchange adds with the canonical id).
        self._codes = {**_RESP_CODES, drop: _R_DROP} if drop is not None else _RESP_CODES
        self._names: dict[bytes, int] = {}  # raw name -> code, as _resp_code found it

    def head(
        self,
        status: int,
        reason: bytes,
        headers: list[tuple[bytes, bytes]],
        *,
        framing: str,
        content_length: int | None,
        keep_alive: bool,
        version: str = "HTTP/1.1",
        backend: bytes | None = None,
        set_cookie: bytes | None = None,
        upgrade: bool = False,
    ) -> bytes:
        return self._head(
            status,
            reason,
            headers,
            framing,
            content_length,
            keep_alive,
            version,
            backend,
            set_cookie,
            upgrade,
            True,
        )

    def _head(
        self,
        status: int,
        reason: bytes,
        headers: list[tuple[bytes, bytes]],
        framing: str,
        content_length: int | None,
        keep_alive: bool,
        version: str,
        backend: bytes | None,
        set_cookie: bytes | None,
        upgrade: bool,
        check_conn: bool,
    ) -> bytes:
        # Always HTTP/1.1, the highest version we speak, as RFC 9110 section 2.5 asks (and as
        # the workers answer); ``version`` (the client's) only decides framing and keep-alive.
        key = (status, reason)
        line = self._status.get(key)
        if line is None:
            line = b"HTTP/1.1 %d %s\r\n" % (status, reason or _reason(status))
            if len(self._status) < _CACHE_MAX:
                self._status[key] = line
        out = [line]
        add = out.extend
        conn: list[bytes] | None = None
        via: list[bytes] | None = None
        up_value: bytes | None = None
        lb = self.lb_headers
        names = self._names
        for raw, value in headers:
            code = names.get(raw)
            if code is None:
                code = _resp_code(raw, self._codes, names)
            if code == _R_KEEP:
                add((raw, b": ", value, b"\r\n"))
            elif code == _R_DROP:
                continue
            elif code == _R_CONN:
                if conn is None:
                    conn = [value]
                else:
                    conn.append(value)
            elif code == _R_VIA:
                if via is None:
                    via = [value]
                else:
                    via.append(value)
            elif code == _R_UPGRADE:
                up_value = value if up_value is None else up_value + b", " + value
            elif not lb:  # _R_BACKEND: a backend's own X-Backend-Server is replaced by ours
                add((raw, b": ", value, b"\r\n"))
        if conn is not None and check_conn:
            extra = split_connection_tokens(conn) - _PLAIN_TOKENS
            if extra:
                kept = [h for h in headers if h[0].decode("latin-1").lower() not in extra]
                return self._head(
                    status,
                    reason,
                    kept,
                    framing,
                    content_length,
                    keep_alive,
                    version,
                    backend,
                    set_cookie,
                    upgrade,
                    False,
                )
        if via is not None:
            via.append(self.via)
            add((b"Via: ", b", ".join(via), b"\r\n"))
        else:
            add((b"Via: ", self.via, b"\r\n"))
        if lb and backend is not None:
            add((b"X-Backend-Server: ", backend, b"\r\n"))
        if set_cookie is not None:
            add((b"Set-Cookie: ", set_cookie, b"\r\n"))
        if framing == "length":
            if content_length is None:
                raise ValueError("framing 'length' needs content_length")
            out.append(_content_length(content_length))
        elif framing == "chunked":
            out.append(_TE_CHUNKED)
        elif framing == "none":
            if content_length is not None and status >= 200 and status != 204:
                out.append(_content_length(content_length))
        elif framing != "close":
            raise ValueError(f"unknown framing {framing!r}")
        if upgrade:
            out.append(b"Connection: Upgrade\r\n")
            if up_value is not None:
                add((b"Upgrade: ", up_value, b"\r\n"))
        elif not keep_alive:
            out.append(b"Connection: close\r\n")
        elif version == "HTTP/1.0":
            out.append(b"Connection: keep-alive\r\n")
        out.append(b"\r\n")
        return b"".join(out)


# -- cookies ----------------------------------------------------------------------------------


def cookie_value(headers: list[tuple[str, bytes, bytes]], name: str) -> str | None:
    """The value of cookie ``name`` in the request's Cookie header(s), or None.

    Pairs are split on ``;`` with surrounding spaces ignored (RFC 6265 section 5.4, read
    leniently as browsers write it); a value in double quotes loses them. With several pairs of
    that name the first wins: user agents put the most specific cookie first.
    """
    want: bytes | None = None
    for lname, _, value in headers:
        if lname != "cookie":
            continue
        if want is None:
            want = name.encode("latin-1")
        if want not in value:
            continue
        for pair in value.split(b";"):
            k, eq, v = pair.partition(b"=")
            if eq and k.strip(b" \t") == want:
                v = v.strip(b" \t")
                if len(v) >= 2 and v[:1] == b'"' and v[-1:] == b'"':
                    v = v[1:-1]
                return v.decode("latin-1")
    return None
