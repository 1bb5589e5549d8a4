"""The server under wsgiref.validate (tests/apps.py ``validated``): every way an app reads the
body and sends a response must pass the validator. A validator error comes back as a
'500 Validator Error' with the message as the body (a warning as X-Validator-Warnings), so the
assertion on 200 shows it; /problems lists what went wrong where the app could not answer
(an error while the server iterated, an iterable it never closed)."""

from __future__ import annotations

import pytest

from tests.server import HTTPStream, ServerProcess, build_request, chunked, connect, request

BODY = b"line one\nline two\r\nline three without newline"


@pytest.fixture(scope="module")
def srv(shared_server) -> ServerProcess:
    return shared_server("tests.apps:validated")


def check(r, body: bytes) -> None:
    assert (r.status, r.reason, r.body) == (200, "OK", body), r
    assert r.header("x-validator-warnings") is None, r.header("x-validator-warnings")


def test_get(srv: ServerProcess) -> None:
    check(request(srv.port, "GET", "/get"), b"GET ok\n")


@pytest.mark.parametrize("how", ["read", "readline", "readlines", "iter"])
def test_post_with_content_length(srv: ServerProcess, how: str) -> None:
    check(request(srv.port, "POST", f"/post/{how}", body=BODY), b"POST %d:%s" % (len(BODY), BODY))


@pytest.mark.parametrize("how", ["read", "readline", "readlines", "iter"])
def test_chunked_post(srv: ServerProcess, how: str) -> None:
    body = chunked(BODY[:5], BODY[5:17], BODY[17:])
    r = request(srv.port, "POST", f"/post/{how}", [("Transfer-Encoding", "chunked")], body)
    check(r, b"POST %d:%s" % (len(BODY), BODY))


def test_post_with_empty_body(srv: ServerProcess) -> None:
    check(request(srv.port, "POST", "/post/read", [("Content-Length", "0")]), b"POST 0:")


def test_head(srv: ServerProcess) -> None:
    with connect(srv.port) as sock:
        sock.sendall(build_request("HEAD", "/head") + build_request("GET", "/head"))
        s = HTTPStream(sock)
        head = s.read_response(head=True)
        get = s.read_response()
    assert head.status == 200 and head.header("content-length") == "24"
    check(get, b"head body, 24 bytes long")


def test_streaming_generator(srv: ServerProcess) -> None:
    r = request(srv.port, "GET", "/stream")
    check(r, b"".join(b"part %d\n" % i for i in range(5)))
    assert r.framing == "chunked"


def test_write_callable(srv: ServerProcess) -> None:
    check(request(srv.port, "GET", "/write"), b"written 1\nwritten 2\nreturned\n")


def test_file_wrapper(srv: ServerProcess) -> None:
    check(request(srv.port, "GET", "/file"), b"0123456789" * 10000)


def test_keep_alive_through_every_kind(srv: ServerProcess) -> None:
    """All of the above on one connection, pipelined."""
    reqs = [
        ("GET", "/get", b""),
        ("POST", "/post/readline", BODY),
        ("GET", "/stream", b""),
        ("GET", "/write", b""),
        ("GET", "/file", b""),
        ("GET", "/get", b""),
    ]
    with connect(srv.port) as sock:
        sock.sendall(b"".join(build_request(m, p, body=b) for m, p, b in reqs))
        s = HTTPStream(sock)
        got = [s.read_response() for _ in reqs]
    assert [r.status for r in got] == [200] * len(reqs), got
    assert got[-1].body == b"GET ok\n"


def test_validator_errors_are_reported(srv: ServerProcess) -> None:
    """The harness itself: an app mistake the validator catches comes back visibly."""
    r = request(srv.port, "GET", "/selftest-bad-header")
    assert r.status == 500 and r.reason == "Validator Error"
    assert r.body.startswith(b"VALIDATOR ERROR: ") and b"Status header" in r.body


def test_no_problems_outside_responses(srv: ServerProcess) -> None:
    """Runs last in this module: every iterable was closed, no validator error while iterating."""
    r = request(srv.port, "GET", "/problems")
    assert r.status == 200
    assert r.json() == []
    assert "Iterator garbage collected" not in srv.log_text()
    assert "AssertionError" not in srv.log_text()
