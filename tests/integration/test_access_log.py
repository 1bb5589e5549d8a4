"""JSON access logs and request ids through a real worker: what the log file holds, what the
client gets back, what the app saw in its environ. Hostile values are sent as raw bytes over a
socket, so nothing between the test and the server cleans them up."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import wait_for
from tests.server import HTTPStream, Response, ServerProcess, connect, request

APP = "tests.apps:request_id"
GENERATED = re.compile(r"[0-9a-f]{12}-[0-9]+")


def log_lines(path: Path, n: int) -> list[dict[str, Any]]:
    """The first ``n`` lines of the access log, each parsed as JSON (waits for them)."""
    lines = wait_for(
        lambda: path.exists() and len(text := path.read_text().splitlines()) >= n and text,
        10,
        f"{n} access log lines",
    )
    return [json.loads(line) for line in lines[:n]]


def raw_request(port: int, data: bytes) -> Response:
    with connect(port) as sock:
        sock.sendall(data)
        return HTTPStream(sock).read_response()


@pytest.fixture
def json_logged(start_server, tmp_path: Path) -> tuple[ServerProcess, Path]:
    path = tmp_path / "access.log"
    srv = start_server(APP, "--access-logfile", str(path), "--access-logformat", "json")
    return srv, path


def test_json_line_fields(json_logged: tuple[ServerProcess, Path]) -> None:
    srv, path = json_logged
    r = request(srv.port, "GET", "/items/7?full=1", [("User-Agent", "itest/1"), ("X-Request-ID", "abc-123")])
    assert r.status == 200
    (rec,) = log_lines(path, 1)
    assert rec["http.request.method"] == "GET"
    assert rec["url.path"] == "/items/7" and rec["url.query"] == "full=1" and rec["url.scheme"] == "http"
    assert rec["http.response.status_code"] == 200
    assert rec["http.response.body.size"] == len(r.body)
    assert rec["network.protocol.version"] == "1.1"
    assert rec["client.address"] == "127.0.0.1"
    assert rec["server.address"] == "127.0.0.1"
    assert rec["user_agent.original"] == "itest/1"
    assert rec["http.request.id"] == "abc-123"
    assert rec["process.pid"] == r.json()["pid"] == srv.worker_pids()[0]
    assert isinstance(rec["http.server.request.duration"], float) and rec["http.server.request.duration"] >= 0
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", rec["timestamp"])


def test_hostile_values_never_break_the_line(json_logged: tuple[ServerProcess, Path]) -> None:
    """Quotes, backslashes, bytes that are not UTF-8 in headers; newlines, NUL, ESC and
    U+2028 in the (percent-decoded) path: each request is one line that parses, with the
    values as sent."""
    srv, path = json_logged
    agent = b'x" "y\\" \\\\ \t\xff\xfe\xc3('
    sent = [
        b"GET /a%0Ab%0D%22c%5C%00%1B%E2%80%A8?q=%22%0A HTTP/1.1\r\nHost: h\r\n"
        b"User-Agent: " + agent + b'\r\nReferer: "}\r\n\r\n',
        b'GET /fake HTTP/1.1\r\nHost: h\r\nUser-Agent: ", "http.response.status_code": 999, "x": "\r\n\r\n',
        b"GET /utf8 HTTP/1.1\r\nHost: h\r\nUser-Agent: caf\xc3\xa9 \xe2\x9c\x93\r\n\r\n",
    ]
    for data in sent:
        assert raw_request(srv.port, data).status == 200
    first, second, third = log_lines(path, 3)
    assert len(path.read_text().splitlines()) == 3
    assert first["url.path"] == '/a\nb\r"c\\\x00\x1b\u2028'
    assert first["url.query"] == "q=%22%0A"
    assert first["user_agent.original"] == agent.decode("utf-8", "backslashreplace")
    assert first["http.request.header.referer"] == '"}'
    assert second["http.response.status_code"] == 200
    assert second["user_agent.original"] == '", "http.response.status_code": 999, "x": "'
    assert third["user_agent.original"] == "caf\u00e9 \u2713"


def test_text_format_is_unchanged_and_has_the_request_id(start_server, tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    fmt = '%(h)s "%(r)s" %(s)s %(b)s "%(a)s" %({x-request-id}i)s %({x-request-id}o)s'
    srv = start_server(APP, "--access-logfile", str(path), "--access-logformat", fmt, "--request-id", "true")
    r1 = request(srv.port, "GET", "/a", [("User-Agent", "t/1"), ("X-Request-ID", "given-1")])
    r2 = request(srv.port, "GET", "/b", [("User-Agent", "t/1")])
    lines = wait_for(lambda: len(t := path.read_text().splitlines()) >= 2 and t, 10, "two lines")
    assert lines[0] == f'127.0.0.1 "GET /a HTTP/1.1" 200 {len(r1.body)} "t/1" given-1 given-1'
    generated = r2.header("x-request-id")
    assert generated is not None and GENERATED.fullmatch(generated)
    assert lines[1] == f'127.0.0.1 "GET /b HTTP/1.1" 200 {len(r2.body)} "t/1" - {generated}'


# -- request ids -------------------------------------------------------------------------------


@pytest.fixture
def ids_server(shared_server) -> ServerProcess:
    return shared_server(APP, "--request-id", "true")


def test_a_valid_incoming_id_is_used_everywhere(ids_server: ServerProcess) -> None:
    r = request(ids_server.port, "GET", "/", [("X-Request-ID", "f47ac10b-58cc:4372/a567+0e=02_b.2")])
    assert r.header_list("x-request-id") == ["f47ac10b-58cc:4372/a567+0e=02_b.2"]
    assert r.json()["canonical"] == r.json()["incoming"] == "f47ac10b-58cc:4372/a567+0e=02_b.2"


def test_a_missing_id_is_generated(ids_server: ServerProcess) -> None:
    seen = set()
    for _ in range(3):
        r = request(ids_server.port, "GET", "/")
        (rid,) = r.header_list("x-request-id")
        assert GENERATED.fullmatch(rid), rid
        assert r.json()["canonical"] == rid and r.json()["incoming"] is None
        seen.add(rid)
    assert len(seen) == 3


@pytest.mark.parametrize("bad", [b"has space", b'q"uote', b"\xff\xfe", b"x" * 201, b"a,b"])
def test_an_invalid_id_is_replaced_by_a_generated_one(ids_server: ServerProcess, bad: bytes) -> None:
    r = raw_request(ids_server.port, b"GET / HTTP/1.1\r\nHost: h\r\nX-Request-ID: " + bad + b"\r\n\r\n")
    (rid,) = r.header_list("x-request-id")
    assert GENERATED.fullmatch(rid), rid
    got = r.json()
    assert got["canonical"] == rid and got["incoming"] == bad.decode("latin-1")  # the app still sees it


def test_ids_on_a_keep_alive_connection_differ_per_request(ids_server: ServerProcess) -> None:
    with connect(ids_server.port) as sock:
        stream = HTTPStream(sock)
        ids = []
        for _ in range(4):  # the same head again and again: the request memo path
            sock.sendall(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
            ids.append(stream.read_response().header("x-request-id"))
        sock.sendall(b"GET / HTTP/1.1\r\nHost: h\r\nX-Request-ID: mine\r\n\r\n")
        ids.append(stream.read_response().header("x-request-id"))
    assert len(set(ids)) == 5 and ids[-1] == "mine"


@pytest.mark.parametrize("flags", [(), ("--request-id", "false")], ids=["default", "false"])
def test_generation_off_still_echoes_a_valid_id(shared_server, flags: tuple[str, ...]) -> None:
    """Generation is off by default; a valid incoming id is used all the same, an invalid one
    is not used (nor echoed)."""
    srv = shared_server(APP, *flags)
    r = request(srv.port, "GET", "/")
    assert r.header("x-request-id") is None and r.json()["canonical"] is None
    r = request(srv.port, "GET", "/", [("X-Request-ID", "keep-me")])
    assert r.header("x-request-id") == "keep-me" and r.json()["canonical"] == "keep-me"
    r = request(srv.port, "GET", "/", [("X-Request-ID", "not valid")])
    assert r.header("x-request-id") is None and r.json()["canonical"] is None
    assert r.json()["incoming"] == "not valid"


def test_another_header_name(start_server) -> None:
    srv = start_server(APP, "--request-id-header", "X-Correlation-ID")
    r = request(srv.port, "GET", "/", [("X-Correlation-ID", "corr-9"), ("X-Request-ID", "not-this")])
    assert r.header("x-correlation-id") == "corr-9" and r.header("x-request-id") is None
    assert r.json()["canonical"] == "corr-9"


def test_request_ids_off(start_server) -> None:
    srv = start_server(APP, "--request-id-header", "off")
    r = request(srv.port, "GET", "/", [("X-Request-ID", "abc")])
    assert r.header("x-request-id") is None and r.json()["canonical"] is None
    assert r.json()["incoming"] == "abc"
