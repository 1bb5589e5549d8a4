"""The ASGI engine over real sockets: what a client sees of scopes, bodies both ways, keep-alive
and pipelining, framing, trailers, pathsend, the app's wrong events, timeouts and admission.
Each server runs in a process of its own (tests/asgi_server.py); apps are tests/apps_asgi.py.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import wait_for
from tests.server import HTTPStream, build_request, chunked, connect, exchange, parse_responses, request

ECHO = "tests.apps_asgi:echo"
BEHAVE = "tests.apps_asgi:behave"


@pytest.fixture
def echo(asgi_shared: Any) -> Any:
    return asgi_shared(ECHO)


@pytest.fixture
def behave(asgi_shared: Any) -> Any:
    return asgi_shared(BEHAVE)


def test_scope_keys(echo: Any) -> None:
    r = request(echo.port, "GET", "/a%20b/c?x=1&y=%41", headers=[("X-Thing", "v")])
    assert r.status == 200
    s = r.json()
    assert s["type"] == "http" and s["asgi"] == {"version": "3.0", "spec_version": "2.4"}
    assert s["http_version"] == "1.1" and s["scheme"] == "http" and s["method"] == "GET"
    assert s["path"] == "/a b/c" and s["raw_path"] == "/a%20b/c" and s["query_string"] == "x=1&y=%41"
    assert s["root_path"] == ""
    assert ["x-thing", "v"] in s["headers"] and s["headers"][0] == ["host", "127.0.0.1"]
    assert s["client"][0] == "127.0.0.1" and s["server"] == ["127.0.0.1", echo.port]
    assert s["extensions"] == ["http.response.pathsend", "http.response.trailers"]
    assert r.header("server") == "prefork_lb" and r.header("date")


def test_utf8_path_is_decoded(echo: Any) -> None:
    assert request(echo.port, "GET", "/caf%C3%A9").json()["path"] == "/café"


def test_root_path_is_prefixed_when_the_proxy_took_it_off(asgi_shared: Any) -> None:
    srv = asgi_shared(ECHO, root_path="/api")
    s = request(srv.port, "GET", "/x").json()
    assert (s["root_path"], s["path"], s["raw_path"]) == ("/api", "/api/x", "/api/x")
    s = request(srv.port, "GET", "/api/y").json()
    assert (s["path"], s["raw_path"]) == ("/api/y", "/api/y")


def test_forwarded_proto_only_from_trusted_peers(asgi_shared: Any) -> None:
    # trusted_peers needs a TrustedPeers object: not expressible as JSON options; the default
    # (nobody) must ignore the header.
    s = request(asgi_shared(ECHO).port, "GET", "/", headers=[("X-Forwarded-Proto", "https")]).json()
    assert s["scheme"] == "http"


def test_lifespan_state_reaches_each_request(asgi_shared: Any) -> None:
    srv = asgi_shared("tests.apps_asgi:lifespan_state")
    assert request(srv.port).json()["state"] == ["db"]


def test_keep_alive_and_pipelining_in_order(echo: Any) -> None:
    data = b"".join(build_request("GET", f"/p{i}") for i in range(5))
    data += build_request("POST", "/post", body=b"abc") + build_request(
        "GET", "/last", headers=[("Connection", "close")]
    )
    got = exchange(echo.port, data, half_close=False)
    responses, rest = parse_responses(got)
    assert rest == b"" and got.closed
    assert [r.json()["path"] for r in responses] == [f"/p{i}" for i in range(5)] + ["/post", "/last"]
    assert responses[5].json()["body"] == "abc"
    assert responses[-1].header("connection") == "close"


def test_http10_closes_unless_keep_alive(echo: Any) -> None:
    got = exchange(echo.port, build_request("GET", "/", version="HTTP/1.0", host=None), half_close=False)
    assert got.closed and parse_responses(got)[0][0].status == 200
    with connect(echo.port) as sock:
        stream = HTTPStream(sock)
        for _ in range(2):
            sock.sendall(
                build_request("GET", "/", version="HTTP/1.0", headers=[("Connection", "keep-alive")])
            )
            r = stream.read_response()
            assert r.status == 200 and r.header("connection") == "keep-alive"


def test_chunked_request_body_and_upload_in_pieces(behave: Any, echo: Any) -> None:
    r = request(
        echo.port, "POST", "/", headers=[("Transfer-Encoding", "chunked")], body=chunked(b"ab", b"cde")
    )
    assert r.json()["body"] == "abcde"
    body = b"z" * (3 << 20)
    r = request(behave.port, "POST", "/upload", body=body, timeout=20)
    assert r.json()["total"] == len(body) and r.json()["events"] > 1


def test_expect_100_continue_on_first_receive(echo: Any) -> None:
    with connect(echo.port) as sock:
        sock.sendall(
            build_request(
                "POST",
                "/",
                headers=[("Expect", "100-continue"), ("Content-Length", "4")],
                content_length=False,
            )
        )
        stream = HTTPStream(sock)
        assert stream.read_response().status == 100
        sock.sendall(b"data")
        r = stream.read_response()
        assert r.status == 200 and r.json()["body"] == "data"


def test_unread_body_is_skipped_and_the_connection_kept(behave: Any) -> None:
    with connect(behave.port) as sock:
        stream = HTTPStream(sock)
        sock.sendall(build_request("POST", "/ignore-body", body=b"q" * 5000) + build_request("GET", "/"))
        assert stream.read_response().body == b"ignored"
        assert stream.read_response().body == b"hello"


def test_streamed_response_is_chunked_head_has_no_body(behave: Any) -> None:
    r = request(behave.port, "GET", "/stream?4")
    assert r.framing == "chunked" and r.body == b"part0\npart1\npart2\npart3\n"
    r = request(behave.port, "HEAD", "/stream?4")
    assert r.status == 200 and r.body == b"" and r.header("transfer-encoding") is None
    r = request(behave.port, "HEAD", "/")
    assert r.body == b"" and r.header("content-length") == "5"
    r = request(behave.port, "GET", "/stream", version="HTTP/1.0", host=None)
    assert r.framing == "close" and r.body.startswith(b"part0")


def test_bodiless_statuses(behave: Any) -> None:
    for code in (204, 304):
        with connect(behave.port) as sock:
            sock.sendall(build_request("GET", f"/status?{code}") + build_request("GET", "/"))
            stream = HTTPStream(sock)
            r = stream.read_response()
            assert r.status == code and r.body == b"" and r.header("content-length") is None
            assert stream.read_response().body == b"hello"


def test_app_connection_close_is_honoured(behave: Any) -> None:
    got = exchange(behave.port, build_request("GET", "/close") + build_request("GET", "/"), half_close=False)
    responses, _ = parse_responses(got)
    assert got.closed and [r.body for r in responses] == [b"bye"]
    assert responses[0].header("connection") == "close"


def test_big_streamed_response_read_in_small_pieces(behave: Any) -> None:
    """4 MiB streamed to a client that takes 4 KiB at a time: the app waits for the
    transport to drain (else it would be buffered whole), and every byte arrives in order."""
    with connect(behave.port, timeout=20) as sock:
        sock.sendall(build_request("GET", "/big?64"))
        data = bytearray()
        for _ in range(1 << 20):
            piece = sock.recv(4096)
            data += piece
            if not piece or data.endswith(b"\r\n0\r\n\r\n"):
                break
        responses, rest = parse_responses(bytes(data))
        assert rest == b"" and responses[0].framing == "chunked"
        assert responses[0].body == b"x" * (64 * 65536)


def test_trailers(behave: Any) -> None:
    r = request(behave.port, "GET", "/trailers", headers=[("TE", "trailers")])
    assert r.framing == "chunked" and r.body == b"data"
    assert ("x-checksum", "abc") in r.trailers


def test_pathsend(behave: Any, tmp_path: Path) -> None:
    f = tmp_path / "file.bin"
    data = bytes(range(256)) * 4096  # 1 MiB
    f.write_bytes(data)
    with connect(behave.port, timeout=20) as sock:
        sock.sendall(build_request("GET", f"/pathsend?{f}") + build_request("GET", "/"))
        stream = HTTPStream(sock, 20)
        r = stream.read_response()
        assert r.status == 200 and r.header("content-length") == str(len(data)) and r.body == data
        assert stream.read_response().body == b"hello"
    r = request(behave.port, "GET", f"/pathsend?{tmp_path / 'missing'}")
    assert r.status == 500


@pytest.mark.parametrize(
    ("name", "words"),
    [
        ("body-before-start", "http.response.body before http.response.start"),
        ("two-starts", "a second http.response.start"),
        ("str-body", "str body, not bytes"),
        ("unknown", "unknown event type 'http.response.bogus'"),
        ("no-start", "returned without sending http.response.start"),
        ("swallowed", "http.response.body before http.response.start"),
    ],
)
def test_wrong_events_get_500_and_one_line(name: str, words: str, asgi_start: Any) -> None:
    srv = asgi_start(BEHAVE)
    r = request(srv.port, "GET", f"/bad/{name}")
    assert r.status == 500 and r.header("connection") == "close"
    line = srv.wait_log(words)
    hits = [ln for ln in line.splitlines() if words in ln]
    assert len(hits) == 1 and "tests.apps_asgi:behave" in hits[0] and f"/bad/{name}" in hits[0]
    assert "Traceback" not in srv.log_text()
    assert request(srv.port).body == b"hello"  # the server goes on


def test_app_raising_gets_500_or_a_close(behave: Any) -> None:
    r = request(behave.port, "GET", "/raise")
    assert r.status == 500
    behave.wait_log("raise-marker-4c1d")
    got = exchange(behave.port, build_request("GET", "/raise-after-start"), half_close=False)
    responses, _ = parse_responses(got)
    assert got.closed and responses[0].status == 200 and not responses[0].complete
    behave.wait_log("raise-late-marker-5e2f")
    got = exchange(behave.port, build_request("GET", "/bad/late-str"), half_close=False)
    assert got.closed and parse_responses(got)[0][0].status == 200
    assert request(behave.port).body == b"hello"


def test_disconnect_is_reported_to_the_app(behave: Any) -> None:
    before = len(behave.calls())
    with connect(behave.port) as sock:
        sock.sendall(build_request("GET", "/wait-disconnect"))
        wait_for(lambda: len(behave.calls()) > before, 5, "the request to reach the app")
    wait_for(lambda: "got http.disconnect" in behave.calls()[before:], 5, "http.disconnect")


def test_request_timeout_504_or_close(asgi_start: Any) -> None:
    srv = asgi_start(BEHAVE, request_timeout=0.5)
    r = request(srv.port, "GET", "/sleep?30")
    assert r.status == 504 and r.body == b"the request took too long\n"
    got = exchange(srv.port, build_request("GET", "/sleep-after-start?30"), timeout=10, half_close=False)
    responses, _ = parse_responses(got)
    assert got.closed and responses[0].status == 200 and not responses[0].complete
    srv.wait_log("past --request-timeout")
    assert request(srv.port).body == b"hello"


def _in_app(srv: Any, target: str, before: int) -> tuple[Any, HTTPStream]:
    """A connection whose request is in the app (its call recorded)."""
    sock = connect(srv.port, timeout=15)
    sock.sendall(build_request("GET", target))
    wait_for(lambda: len(srv.calls()) > before, 5, f"{target} in the app")
    return sock, HTTPStream(sock, 15)


def test_admission_full_gets_503_with_retry_after(asgi_start: Any) -> None:
    srv = asgi_start(BEHAVE, max_concurrency=1, queue_size=0)
    sock, stream = _in_app(srv, "/sleep?1", 0)
    with sock:
        refused = request(srv.port, "GET", "/")
        assert refused.status == 503 and refused.header("retry-after") == "1"
        assert refused.body == b"server busy, try again\n" and refused.header("connection") == "close"
        assert stream.read_response().status == 200
    assert srv.calls() == ["GET /sleep", "done sleep"]
    assert request(srv.port).status == 200  # the place is free again


def test_admission_queue_waits_in_order(asgi_start: Any) -> None:
    srv = asgi_start(BEHAVE, max_concurrency=1, queue_size=5)
    sock, stream = _in_app(srv, "/sleep?1", 0)
    with sock, connect(srv.port, timeout=15) as second:
        second.sendall(build_request("GET", "/queued"))
        assert HTTPStream(second, 15).read_response().body == b"hello"
        assert stream.read_response().body == b"slept"
    assert srv.calls() == ["GET /sleep", "done sleep", "GET /queued"]  # it waited for the place


def test_header_timeout_408_and_idle_keepalive_close(asgi_start: Any) -> None:
    srv = asgi_start(ECHO, header_timeout=0.5, keepalive=0.5)
    got = exchange(srv.port, b"GET / HTTP/1.1\r\nHost: x\r\n", timeout=5, half_close=False)
    assert got.closed and parse_responses(got)[0][0].status == 408
    with connect(srv.port) as sock:
        sock.sendall(build_request("GET", "/"))
        stream = HTTPStream(sock)
        assert stream.read_response().status == 200
        assert stream.closed_by_server(5)


def test_drain_finishes_busy_requests(asgi_start: Any) -> None:
    srv = asgi_start(BEHAVE)
    before = len(srv.calls())
    out: list[Any] = []
    t = threading.Thread(target=lambda: out.append(request(srv.port, "GET", "/sleep?1", timeout=10)))
    t.start()
    wait_for(lambda: len(srv.calls()) > before, 5, "the request in the app")
    idle = connect(srv.port)
    idle.sendall(build_request("GET", "/"))
    stream = HTTPStream(idle)
    assert stream.read_response().status == 200
    assert srv.proc is not None
    srv.proc.terminate()
    assert stream.closed_by_server(5)  # the idle kept-alive connection is closed
    t.join(10)
    assert out[0].status == 200 and out[0].header("connection") == "close"
    wait_for(lambda: "drained True" in srv.out_text(), 10, "the drain to finish")
    idle.close()
