"""The proxy's response cache (``--cache-size``) against a real recording backend: a fresh hit
never reaches the backend and carries ``Age`` and ``Cache-Status``; what must not be stored for
other clients always reaches it. See conftest.py for the fixtures."""

from __future__ import annotations

import re
from urllib.parse import quote

import pytest

from tests.integration.proxy.driver import http_request


def target(path: str, *headers: str) -> str:
    return path + "?" + "&".join("h=" + quote(h) for h in headers)


@pytest.fixture
def cached(start_proxy, backends):  # type: ignore[no-untyped-def]
    b = backends(1)[0]
    p = start_proxy([b], "--health-check-interval", "0", "--cache-size", "1")
    return p, b


def test_a_fresh_response_is_answered_from_the_cache(cached) -> None:  # type: ignore[no-untyped-def]
    p, b = cached
    t = target("/with-headers", "Cache-Control: max-age=60")
    first = http_request(p.port, target=t)
    assert first.status == 200 and first.body == b.name.encode()
    second = http_request(p.port, target=t)
    assert second.status == 200 and second.body == first.body
    assert second.header("x-request-seq") == first.header("x-request-seq")
    m = re.fullmatch(r"prefork_lb; hit; ttl=(\d+)", second.header("cache-status") or "")
    assert m is not None and int(m.group(1)) <= 60, second.header("cache-status")
    assert (second.header("age") or "x").isdigit()
    assert len(b.seen("/with-headers")) == 1
    head = http_request(p.port, method="HEAD", target=t)
    assert (
        head.status == 200
        and head.body == b""
        and head.header(
            "cache-status",
        )
        is not None
    )
    assert len(b.seen("/with-headers")) == 1


def test_a_conditional_request_gets_304_from_the_cache(cached) -> None:  # type: ignore[no-untyped-def]
    p, b = cached
    t = target("/with-headers", "Cache-Control: max-age=60", 'ETag: "v1"')
    assert http_request(p.port, target=t).status == 200
    r = http_request(p.port, target=t, headers=[("If-None-Match", 'W/"v1"')])
    assert r.status == 304 and r.header("etag") == '"v1"'
    assert len(b.seen("/with-headers")) == 1


@pytest.mark.parametrize(
    "header",
    ["Cache-Control: private, max-age=60", "Cache-Control: no-store, max-age=60", "Set-Cookie: s=1"],
)
def test_what_is_not_for_other_clients_always_reaches_the_backend(cached, header: str) -> None:  # type: ignore[no-untyped-def]
    p, b = cached
    t = target("/with-headers", "Cache-Control: max-age=60", header)
    seqs = {http_request(p.port, target=t).header("x-request-seq") for _ in range(3)}
    assert len(seqs) == 3
    assert len(b.seen("/with-headers")) == 3


def test_no_explicit_freshness_and_authorization_reach_the_backend(cached) -> None:  # type: ignore[no-untyped-def]
    p, b = cached
    plain = target("/with-headers", "X-A: 1")
    for _ in range(2):
        assert http_request(p.port, target=plain).status == 200
    assert len(b.seen("/with-headers")) == 2
    auth = target("/with-headers", "Cache-Control: max-age=60")
    for _ in range(2):
        assert http_request(p.port, target=auth, headers=[("Authorization", "Basic eDp5")]).status == 200
    assert len(b.seen("/with-headers")) == 4


def test_without_cache_size_nothing_is_cached(start_proxy, backends) -> None:  # type: ignore[no-untyped-def]
    b = backends(1)[0]
    p = start_proxy([b], "--health-check-interval", "0")
    t = target("/with-headers", "Cache-Control: max-age=60")
    for _ in range(2):
        r = http_request(p.port, target=t)
        assert r.status == 200 and r.header("cache-status") is None
    assert len(b.seen("/with-headers")) == 2
