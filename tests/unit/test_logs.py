"""The access log (gunicorn's format atoms) and the error log set-up."""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from prefork_lb.config import BY_NAME
from prefork_lb.logs import AccessLog, json_line, json_record, setup_error_log

ENV: dict[str, Any] = {
    "REMOTE_ADDR": "10.1.2.3",
    "REQUEST_METHOD": "POST",
    "PATH_INFO": "/items/7",
    "QUERY_STRING": "full=1",
    "RAW_URI": "/items/7?full=1",
    "SERVER_PROTOCOL": "HTTP/1.1",
    "HTTP_USER_AGENT": "curl/8.5.0",
    "HTTP_REFERER": "http://example.org/",
    "HTTP_X_REQUEST_ID": "abc-123",
}


def fake_conn(
    status: str | None = "201 Created", headers: list[tuple[str, str]] | None = None, sent: int = 17
) -> SimpleNamespace:
    """What AccessLog reads from a connection: status, out_headers and bytes_sent."""
    if headers is None:
        headers = [("Content-Type", "application/json"), ("X-Upstream", "w1")]
    return SimpleNamespace(status=status, out_headers=headers, bytes_sent=sent)


LogLine = Callable[..., str]


@pytest.fixture
def log_line(tmp_path: Path) -> Iterator[LogLine]:
    """log_line(fmt, env=..., conn=..., duration=...) -> the line AccessLog wrote to its file."""
    opened: list[AccessLog] = []

    def write(fmt: str, env: dict[str, Any] | None = None, conn: Any = None, duration: float = 0.0015) -> str:
        path = tmp_path / f"access-{len(opened)}.log"
        access = AccessLog(fmt, str(path))
        opened.append(access)
        access.log(ENV if env is None else env, fake_conn() if conn is None else conn, duration)
        text = path.read_text()  # line-buffered: on disk already
        assert text.endswith("\n") and text.count("\n") == 1
        return text[:-1]

    yield write
    for access in opened:
        access.stream.close()


@pytest.mark.parametrize(
    ("atom", "expected"),
    [
        ("h", "10.1.2.3"),
        ("l", "-"),
        ("u", "-"),
        ("r", "POST /items/7?full=1 HTTP/1.1"),
        ("m", "POST"),
        ("U", "/items/7"),
        ("q", "full=1"),
        ("H", "HTTP/1.1"),
        ("s", "201"),
        ("b", "17"),
        ("B", "17"),
        ("f", "http://example.org/"),
        ("a", "curl/8.5.0"),
        ("D", "1500"),
        ("M", "1"),
        ("T", "0"),
        ("L", "0.001500"),
        ("p", f"<{os.getpid()}>"),
        ("{x-request-id}i", "abc-123"),
        ("{X-Request-Id}i", "abc-123"),
        ("{content-type}o", "application/json"),
        ("{X-UPSTREAM}o", "w1"),
    ],
)
def test_atom(log_line: LogLine, atom: str, expected: str) -> None:
    assert log_line(f"%({atom})s") == expected


def test_gunicorn_style_line(log_line: LogLine) -> None:
    fmt = '%(h)s "%(r)s" %(s)s %(b)s "%(a)s" %({x-request-id}i)s %({content-type}o)s %(D)sus'
    assert log_line(fmt, duration=0.25) == (
        '10.1.2.3 "POST /items/7?full=1 HTTP/1.1" 201 17 "curl/8.5.0" abc-123 application/json 250000us'
    )


def test_default_format(log_line: LogLine) -> None:
    line = log_line(BY_NAME["access_log_format"].default)
    assert re.fullmatch(
        r'10\.1\.2\.3 - - \[\d\d/\w{3}/\d{4}:\d\d:\d\d:\d\d [+-]\d{4}\] "POST /items/7\?full=1 HTTP/1\.1" '
        r'201 17 "http://example\.org/" "curl/8\.5\.0"',
        line,
    ), line


def test_missing_values_read_as_dash(log_line: LogLine) -> None:
    env = {"REQUEST_METHOD": "GET", "PATH_INFO": "/", "SERVER_PROTOCOL": "HTTP/1.0"}
    conn = fake_conn(status=None, headers=None, sent=0)
    conn.out_headers = None  # the app never called start_response
    fmt = "%(h)s|%(s)s|%(b)s|%(B)s|%(a)s|%(f)s|%({x-request-id}i)s|%({content-type}o)s|%(nonsense)s|%(r)s"
    assert log_line(fmt, env=env, conn=conn) == "-|-|-|0|-|-|-|-|-|GET / HTTP/1.0"


def test_request_line_without_raw_uri_is_rebuilt(log_line: LogLine) -> None:
    env = {k: v for k, v in ENV.items() if k != "RAW_URI"}
    assert log_line("%(r)s", env=env) == "POST /items/7?full=1 HTTP/1.1"


def test_environment_variable_atom(log_line: LogLine, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PREFORK_LB_TEST_SHARD", "eu-2")
    monkeypatch.delenv("PREFORK_LB_TEST_UNSET", raising=False)
    assert log_line("%({PREFORK_LB_TEST_SHARD}e)s %({PREFORK_LB_TEST_UNSET}e)s") == "eu-2 -"


def test_bad_format_logs_the_error_instead_of_raising(log_line: LogLine) -> None:
    assert log_line("%(h)d").startswith("access log format error: ")


def test_lines_append_and_reopen_follows_a_rotated_file(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    path.write_text("earlier\n")
    access = AccessLog("%(U)s", str(path))
    try:
        access.log({"PATH_INFO": "/one"}, fake_conn(), 0.0)
        rotated = tmp_path / "access.log.1"
        path.rename(rotated)  # logrotate moves the file, then sends SIGUSR1
        access.log({"PATH_INFO": "/two"}, fake_conn(), 0.0)
        old_stream = access.stream
        access.reopen()
        assert old_stream.closed
        access.log({"PATH_INFO": "/three"}, fake_conn(), 0.0)
    finally:
        access.stream.close()
    assert rotated.read_text() == "earlier\n/one\n/two\n"
    assert path.read_text() == "/three\n"


def test_dash_writes_to_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    access = AccessLog("%(m)s %(U)s %(s)s", "-")
    access.log(ENV, fake_conn(), 0.0)
    assert capsys.readouterr().out == "POST /items/7 201\n"


def test_request_id_out_atom_reads_the_id_the_request_got(tmp_path: Path) -> None:
    """The server adds the request id header after the app's: ``{x-request-id}o`` reads the id
    the request got (generated, or the client's when valid); ``{x-request-id}i`` what came."""
    path = tmp_path / "access.log"
    access = AccessLog("%({x-request-id}i)s %({X-Request-ID}o)s", str(path), "X-Request-ID")
    try:
        access.log({**ENV, "HTTP_X_REQUEST_ID": "bad id", "prefork_lb.request_id": "abc-7"}, fake_conn(), 0.0)
        access.log({"PATH_INFO": "/"}, fake_conn(), 0.0)  # no id at all
    finally:
        access.stream.close()
    assert path.read_text() == "bad id abc-7\n- -\n"


# -- JSON lines ------------------------------------------------------------------------------------


def test_json_record_fields() -> None:
    env = {
        **ENV,
        "HTTP_HOST": "example.org:8080",
        "wsgi.url_scheme": "https",
        "prefork_lb.request_id": "abc-123",
    }
    rec = json_record(env, "201 Created", 17, 0.0015, 4242, 1700000000.25)
    assert rec == {
        "timestamp": "2023-11-14T22:13:20.250Z",
        "http.request.method": "POST",
        "url.path": "/items/7",
        "url.query": "full=1",
        "url.scheme": "https",
        "http.response.status_code": 201,
        "http.server.request.duration": 0.0015,
        "http.response.body.size": 17,
        "network.protocol.version": "1.1",
        "client.address": "10.1.2.3",
        "server.address": "example.org",
        "server.port": 8080,
        "user_agent.original": "curl/8.5.0",
        "http.request.header.referer": "http://example.org/",
        "http.request.id": "abc-123",
        "process.pid": 4242,
    }


def test_json_record_leaves_out_what_it_does_not_know() -> None:
    env = {"REQUEST_METHOD": "GET", "PATH_INFO": "/", "SERVER_PROTOCOL": "HTTP/1.0"}
    rec = json_record(env, None, None, 0.0, 1, 0.0, backend="127.0.0.1:8001")
    assert rec == {
        "timestamp": "1970-01-01T00:00:00.000Z",
        "http.request.method": "GET",
        "url.path": "/",
        "http.server.request.duration": 0.0,
        "network.protocol.version": "1.0",
        "process.pid": 1,
        "prefork_lb.backend": "127.0.0.1:8001",
    }


@pytest.mark.parametrize(
    ("host", "address", "port"),
    [
        ("example.org", "example.org", None),
        ("[::1]:8000", "::1", 8000),
        ("[::1]", "::1", None),
        ("a:b", "a:b", None),
    ],
)
def test_json_record_server_address(host: str, address: str, port: int | None) -> None:
    rec = json_record({"HTTP_HOST": host}, "200 OK", 0, 0.0, 1, 0.0)
    assert rec["server.address"] == address and rec.get("server.port") == port


# Header values as the servers hold them: the raw bytes decoded as latin-1 (PEP 3333).
HOSTILE = {
    "quote": b'x" "y',
    "backslash": b"C:\\temp\\",
    "newline": b"a\nb\r\nc",
    "controls": bytes(range(32)) + b"\x7f",
    "separators": "\u2028\u2029".encode(),
    "invalid utf-8": b"\xff\xfe\xc3(",
    "fake field": b'", "http.response.status_code": 200, "x": "',
}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_json_line_contains_hostile_values(name: str) -> None:
    raw = HOSTILE[name]
    env = {"REQUEST_METHOD": "GET", "PATH_INFO": "/p", "HTTP_USER_AGENT": raw.decode("latin-1")}
    line = json_line(json_record(env, "404 Not Found", 0, 0.0, 1, 0.0))
    assert line.isascii() and "\n" not in line and "\r" not in line
    assert len(line.splitlines()) == 1  # str.splitlines splits on U+2028, \x1c, \x85...: none left
    rec = json.loads(line)
    assert rec["http.response.status_code"] == 404
    agent = rec["user_agent.original"]
    # UTF-8 reads as text; bytes that are not UTF-8 stay visible as \xNN.
    assert agent == raw.decode("utf-8", "backslashreplace")


def test_json_utf8_values_read_as_text() -> None:
    env = {"PATH_INFO": "/caf\xc3\xa9", "HTTP_USER_AGENT": "agent \xe2\x9c\x93"}  # latin-1 of UTF-8
    rec = json.loads(json_line(json_record(env, "200 OK", 0, 0.0, 1, 0.0)))
    assert rec["url.path"] == "/caf\u00e9" and rec["user_agent.original"] == "agent \u2713"


def test_json_access_log_writes_one_object_per_line(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    access = AccessLog("json", str(path))
    try:
        access.log(ENV, fake_conn(), 0.25)
        access.log({**ENV, "HTTP_USER_AGENT": 'evil\n{"forged": 1}'}, fake_conn(status="500 Oops"), 0.0)
    finally:
        access.stream.close()
    lines = path.read_text().splitlines()
    assert len(lines) == 2
    first, second = (json.loads(line) for line in lines)
    assert first["http.request.method"] == "POST" and first["http.response.status_code"] == 201
    assert first["http.server.request.duration"] == 0.25 and first["http.response.body.size"] == 17
    assert first["process.pid"] == os.getpid()
    assert second["http.response.status_code"] == 500
    assert second["user_agent.original"] == 'evil\n{"forged": 1}' and "forged" not in second


# -- the error log ---------------------------------------------------------------------------------


@pytest.fixture
def error_logger() -> Iterator[logging.Logger]:
    logger = logging.getLogger("prefork_lb")
    yield logger
    for h in list(logger.handlers):
        logger.removeHandler(h)
        h.close()
    logger.setLevel(logging.NOTSET)
    logger.propagate = True


def test_error_log_to_file_with_level(tmp_path: Path, error_logger: logging.Logger) -> None:
    path = tmp_path / "error.log"
    setup_error_log("warning", str(path))
    log = logging.getLogger("prefork_lb.error")
    log.info("not shown")
    log.warning("disk %s full", "/var")
    for h in error_logger.handlers:
        h.flush()
    text = path.read_text()
    assert "not shown" not in text
    assert re.fullmatch(
        rf"\[\d{{4}}-\d\d-\d\d \d\d:\d\d:\d\d [+-]\d{{4}}\] \[{os.getpid()}\] "
        r"\[WARNING\] disk /var full\n",
        text,
    ), text


def test_error_log_setup_twice_keeps_one_handler(tmp_path: Path, error_logger: logging.Logger) -> None:
    setup_error_log("info", str(tmp_path / "a.log"))
    first = error_logger.handlers[0]
    setup_error_log("info", str(tmp_path / "b.log"))
    assert len(error_logger.handlers) == 1
    assert error_logger.handlers[0] is not first
    assert error_logger.propagate is False
