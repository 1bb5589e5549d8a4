"""Strict parsing and limits: the shared corpus and smuggling attempts never reach a backend; header,
body and size limits. See tests/integration/proxy/driver.py for the processes and clients;
conftest.py for the fixtures.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.corpus import DEVIATIONS, load
from tests.integration.proxy.backends import Backend
from tests.integration.proxy.driver import ProxyProcess, connect, http_request, proxy_with_backend
from tests.server import HTTPStream, exchange, parse_responses

INVALID = [
    c
    for c in load("invalid")
    if c.name not in {"invalid/001", "invalid/rfc9112_chunked_missing_final_crlf_01"}
]


@pytest.fixture(scope="module")
def strict_proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ProxyProcess, Backend]]:
    with proxy_with_backend(tmp_path_factory.mktemp("strict"), "victim", "--header-timeout", "1") as pb:
        yield pb


def expected_statuses(error: str) -> set[int]:
    if error == "LimitRequestLine":
        return {414}
    if error == "LimitRequestHeaders":
        return {431}
    return {400, 413, 417, 501}


def test_invalid_corpus_requests_never_reach_a_backend(strict_proxy) -> None:
    p, b = strict_proxy
    b.clear()
    wrong: list[tuple[object, ...]] = []
    for case in INVALID:
        got = exchange(p.port, case.raw, 5)
        responses, rest = parse_responses(got)
        statuses = [r.status for r in responses]
        if (
            not got.closed
            or len(responses) != 1
            or responses[0].status not in expected_statuses(case.expect["error"])
        ):
            wrong.append((case.name, statuses, bytes(got[:120])))
        if b.seen():
            wrong.append((case.name, "reached the backend", b.seen()[0]))
            b.clear()
    assert wrong == [], wrong


SMUGGLING = {
    "cl-and-te": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n",
    "te-and-cl": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 40\r\n\r\n"
    b"0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n",
    "duplicate-cl": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\nContent-Length: 40\r\n\r\n"
    b"GET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n",
    "cl-list": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0, 40\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n",
    "obs-fold": b"GET / HTTP/1.1\r\nHost: a\r\nX-A: 1\r\n Transfer-Encoding: chunked\r\n\r\n",
    "obs-fold-te": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n",
    "te-not-last-chunked": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n",
    "te-xchunked": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n",
    "space-before-colon": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n",
    "cl-plus": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\nhello",
    "bare-lf-in-chunk": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\nhello\r\n0\r\n\r\n",
    "te-http10": b"POST / HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "nul-in-header": b"GET / HTTP/1.1\r\nHost: a\r\nX-A: a\x00b\r\n\r\n",
    "two-hosts": b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
}


@pytest.mark.parametrize("name", sorted(SMUGGLING))
def test_smuggling_attempt_is_refused_by_the_proxy(strict_proxy, name: str) -> None:
    p, b = strict_proxy
    b.clear()
    got = exchange(p.port, SMUGGLING[name], 5)
    responses, rest = parse_responses(got)
    assert got.closed, got
    assert len(responses) == 1 and 400 <= responses[0].status < 600, (responses, rest)
    assert responses[0].status != 502 and responses[0].status != 503, responses
    assert b.seen() == [], b.seen()


def test_header_timeout_applies_to_proxy_clients(strict_proxy) -> None:
    p, b = strict_proxy
    b.clear()
    # The outcome of the header timeout: closed (with a 408 or nothing) within the 6 s deadline.
    got = exchange(p.port, b"GET / HTTP/1.1\r\nHost: a\r\n", 6, half_close=False)
    assert got.closed, got
    responses, _ = parse_responses(got)
    assert not responses or responses[0].status == 408, responses
    assert b.seen() == []


def test_missing_host_is_refused_by_the_proxy(start_proxy, backends) -> None:
    b = backends(1)[0]
    p = start_proxy([b], "--health-check-interval", "0")
    got = exchange(p.port, b"GET / HTTP/1.1\r\n\r\n", 3)
    responses, _ = parse_responses(got)
    assert responses and responses[0].status == 400, got
    assert b.seen() == []


def test_request_body_limit_is_enforced_by_the_proxy(start_proxy, backends) -> None:
    b = backends(1)[0]
    p = start_proxy([b], "--health-check-interval", "0", "--limit-request-body", "1000")
    r = http_request(p.port, "POST", "/sha", body=b"x" * 2000)
    assert r.status == 413, r
    assert b.seen() == []


@pytest.mark.parametrize("pooled", [False, True], ids=["new-upstream", "pooled-upstream"])
def test_client_body_timeout(start_proxy, backends, pooled: bool) -> None:
    """A client that stops sending its body gets 408 after --client-body-timeout, whether the
    proxy had to open a backend connection for it or took one from its pool."""
    b = backends(1)[0]
    p = start_proxy(
        [b], "--health-check-interval", "0", "--client-body-timeout", "1", "--upstream-timeout", "3"
    )
    if pooled:
        assert http_request(p.port).status == 200  # leaves an idle upstream connection (fresh for a POST)
    got = exchange(
        p.port, b"POST /sha HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nab", 7, half_close=False
    )
    responses, _ = parse_responses(got)
    # The body timeout's outcome (408, or a close), not the upstream timeout's (504).
    assert got.closed and [r.status for r in responses] in ([], [408]), responses
    assert b.seen("/sha") == []  # the backend never got a whole request


@pytest.fixture(scope="module")
def lenient_proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ProxyProcess, Backend]]:
    with proxy_with_backend(tmp_path_factory.mktemp("lenient"), "echo", "--require-host", "false") as pb:
        yield pb


# CONNECT is not proxied (405 by design): the corpus' authority-form cases are left out.
VALID = [
    c
    for c in load("valid")
    if c.name not in DEVIATIONS and not any(r["method"] == "CONNECT" for r in c.expect["requests"])
]


def test_valid_corpus_requests_reach_the_backend_intact(lenient_proxy) -> None:
    """Every valid corpus case (pipelined ones too) reaches the backend with its method, target
    and body, and gets one 200 per request."""
    p, b = lenient_proxy
    wrong: list[tuple[object, ...]] = []
    for case in VALID:
        b.clear()
        expected = case.expect["requests"]
        with connect(p.port, 3) as sock:
            sock.sendall(case.raw)
            stream = HTTPStream(sock, 3)
            try:
                statuses = [stream.read_response().status for _ in expected]
            except (AssertionError, OSError) as exc:
                wrong.append((case.name, repr(exc)))
                continue
        if statuses != [200] * len(expected):
            wrong.append((case.name, statuses))
            continue
        want = [
            (r["method"], r["uri"], r["body"].encode("latin-1") if isinstance(r["body"], str) else r["body"])
            for r in expected
        ]
        have = [(r.method, r.target, r.body) for r in b.seen()]
        if have != want:
            wrong.append((case.name, "backend saw", have, "expected", want))
    assert wrong == [], wrong
