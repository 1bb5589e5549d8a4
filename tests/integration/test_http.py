"""HTTP/1.1 behaviour of the engine, seen from a client on a raw socket: connection
management, framing, errors, limits, timeouts, smuggling defences, streaming, environ, logs."""

from __future__ import annotations

import email.utils
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tests.apps import file_body
from tests.helpers import wait_for
from tests.server import (
    HTTPStream,
    Response,
    ServerProcess,
    build_request,
    chunked,
    connect,
    exchange,
    parse_responses,
    request,
)

ECHO = "tests.apps:echo"
HELLO = "tests.apps:hello"
HELLO_BODY = b"hello, world\n"
STREAM = "tests.apps:slow_stream"
MiB = 1 << 20


@pytest.fixture(scope="module")
def echo(shared_server) -> ServerProcess:
    return shared_server(ECHO)


@pytest.fixture(scope="module")
def hello(shared_server) -> ServerProcess:
    return shared_server(HELLO)


@pytest.fixture(scope="module")
def stream(shared_server) -> ServerProcess:
    return shared_server(STREAM)


@pytest.fixture(scope="module")
def timeouts(shared_server) -> ServerProcess:
    """Short timeouts, for the tests that wait for them."""
    return shared_server(ECHO, "--header-timeout", "1", "--keep-alive", "1")


def refused(srv: ServerProcess, data: bytes, status: int = 400) -> None:
    """``data`` gets exactly one response with ``status``, the connection is closed, and the app
    never saw a request."""
    before = len(srv.calls())
    got = exchange(srv.port, data)
    responses, rest = parse_responses(got)
    assert [r.status for r in responses] == [status], responses or got
    assert rest == b""
    assert got.closed
    assert responses[0].header("connection") == "close"
    assert srv.calls()[before:] == []


# -- connections --------------------------------------------------------------------------------


def test_keep_alive_serves_two_requests_on_one_connection(echo: ServerProcess) -> None:
    with connect(echo.port) as sock:
        s = HTTPStream(sock)
        sock.sendall(build_request("GET", "/first"))
        r1 = s.read_response()
        sock.sendall(build_request("POST", "/second", body=b"abc"))
        r2 = s.read_response()
    assert (r1.status, r2.status) == (200, 200)
    assert r1.header("connection") is None  # HTTP/1.1: persistent unless said otherwise
    assert (r1.json()["path_info"], r2.json()["path_info"], r2.json()["body"]) == ("/first", "/second", "abc")


def test_pipelined_requests_are_answered_in_order(echo: ServerProcess) -> None:
    data = b"".join(
        build_request("POST" if i == 2 else "GET", f"/{i}", body=b"x" * i if i == 2 else b"")
        for i in (1, 2, 3)
    )
    with connect(echo.port) as sock:
        sock.sendall(data)
        s = HTTPStream(sock)
        got = [s.read_response() for _ in range(3)]
    assert [r.status for r in got] == [200, 200, 200]
    assert [(r.json()["path_info"], r.json()["body"]) for r in got] == [("/1", ""), ("/2", "xx"), ("/3", "")]


def test_valid_request_before_a_malformed_one_is_still_served(echo: ServerProcess) -> None:
    data = build_request("GET", "/ok") + b"GET /bad HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"
    got = exchange(echo.port, data)
    responses, _ = parse_responses(got)
    assert [r.status for r in responses] == [200, 400]
    assert responses[0].json()["path_info"] == "/ok"


def test_http10_closes_by_default(echo: ServerProcess) -> None:
    with connect(echo.port) as sock:
        sock.sendall(b"GET /old HTTP/1.0\r\n\r\n")
        s = HTTPStream(sock)
        r = s.read_response()
        assert r.status == 200 and r.json()["protocol"] == "HTTP/1.0"
        assert r.header("connection") == "close"
        assert s.closed_by_server(3)


def test_http10_keep_alive_when_asked(echo: ServerProcess) -> None:
    with connect(echo.port) as sock:
        s = HTTPStream(sock)
        sock.sendall(b"GET /one HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        r1 = s.read_response()
        assert r1.status == 200 and r1.header("connection") == "keep-alive"
        sock.sendall(b"GET /two HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        r2 = s.read_response()
        assert r2.status == 200 and r2.json()["path_info"] == "/two"


def test_connection_close_from_client(echo: ServerProcess) -> None:
    with connect(echo.port) as sock:
        s = HTTPStream(sock)
        sock.sendall(build_request("GET", "/bye", [("Connection", "close")]) + build_request("GET", "/never"))
        r = s.read_response()
        assert r.status == 200 and r.header("connection") == "close"
        assert s.closed_by_server(3)  # and the second request was never answered


# -- request bodies -----------------------------------------------------------------------------


def test_chunked_request_body(echo: ServerProcess) -> None:
    body = chunked(b"hello ", b"chunked", b" world" * 1000)
    r = request(echo.port, "POST", "/upload", [("Transfer-Encoding", "chunked")], body)
    assert r.status == 200
    got = r.json()
    assert got["body"] == "hello chunked" + " world" * 1000
    assert got["headers"]["HTTP_TRANSFER_ENCODING"] == "chunked"
    assert "CONTENT_LENGTH" not in got["headers"]


def test_expect_100_continue(echo: ServerProcess) -> None:
    with connect(echo.port) as sock:
        s = HTTPStream(sock)
        sock.sendall(build_request("POST", "/expect", [("Expect", "100-continue"), ("Content-Length", "11")]))
        interim = s.read_response(timeout=3)
        assert (interim.status, interim.reason) == (100, "Continue")
        sock.sendall(b"hello world")
        final = s.read_response()
    assert final.status == 200
    assert final.json()["body"] == "hello world"


def _expect_without_reading(srv: ServerProcess) -> tuple[Response, bool]:
    """An Expect: 100-continue request to an app that never reads: (the first response, whether
    the server then closed the connection)."""
    with connect(srv.port) as sock:
        s = HTTPStream(sock)
        sock.sendall(build_request("POST", "/expect", [("Expect", "100-continue"), ("Content-Length", "11")]))
        r = s.read_response(timeout=3)
        return r, s.closed_by_server(3)


def test_no_100_continue_when_the_app_does_not_read(shared_server) -> None:
    srv = shared_server("tests.apps:no_read")
    r, closed = _expect_without_reading(srv)
    assert r.status == 200 and r.body == b"did not read the body\n"
    assert b"100 Continue" not in r.raw_head
    # Whether the client sends the body now is up to it: the server must not parse the stream
    # further, so it closes.
    assert closed


def _big_unread_body(srv: ServerProcess) -> tuple[Response, bool]:
    """A 3 MiB body the app never reads (over the server's 1 MiB drain limit): (the response,
    whether the server then closed the connection)."""
    body = b"x" * (3 * MiB)
    with connect(srv.port) as sock:
        sender = threading.Thread(
            target=_send_ignoring_errors, args=(sock, build_request("POST", "/big", body=body))
        )
        sender.start()
        try:
            s = HTTPStream(sock)
            r = s.read_response(timeout=5)
            closed = s.closed_by_server(5) if not s.eof else True
        finally:
            try:
                sock.shutdown(socket.SHUT_RDWR)  # unblocks the sender if the server stopped reading
            except OSError:
                pass  # already reset by the server
            sender.join(10)
    return r, closed


def _send_ignoring_errors(sock: socket.socket, data: bytes) -> None:
    try:
        sock.sendall(data)
    except OSError:
        pass  # the server stopped reading and closed, as it may


def test_big_unread_body_closes_the_connection(shared_server) -> None:
    r, closed = _big_unread_body(shared_server("tests.apps:no_read"))
    assert r.status == 200 and r.body == b"did not read the body\n"
    assert closed


@pytest.mark.parametrize("how", ["expect_100_continue", "big_unread_body"])
def test_connection_close_announced_when_the_body_is_left_unread(shared_server, how: str) -> None:
    srv = shared_server("tests.apps:no_read")
    r, _ = _expect_without_reading(srv) if how == "expect_100_continue" else _big_unread_body(srv)
    assert r.header("connection") == "close"


def test_unread_small_body_is_skipped_on_keep_alive(shared_server) -> None:
    srv = shared_server("tests.apps:no_read")
    with connect(srv.port) as sock:
        s = HTTPStream(sock)
        # The body looks like a request: it must be skipped, not served.
        sneaky = b"GET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n"
        sock.sendall(build_request("POST", "/first", body=sneaky) + build_request("GET", "/second"))
        r1 = s.read_response()
        r2 = s.read_response()
    assert (r1.status, r2.status) == (200, 200)
    assert srv.calls()[-2:] == ["POST /first", "GET /second"]


# -- response framing ---------------------------------------------------------------------------


def test_head_has_content_length_but_no_body(hello: ServerProcess) -> None:
    with connect(hello.port) as sock:
        sock.sendall(build_request("HEAD", "/") + build_request("GET", "/"))
        s = HTTPStream(sock)
        head = s.read_response(head=True)
        get = s.read_response()  # parsed right after the head: no body bytes came in between
    assert head.status == 200 and head.header("content-length") == str(len(HELLO_BODY))
    assert head.header("transfer-encoding") is None
    assert get.status == 200 and get.body == HELLO_BODY


def test_head_of_a_streamed_response_has_no_body(stream: ServerProcess) -> None:
    with connect(stream.port) as sock:
        sock.sendall(build_request("HEAD", "/?n=3") + build_request("GET", "/?n=2"))
        s = HTTPStream(sock)
        head = s.read_response(head=True)
        get = s.read_response()
    assert head.status == 200 and head.header("content-length") is None
    assert head.header("transfer-encoding") is None
    assert get.body == b"chunk 0\nchunk 1\n"


def test_streamed_response_on_http11_is_chunked(stream: ServerProcess) -> None:
    with connect(stream.port) as sock:
        s = HTTPStream(sock)
        sock.sendall(build_request("GET", "/?n=3"))
        r = s.read_response()
        assert r.status == 200 and r.framing == "chunked" and r.complete
        assert r.header("content-length") is None
        assert r.body == b"chunk 0\nchunk 1\nchunk 2\n"
        sock.sendall(build_request("GET", "/?n=1"))  # the connection is still usable
        assert s.read_response().body == b"chunk 0\n"


@pytest.mark.parametrize("connection", ["", "keep-alive"])
def test_streamed_response_on_http10_is_close_delimited(stream: ServerProcess, connection: str) -> None:
    headers = [("Connection", connection)] if connection else []
    got = exchange(
        stream.port, build_request("GET", "/?n=3", headers, version="HTTP/1.0", host=None), half_close=False
    )
    responses, _ = parse_responses(got)
    assert got.closed
    assert len(responses) == 1
    r = responses[0]
    assert r.status == 200 and r.framing == "close"
    assert r.header("transfer-encoding") is None and r.header("connection") == "close"
    assert r.body == b"chunk 0\nchunk 1\nchunk 2\n"


def test_date_and_server_headers(hello: ServerProcess) -> None:
    r = request(hello.port, "GET", "/")
    assert len(r.header_list("date")) == 1 and len(r.header_list("server")) == 1
    assert r.header("server") == "prefork_lb"
    date = r.header("date")
    assert date is not None and date.endswith(" GMT")
    when = email.utils.parsedate_to_datetime(date).timestamp()
    assert abs(when - time.time()) < 5


def test_file_wrapper(shared_server) -> None:
    srv = shared_server("tests.apps:file_wrapper")
    with connect(srv.port) as sock:
        s = HTTPStream(sock)
        sock.sendall(build_request("GET", "/?size=300000"))
        r = s.read_response()
        assert r.status == 200 and r.header("content-length") == "300000"
        assert r.body == file_body(300000)
        sock.sendall(build_request("HEAD", "/?size=5000"))
        head = s.read_response(head=True)
        assert head.header("content-length") == "5000"
        sock.sendall(build_request("GET", "/?size=1000&length=0"))  # the app gives no length
        r = s.read_response()
        assert r.status == 200 and r.body == file_body(1000)


# -- app errors ---------------------------------------------------------------------------------


def test_app_exception_is_a_500_with_the_traceback_only_in_the_log(shared_server) -> None:
    srv = shared_server("tests.apps:boom")
    got = exchange(srv.port, build_request("GET", "/explode"), half_close=False)
    responses, rest = parse_responses(got)
    assert [r.status for r in responses] == [500] and rest == b""
    assert got.closed
    body = responses[0].body
    assert b"Traceback" not in body and b"boom-marker" not in body and b"RuntimeError" not in body
    log = srv.wait_log("boom-marker-7f3a")
    assert "Traceback (most recent call last)" in log
    assert "RuntimeError: boom-marker-7f3a" in log


def test_app_exception_after_first_chunk_aborts_the_connection(shared_server) -> None:
    srv = shared_server("tests.apps:boom_late")
    got = exchange(srv.port, build_request("GET", "/late"), half_close=False)
    assert got.closed
    assert got.startswith(b"HTTP/1.1 200 ")
    assert b"first chunk\n" in got
    assert not got.endswith(b"0\r\n\r\n")  # no terminating chunk: the client sees a truncated body
    responses, _ = parse_responses(got)
    assert len(responses) == 1 and responses[0].framing == "chunked" and not responses[0].complete
    log = srv.wait_log("boom-late-marker-91c2")
    assert "Traceback (most recent call last)" in log


@pytest.mark.parametrize(
    ("path", "mistake"),
    [
        ("/write", "passed a str to write()"),
        ("/length", "passed a str to write()"),
        ("/yield", "yielded a str from its response iterable"),
        ("/list", "returned a str in its response list"),
        ("/mixed", "returned a str in its response list"),
    ],
)
def test_str_body_is_a_500_and_the_log_names_the_mistake(shared_server, path: str, mistake: str) -> None:
    """A str where WSGI wants bytes, before anything was sent: the client gets a 500 (not a
    connection closed with nothing), the log one line that says what the app did wrong."""
    srv = shared_server("tests.apps:str_body")
    got = exchange(srv.port, build_request("GET", path), half_close=False)
    responses, rest = parse_responses(got)
    assert [r.status for r in responses] == [500] and rest == b"", got
    assert got.closed
    line = f"Error handling request GET {path}: the app {mistake}, not bytes: encode it"
    assert line in srv.wait_log(line)
    # The worker goes on serving.
    ok, _ = parse_responses(exchange(srv.port, build_request("GET", "/")))
    assert [(r.status, r.body) for r in ok] == [(200, b"ok")]


def test_str_body_after_the_head_was_sent_closes_the_connection(shared_server) -> None:
    srv = shared_server("tests.apps:str_body")
    got = exchange(srv.port, build_request("GET", "/late"), half_close=False)
    assert got.closed
    responses, _ = parse_responses(got)
    assert len(responses) == 1 and responses[0].status == 200 and not responses[0].complete
    assert b"first chunk\n" in got and b"then a str" not in got
    line = "Error handling request GET /late: the app yielded a str from its response iterable"
    assert line in srv.wait_log(line)


# -- wsgi.url_scheme behind a proxy ----------------------------------------------------------------


def _scheme_seen(port: int, headers: list[tuple[str, str]]) -> list[bytes]:
    """wsgi.url_scheme as the app saw it, for the same request three times on one connection
    (the first is parsed, the others come from the worker's request memo)."""
    got = exchange(port, build_request("GET", "/", headers) * 3)
    responses, rest = parse_responses(got)
    assert rest == b"" and [r.status for r in responses] == [200] * 3, got
    return [r.body for r in responses]


@pytest.mark.parametrize(
    ("headers", "scheme"),
    [
        ([("X-Forwarded-Proto", "https")], b"https"),
        ([("Forwarded", "for=192.0.2.1;proto=https")], b"https"),
        ([("X-Forwarded-Proto", "http"), ("Forwarded", "for=192.0.2.1;proto=https")], b"http"),
        ([], b"http"),
    ],
)
def test_url_scheme_from_a_trusted_peer(shared_server, headers: list[tuple[str, str]], scheme: bytes) -> None:
    """The default --forwarded-allow-ips (127.0.0.1,::1) trusts this client, as it trusts the
    proxy in front of the workers: its X-Forwarded-Proto, else Forwarded proto=, is the scheme."""
    srv = shared_server("tests.apps:scheme")
    assert _scheme_seen(srv.port, headers) == [scheme] * 3


def test_url_scheme_headers_from_an_untrusted_peer_are_ignored(shared_server) -> None:
    srv = shared_server("tests.apps:scheme", "--forwarded-allow-ips", "10.9.9.9")
    assert _scheme_seen(srv.port, [("X-Forwarded-Proto", "https")]) == [b"http"] * 3
    assert _scheme_seen(srv.port, [("Forwarded", "proto=https")]) == [b"http"] * 3


# -- limits -------------------------------------------------------------------------------------


def test_request_line_too_long_is_414(echo: ServerProcess) -> None:
    refused(echo, build_request("GET", "/" + "a" * 4100), 414)


def _line_of(length: int) -> str:
    """A target that makes 'GET <target> HTTP/1.1' exactly ``length`` bytes long."""
    return "/" + "a" * (length - len("GET  HTTP/1.1") - 1)


@pytest.mark.parametrize(
    ("length", "status"),
    [
        (4093, 200),
        (4094, 200),  # the limit itself is allowed, as in gunicorn (the line counted without CRLF)
        (4095, 414),
    ],
)
def test_request_line_limit_boundary(echo: ServerProcess, length: int, status: int) -> None:
    target = _line_of(length)
    assert len(f"GET {target} HTTP/1.1") == length
    r = request(echo.port, "GET", target)
    assert r.status == status
    if status == 200:
        assert r.json()["path_info"] == target


@pytest.mark.parametrize(("length", "status"), [(8190, 200), (8191, 431)])
def test_header_field_limit_boundary(echo: ServerProcess, length: int, status: int) -> None:
    """gunicorn counts a field line with its CRLF: 'X-Big: value\r\n' of 8190 bytes is allowed."""
    value = "a" * (length - len("X-Big: \r\n"))
    assert request(echo.port, "GET", "/", [("X-Big", value)]).status == status


def test_too_many_headers_is_431(echo: ServerProcess) -> None:
    refused(echo, build_request("GET", "/", [(f"X-H{i}", "v") for i in range(101)]), 431)


def test_header_field_too_large_is_431(echo: ServerProcess) -> None:
    refused(echo, build_request("GET", "/", [("X-Big", "a" * 8200)]), 431)


@pytest.fixture(scope="module")
def small_body(shared_server) -> ServerProcess:
    return shared_server(ECHO, "--limit-request-body", "10")


def test_body_over_the_limit_is_413(small_body: ServerProcess) -> None:
    refused(small_body, build_request("POST", "/", body=b"x" * 11), 413)


def test_chunked_body_over_the_limit_is_413(small_body: ServerProcess) -> None:
    before = len(small_body.calls())
    got = exchange(
        small_body.port,
        build_request("POST", "/", [("Transfer-Encoding", "chunked")], chunked(b"x" * 6, b"y" * 5)),
    )
    responses, _ = parse_responses(got)
    assert [r.status for r in responses] == [413]
    assert small_body.calls()[before:] == []


def test_body_at_the_limit_is_served(small_body: ServerProcess) -> None:
    r = request(small_body.port, "POST", "/", body=b"x" * 10)
    assert r.status == 200 and r.json()["body"] == "x" * 10


# -- timeouts -----------------------------------------------------------------------------------


def test_header_timeout_answers_408_and_closes(timeouts: ServerProcess) -> None:
    before = len(timeouts.calls())
    got = exchange(timeouts.port, b"GET /slow HTTP/1.1\r\nHost: a\r\n", timeout=5, half_close=False)
    # The 408 is the header timeout's own outcome: an incomplete head otherwise gets no answer.
    assert got.closed, "still open 5 s after a 1 s header timeout"
    responses, rest = parse_responses(got)
    assert [r.status for r in responses] == [408] and rest == b""
    assert timeouts.calls()[before:] == []


def test_header_timeout_counts_from_the_first_byte_not_the_last(timeouts: ServerProcess) -> None:
    """Slowloris: a byte every 0.1 s does not keep a head alive past the header timeout."""
    trickle = b"GET /trickle HTTP/1.1\r\nHost: a\r\nX-Slow: " + b"a" * 100
    # The order of events is the proof: the server answers while bytes are still trickling in
    # (a timeout counted from the last byte could only answer after the trickle stopped).
    answered_mid_trickle = False
    deadline = time.monotonic() + 5  # a poll deadline (5 x the timeout), not a measurement
    with connect(timeouts.port) as sock:
        s = HTTPStream(sock)
        for i in range(len(trickle)):  # 100+ bytes at 0.1 s: 10 s, far past the timeout
            try:
                sock.sendall(trickle[i : i + 1])
            except OSError:
                answered_mid_trickle = True  # the server closed on us mid-head
                break
            if s.wait_bytes(b"HTTP/1.1", timeout=0.1) or s.eof:
                answered_mid_trickle = True
                break
            if time.monotonic() > deadline:
                break
        data = s.read_to_close(timeout=3)
    assert answered_mid_trickle, "no answer while the head was still trickling in"
    assert [r.status for r in parse_responses(data)[0]] == [408]


def test_keep_alive_idle_timeout_closes_the_connection(timeouts: ServerProcess) -> None:
    with connect(timeouts.port) as sock:
        s = HTTPStream(sock)
        sock.sendall(build_request("GET", "/once"))
        r = s.read_response()
        assert r.status == 200
        # Kept alive by the response (so the close that follows is the idle timeout's), then
        # closed with nothing more sent within the 4 s deadline.
        assert r.header("connection") != "close", r
        assert s.closed_by_server(timeout=4), "idle connection still open after the 1 s keep-alive"


def test_connection_that_never_sends_is_closed_quietly(timeouts: ServerProcess) -> None:
    got = exchange(timeouts.port, b"", timeout=4, half_close=False)
    assert got.closed and got == b"", got  # closed by the server within the 4 s deadline


# -- request smuggling and malformed heads ------------------------------------------------------

SMUGGLING = {
    "cl_and_te": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "te_and_cl": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n",
    "two_content_lengths": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
    "two_equal_content_lengths": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
    "content_length_list": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\n\r\nhello",
    "te_chunked_on_http10": b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    "te_not_ending_in_chunked": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
    "obs_fold": b"GET / HTTP/1.1\r\nHost: a\r\nX-Folded: one\r\n two\r\n\r\n",
    "bare_lf_request_line": b"GET / HTTP/1.1\nHost: a\r\n\r\n",
    "bare_lf_header": b"GET / HTTP/1.1\r\nHost: a\nX-A: b\r\n\r\n",
    "bare_cr_header": b"GET / HTTP/1.1\r\nHost: a\rX-A: b\r\n\r\n",
    "space_before_colon": b"GET / HTTP/1.1\r\nHost : a\r\n\r\n",
    "nul_in_value": b"GET / HTTP/1.1\r\nHost: a\r\nX-A: a\x00b\r\n\r\n",
    "nul_in_target": b"GET /a\x00b HTTP/1.1\r\nHost: a\r\n\r\n",
    "two_hosts": b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    "missing_host": b"GET / HTTP/1.1\r\nX-A: b\r\n\r\n",
    "negative_content_length": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n",
    "bad_chunk_size": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
}


@pytest.mark.parametrize("name", list(SMUGGLING))
def test_smuggling_and_malformed_heads_are_refused(echo: ServerProcess, name: str) -> None:
    refused(echo, SMUGGLING[name], 400)


def test_unknown_transfer_coding_is_501(echo: ServerProcess) -> None:
    refused(
        echo, b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: frobnicate, chunked\r\n\r\n0\r\n\r\n", 501
    )


def test_unknown_expectation_is_417(echo: ServerProcess) -> None:
    refused(echo, build_request("POST", "/", [("Expect", "teapot")], b"hello"), 417)


# -- streaming upload ---------------------------------------------------------------------------


def _peak_rss(pid: int) -> int | None:
    """VmHWM (peak resident set) of a Linux process, in bytes."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def test_streaming_upload_does_not_buffer_the_body(start_server) -> None:
    srv = start_server("tests.apps:count")
    worker = psutil.Process(wait_for(srv.worker_pids, 5, "a worker")[0])
    assert request(srv.port, "POST", "/warm", body=b"x" * 100000).json()["bytes"] == 100000
    rss0 = worker.memory_info().rss
    piece = os.urandom(64 * 1024)
    n = 800  # 50 MiB
    with connect(srv.port, timeout=30) as sock:
        sock.sendall(build_request("POST", "/count", [("Transfer-Encoding", "chunked")]))
        frame = b"%x\r\n%b\r\n" % (len(piece), piece)
        for _ in range(n):
            sock.sendall(frame)
        sock.sendall(b"0\r\n\r\n")
        r = HTTPStream(sock, timeout=30).read_response()
    assert r.status == 200
    assert r.json() == {"bytes": n * len(piece), "largest_read": 65536}
    rss1 = worker.memory_info().rss
    assert rss1 - rss0 < 30 * MiB, (rss0, rss1)
    peak = _peak_rss(worker.pid)
    if peak is not None:
        assert peak - rss0 < 30 * MiB, (rss0, peak)


# -- environ ------------------------------------------------------------------------------------


def test_root_path_sets_script_name(start_server) -> None:
    srv = start_server(ECHO, "--root-path", "/app")
    got = request(srv.port, "GET", "/app/foo/bar?x=1").json()
    assert (got["script_name"], got["path_info"], got["query"]) == ("/app", "/foo/bar", "x=1")
    got = request(srv.port, "GET", "/app").json()
    assert (got["script_name"], got["path_info"]) == ("/app", "")


def test_percent_encoded_path_is_decoded_in_path_info_only(echo: ServerProcess) -> None:
    got = request(echo.port, "GET", "/a%2Fb%20c/d%41?q=%2F%20").json()
    assert got["path_info"] == "/a/b c/dA"
    assert got["raw_uri"] == "/a%2Fb%20c/d%41?q=%2F%20"
    assert got["query"] == "q=%2F%20"  # the query string stays encoded


def test_repeated_headers_are_joined_and_underscored_names_dropped(echo: ServerProcess) -> None:
    got = request(
        echo.port,
        "GET",
        "/",
        [
            ("X-Multi", "a"),
            ("X-Multi", "b"),
            ("Cookie", "c=1"),
            ("Cookie", "d=2"),
            ("X_Spoof", "1"),
            ("X-Spoof", "2"),
        ],
    ).json()
    assert got["headers"]["HTTP_X_MULTI"] == "a,b"
    assert got["headers"]["HTTP_COOKIE"] == "c=1; d=2"
    assert got["headers"]["HTTP_X_SPOOF"] == "2"


def test_pep3333_environ_keys(shared_server) -> None:
    srv = shared_server("tests.apps:environ_keys")
    with connect(srv.port) as sock:
        local_port = sock.getsockname()[1]
        sock.sendall(build_request("POST", "/env?x=y", [("Content-Type", "text/plain")], b"hi"))
        got = HTTPStream(sock).read_response().json()
    assert got["REQUEST_METHOD"] == "POST"
    assert got["SCRIPT_NAME"] == "" and got["PATH_INFO"] == "/env" and got["QUERY_STRING"] == "x=y"
    assert got["CONTENT_TYPE"] == "text/plain" and got["CONTENT_LENGTH"] == "2"
    assert got["SERVER_NAME"] == "127.0.0.1" and got["SERVER_PORT"] == str(srv.port)
    assert got["SERVER_PROTOCOL"] == "HTTP/1.1"
    assert got["REMOTE_ADDR"] == "127.0.0.1" and got["REMOTE_PORT"] == str(local_port)
    assert got["RAW_URI"] == "/env?x=y"
    assert got["wsgi.version"] == [1, 0] and got["wsgi.url_scheme"] == "http"
    assert got["wsgi.multithread"] is True and got["wsgi.multiprocess"] is True
    assert got["wsgi.run_once"] is False and got["wsgi.input_terminated"] is True
    assert all(got["wsgi.input"].values()) and all(got["wsgi.errors"].values())
    assert got["wsgi.file_wrapper"] is True
    # PEP 3333: CGI keys are native strings.
    assert {k: t for k, t in got["types"].items() if t != "str"} == {}


# -- access log ---------------------------------------------------------------------------------


@pytest.fixture
def access_logged(start_server) -> Iterator[ServerProcess]:
    yield start_server(HELLO, "--access-logfile", "-")


def _access_line(text: str, path: str) -> str | None:
    return next((line for line in text.splitlines() if f" {path} " in line), None)


def test_access_log_line_after_stop(access_logged: ServerProcess) -> None:
    assert request(access_logged.port, "GET", "/logged?q=1", [("User-Agent", "itest/1")]).status == 200
    assert request(access_logged.port, "POST", "/posted", body=b"x").status == 200
    assert access_logged.stop() == 0
    text = access_logged.out_text()
    line = _access_line(text, "/logged?q=1")
    assert line is not None, text
    assert '"GET /logged?q=1 HTTP/1.1" 200 13 ' in line and "127.0.0.1" in line and "itest/1" in line
    line = _access_line(text, "/posted")
    assert line is not None and '"POST /posted HTTP/1.1" 200 ' in line


def test_access_log_line_is_written_while_serving(access_logged: ServerProcess) -> None:
    assert request(access_logged.port, "GET", "/live").status == 200
    access_logged.wait_log('"GET /live HTTP/1.1" 200', timeout=2, stdout=True)


def test_access_log_to_a_file(start_server, tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    srv = start_server(HELLO, "--access-logfile", str(path))
    assert request(srv.port, "GET", "/to-file").status == 200
    wait_for(
        lambda: path.exists() and '"GET /to-file HTTP/1.1" 200' in path.read_text(), 3, "the access log line"
    )


def test_no_client_reset_on_refusal_with_unread_bytes(echo: ServerProcess) -> None:
    """A refused head followed by more bytes in flight: the client still reads the 400."""
    data = b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n" + b"x" * 200000
    with connect(echo.port) as sock:
        try:
            sock.sendall(data)
        except OSError:
            pass
        s = HTTPStream(sock)
        try:
            r = s.read_response(timeout=3)
        except (AssertionError, ConnectionResetError) as exc:
            pytest.fail(f"no 400 reached the client: {exc}")
    assert r.status == 400
