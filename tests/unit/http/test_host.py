"""prefork_lb.http.host.valid_host, case by case (RFC 3986 section 3.2.2, RFC 9110 section 7.2),
and the parser refusing a request whose Host it rejects (the workers and the proxy share it)."""

from __future__ import annotations

import pytest

from prefork_lb.http.errors import BadRequest
from prefork_lb.http.host import valid_host
from prefork_lb.http.parser import RequestParser

VALID = [
    b"example.com",  # reg-name
    b"example.com:8080",  # with a port
    b"a",
    b"EXAMPLE.COM",
    b"localhost:1",
    b"a:",  # an empty port: port = *DIGIT
    b"a:65535",
    b"127.0.0.1",  # IPv4address
    b"127.0.0.1:80",
    b"256.1.1.1",  # not an IPv4address, but a valid reg-name (RFC 3986 section 3.2.2)
    b"[::1]",  # IP-literal, IPv6
    b"[::1]:443",
    b"[2001:db8::7]",
    b"[::ffff:192.0.2.1]:80",  # IPv6 with an embedded IPv4
    b"[v1.fe80::a+en1]",  # IPvFuture
    b"ex%41mple.com",  # pct-encoded
    b"xn--nxasmq6b.example",
    b"a_b-c~d.e",  # unreserved
    b"0.0.0.0=5000",  # sub-delims: in gunicorn's valid corpus
    b"a!$&'()*+;=",
]

INVALID = [
    b"",  # empty: an http URI has a non-empty host
    b":80",  # a port without a host
    b"example.com/path",  # a path
    b"example.com/",
    b"a?q",  # a query
    b"a#f",  # a fragment
    b"user@example.com",  # userinfo
    b"user:pw@example.com:80",
    b"a, b",  # a list of hosts
    b"a,b",
    b"a b",  # whitespace inside
    b"a\tb",
    b"a:8x",  # a port that is not a number
    b"a:65536",  # out of range
    b"a:123456",
    b"a:80:81",
    b"::1",  # IPv6 without brackets
    b"[::1",  # unbalanced brackets
    b"::1]",
    b"[::g]",  # not an IPv6 address
    b"[1:2:3:4:5:6:7:8:9]",
    b"[]",
    b"[::1]x",
    b"[fe80::1%25eth0]",  # a zone id (RFC 6874) is not part of uri-host
    b"ex%4mple",  # a broken percent-encoding
    b"ex%zzmple",
    b'a"b',  # characters outside the grammar
    b"a<b>",
    b"a\\b",
    b"a^b",
    b"a{b}",
    b"\xc3\xa9.example",  # raw non-ASCII
    b"http://a",  # a URI, not a host
]


@pytest.mark.parametrize("value", VALID, ids=lambda v: repr(v))
def test_valid_host(value: bytes) -> None:
    assert valid_host(value)


@pytest.mark.parametrize("value", INVALID, ids=lambda v: repr(v))
def test_invalid_host(value: bytes) -> None:
    assert not valid_host(value)


def feed(raw: bytes, step: int | None) -> RequestParser:
    p = RequestParser()
    if step is None:
        p.feed(raw)
    else:
        for i in range(0, len(raw), step):
            p.feed(raw[i : i + step])
    return p


@pytest.mark.parametrize("step", [None, 1], ids=["whole", "bytewise"])
@pytest.mark.parametrize("value", [b"", b"a/b", b"u@a", b"a, b", b"a:x"], ids=lambda v: repr(v))
def test_parser_refuses_an_invalid_host(value: bytes, step: int | None) -> None:
    with pytest.raises(BadRequest, match="Host"):
        feed(b"GET / HTTP/1.1\r\nHost: " + value + b"\r\n\r\n", step)


@pytest.mark.parametrize("step", [None, 1], ids=["whole", "bytewise"])
def test_parser_accepts_a_valid_host_with_trailing_data(step: int | None) -> None:
    p = feed(b"GET / HTTP/1.1\r\nHost: [::1]:8080 \r\n\r\nGET /2 HTTP/1.1\r\nHost: a\r\n\r\n", step)
    assert [r.host for r in p.requests] == [b"[::1]:8080", b"a"]


def test_http10_without_host_still_parses() -> None:
    p = feed(b"GET / HTTP/1.0\r\n\r\n", None)
    assert p.requests[0].host is None
