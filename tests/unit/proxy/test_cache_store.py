"""prefork_lb.proxy.cache_store: primary keys, variants, LRU by bytes, purge, counts."""

from __future__ import annotations

import pytest

from prefork_lb.proxy.cache_store import ENTRY_OVERHEAD, CacheStore, Entry, purge_prefix, purge_subject

KEY = CacheStore.primary_key("HTTP", "Example.COM", "/a?x=1")
CC = [("cache-control", b"max-age=60")]


def put(
    store: CacheStore,
    key: tuple[str, str, str] = KEY,
    body: bytes = b"hello",
    method: str = "GET",
    req: list[tuple[str, bytes]] | None = None,
    res: list[tuple[str, bytes]] | None = None,
) -> Entry | None:
    return store.store(method, key, req or [], 200, res or CC, body, 1.0, 2.0)


def big_store() -> CacheStore:
    return CacheStore(capacity=1 << 20, max_object=1 << 20)


def test_primary_key_lowercases_scheme_and_host_not_target() -> None:
    assert KEY == ("http", "example.com", "/a?x=1")
    assert CacheStore.primary_key("http", "h", "/A") != CacheStore.primary_key("http", "h", "/a")


def test_store_then_lookup_and_uri_miss() -> None:
    store = big_store()
    entry = put(store)
    assert entry is not None and entry.body == b"hello" and entry.status == 200
    assert entry.request_time == 1.0 and entry.response_time == 2.0
    found = store.lookup("GET", KEY, [])
    assert found.entry is entry and found.miss is None
    assert store.lookup("GET", ("http", "example.com", "/b"), []).miss == "uri-miss"
    assert store.counts.stored == 1 and len(store) == 1


def test_hop_by_hop_fields_are_not_stored() -> None:
    entry = put(big_store(), res=CC + [("connection", b"close"), ("keep-alive", b"5")])
    assert entry is not None and entry.headers == CC


def test_head_is_answered_from_get_and_get_never_from_head() -> None:
    store = big_store()
    head = put(store, method="HEAD", body=b"")
    assert store.lookup("GET", KEY, []).miss == "vary-miss"
    assert store.lookup("HEAD", KEY, []).entry is head
    get = put(store)
    assert store.lookup("HEAD", KEY, []).entry is get
    assert store.lookup("GET", KEY, []).entry is get


def test_rfc9111_4_1_one_entry_per_variant() -> None:
    store = big_store()
    vary = CC + [("vary", b"Accept-Encoding")]
    gz = put(store, body=b"gz", req=[("accept-encoding", b"gzip")], res=vary)
    plain = put(store, body=b"plain", res=vary)
    assert store.lookup("GET", KEY, [("accept-encoding", b"GZIP")]).entry is gz
    assert store.lookup("GET", KEY, []).entry is plain
    assert store.lookup("GET", KEY, [("accept-encoding", b"br")]).miss == "vary-miss"
    assert len(store) == 2
    assert store.invalidate(KEY) == 2 and len(store) == 0


def test_same_variant_is_replaced_and_newest_matching_wins() -> None:
    store = big_store()
    first = put(store, body=b"one")
    second = put(store, body=b"two")
    assert len(store) == 1 and store.lookup("GET", KEY, []).entry is second and first is not second
    # a response that now varies on a field the request lacks still matches (absent == absent),
    # and being newer it wins over the old unvarying one
    varied = put(store, body=b"three", res=CC + [("vary", b"x-a")])
    assert store.lookup("GET", KEY, []).entry is varied
    assert store.lookup("GET", KEY, [("x-a", b"1")]).entry is second


def test_rfc9111_4_1_vary_star_is_never_stored() -> None:
    store = big_store()
    assert put(store, res=CC + [("vary", b"*")]) is None
    assert len(store) == 0


def test_bytes_are_charged_and_released() -> None:
    store = big_store()
    entry = put(store, body=b"x" * 100)
    assert entry is not None
    assert entry.size == ENTRY_OVERHEAD + 100 + len("cache-control") + len("max-age=60") + 4
    assert store.size_bytes == entry.size
    assert store.invalidate(KEY) == 1
    assert store.size_bytes == 0 and len(store) == 0
    assert store.invalidate(KEY) == 0


def test_max_object_and_capacity_refuse_big_entries() -> None:
    store = CacheStore(capacity=10_000, max_object=ENTRY_OVERHEAD + 100)
    assert put(store, body=b"x" * 100) is None
    assert store.counts.too_big == 1 and store.size_bytes == 0
    tiny = CacheStore(capacity=ENTRY_OVERHEAD, max_object=1 << 20)
    assert put(tiny) is None and tiny.counts.too_big == 1


def test_lru_by_bytes_evicts_least_recently_used() -> None:
    one = put(big_store(), body=b"x" * 1000)
    assert one is not None
    store = CacheStore(capacity=one.size * 2, max_object=1 << 20)
    keys = [CacheStore.primary_key("http", "h", f"/{i}") for i in range(3)]
    put(store, keys[0], body=b"x" * 1000)
    put(store, keys[1], body=b"x" * 1000)
    assert store.lookup("GET", keys[0], []).entry is not None  # 0 is now the most recent
    put(store, keys[2], body=b"x" * 1000)
    assert store.lookup("GET", keys[1], []).miss == "uri-miss"
    assert store.lookup("GET", keys[0], []).entry is not None
    assert store.counts.evicted == 1 and store.size_bytes <= store.capacity
    assert list(store.keys()) == [keys[2], keys[0]]


def test_refresh_replaces_headers_and_times_and_recharges() -> None:
    store = big_store()
    entry = put(store)
    assert entry is not None
    before = store.size_bytes
    store.refresh(entry, [("cache-control", b"max-age=600"), ("connection", b"x")], 5.0, 6.0)
    assert entry.headers == [("cache-control", b"max-age=600")]
    assert (entry.request_time, entry.response_time) == (5.0, 6.0)
    assert store.size_bytes == before + 1


def test_purge_by_target_prefix_host_prefix_and_all() -> None:
    store = big_store()
    for host, target in [("a", "/img/1"), ("a", "/img/2"), ("a", "/api"), ("b", "/img/3")]:
        put(store, CacheStore.primary_key("http", host, target))
    assert store.purge("/img/") == 3
    assert store.purge("a/ap") == 1
    assert len(store) == 0 and store.counts.purged == 4
    put(store)
    put(store, CacheStore.primary_key("http", "z", "/"))
    assert store.purge() == 2 and store.size_bytes == 0


def test_purge_by_url_with_scheme_and_any_case_of_host() -> None:
    store = big_store()
    for scheme, host, target in [("http", "a:8000", "/x"), ("https", "a:8000", "/x"), ("http", "b", "/x")]:
        put(store, CacheStore.primary_key(scheme, host, target))
    assert store.purge("HTTPS://A:8000/") == 1
    assert store.purge("http://b") == 1
    assert store.purge("A:8000/x") == 1
    assert store.purge("/") == 0 and store.purge(None) == 0
    assert store.counts.purged == 3 and store.size_bytes == 0


@pytest.mark.parametrize(
    ("prefix", "want"),
    [
        ("/Img/", "/Img/"),
        ("Ex.COM/Img", "ex.com/Img"),
        ("Ex.COM", "ex.com"),
        ("HTTP://Ex.COM/Img", "http://ex.com/Img"),
        ("", ""),
    ],
)
def test_a_purge_prefix_has_its_scheme_and_host_lower_cased(prefix: str, want: str) -> None:
    assert purge_prefix(prefix) == want


def test_purge_subject() -> None:
    key = ("http", "ex.com", "/a?b")
    assert purge_subject(key, "/a") == "/a?b"
    assert purge_subject(key, "http://ex") == "http://ex.com/a?b"
    assert purge_subject(key, "ex.com/") == "ex.com/a?b"


def test_stats_are_the_counts_and_the_memory() -> None:
    store = big_store()
    put(store)
    stats = store.stats()
    assert stats["stored"] == 1 and stats["entries"] == 1
    assert stats["bytes"] == store.size_bytes > ENTRY_OVERHEAD
    assert (stats["capacity_bytes"], stats["max_object_bytes"]) == (store.capacity, store.max_object)


def test_counts_as_dict() -> None:
    store = big_store()
    store.counts.hits += 2
    counts = store.counts.as_dict()
    assert counts["hits"] == 2 and set(counts) == {
        "hits",
        "misses",
        "stale",
        "coalesced",
        "stored",
        "evicted",
        "purged",
        "too_big",
    }
