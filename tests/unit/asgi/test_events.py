"""prefork_lb.asgi.events: scopes, response heads and event checks, driven directly."""

from __future__ import annotations

from typing import Any

import pytest

from prefork_lb.asgi import events
from prefork_lb.asgi.events import (
    AppEventError,
    body_of,
    connection_scope,
    request_scope,
    response_head,
    trailer_lines,
)
from prefork_lb.http.parser import Request, RequestMemo, RequestParser


def parse(raw: bytes, memo: RequestMemo | None = None) -> Request:
    p = RequestParser(memos=memo)
    p.feed(raw)
    return p.requests[0]


BASE = connection_scope(("10.0.0.1", 5555), ("127.0.0.1", 8000), "", "http")


def test_connection_scope_keys() -> None:
    assert BASE == {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "scheme": "http",
        "server": ("127.0.0.1", 8000),
        "client": ("10.0.0.1", 5555),
        "root_path": "",
        "extensions": {"http.response.trailers": {}, "http.response.pathsend": {}},
    }


def test_request_scope_plain_target() -> None:
    req = parse(b"GET /a/b HTTP/1.0\r\nX-One: 1\r\nX_Under: dropped\r\n\r\n")
    s = request_scope(BASE, req, "", False, {"k": 1})
    assert (s["method"], s["path"], s["raw_path"], s["query_string"], s["http_version"]) == (
        "GET",
        "/a/b",
        b"/a/b",
        b"",
        "1.0",
    )
    assert s["headers"] == [(b"x-one", b"1")]
    assert s["state"] == {"k": 1}
    assert "state" not in request_scope(BASE, req, "", False, None)


def test_request_scope_decodes_path_and_splits_query() -> None:
    req = parse(b"GET /caf%C3%A9/%FF?q=%20#frag HTTP/1.1\r\nHost: h\r\n\r\n")
    s = request_scope(BASE, req, "", False, None)
    assert s["raw_path"] == b"/caf%C3%A9/%FF" and s["query_string"] == b"q=%20"
    assert s["path"] == "/caf\xc3\xa9/\xff"  # not UTF-8 as a whole: latin-1, byte for byte
    req = parse(b"GET /caf%C3%A9 HTTP/1.1\r\nHost: h\r\n\r\n")
    assert request_scope(BASE, req, "", False, None)["path"] == "/café"
    req = parse(b"GET /plain?x HTTP/1.1\r\nHost: h\r\n\r\n")
    assert request_scope(BASE, req, "", False, None)["path"] == "/plain"


def test_root_path() -> None:
    req = parse(b"GET /x HTTP/1.1\r\nHost: h\r\n\r\n")
    s = request_scope(BASE, req, "/api", False, None)
    assert (s["path"], s["raw_path"]) == ("/api/x", b"/api/x")
    for target in (b"/api", b"/api/y"):
        req = parse(b"GET " + target + b" HTTP/1.1\r\nHost: h\r\n\r\n")
        s = request_scope(BASE, req, "/api", False, None)
        assert s["path"] == target.decode() and s["raw_path"] == target


def test_forwarded_scheme_from_a_trusted_peer() -> None:
    raw = b"GET / HTTP/1.1\r\nHost: h\r\nX-Forwarded-Proto: http\r\nX-Forwarded-Proto: https\r\nForwarded: proto=http\r\nForwarded: for=x\r\n\r\n"
    req = parse(raw)
    assert request_scope(BASE, req, "", True, None)["scheme"] == "https"
    assert request_scope(BASE, req, "", False, None)["scheme"] == "http"
    req = parse(b"GET / HTTP/1.1\r\nHost: h\r\nX-Forwarded-Proto: gopher\r\n\r\n")
    assert request_scope(BASE, req, "", True, None)["scheme"] == "http"


def test_memoised_request_reuses_its_part_but_not_its_header_list() -> None:
    memo = RequestMemo()
    raw = b"GET /m HTTP/1.1\r\nHost: h\r\n\r\n"
    parse(raw, memo)
    req = parse(raw, memo)
    assert req.memo is not None
    first = request_scope(BASE, req, "", False, None)
    first["headers"].append((b"x", b"y"))
    again = request_scope(BASE, parse(raw, memo), "", False, None)
    assert again["headers"] == [(b"host", b"h")] and again["path"] == "/m"


def test_response_head_serialises_and_memoises() -> None:
    head = response_head(200, [(b"Content-Type", b"text/plain"), (b"Content-Length", b"5")])
    assert head.prefix == b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n"
    assert (head.code, head.length, head.has_date, head.has_server, head.close, head.bodiless) == (
        200,
        5,
        False,
        False,
        False,
        False,
    )
    assert response_head(200, [[b"Content-Type", b"text/plain"], [b"Content-Length", b"5"]]) is head
    h = response_head(
        204,
        iter(
            [
                (b"Date", b"d"),
                (b"Server", b"s"),
                (b"Connection", b"Close"),
                (b"Transfer-Encoding", b"chunked"),
            ]
        ),
    )
    assert (h.has_date, h.has_server, h.close, h.bodiless) == (True, True, True, True)
    assert h.prefix == b"HTTP/1.1 204 No Content\r\nDate: d\r\nServer: s\r\n"
    assert response_head(599, []).prefix == b"HTTP/1.1 599 Unknown\r\n"
    assert not response_head(200, [(b"connection", b"keep-alive")]).close


def test_response_head_memo_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(events, "_HEADS_MAX", 2)
    events._HEADS.clear()
    for i in range(3):
        response_head(200, [(b"x-n", b"%d" % i)])
    assert len(events._HEADS) == 1


@pytest.mark.parametrize(
    ("status", "headers", "words"),
    [
        ("200", [], "invalid status '200'"),
        (99, [], "invalid status 99"),
        (600, [], "invalid status 600"),
        (200, [b"ab"], "not bytes: 97: 98"),
        (200, [(b"a", b"b", b"c")], "not (name, value) pairs"),
        (200, 5, "not (name, value) pairs"),
        (200, [("a", b"b")], "not bytes"),
        (200, [(b"a", "b")], "not bytes"),
        (200, [(b"a b", b"c")], "invalid header name"),
        (200, [(b"a", b"x\r\nInjected: 1")], "CR, LF or NUL"),
        (200, [(b"Content-Length", b"-1")], "invalid Content-Length"),
        (200, [(b"Content-Length", b"five")], "invalid Content-Length"),
        (200, [([b"a"], b"b")], "not bytes"),  # unhashable: the memo is skipped
    ],
)
def test_response_head_refuses(status: Any, headers: Any, words: str) -> None:
    with pytest.raises(AppEventError, match=words.replace("(", r"\(").replace(")", r"\)")):
        response_head(status, headers)


def test_body_of() -> None:
    assert body_of({"type": "http.response.body"}) == (b"", False)
    assert body_of({"body": b"x", "more_body": True}) == (b"x", True)
    assert body_of({"body": bytearray(b"ab")}) == (b"ab", False)
    assert body_of({"body": memoryview(b"cd")}) == (b"cd", False)
    with pytest.raises(AppEventError, match="str body, not bytes: encode it"):
        body_of({"body": "text"})
    with pytest.raises(AppEventError, match="int body, not bytes$"):
        body_of({"body": 5})


def test_trailer_lines() -> None:
    assert trailer_lines({"headers": [(b"x-sum", b"1"), [b"x-b", b"2"]]}) == b"x-sum: 1\r\nx-b: 2\r\n"
    assert trailer_lines({}) == b""
    with pytest.raises(AppEventError, match="not \\(name, value\\) pairs"):
        trailer_lines({"headers": [b"abc"]})
    for bad in [("x", b"1"), (b"x", "1"), (b"a b", b"1"), (b"x", b"\n")]:
        with pytest.raises(AppEventError, match="invalid trailer"):
            trailer_lines({"headers": [bad]})
