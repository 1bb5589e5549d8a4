"""The fresh-hit hot path (ProxyCache.fresh_answer, cache_store.Entry.fresh_hit): the same bytes
as the general path, made once per stored head and Age second, and only where freshness alone
decides."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from prefork_lb.proxy import cache as cache_mod
from prefork_lb.proxy.cache import SEEN, ProxyCache
from prefork_lb.proxy.cache_rules import cache_status
from prefork_lb.proxy.cache_store import CacheStore, Entry, plain_request

T0 = 1_000_000.0
RES = [("cache-control", b"public, max-age=60"), ("content-length", b"2"), ("age", b"5")]


@dataclass
class Req:
    method: str = "GET"
    target: bytes = b"/a"
    host: bytes | None = b"example.com"
    version: str = "1.1"
    keep_alive: bool = True
    headers: list[tuple[str, bytes, bytes]] = field(default_factory=list)
    memo: dict[object, Any] | None = None


def entry(headers: list[tuple[str, bytes]] = RES, status: int = 200) -> Entry:
    store = CacheStore(capacity=1 << 20, max_object=1 << 20)
    got = store.store("GET", ("http", "example.com", "/a"), [], status, headers, b"ok", T0 - 1, T0)
    assert got is not None
    return got


@pytest.mark.parametrize(
    ("req", "close", "later"),
    [
        (Req(), False, 0.0),
        (Req(), True, 12.7),
        (Req(method="HEAD"), False, 3.0),
        (Req(keep_alive=False), False, 0.0),
        (Req(version="1.0"), False, 50.0),
    ],
)
def test_the_same_bytes_as_the_general_path(req: Req, close: bool, later: float) -> None:
    e = entry()
    now = T0 + later
    fast = e.fresh_hit(now, req.method == "HEAD", cache_mod._connection(req, close))
    age = 5 + 1 + later  # Age 5 and a second's response delay, then the time held
    ttl = 60 - age
    body = b"" if req.method == "HEAD" else e.body
    general = cache_mod._response(req, e.status, e.headers, body, age, cache_status(hit=True, ttl=ttl), close)
    assert fast == general


def test_stale_and_no_cache_are_left_to_the_general_path() -> None:
    e = entry()
    assert e.fresh_hit(T0 + 54.0, False, b"") is None  # age 60 of 60: stale
    assert entry([("cache-control", b"max-age=60, no-cache")]).fresh_hit(T0, False, b"") is None
    assert entry([("cache-control", b"no-store")]).fresh_hit(T0, False, b"") is None  # no lifetime


def test_the_bytes_are_made_again_each_second_and_after_a_refresh() -> None:
    e = entry()
    first = e.fresh_hit(T0 + 0.3, False, b"")
    assert e.fresh_hit(T0 + 0.6, False, b"") is first  # the same Age and ttl: the same object
    later = e.fresh_hit(T0 + 1.0, False, b"")
    assert later is not None and b"age: 7\r\n" in later and b"ttl=53\r\n" in later
    memo = e.memo()
    e.headers = [("cache-control", b"max-age=600"), ("content-length", b"2")]  # as refresh() does
    refreshed = e.fresh_hit(T0 + 1.0, False, b"")
    assert e.memo() is not memo
    assert refreshed is not None and b"ttl=598" in refreshed and b"max-age=600" in refreshed


def test_an_unknown_status_has_an_empty_reason() -> None:
    hit = entry(status=299).fresh_hit(T0, False, b"")
    assert hit is not None and hit.startswith(b"HTTP/1.1 299 \r\n")


@pytest.mark.parametrize(
    ("headers", "plain"),
    [
        ([], True),
        ([("accept", b"*/*"), ("user-agent", b"x")], True),
        ([("cache-control", b"max-age=0")], False),
        ([("pragma", b"no-cache")], False),
        ([("if-none-match", b'"v"')], False),
        ([("if-modified-since", b"Thu, 01 Jan 2026 00:00:00 GMT")], False),
    ],
)
def test_plain_requests(headers: list[tuple[str, bytes]], plain: bool) -> None:
    assert plain_request(headers) is plain


def filled() -> ProxyCache:
    cache = ProxyCache(1, 64)
    res = [(b"Cache-Control", b"max-age=60"), (b"Content-Length", b"2")]
    assert cache.wants(Req(), "http", 200, res)
    cache.keep(Req(), "http", 200, res, b"ok", cache_mod._wall())
    return cache


def test_fresh_answer_counts_a_hit_and_keeps_what_the_head_gives_in_its_memo() -> None:
    cache = filled()
    req = Req(memo={})
    hit = cache.fresh_answer(req, "http")
    assert hit is not None and hit.endswith(b"\r\n\r\nok") and cache.store.counts.hits == 1
    assert req.memo is not None
    assert req.memo[SEEN][:2] == ("http", ("http", "example.com", "/a"))
    assert cache.answer(req, "http") is not None and cache.store.counts.hits == 2
    assert cache.fresh_answer(req, "https") is None  # another scheme: another key, nothing stored
    assert req.memo[SEEN][0] == "https"


def test_fresh_answer_leaves_the_rest_to_answer() -> None:
    cache = filled()
    conditional = Req(headers=[("if-none-match", b"if-none-match", b"*")])
    assert cache.fresh_answer(conditional, "http") is None
    got = cache.answer(conditional, "http")
    assert got is not None and got.startswith(b"HTTP/1.1 304")
    assert cache.fresh_answer(Req(target=b"/b"), "http") is None  # not stored
    assert cache.fresh_answer(Req(method="POST"), "http") is None  # bypasses the cache
    assert cache.store.counts.hits == 1 and cache.store.counts.misses == 0


def test_lookup_fast_path_matches_the_method_rules() -> None:
    store = CacheStore(capacity=1 << 20, max_object=1 << 20)
    key = ("http", "h", "/")
    assert store.store("HEAD", key, [], 200, RES, b"", T0, T0) is not None
    assert store.lookup("GET", key, []).miss == "vary-miss"  # a GET is never answered by a HEAD
    assert store.lookup("HEAD", key, []).entry is not None
    store.invalidate(key)
    assert store.store("GET", key, [], 200, RES, b"ok", T0, T0) is not None
    found = store.lookup("HEAD", key, [])
    assert found.entry is not None and found is store.lookup("GET", key, [])


def test_the_bytes_kept_per_entry_are_bounded() -> None:
    e = entry()
    for i in range(10):
        assert e.fresh_hit(T0, False, b"x-%d: 1\r\n" % i) is not None
    assert len(e.memo().sent) == 8


def test_the_general_path_gives_an_unknown_status_an_empty_reason() -> None:
    cache = ProxyCache(1, 64)  # 299 is never stored by the rules: put directly
    now = cache_mod._wall()
    cache.store.store("GET", ("http", "example.com", "/a"), [], 299, RES, b"ok", now, now)
    directed = Req(headers=[("cache-control", b"cache-control", b"max-stale")])
    got = cache.answer(directed, "http")
    assert got is not None and got.startswith(b"HTTP/1.1 299 \r\n")


def test_extra_lines_such_as_the_request_id_are_in_both_paths_and_not_memoised() -> None:
    e = entry()
    rid = b"x-request-id: abc-1\r\n"
    fast = e.fresh_hit(T0, False, b"", rid)
    general = cache_mod._response(
        Req(), e.status, e.headers, e.body, 6, cache_status(hit=True, ttl=54), False, rid
    )
    assert fast == general and fast is not None and fast.endswith(rid + b"\r\nok")
    assert e.fresh_hit(T0, False, b"", b"x-request-id: abc-2\r\n") != fast
    assert e.fresh_hit(T0, False, b"") == fast.replace(rid, b"")
