"""The body of an Upgrade or CONNECT request reaches the request (httptools has llhttp skip it),
with Content-Length and chunked, fed whole, byte by byte and with the next protocol's bytes."""

from __future__ import annotations

import pytest

from prefork_lb.http.errors import BadRequest, PayloadTooLarge
from prefork_lb.http.parser import Limits, RequestParser

UPGRADE = b"POST /u HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: foo\r\n"
CONNECT = b"CONNECT a:80 HTTP/1.1\r\nHost: a:80\r\n"
BODIES = {
    "length": (b"Content-Length: 5\r\n\r\nhello", b"hello"),
    "chunked": (b"Transfer-Encoding: chunked\r\n\r\n2;x=y\r\nhe\r\n3\r\nllo\r\n0\r\n\r\n", b"hello"),
}


def feed(raw: bytes, step: int | None, limits: Limits | None = None) -> RequestParser:
    p = RequestParser(limits)
    if step is None:
        p.feed(raw)
    else:
        for i in range(0, len(raw), step):
            p.feed(raw[i : i + step])
    return p


@pytest.mark.parametrize("step", [None, 1, 6], ids=["whole", "bytewise", "by6"])
@pytest.mark.parametrize("framing", sorted(BODIES))
@pytest.mark.parametrize("head", [UPGRADE, CONNECT], ids=["upgrade", "connect"])
def test_upgrade_request_body_reaches_the_request(head: bytes, framing: str, step: int | None) -> None:
    rest, body = BODIES[framing]
    p = feed(head + rest, step)
    (req,) = p.requests
    assert req.upgrade and req.complete and not req.keep_alive
    assert b"".join(req.chunks) == body
    assert p.stopped


@pytest.mark.parametrize("framing", sorted(BODIES))
def test_bytes_after_the_body_are_the_next_protocols(framing: str) -> None:
    rest, body = BODIES[framing]
    p = feed(UPGRADE + rest + b"\x00tunnel", None)
    assert b"".join(p.requests[0].chunks) == body
    assert p.tail == b"\x00tunnel"


def test_body_arriving_later_completes_the_request() -> None:
    rest, _ = BODIES["chunked"]
    p = RequestParser()
    cut = rest.index(b"\r\n\r\n") + 4 + 3
    p.feed(UPGRADE + rest[:cut])
    (req,) = p.requests
    assert not req.complete and not p.stopped
    p.feed(rest[cut:] + b"TAIL")
    assert req.complete and b"".join(req.chunks) == b"hello" and p.tail == b"TAIL"


def test_upgrade_without_body_is_unchanged() -> None:
    p = feed(UPGRADE + b"\r\n\x00tunnel", None)
    (req,) = p.requests
    assert req.upgrade and req.complete and req.chunks == []
    assert p.tail == b"\x00tunnel"


def test_bad_chunked_upgrade_body_is_refused() -> None:
    with pytest.raises(BadRequest):
        feed(UPGRADE + b"Transfer-Encoding: chunked\r\n\r\n2;x=\r\nhe\r\n0\r\n\r\n", None)


def test_upgrade_body_limit() -> None:
    raw = UPGRADE + b"Transfer-Encoding: chunked\r\n\r\n8\r\n12345678\r\n0\r\n\r\n"
    with pytest.raises(PayloadTooLarge):
        feed(raw, None, Limits(request_body=4))
