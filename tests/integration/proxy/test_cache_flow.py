"""The response cache's request flow against a real recording backend: revalidation with the
stored validators, stale-while-revalidate and stale-if-error, ``Cache-Status`` on forwarded
responses, invalidation by unsafe methods, request coalescing, and what bypasses the cache.

Entries are made stale without waiting: the backend's ``Age`` is past its ``max-age``. See
conftest.py for the fixtures, backends.py for ``/validated`` (answers 304 to a matching
condition) and ``fail_status``."""

from __future__ import annotations

import re
import threading
from urllib.parse import quote

import pytest

from tests.helpers import wait_for
from tests.integration.proxy.driver import http_request


def target(path: str, h: tuple[str, ...] = (), n: tuple[str, ...] = ()) -> str:
    """``path`` with ``h`` (headers of the 200) and ``n`` (headers of a 304) for the backend."""
    return path + "?" + "&".join([*("h=" + quote(x) for x in h), *("n=" + quote(x) for x in n)])


STALE_ETAG = ("Cache-Control: max-age=5", 'ETag: "v1"', "Age: 100")
REFRESHED = ("Cache-Control: max-age=60", "Age: 0")


@pytest.fixture
def cached(start_proxy, backends):  # type: ignore[no-untyped-def]
    b = backends(1)[0]
    p = start_proxy([b], "--health-check-interval", "0", "--cache-size", "1")
    return p, b


def test_a_stale_entry_is_revalidated_and_a_304_answers_from_the_cache(cached) -> None:  # type: ignore[no-untyped-def]
    p, b = cached
    t = target("/validated", STALE_ETAG, REFRESHED)
    first = http_request(p.port, target=t)
    assert first.status == 200 and first.header("cache-status") == "prefork_lb; fwd=uri-miss; stored"
    second = http_request(p.port, target=t)
    assert second.status == 200 and second.body == b.name.encode()
    assert second.header("cache-status") == "prefork_lb; fwd=stale; fwd-status=304"
    sent = b.seen("/validated")
    assert len(sent) == 2 and sent[1].header("if-none-match") == '"v1"'
    # The 304's fields updated the entry (its sequence number, its freshness): now a hit.
    assert second.header("x-request-seq") == "2"
    third = http_request(p.port, target=t)
    assert (third.header("cache-status") or "").startswith("prefork_lb; hit; ttl=")
    assert third.header("x-request-seq") == "2" and len(b.seen("/validated")) == 2


def test_a_head_is_revalidated_like_a_get_and_answered_without_a_body(cached) -> None:  # type: ignore[no-untyped-def]
    p, b = cached
    t = target("/validated", STALE_ETAG, REFRESHED)
    assert http_request(p.port, target=t).status == 200  # stored, stale at once
    head = http_request(p.port, method="HEAD", target=t)
    assert head.status == 200 and head.body == b""
    assert head.header("cache-status") == "prefork_lb; fwd=stale; fwd-status=304"
    sent = b.seen("/validated")
    assert [r.method for r in sent] == ["GET", "HEAD"] and sent[1].header("if-none-match") == '"v1"'
    # The 304 refreshed the stored GET response: a GET and a HEAD are hits now.
    get = http_request(p.port, target=t)
    assert (get.header("cache-status") or "").startswith("prefork_lb; hit; ttl=")
    assert get.header("x-request-seq") == "2" and get.body == b.name.encode()
    again = http_request(p.port, method="HEAD", target=t)
    assert (again.header("cache-status") or "").startswith("prefork_lb; hit; ttl=") and again.body == b""
    assert len(b.seen("/validated")) == 2


def test_the_clients_own_condition_is_answered_after_revalidation(cached) -> None:  # type: ignore[no-untyped-def]
    p, b = cached
    t = target("/validated", (*STALE_ETAG, "Cache-Control: max-age=0"))  # stays stale after a 304
    assert http_request(p.port, target=t).status == 200
    matching = http_request(p.port, target=t, headers=[("If-None-Match", '"v1"')])
    assert matching.status == 304 and matching.body == b""
    other = http_request(p.port, target=t, headers=[("If-None-Match", '"zzz"')])
    assert other.status == 200 and other.body == b.name.encode()
    assert other.header("cache-status") == "prefork_lb; fwd=stale; fwd-status=304"
    # The backend was asked with the stored validator, never with the client's own.
    assert [r.header("if-none-match") for r in b.seen("/validated")] == [None, '"v1"', '"v1"']


def test_no_cache_is_revalidated_every_time_and_so_is_a_requests_no_cache(cached) -> None:  # type: ignore[no-untyped-def]
    p, b = cached
    t = target("/validated", ("Cache-Control: no-cache", 'ETag: "n1"'))
    assert http_request(p.port, target=t).header("cache-status") == "prefork_lb; fwd=uri-miss; stored"
    for _ in range(2):
        r = http_request(p.port, target=t)
        assert r.status == 200 and r.header("cache-status") == "prefork_lb; fwd=stale; fwd-status=304"
    fresh = target("/validated", ("Cache-Control: max-age=60", 'ETag: "f1"'))
    http_request(p.port, target=fresh)
    r = http_request(p.port, target=fresh, headers=[("Cache-Control", "no-cache")])
    assert r.status == 200 and r.header("cache-status") == "prefork_lb; fwd=request; fwd-status=304"
    assert len(b.seen("/validated")) == 5


def test_a_stale_entry_without_validators_is_replaced(cached) -> None:  # type: ignore[no-untyped-def]
    p, b = cached
    t = target("/with-headers", ("Cache-Control: max-age=5", "Age: 100"))
    seqs = []
    for reason in ("uri-miss", "stale", "stale"):
        r = http_request(p.port, target=t)
        assert r.header("cache-status") == f"prefork_lb; fwd={reason}; stored"
        seqs.append(r.header("x-request-seq"))
    assert seqs == ["1", "2", "3"]
    assert not any(rec.has("if-none-match") for rec in b.seen("/with-headers"))


def test_stale_while_revalidate_serves_at_once_and_refreshes_once(start_proxy, backends) -> None:  # type: ignore[no-untyped-def]
    b = backends(1, delay=0.3)[0]
    p = start_proxy([b], "--health-check-interval", "0", "--cache-size", "1")
    t = target(
        "/validated",
        ("Cache-Control: max-age=5, stale-while-revalidate=1000", 'ETag: "s1"', "Age: 100"),
        REFRESHED,
    )
    assert http_request(p.port, target=t).status == 200
    for _ in range(5):
        r = http_request(p.port, target=t)
        assert r.status == 200 and r.header("x-request-seq") == "1"  # the stale one
        assert re.fullmatch(r"prefork_lb; hit; ttl=-\d+", r.header("cache-status") or ""), r.header(
            "cache-status"
        )
    # One background revalidation, whatever the number of stale answers.
    wait_for(
        lambda: http_request(p.port, target=t).header("x-request-seq") == "2", what="the refreshed entry"
    )
    assert len(b.seen("/validated")) == 2
    assert b.seen("/validated")[1].header("if-none-match") == '"s1"'


@pytest.mark.parametrize("failure", ["503", "500", "refused"])
def test_stale_if_error_serves_the_stale_entry_when_the_backend_fails(cached, failure: str) -> None:  # type: ignore[no-untyped-def]
    p, b = cached
    t = target("/with-headers", ("Cache-Control: max-age=5, stale-if-error=1000", "Age: 100"))
    assert http_request(p.port, target=t).status == 200
    if failure == "refused":
        b.stop()
    else:
        b.fail_status = int(failure)
    r = http_request(p.port, target=t)
    assert r.status == 200 and r.body == b.name.encode(), r
    m = re.fullmatch(
        r'prefork_lb; fwd=stale; fwd-status=(\d+); detail="stale-if-error"', r.header("cache-status") or ""
    )
    assert m is not None, r.header("cache-status")
    assert m.group(1) == failure if failure != "refused" else m.group(1) in ("502", "503", "504")


def test_must_revalidate_disables_stale_if_error(cached) -> None:  # type: ignore[no-untyped-def]
    p, b = cached
    t = target(
        "/with-headers", ("Cache-Control: max-age=5, stale-if-error=1000, must-revalidate", "Age: 100")
    )
    assert http_request(p.port, target=t).status == 200
    b.fail_status = 503
    r = http_request(p.port, target=t)
    assert r.status == 503 and r.header("cache-status") == "prefork_lb; fwd=stale"


def test_cache_status_on_forwarded_responses(cached) -> None:  # type: ignore[no-untyped-def]
    p, b = cached
    plain = http_request(p.port, target=target("/with-headers", ("X-A: 1",)))
    assert plain.header("cache-status") == "prefork_lb; fwd=uri-miss"
    post = http_request(p.port, method="POST", target="/sha", body=b"x")
    assert post.header("cache-status") == "prefork_lb; fwd=method"
    t = target("/with-headers", ("Cache-Control: max-age=60", "Vary: Accept"))
    assert http_request(p.port, target=t, headers=[("Accept", "a")]).header("cache-status") == (
        "prefork_lb; fwd=uri-miss; stored"
    )
    assert http_request(p.port, target=t, headers=[("Accept", "b")]).header("cache-status") == (
        "prefork_lb; fwd=vary-miss; stored"
    )
    assert (
        http_request(p.port, target=t, headers=[("Accept", "a")]).header("cache-status") or ""
    ).startswith("prefork_lb; hit")


def test_an_unsafe_method_invalidates_the_uri_and_its_location(cached) -> None:  # type: ignore[no-untyped-def]
    p, b = cached
    one = target("/with-headers", ("Cache-Control: max-age=60", "X-Which: one"))
    two = target("/with-headers", ("Cache-Control: max-age=60", "X-Which: two"))
    elsewhere = target("/with-headers", ("Cache-Control: max-age=60", "X-Which: three"))
    for t in (one, two, elsewhere):
        http_request(p.port, target=t)
    b.fail_status = 500  # an error does not invalidate
    assert http_request(p.port, method="DELETE", target=one).status == 500
    assert (http_request(p.port, target=one).header("cache-status") or "").startswith("prefork_lb; hit")
    b.fail_status = 0
    # A POST to ``one`` whose answer names ``two`` (same host) and ``elsewhere`` on another host.
    post = (
        one
        + "&h="
        + quote("Location: " + two)
        + "&h="
        + quote("Content-Location: http://other.example" + elsewhere)
    )
    assert http_request(p.port, method="POST", target=post, body=b"x").status == 200
    assert http_request(p.port, method="PUT", target=one, body=b"x").status == 200
    assert http_request(p.port, target=one).header("cache-status") == "prefork_lb; fwd=uri-miss; stored"
    assert http_request(p.port, target=two).header("cache-status") == "prefork_lb; fwd=uri-miss; stored"
    assert (http_request(p.port, target=elsewhere).header("cache-status") or "").startswith("prefork_lb; hit")


def concurrently(port: int, t: str, n: int) -> list[tuple[int, bytes, str | None]]:
    """``n`` GETs of ``t`` at once, each on its own connection."""
    out: list[tuple[int, bytes, str | None]] = []
    lock = threading.Lock()
    start = threading.Barrier(n)

    def one() -> None:
        start.wait(timeout=10)
        r = http_request(port, target=t, timeout=15)
        with lock:
            out.append((r.status, r.body, r.header("cache-status")))

    threads = [threading.Thread(target=one) for _ in range(n)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=30)
    return out


def test_concurrent_misses_are_coalesced_into_one_backend_request(start_proxy, backends) -> None:  # type: ignore[no-untyped-def]
    b = backends(1, delay=0.5)[0]
    p = start_proxy([b], "--health-check-interval", "0", "--cache-size", "1")
    got = concurrently(p.port, target("/with-headers", ("Cache-Control: max-age=60",)), 10)
    assert len(got) == 10 and all(s == 200 and body == b.name.encode() for s, body, _ in got), got
    assert len(b.seen("/with-headers")) == 1
    assert sum(1 for *_, cs in got if cs == "prefork_lb; fwd=uri-miss; stored") == 1


def test_waiters_go_to_the_backend_when_the_response_is_not_stored(start_proxy, backends) -> None:  # type: ignore[no-untyped-def]
    b = backends(1, delay=0.3)[0]
    p = start_proxy([b], "--health-check-interval", "0", "--cache-size", "1")
    got = concurrently(p.port, target("/with-headers", ("Cache-Control: private, max-age=60",)), 5)
    assert sorted(s for s, *_ in got) == [200] * 5
    assert len(b.seen("/with-headers")) == 5


def test_bodies_upgrades_and_ranges_bypass_the_cache(cached) -> None:  # type: ignore[no-untyped-def]
    p, b = cached
    t = target("/with-headers", ("Cache-Control: max-age=60",))
    http_request(p.port, target=t)
    for headers, body in [
        ([("Range", "bytes=0-1")], b""),
        ([], b"abc"),
        ([("Upgrade", "websocket"), ("Connection", "Upgrade")], b""),
    ]:
        r = http_request(p.port, target=t, headers=headers, body=body)
        assert r.status == 200 and r.header("cache-status") == "prefork_lb; fwd=bypass", r
    assert len(b.seen("/with-headers")) == 4
