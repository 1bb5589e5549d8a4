"""Fuzzing the request parser with hypothesis: whatever the bytes, the parser either queues
requests or raises an HTTPError with a 4xx/501 status; it never crashes, never hangs, and
never answers a client's error with a 5xx other than 501.

The default run is bounded (a few hundred examples per property). The long run is behind the
``slow`` marker; a million inputs take about 17 minutes on one core:
``PREFORK_LB_FUZZ_EXAMPLES=1000000 python -m pytest -m slow -o faulthandler_timeout=0 tests/unit/http/test_parser_fuzz.py``
(the suite-wide faulthandler timeout of 120 s would interrupt it).
"""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from prefork_lb.http.errors import HTTPError
from prefork_lb.http.parser import Limits, RequestParser
from tests.corpus import load

CASES = [c.raw for c in load("valid") + load("invalid")] or [b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"]
TOKENS = [
    b"GET",
    b"POST",
    b"HEAD",
    b" ",
    b"/",
    b"?",
    b"HTTP/1.1",
    b"HTTP/1.0",
    b"\r\n",
    b"\n",
    b"\r",
    b":",
    b"Host",
    b"Content-Length",
    b"Transfer-Encoding",
    b"chunked",
    b"0",
    b"5",
    b"ff",
    b";",
    b"\t",
    b"\x00",
    b"\x7f",
    b"\xff",
    b"Expect",
    b"100-continue",
    b"Connection",
    b"close",
    b",",
    b"hello",
]


def check(chunks: list[bytes], limits: Limits | None = None) -> None:
    parser = RequestParser(limits or Limits(require_host=False))
    try:
        for chunk in chunks:
            parser.feed(chunk)
    except HTTPError as exc:
        assert 400 <= exc.status < 500 or exc.status == 501, exc.status
    if parser.error is not None:
        assert 400 <= parser.error.status < 500 or parser.error.status == 501
    for req in parser.requests:
        assert req.method and isinstance(req.target, bytes)


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    out, prev = [], 0
    for p in points:
        out.append(data[prev:p])
        prev = p
    out.append(data[prev:])
    return out


def mutated() -> st.SearchStrategy[bytes]:
    """A corpus case with a few bytes replaced, inserted or removed."""

    @st.composite
    def build(draw: st.DrawFn) -> bytes:
        data = bytearray(draw(st.sampled_from(CASES)))
        for _ in range(draw(st.integers(1, 4))):
            op = draw(st.integers(0, 2))
            pos = draw(st.integers(0, max(0, len(data) - 1))) if data else 0
            if op == 0 and data:
                data[pos] = draw(st.integers(0, 255))
            elif op == 1:
                data[pos:pos] = draw(st.sampled_from(TOKENS))
            elif data:
                del data[pos : pos + draw(st.integers(1, 8))]
        return bytes(data)

    return build()


def token_soup() -> st.SearchStrategy[bytes]:
    return st.lists(st.sampled_from(TOKENS), max_size=40).map(b"".join)


def _examples(default: int) -> int:
    return int(os.environ.get("PREFORK_LB_FUZZ_EXAMPLES", default))


FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None)
LONG = settings(
    max_examples=_examples(250_000), deadline=None, suppress_health_check=list(HealthCheck), database=None
)


@FAST
@given(mutated(), st.lists(st.integers(0, 10_000), max_size=6))
def test_mutated_corpus_cases(data: bytes, cuts: list[int]) -> None:
    check(_split(data, cuts))


@FAST
@given(token_soup(), st.lists(st.integers(0, 10_000), max_size=6))
def test_token_soup(data: bytes, cuts: list[int]) -> None:
    check(_split(data, cuts))


@FAST
@given(st.binary(max_size=512))
def test_random_bytes(data: bytes) -> None:
    check([data])


@FAST
@given(mutated())
def test_strict_limits_never_crash(data: bytes) -> None:
    check([data], Limits(request_line=64, request_fields=4, request_field_size=64, request_body=16))


@pytest.mark.slow
@LONG
@given(
    st.one_of(mutated(), token_soup(), st.binary(max_size=2048)), st.lists(st.integers(0, 10_000), max_size=8)
)
def test_long_fuzz_run(data: bytes, cuts: list[int]) -> None:
    check(_split(data, cuts))
