"""The response cache's flow inside the proxy, in process (fake transports, no sockets): who
waits on a key's lock and how the wait ends, background revalidation and its deadline, a 304
that does not validate the entry, an entry replaced while it was being revalidated."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from time import monotonic, time

import pytest

from prefork_lb.proxy.cache import ProxyCache
from prefork_lb.proxy.cache_plan import Plan
from tests.unit.proxy.test_exchange import Rig, got

GET = b"GET /x HTTP/1.1\r\nHost: x\r\n\r\n"
FRESH = b"HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\nContent-Length: 2\r\n\r\nok"
STALE = (
    b'HTTP/1.1 200 OK\r\nCache-Control: max-age=1%s\r\nETag: "v1"\r\nAge: 100\r\nContent-Length: 2\r\n\r\nok'
)
NOT_MODIFIED = b'HTTP/1.1 304 Not Modified\r\nETag: "%s"\r\nCache-Control: max-age=60\r\nAge: 0\r\n\r\n'


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    lp = asyncio.new_event_loop()
    yield lp
    lp.close()


def cached_rig(loop: asyncio.AbstractEventLoop) -> tuple[Rig, ProxyCache]:
    rig = Rig(loop, cache_size=1, cache_lock_timeout=5.0)
    assert rig.proxy.cache is not None
    return rig, rig.proxy.cache


def fill(rig: Rig, response: bytes) -> None:
    c, t = rig.client()
    c.data_received(GET)
    up, _ = rig.open()
    up.data_received(response)
    assert got(t).endswith(b"ok")
    for b in rig.backends:
        b.idle.clear()  # the next request connects anew (the test opens or refuses it)


def test_a_waiter_is_answered_from_the_leaders_stored_response(loop) -> None:
    rig, cache = cached_rig(loop)
    c1, t1 = rig.client()
    c1.data_received(GET)
    c2, t2 = rig.client()
    c2.data_received(GET)
    assert len(rig.connects) == 1  # the second waits
    up, _ = rig.open()
    up.data_received(FRESH)
    rig.proxy.end_of_pass()
    assert got(t2).endswith(b"ok") and b"cache-status: prefork_lb; fwd=uri-miss; collapsed\r\n" in got(t2)
    assert cache.store.counts.coalesced == 1 and not cache.locks


def test_a_waiter_goes_itself_when_the_lock_runs_out_or_the_leader_is_gone(loop) -> None:
    rig, cache = cached_rig(loop)
    c1, _ = rig.client()
    c1.data_received(GET)
    c2, _ = rig.client()
    c2.data_received(GET)
    cache.sweep(monotonic() + 10)
    assert len(rig.connects) == 2 and not cache.locks
    c3, _ = rig.client()
    c3.data_received(GET)  # a new leader
    c4, _ = rig.client()
    c4.data_received(GET)
    c4.connection_lost(None)  # a waiter that leaves is skipped
    c5, _ = rig.client()
    c5.data_received(GET)
    assert len(rig.connects) == 3
    c3.connection_lost(None)
    assert len(rig.connects) == 4 and not cache.locks
    rig.open()  # the first leader's connection comes: the lock it held is long gone
    cache.sweep(monotonic() + 10)  # nothing left to expire


def test_park_after_the_lock_went_routes_at_once(loop) -> None:
    rig, cache = cached_rig(loop)
    c, _ = rig.client()
    c.data_received(GET)
    ex = c.ex
    assert ex is not None and ex.cache_plan is not None
    cache.release(ex)
    cache.release(ex)  # twice: nothing more
    c2, _ = rig.client()
    plan = Plan(("http", "x", "/x"), "uri-miss", [], wait=True)
    from prefork_lb.proxy.exchange import Exchange

    req = c.parser.requests[0]
    ex2 = Exchange(c2, req)
    ex2.cache_plan = plan
    cache.park(ex2)
    assert len(rig.connects) == 2 and plan.collapsed and not plan.wait


def test_no_lock_timeout_means_no_coalescing(loop) -> None:
    rig = Rig(loop, cache_size=1, cache_lock_timeout=0.0)
    for _ in range(2):
        c, _ = rig.client()
        c.data_received(GET)
    assert len(rig.connects) == 2


def test_stale_while_revalidate_refreshes_in_the_background_once(loop) -> None:
    rig, cache = cached_rig(loop)
    fill(rig, STALE % b", stale-while-revalidate=1000")
    for _ in range(3):
        c, t = rig.client()
        c.data_received(GET)
        assert got(t).endswith(b"ok") and b"cache-status: prefork_lb; hit; ttl=-" in got(t)
    assert len(rig.connects) == 1 and len(cache.background) == 1
    up, ut = rig.open()
    rig.proxy.end_of_pass()
    assert b'if-none-match: "v1"' in got(ut)
    up.data_received(NOT_MODIFIED % b"v1")
    assert not cache.background and not cache.locks
    c, t = rig.client()
    c.data_received(GET)
    assert b"cache-status: prefork_lb; hit; ttl=" in got(t) and b"ttl=-" not in got(t)


def test_a_background_revalidation_times_out(loop) -> None:
    rig, cache = cached_rig(loop)
    fill(rig, STALE % b", stale-while-revalidate=1000")
    c, _ = rig.client()
    c.data_received(GET)
    (bg,) = cache.background
    assert bg.local_authority() == b"localhost" and bg.take_back(bg.mark())
    bg.pause("x")
    bg.resume("x")
    cache.sweep(monotonic())  # not yet: waiting for a connection has no deadline
    rig.open()
    assert bg.deadline_kind
    bg.responding(True)
    bg.body_sent()
    cache.sweep(monotonic() + 10**6)
    assert not cache.background and not cache.locks and bg.closed
    bg.expire(0.0)  # once more: nothing left to do
    bg.end_with(b"")


def test_a_304_that_does_not_validate_drops_the_entry(loop) -> None:
    rig, cache = cached_rig(loop)
    fill(rig, STALE % b"")
    c, t = rig.client()
    c.data_received(GET)
    up, _ = rig.open()
    up.data_received(NOT_MODIFIED % b"other")
    assert got(t).endswith(b"ok") and b"fwd=stale; fwd-status=304" in got(t)
    assert len(cache.store) == 0


def test_an_entry_replaced_while_revalidated_is_stored_anew(loop) -> None:
    rig, cache = cached_rig(loop)
    fill(rig, STALE % b"")
    c, t = rig.client()
    c.data_received(GET)
    cache.store.invalidate(("http", "x", "/x"))  # (purged meanwhile)
    up, _ = rig.open()
    up.data_received(NOT_MODIFIED % b"v1")
    assert got(t).endswith(b"ok") and len(cache.store) == 1


def test_a_refused_stale_if_error_answer_keeps_the_connection(loop) -> None:
    rig, cache = cached_rig(loop)
    fill(rig, STALE % b", stale-if-error=1000")
    c, t = rig.client()
    c.data_received(GET)
    rig.refuse(ConnectionRefusedError("refused"))
    assert got(t).endswith(b"ok") and b"fwd=stale; fwd-status=50" in got(t) and not t.closed
    assert cache.store.counts.stale == 1


def test_an_entry_too_big_to_store_again_still_answers(loop) -> None:
    cache = ProxyCache(1, 64)
    cache.store.max_object = 10**6
    req_fields: list[tuple[str, bytes]] = []
    entry = cache.store.store("GET", ("http", "x", "/x"), req_fields, 200, [], b"ok", time(), time())
    assert entry is not None
    cache.store.max_object = 1
    plan = Plan(("http", "x", "/x"), "stale", [], entry)
    cache.store.invalidate(("http", "x", "/x"))

    class Req:
        method = "GET"

    assert cache._refreshed(Req(), plan, entry, [], time(), time()) is entry


def test_the_clients_own_condition_gets_a_304_after_revalidation(loop) -> None:
    rig, _ = cached_rig(loop)
    fill(rig, STALE % b"")
    c, t = rig.client()
    c.data_received(b'GET /x HTTP/1.1\r\nHost: x\r\nIf-None-Match: "v1"\r\n\r\n')
    up, _ = rig.open()
    up.data_received(NOT_MODIFIED % b"v1")
    assert got(t).startswith(b"HTTP/1.1 304 ") and b"cache-status: prefork_lb; fwd=stale\r\n" in got(t)


def test_a_waiter_goes_itself_when_the_new_entry_is_stale_already(loop) -> None:
    rig, cache = cached_rig(loop)
    c1, _ = rig.client()
    c1.data_received(GET)
    c2, _ = rig.client()
    c2.data_received(GET)
    up, ut = rig.open()
    up.data_received(STALE % b"")
    rig.proxy.end_of_pass()
    # The waiter sent its own request (on the connection the leader's answer freed).
    assert got(ut).count(b"GET /x HTTP/1.1") == 2 and cache.store.counts.coalesced == 0


def test_unsafe_methods_invalidate_safe_ones_do_not() -> None:
    cache = ProxyCache(1, 64)
    key = ("http", "example.com", "/a")

    class Req:
        def __init__(self, method: str, host: bytes | None = b"example.com") -> None:
            self.method, self.host, self.target = method, host, b"/a"

    for req in (Req("GET"), Req("OPTIONS"), Req("POST", None)):
        cache.store.store("GET", key, [], 200, [], b"ok", time(), time())
        cache.invalidate_after(req, "http", [])
        assert len(cache.store) == 1
    cache.invalidate_after(Req("PATCH"), "http", [(b"Location", b"/b")])
    assert len(cache.store) == 0
