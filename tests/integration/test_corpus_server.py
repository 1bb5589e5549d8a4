"""gunicorn's request corpus over real sockets, to the echo app (tests/apps.py).

Valid cases must reach the app with the method, path (PATH_INFO: the percent-decoded path),
query, headers and body the corpus expects, in order (pipelined cases give several responses on
one connection). Invalid ones must be answered with a 4xx (501 for an unknown transfer coding)
or a close, and never reach the app.

Each case goes out whole and byte by byte (one byte per send, TCP_NODELAY). All of it runs
byte by byte: the biggest case is 12 KB, and the whole module takes a few seconds.
"""

from __future__ import annotations

import threading
from typing import Any
from urllib.parse import unquote_to_bytes

import pytest

from tests.corpus import DEVIATIONS, Case, load
from tests.server import Received, ServerProcess, exchange, parse_responses

ECHO = "tests.apps:echo"
NO_HOST = ("--require-host", "false")
VALID = [c for c in load("valid") if c.name not in DEVIATIONS]
DEVIATING = [c for c in load("valid") if c.name in DEVIATIONS]
INVALID = load("invalid")
# Inputs that end early (see tests/unit/http/test_parser_corpus.py): the server waits for more bytes
# until its header timeout.
INCOMPLETE = {"invalid/001", "invalid/rfc9112_chunked_missing_final_crlf_01"}
MODES = ["whole", "bytewise"]


def valid_params(require_host: bool) -> list:
    params = []
    for case in VALID:
        for mode in MODES:
            params.append(pytest.param(case, mode, id=f"{case.name}-{mode}"))
    return params


def expected_env(r: dict[str, Any]) -> dict[str, Any]:
    """What echo must report for one corpus request."""
    path = "" if r["target_form"] in ("authority", "asterisk") else r["path"]
    headers: dict[str, str] = {}
    for name, value in r["headers"]:
        key = {"CONTENT-TYPE": "CONTENT_TYPE", "CONTENT-LENGTH": "CONTENT_LENGTH"}.get(name)
        key = key or "HTTP_" + name.replace("-", "_")
        if key in headers:  # repeated fields: joined as PEP 3333 / RFC 9110 section 5.3 say
            headers[key] += ("; " if key == "HTTP_COOKIE" else ",") + value
        else:
            headers[key] = value
    return {
        "method": r["method"],
        "path_info": unquote_to_bytes(path.encode("latin-1")).decode("latin-1"),
        "script_name": "",
        "query": r["query"],
        "protocol": r["version"],
        "raw_uri": r["uri"],
        "headers": headers,
        "body": r["body"],
    }


def needs_host(r: dict[str, Any]) -> bool:
    return r["version"] == "HTTP/1.1" and not any(h[0] == "HOST" for h in r["headers"])


def send(
    srv: ServerProcess, case: Case, mode: str, timeout: float = 5.0, half_close: bool = True
) -> Received:
    return exchange(srv.port, case.raw, timeout, bytewise=mode == "bytewise", half_close=half_close)


def check_valid(srv: ServerProcess, case: Case, mode: str, require_host: bool) -> None:
    before = len(srv.calls())
    got = send(srv, case, mode)
    assert got.closed, f"the server kept the connection open after EOF: {got!r}"
    responses, rest = parse_responses(got)
    assert rest == b"", f"bytes after the last response: {rest!r}"
    expected_calls = []
    statuses = []
    for r in case.expect["requests"]:
        if require_host and needs_host(r):
            statuses.append(400)  # refused, and the connection ends there
            break
        statuses.append(200)
        expected_calls.append(f"{r['method']} {r['uri']}")
    assert [r.status for r in responses] == statuses, responses
    reached = [r.json() for r in responses if r.status == 200]
    assert reached == [expected_env(r) for r in case.expect["requests"][: len(reached)]]
    assert srv.calls()[before:] == expected_calls


@pytest.mark.parametrize(("case", "mode"), valid_params(require_host=True))
def test_valid_case_default_server(case: Case, mode: str, shared_server) -> None:
    """Default settings: HTTP/1.1 without Host is refused with 400, everything else reaches the app."""
    check_valid(shared_server(ECHO), case, mode, require_host=True)


@pytest.mark.parametrize(("case", "mode"), valid_params(require_host=False))
def test_valid_case_without_require_host(case: Case, mode: str, shared_server) -> None:
    """--require-host false: every valid case reaches the app."""
    check_valid(shared_server(ECHO, *NO_HOST), case, mode, require_host=False)


@pytest.mark.parametrize("case", DEVIATING, ids=lambda c: c.name)
def test_documented_deviation_is_refused(case: Case, shared_server) -> None:
    srv = shared_server(ECHO, *NO_HOST)
    before = len(srv.calls())
    got = send(srv, case, "whole")
    responses, _ = parse_responses(got)
    assert got.closed
    assert len(responses) == 1 and 400 <= responses[0].status < 600, responses
    assert srv.calls()[before:] == []


def expected_statuses(case: Case) -> set[int]:
    err = case.expect["error"]
    if err == "LimitRequestLine":
        return {414}
    if err == "LimitRequestHeaders":
        return {431}
    return {400, 417, 501}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", [c for c in INVALID if c.name not in INCOMPLETE], ids=lambda c: c.name)
def test_invalid_case_is_refused(case: Case, mode: str, shared_server) -> None:
    srv = shared_server(ECHO, *NO_HOST, "--header-timeout", "1")
    before = len(srv.calls())
    got = send(srv, case, mode)
    assert got.closed, f"connection still open: {got!r}"
    responses, rest = parse_responses(got)
    assert len(responses) == 1 and rest == b"", (responses, rest)
    assert responses[0].status in expected_statuses(case), responses[0]
    assert responses[0].header("connection") == "close"
    assert srv.calls()[before:] == []


@pytest.mark.parametrize("case", [c for c in INVALID if c.name in INCOMPLETE], ids=lambda c: c.name)
def test_incomplete_case_times_out(case: Case, shared_server) -> None:
    """The bytes end early and the client stays: after --header-timeout (1 s) the server
    answers 408 or just closes, and the app never gets the request. Both modes at once."""
    srv = shared_server(ECHO, *NO_HOST, "--header-timeout", "1")
    before = len(srv.calls())
    results: dict[str, Received] = {}

    def run(mode: str) -> None:
        results[mode] = send(srv, case, mode, timeout=5.0, half_close=False)

    threads = [threading.Thread(target=run, args=(m,)) for m in MODES]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    for mode in MODES:
        got = results[mode]
        assert got.closed, f"{mode}: not closed within 5 s: {got!r}"
        responses, rest = parse_responses(got)
        assert rest == b""
        assert [r.status for r in responses] in ([], [408]), (mode, responses)
    assert srv.calls()[before:] == []
