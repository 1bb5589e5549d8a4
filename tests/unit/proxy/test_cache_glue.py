"""prefork_lb.proxy.cache.ProxyCache: answers from the store, what it keeps, the bytes it sends."""

from __future__ import annotations

from dataclasses import dataclass, field
from time import time

from prefork_lb.proxy.cache import ProxyCache
from prefork_lb.proxy.cache_directives import format_http_date
from prefork_lb.proxy.cache_plan import Plan


@dataclass
class Req:
    method: str = "GET"
    target: bytes = b"/a"
    host: bytes | None = b"example.com"
    version: str = "1.1"
    keep_alive: bool = True
    headers: list[tuple[str, bytes, bytes]] = field(default_factory=list)


def hdr(*pairs: tuple[str, str]) -> list[tuple[str, bytes, bytes]]:
    return [(n.lower(), n.encode(), v.encode()) for n, v in pairs]


RES = [(b"Cache-Control", b"max-age=60"), (b"Content-Length", b"2"), (b"Age", b"0")]


def filled(res: list[tuple[bytes, bytes]] = RES) -> ProxyCache:
    cache = ProxyCache(1, 64)
    req = Req()
    assert cache.wants(req, "http", 200, res)
    cache.keep(req, "http", 200, res, b"ok", time())
    return cache


def test_a_miss_then_a_hit_with_age_and_cache_status() -> None:
    cache = ProxyCache(1, 64)
    miss = cache.answer(Req(), "http")
    assert isinstance(miss, Plan) and miss.fwd == "uri-miss" and miss.lock is not None
    assert cache.store.counts.misses == 1
    cache.wants(Req(), "http", 200, RES)
    cache.keep(Req(), "http", 200, RES, b"ok", time())
    hit = cache.answer(Req(), "http")
    assert isinstance(hit, bytes)
    head, _, body = hit.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == b"HTTP/1.1 200 OK" and body == b"ok"
    assert lines.count(b"age: 0") == 1  # the stored Age is replaced, not repeated
    assert any(line.startswith(b"cache-status: prefork_lb; hit; ttl=") for line in lines)
    assert cache.store.counts.hits == 1


def test_head_from_the_stored_get_has_no_body() -> None:
    hit = filled().answer(Req(method="HEAD"), "http")
    assert hit is not None and hit.endswith(b"\r\n\r\n") and b"content-length: 2" in hit.lower()


def test_connection_close_and_http_1_0_keep_alive() -> None:
    cache = filled()
    closing = cache.answer(Req(keep_alive=False), "http")
    assert closing is not None and b"connection: close\r\n" in closing
    draining = cache.answer(Req(), "http", close=True)
    assert draining is not None and b"connection: close\r\n" in draining
    old = cache.answer(Req(version="1.0"), "http")
    assert old is not None and b"connection: keep-alive\r\n" in old


def test_conditional_request_is_answered_304_without_body() -> None:
    cache = filled([*RES, (b"ETag", b'"v"')])
    r = cache.answer(Req(headers=hdr(("If-None-Match", '"v"'))), "http")
    assert r is not None and r.startswith(b"HTTP/1.1 304 Not Modified\r\n") and r.endswith(b"\r\n\r\n")


def test_stale_is_a_miss_unless_max_stale() -> None:
    old = format_http_date(time() - 120)
    cache = filled([(b"Cache-Control", b"max-age=60"), (b"Date", old)])
    stale = cache.answer(Req(), "http")
    assert isinstance(stale, Plan) and stale.fwd == "stale" and stale.entry is not None
    assert not stale.conditional  # no validator to send
    assert isinstance(cache.answer(Req(headers=hdr(("Cache-Control", "max-stale"))), "http"), bytes)
    assert cache.store.counts.stale == 1 and cache.store.counts.misses == 1


def test_bypassed_requests_and_unwanted_responses() -> None:
    cache = filled()
    no_host = cache.answer(Req(host=None), "http")
    assert isinstance(no_host, Plan) and no_host.key is None and no_host.fwd == "bypass"
    ranged = cache.answer(Req(headers=hdr(("Range", "bytes=0-1"))), "http")
    assert isinstance(ranged, Plan) and ranged.key is None and ranged.fwd == "bypass"
    post = cache.answer(Req(method="POST"), "http")
    assert isinstance(post, Plan) and post.key is None and post.fwd == "method"
    assert not cache.wants(Req(method="HEAD"), "http", 200, RES)
    assert not cache.wants(Req(), "http", 200, [(b"Set-Cookie", b"a=1"), *RES])


def test_unknown_status_has_an_empty_reason() -> None:
    cache = ProxyCache(1, 64)
    cache.store.store("GET", cache.key(Req(), "http") or ("", "", ""), [], 299, [], b"", 0, 0)
    # status 299 is never stored by the rules; put directly, it answers with no reason phrase
    entry = cache.store.lookup("GET", ("http", "example.com", "/a"), []).entry
    assert entry is not None
    entry.headers = [("cache-control", b"max-age=60")]
    entry.request_time = entry.response_time = time()
    hit = cache.answer(Req(), "http")
    assert hit is not None and hit.startswith(b"HTTP/1.1 299 \r\n")


def test_a_stale_head_with_a_validator_is_revalidated_conditionally() -> None:
    old = format_http_date(time() - 120)
    cache = filled([(b"Cache-Control", b"max-age=60"), (b"Date", old), (b"ETag", b'"v"')])
    for method in ("GET", "HEAD"):
        plan = cache.answer(Req(method=method), "http")
        assert isinstance(plan, Plan) and plan.fwd == "stale" and plan.entry is not None
        assert plan.conditional, method
