"""gunicorn's request corpus over real sockets to the ASGI engine's echo app
(tests/apps_asgi.py), with the expectations tests/integration/test_corpus_server.py has for the
WSGI engine: valid cases reach the app with the method, path (decoded), query, headers and body
the corpus says, in order; invalid ones get the same 4xx (or close) and never reach the app.
Each case goes out whole and byte by byte.
"""

from __future__ import annotations

import threading
from typing import Any
from urllib.parse import unquote_to_bytes

import pytest

from prefork_lb.http.errors import HTTPError
from prefork_lb.http.parser import Limits, RequestParser
from tests.asgi_server import AsgiProcess
from tests.corpus import DEVIATIONS, Case, load
from tests.integration.test_corpus_server import INCOMPLETE, MODES, expected_statuses, needs_host
from tests.server import Received, exchange, parse_responses

ECHO = "tests.apps_asgi:echo"
NO_HOST = {"limits": {"require_host": False}}
VALID = [c for c in load("valid") if c.name not in DEVIATIONS]
DEVIATING = [c for c in load("valid") if c.name in DEVIATIONS]
INVALID = load("invalid")


def expected_scope(r: dict[str, Any]) -> dict[str, Any]:
    """What echo must report for one corpus request."""
    path = "" if r["target_form"] in ("authority", "asterisk") else r["path"]
    decoded = unquote_to_bytes(path.encode("latin-1"))
    try:
        text = decoded.decode("utf-8")
    except UnicodeDecodeError:
        text = decoded.decode("latin-1")
    return {
        "method": r["method"],
        "path": text,
        "raw_path": path,
        "query_string": r["query"],
        "http_version": r["version"][5:],
        "headers": [[n.lower(), v] for n, v in r["headers"]],
        "body": r["body"],
    }


def wsgi_answer(case: Case, mode: str) -> tuple[int, bytes]:
    """The status and body the WSGI engine answers ``case`` with: the parser's error, sent by
    prefork_lb.worker.connection as simple_response(status, detail)."""
    parser = RequestParser(Limits(require_host=False))
    pieces = [case.raw[i : i + 1] for i in range(len(case.raw))] if mode == "bytewise" else [case.raw]
    try:
        for piece in pieces:
            parser.feed(piece)
    except HTTPError as exc:
        return exc.status, exc.detail.encode() + b"\n"
    assert parser.error is not None, case.name
    return parser.error.status, parser.error.detail.encode() + b"\n"


def send(srv: AsgiProcess, case: Case, mode: str, timeout: float = 5.0, half_close: bool = True) -> Received:
    return exchange(srv.port, case.raw, timeout, bytewise=mode == "bytewise", half_close=half_close)


def check_valid(srv: AsgiProcess, case: Case, mode: str, require_host: bool) -> None:
    before = len(srv.calls())
    got = send(srv, case, mode)
    assert got.closed, f"the server kept the connection open after EOF: {got!r}"
    responses, rest = parse_responses(got)
    assert rest == b"", f"bytes after the last response: {rest!r}"
    statuses = []
    expected_calls = []
    for r in case.expect["requests"]:
        if require_host and needs_host(r):
            statuses.append(400)
            break
        statuses.append(200)
        expected_calls.append(r)
    assert [r.status for r in responses] == statuses, responses
    reached = [
        {k: v for k, v in r.json().items() if k in expected_scope(case.expect["requests"][0])}
        for r in responses
        if r.status == 200
    ]
    assert reached == [expected_scope(r) for r in expected_calls]
    assert len(srv.calls()) - before == len(expected_calls)


def _params() -> list[Any]:
    return [pytest.param(c, m, id=f"{c.name}-{m}") for c in VALID for m in MODES]


@pytest.mark.parametrize(("case", "mode"), _params())
def test_valid_case_default_limits(case: Case, mode: str, asgi_shared) -> None:
    check_valid(asgi_shared(ECHO), case, mode, require_host=True)


@pytest.mark.parametrize(("case", "mode"), _params())
def test_valid_case_without_require_host(case: Case, mode: str, asgi_shared) -> None:
    check_valid(asgi_shared(ECHO, **NO_HOST), case, mode, require_host=False)


@pytest.mark.parametrize("case", DEVIATING, ids=lambda c: c.name)
def test_documented_deviation_is_refused(case: Case, asgi_shared) -> None:
    srv = asgi_shared(ECHO, **NO_HOST)
    before = len(srv.calls())
    got = send(srv, case, "whole")
    responses, _ = parse_responses(got)
    assert got.closed
    assert len(responses) == 1 and 400 <= responses[0].status < 600, responses
    assert srv.calls()[before:] == []


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", [c for c in INVALID if c.name not in INCOMPLETE], ids=lambda c: c.name)
def test_invalid_case_is_refused_as_the_wsgi_engine_does(case: Case, mode: str, asgi_shared) -> None:
    srv = asgi_shared(ECHO, header_timeout=1.0, **NO_HOST)
    before = len(srv.calls())
    got = send(srv, case, mode)
    assert got.closed, f"connection still open: {got!r}"
    responses, rest = parse_responses(got)
    assert len(responses) == 1 and rest == b"", (responses, rest)
    assert responses[0].status in expected_statuses(case), responses[0]
    assert (responses[0].status, responses[0].body) == wsgi_answer(case, mode)
    assert responses[0].header("connection") == "close"
    assert srv.calls()[before:] == []


@pytest.mark.parametrize("case", [c for c in INVALID if c.name in INCOMPLETE], ids=lambda c: c.name)
def test_incomplete_case_times_out(case: Case, asgi_shared) -> None:
    srv = asgi_shared(ECHO, header_timeout=1.0, **NO_HOST)
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
