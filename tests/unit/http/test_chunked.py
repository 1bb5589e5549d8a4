"""prefork_lb.http.chunked (chunk extensions, following a chunked body) and the parser refusing a
chunk extension with an empty value (RFC 9112 section 7.1.1), fed whole, byte by byte and with
trailing data."""

from __future__ import annotations

import pytest

from prefork_lb.http.chunked import ChunkedScanner, valid_chunk_extensions
from prefork_lb.http.errors import BadRequest
from prefork_lb.http.parser import RequestParser


@pytest.mark.parametrize(
    "ext",
    [b"", b";a", b";a=b", b";a=b;c", b";a=b;c=d", b';a=""', b';a="x;y=;z"', b';a="q\\"s"', b";a=1;b=2;c"],
)
def test_valid_chunk_extensions(ext: bytes) -> None:
    assert valid_chunk_extensions(ext)


@pytest.mark.parametrize(
    "ext", [b";a=", b";a=;b=c", b";a=b;c=", b";=b", b";", b";a==b", b';a="unterminated', b";a=b=c"]
)
def test_invalid_chunk_extensions(ext: bytes) -> None:
    assert not valid_chunk_extensions(ext)


BODY = b"3;n=v\r\nabc\r\n10\r\n0123456789abcdef\r\n0\r\nX-T: 1\r\n\r\n"


@pytest.mark.parametrize("step", [None, 1, 5])
def test_scanner_finds_the_end_and_the_data(step: int | None) -> None:
    data = BODY + b"NEXT"
    scan = ChunkedScanner()
    got: list[bytes] = []
    if step is None:
        end = scan.scan(data, 0, got.append)
        assert data[end:] == b"NEXT"
    else:
        ends = []
        for i in range(0, len(data), step):
            piece = data[i : i + step]
            end = scan.scan(piece, 0, got.append)
            if end != -1:
                ends.append(i + end)
                break
        assert data[ends[0] :] == b"NEXT"
    assert b"".join(got) == b"abc0123456789abcdef"
    assert scan.done


@pytest.mark.parametrize(
    "body",
    [
        b"3;n=\r\nabc\r\n0\r\n\r\n",  # empty extension value
        b"3\r\nabcd\r\n0\r\n\r\n",  # more data than the size
        b"3\nabc\r\n0\r\n\r\n",  # bare LF
        b"x\r\nabc\r\n0\r\n\r\n",  # not a size
        b"3\r\nabc\r\n0\r\nHost: a\r\n\r\n",  # a forbidden trailer
        b"3\r\nabc\r\n0\r\nnot a field\r\n\r\n",
    ],
)
def test_scanner_refuses(body: bytes) -> None:
    with pytest.raises(BadRequest):
        ChunkedScanner(frozenset({"host"})).scan(body, 0, None)


HEAD = b"POST /c HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
NEXT = b"GET /next HTTP/1.1\r\nHost: a\r\n\r\n"


def feed(raw: bytes, step: int | None) -> RequestParser:
    p = RequestParser()
    if step is None:
        p.feed(raw)
    else:
        for i in range(0, len(raw), step):
            p.feed(raw[i : i + step])
    return p


BAD = {
    "empty-value": b"3;name=\r\nabc\r\n0\r\n\r\n",
    "empty-value-then-more": b"3;name=;b=c\r\nabc\r\n0\r\n\r\n",
    "empty-value-on-last-chunk": b"3\r\nabc\r\n0;x=\r\n\r\n",
    "empty-value-second-chunk": b"3;a=b\r\nabc\r\n2;c=\r\nde\r\n0\r\n\r\n",
}


@pytest.mark.parametrize("step", [None, 1, 7], ids=["whole", "bytewise", "by7"])
@pytest.mark.parametrize("name", sorted(BAD))
def test_parser_refuses_an_empty_chunk_extension_value(name: str, step: int | None) -> None:
    with pytest.raises(BadRequest, match="chunk extension"):
        feed(HEAD + BAD[name] + NEXT, step)


@pytest.mark.parametrize("step", [None, 1, 7], ids=["whole", "bytewise", "by7"])
def test_parser_refuses_it_behind_other_requests(step: int | None) -> None:
    """Pipelined behind a served request (and one with a Content-Length body): those are still
    served, then the error; nothing after the bad request is."""
    first = (
        b"GET /a HTTP/1.1\r\nHost: a\r\n\r\nPOST /b HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\n;a=\r\n"
    )
    p = feed(first + HEAD + BAD["empty-value"] + NEXT, step)
    assert [r.target for r in p.requests] == [b"/a", b"/b"]
    assert isinstance(p.error, BadRequest)


@pytest.mark.parametrize("step", [None, 1, 7], ids=["whole", "bytewise", "by7"])
def test_parser_accepts_extensions_and_data_that_look_like_them(step: int | None) -> None:
    body = b'6;a=b;q="x="\r\n\n0;a=\r\r\n7\r\n\r\n1;x=\r\r\n0\r\n\r\n'
    p = feed(HEAD + body + NEXT, step)
    assert [r.target for r in p.requests] == [b"/c", b"/next"]
    assert b"".join(p.requests[0].chunks) == b"\n0;a=\r\r\n1;x=\r"


def test_parser_refuses_it_on_a_closing_request_with_bytes_after() -> None:
    raw = b"POST /c HTTP/1.1\r\nHost: a\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n"
    with pytest.raises(BadRequest, match="chunk extension"):
        feed(raw + b"1;e=\r\nx\r\n0\r\n\r\nGARBAGE", None)
