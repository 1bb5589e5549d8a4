"""Response heads: validation (no header injection), memoisation, status lines, error pages."""

from __future__ import annotations

import pytest

from prefork_lb.http import response


def test_app_head_serialises_and_reads_framing_headers() -> None:
    head = response.app_head(
        "200 OK", [("Content-Type", "text/plain"), ("Content-Length", "5"), ("Server", "mine")]
    )
    assert (
        head.prefix == "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\nServer: mine\r\n"
    )
    assert (head.code, head.length, head.has_server, head.has_date, head.close) == (
        200,
        5,
        True,
        False,
        False,
    )


def test_app_head_drops_hop_by_hop_and_honours_close() -> None:
    head = response.app_head(
        "200 OK", [("Connection", "close"), ("Transfer-Encoding", "chunked"), ("X-A", "1")]
    )
    assert head.prefix == "HTTP/1.1 200 OK\r\nX-A: 1\r\n"
    assert head.close


def test_app_head_is_memoised() -> None:
    a = response.app_head("201 Created", [("X-M", "1")])
    assert response.app_head("201 Created", [("X-M", "1")]) is a
    assert response.app_head("201 Created", [("X-M", "2")]) is not a


@pytest.mark.parametrize(
    "headers",
    [
        [("X-A", "a\r\nSet-Cookie: evil=1")],
        [("X-A", "a\nb")],
        [("X-A", "a\rb")],
        [("Bad Name", "x")],
        [("Bad:Name", "x")],
        [("X-A\r\nX-B", "x")],
        [("Content-Length", "-1")],
        [("Content-Length", "ten")],
    ],
)
def test_app_head_refuses_injection_and_bad_fields(headers: list[tuple[str, str]]) -> None:
    with pytest.raises(ValueError):
        response.app_head("200 OK", headers)


def test_app_head_refuses_non_str_values() -> None:
    with pytest.raises(TypeError):
        response.app_head("200 OK", [("X-A", 1)])  # type: ignore[list-item]


@pytest.mark.parametrize("status", ["200", "OK 200", "2000 X", "200 OK\r\nX: y", "099 Low", ""])
def test_bad_status_lines_are_refused(status: str) -> None:
    with pytest.raises(ValueError):
        response.status_line(status)


def test_date_line_format() -> None:
    line = response.refresh_date()
    assert line.startswith("Date: ") and line.endswith(" GMT\r\n")


def test_simple_response_is_complete_and_closes() -> None:
    raw = response.simple_response(400, "bad thing")
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert b"Connection: close" in head
    assert b"Content-Length: %d" % len(body) in head
    assert body == b"bad thing\n"
