"""response_framing by itself: every status class, method, version and header combination.

The expected values come from a table written the way RFC 9112 section 6.3 reads, not from
the function's own branches, so a changed rule shows up here.
"""

from __future__ import annotations

import itertools

import pytest

from prefork_lb.compiled import is_compiled
from prefork_lb.http import framing
from prefork_lb.http.framing import (
    CHUNKED,
    CLOSE,
    LENGTH,
    NONE,
    bodiless_status,
    parse_content_length,
    response_framing,
)
from prefork_lb.http.response import app_head

STATUSES = [100, 101, 102, 103, 199, 200, 201, 204, 205, 206, 301, 304, 404, 500, 503]
METHODS = ["GET", "HEAD", "CONNECT", "POST"]
VERSIONS = ["HTTP/1.0", "HTTP/1.1"]
LENGTHS = [None, 0, 17]  # Content-Length absent (or invalid: the caller has none), present
TRANSFER = [False, True]  # Transfer-Encoding (chunked or any other coding) came with the response


def expected(
    status: int, method: str, version: str, length: int | None, te: bool, keep_alive: bool, close: bool
) -> tuple[str, bool]:
    no_body_status = 100 <= status <= 199 or status in (204, 304)
    if method == "HEAD" or no_body_status:
        body = NONE
    elif version == "HTTP/1.0" and (te or length is None):
        body = CLOSE  # a 1.0 client cannot read chunks: the end of the body is the close
    elif te:
        body = CHUNKED  # Transfer-Encoding wins over Content-Length
    elif length is not None:
        body = LENGTH
    else:
        body = CHUNKED
    return body, keep_alive and not close and body != CLOSE


@pytest.mark.parametrize(
    ("status", "method", "version", "length", "te", "keep_alive", "close"),
    list(itertools.product(STATUSES, METHODS, VERSIONS, LENGTHS, TRANSFER, [True, False], [False, True])),
)
def test_every_combination(
    status: int, method: str, version: str, length: int | None, te: bool, keep_alive: bool, close: bool
) -> None:
    got = response_framing(status, method == "HEAD", version, length, te, keep_alive, close)
    assert got == expected(status, method, version, length, te, keep_alive, close)


@pytest.mark.parametrize(
    ("args", "want"),
    [
        # (status, head, version, length, chunked, keep_alive, close)
        ((200, False, "HTTP/1.1", 5, False, True, False), (LENGTH, True)),
        ((200, False, "HTTP/1.0", 5, False, True, False), (LENGTH, True)),  # 1.0 + keep-alive
        ((200, False, "HTTP/1.1", None, False, True, False), (CHUNKED, True)),
        ((200, False, "HTTP/1.0", None, False, True, False), (CLOSE, False)),
        ((200, False, "HTTP/1.1", 5, True, True, False), (CHUNKED, True)),
        ((200, False, "HTTP/1.0", 5, True, True, False), (CLOSE, False)),
        ((200, True, "HTTP/1.1", None, False, True, False), (NONE, True)),  # HEAD: never chunked
        ((200, True, "HTTP/1.0", None, False, True, False), (NONE, True)),  # nor close-delimited
        ((101, False, "HTTP/1.1", None, False, True, False), (NONE, True)),
        ((204, False, "HTTP/1.1", 5, False, True, False), (NONE, True)),
        ((304, False, "HTTP/1.0", None, True, True, False), (NONE, True)),
        ((200, False, "HTTP/1.1", 5, False, False, False), (LENGTH, False)),  # request: close
        ((200, False, "HTTP/1.1", 5, False, True, True), (LENGTH, False)),  # response: close
        ((204, False, "HTTP/1.1", None, False, True, True), (NONE, False)),
    ],
)
def test_named_cases(args: tuple, want: tuple[str, bool]) -> None:
    assert response_framing(*args) == want


@pytest.mark.skipif(is_compiled(framing), reason="compiled: a compiled caller gets the pair unboxed")
def test_results_are_shared_constants() -> None:
    # The worker calls this once per response: it must not build a new tuple each time.
    seen = {
        id(response_framing(s, h, v, n, c, k, x))
        for s, h, v, n, c, k, x in itertools.product(
            [100, 200, 204], [False, True], VERSIONS, [None, 3], [False, True], [False, True], [False, True]
        )
    }
    assert len(seen) == 7
    body, keep = response_framing(200, False, "HTTP/1.1", 1, False, True, False)
    assert body is framing.LENGTH and keep is True


@pytest.mark.parametrize("code", range(100, 600))
def test_bodiless_status(code: int) -> None:
    assert bodiless_status(code) == (code < 200 or code in (204, 304))


@pytest.mark.parametrize(("value", "want"), [("0", 0), ("17", 17), (" 17 ", 17), ("+5", 5), ("007", 7)])
def test_parse_content_length(value: str, want: int) -> None:
    assert parse_content_length(value) == want


@pytest.mark.parametrize("value", ["", "-1", "abc", "1.5", "1,1", "0x10", "5 5"])
def test_parse_content_length_invalid(value: str) -> None:
    with pytest.raises(ValueError, match="invalid Content-Length"):
        parse_content_length(value)


@pytest.mark.parametrize("value", ["-1", "abc", "1,1"])
def test_invalid_content_length_from_an_app_is_refused(value: str) -> None:
    with pytest.raises(ValueError, match="invalid Content-Length"):
        app_head("200 OK", [("Content-Length", value)])


@pytest.mark.parametrize(
    ("status", "bodiless"), [("200 OK", False), ("204 No Content", True), ("101 Up", True)]
)
def test_app_head_knows_a_bodiless_status(status: str, bodiless: bool) -> None:
    assert app_head(status, [("X-F", "1")]).bodiless is bodiless
