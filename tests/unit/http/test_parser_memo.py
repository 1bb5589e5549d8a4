"""The parser's memo of whole bodiless requests (shared by the connections of one process)."""

from __future__ import annotations

import pytest

from prefork_lb.http.errors import HTTPError
from prefork_lb.http.parser import MEMO_MAX, MISS_REST, MISS_RUN, Limits, Request, RequestMemo, RequestParser

GET = b"GET /a?b=1 HTTP/1.1\r\nHost: x\r\nAccept: */*\r\n\r\n"


def parse_one(data: bytes, memos: RequestMemo) -> tuple[RequestParser, Request]:
    p = RequestParser(Limits(), memos)
    p.feed(data)
    assert len(p.requests) == 1
    return p, p.requests[0]


def kept(memos: RequestMemo) -> dict[bytes, Request]:
    return {k: v for k, v in memos.items() if v is not None}


def test_a_repeated_request_is_the_remembered_one() -> None:
    memos = RequestMemo()
    _, first = parse_one(GET, memos)
    assert memos == {GET: None} and first.memo is None  # the first time: only the bytes
    _, second = parse_one(GET, memos)
    assert second is not first and kept(memos) == {GET: second} and second.memo == {}
    p, again = parse_one(GET, memos)
    assert again is second
    assert (again.method, again.target, again.host, again.keep_alive) == ("GET", b"/a?b=1", b"x", True)
    # The parser stays usable after a hit: the next request is parsed as usual.
    p.requests.popleft()
    p.feed(b"GET /next HTTP/1.1\r\nHost: x\r\n\r\n")
    assert p.requests[0].target == b"/next" and p.requests[0] is not first


def test_pipelined_requests_are_remembered_and_come_back_one_by_one() -> None:
    memos = RequestMemo()
    other = b"GET /other HTTP/1.1\r\nHost: x\r\n\r\n"
    for _ in range(2):
        p = RequestParser(Limits(), memos)
        p.feed(GET + other + GET)
        assert [r.target for r in p.requests] == [b"/a?b=1", b"/other", b"/a?b=1"]
    assert set(kept(memos)) == {GET, other}
    again = RequestParser(Limits(), memos)
    again.feed(other + GET + b"GET /new HTTP/1.1\r\nHost: x\r\n\r\n")  # two known, then one to parse
    assert again.requests[0] is memos[other] and again.requests[1] is memos[GET]
    assert again.requests[2].target == b"/new"
    # A known request followed by a malformed one: the known one is served, the error waits.
    bad = RequestParser(Limits(), memos)
    bad.feed(GET + b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n")
    assert len(bad.requests) == 1 and bad.error is not None and bad.error.status == 400


@pytest.mark.parametrize(
    "data",
    [
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nab",  # a body
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",  # ends the connection
        b"GET / HTTP/1.0\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
        b"PUT / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nExpect: 100-continue\r\n\r\n",
        GET + b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nab",  # one with a body
        GET[:-2],  # half a head
    ],
)
def test_only_whole_plain_bodiless_requests_are_remembered(data: bytes) -> None:
    memos = RequestMemo()
    for _ in range(3):
        p = RequestParser(Limits(), memos)
        p.feed(data)
    assert kept(memos) == {}


def test_a_refused_request_is_never_remembered_and_is_refused_again() -> None:
    memos = RequestMemo()
    bad = b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"
    for _ in range(3):
        with pytest.raises(HTTPError) as err:
            RequestParser(Limits(), memos).feed(bad)
        assert err.value.status == 400
    assert memos == {}


def test_no_memo_hit_in_the_middle_of_a_request() -> None:
    memos = RequestMemo()
    parse_one(GET, memos)
    parse_one(GET, memos)
    assert GET in kept(memos)
    p = RequestParser(Limits(), memos)
    p.feed(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: " + str(len(GET)).encode() + b"\r\n\r\n")
    p.feed(GET)  # the body of the POST, not a request
    assert len(p.requests) == 1 and p.requests[0].method == "POST"
    assert b"".join(p.requests[0].chunks) == GET


def test_the_memo_is_bounded() -> None:
    memos = RequestMemo()
    for i in range(MEMO_MAX + 5):
        for _ in range(2):
            parse_one(b"GET /%d HTTP/1.1\r\nHost: x\r\n\r\n" % i, memos)
    assert 0 < len(memos) <= MEMO_MAX


def test_the_memo_rests_while_heads_do_not_repeat_and_comes_back() -> None:
    memos = RequestMemo()
    for i in range(MISS_RUN):
        parse_one(b"GET /u%d HTTP/1.1\r\nHost: x\r\n\r\n" % i, memos)
    assert memos.rest == MISS_REST
    # Resting: a repeated head is parsed as usual, and nothing is kept.
    size = len(memos)
    for _ in range(3):
        parse_one(GET, memos)
    assert len(memos) == size and GET not in memos
    for i in range(MISS_REST):
        parse_one(b"GET /v%d HTTP/1.1\r\nHost: x\r\n\r\n" % i, memos)
    assert memos.rest == 0
    parse_one(GET, memos)
    parse_one(GET, memos)
    assert GET in kept(memos)
