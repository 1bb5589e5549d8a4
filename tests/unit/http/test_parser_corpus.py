"""gunicorn's request corpus through the sans-IO parser: whole, byte by byte, with trailing data."""

from __future__ import annotations

import pytest

from prefork_lb.http.errors import HTTPError
from prefork_lb.http.parser import Limits, RequestParser
from tests.corpus import DEVIATIONS, Case, load

VALID = load("valid")
INVALID = load("invalid")
# Inputs that end early: on a live connection the server waits for more bytes (then times out).
INCOMPLETE = {"invalid/001", "invalid/rfc9112_chunked_missing_final_crlf_01"}
NO_HOST = Limits(require_host=False)


def feed_all(case: Case, mode: str, limits: Limits) -> list[dict]:
    parser = RequestParser(limits)
    data = case.raw
    if mode == "whole":
        parser.feed(data)
    elif mode == "bytewise":
        for i in range(len(data)):
            parser.feed(data[i : i + 1])
    elif mode == "trailing":
        # Extra bytes after the case must not change what the case itself parses to.
        parser.feed(data)
        try:
            parser.feed(b"GET /extra HTTP/1.1\r\nHost: x\r\n\r\n")
        except HTTPError:
            pass
    if mode != "trailing" and parser.error is not None:
        # An error behind queued requests: the server answers it once those are served.
        raise parser.error
    got = []
    for req in parser.requests:
        if not req.complete:
            continue
        path, query = req.split_target()
        got.append(
            {
                "method": req.method,
                "uri": req.target.decode("latin-1"),
                "version": req.version,
                "path": path.decode("latin-1"),
                "query": query.decode("latin-1"),
                "headers": [
                    [raw.decode("latin-1").upper(), v.decode("latin-1").strip(" \t")]
                    for _, raw, v in req.headers
                    if b"_" not in raw
                ],
                "body": b"".join(req.chunks).decode("latin-1"),
            }
        )
    return got


def _expected(case: Case) -> list[dict]:
    out = []
    for r in case.expect["requests"]:
        path = r["path"]
        if r["target_form"] in ("authority", "asterisk"):
            path = ""
        out.append(
            {
                "method": r["method"],
                "uri": r["uri"],
                "version": r["version"],
                "path": path,
                "query": r["query"],
                "headers": r["headers"],
                "body": r["body"],
            }
        )
    return out


@pytest.mark.parametrize("mode", ["whole", "bytewise", "trailing"])
@pytest.mark.parametrize("case", [c for c in VALID if c.name not in DEVIATIONS], ids=lambda c: c.name)
def test_valid_case_parses_as_expected(case: Case, mode: str) -> None:
    got = feed_all(case, mode, NO_HOST)
    exp = _expected(case)
    if mode == "trailing" and len(got) > len(exp):
        got = got[: len(exp)]  # the extra request parsed after a keep-alive case
    assert got == exp


@pytest.mark.parametrize(
    "case", [c for c in VALID if c.needs_host and c.name not in DEVIATIONS], ids=lambda c: c.name
)
def test_http11_without_host_is_refused_by_default(case: Case) -> None:
    with pytest.raises(HTTPError) as info:
        feed_all(case, "whole", Limits())
    assert info.value.status == 400


@pytest.mark.parametrize("case", [c for c in VALID if c.name in DEVIATIONS], ids=lambda c: c.name)
def test_documented_deviations_are_refused(case: Case) -> None:
    with pytest.raises(HTTPError) as info:
        feed_all(case, "whole", NO_HOST)
    assert 400 <= info.value.status < 600


@pytest.mark.parametrize("mode", ["whole", "bytewise"])
@pytest.mark.parametrize("case", INVALID, ids=lambda c: c.name)
def test_invalid_case_is_refused(case: Case, mode: str) -> None:
    if case.name in INCOMPLETE:
        # Never a complete request: nothing may reach the app.
        assert [r for r in feed_all(case, mode, NO_HOST) if r] == []
        return
    with pytest.raises(HTTPError) as info:
        feed_all(case, mode, NO_HOST)
    status = info.value.status
    err = case.expect["error"]
    if err == "LimitRequestLine":
        assert status == 414
    elif err == "LimitRequestHeaders":
        assert status == 431
    else:
        assert status in (400, 417, 501), status


def test_error_behind_a_complete_request_waits_for_it() -> None:
    parser = RequestParser()
    parser.feed(b"GET /ok HTTP/1.1\r\nHost: a\r\n\r\nGET /bad HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n")
    assert [r.target for r in parser.requests] == [b"/ok"]
    assert parser.stopped and parser.error is not None and parser.error.status == 400
