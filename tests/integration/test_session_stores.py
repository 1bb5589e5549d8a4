"""The session stores against a real redis-server and memcached: the compare-and-set the
concurrent-write rule rests on, the TTL, and errors that name the store."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from prefork_lb.sessions import ASGISessionMiddleware, SessionStore, SessionStoreError, store_from_url
from tests.asgi_client import asgi_get
from tests.stores import StoreProcess


@pytest.fixture(params=["redis", "memcached"])
def store(request: pytest.FixtureRequest) -> Iterator[tuple[StoreProcess, SessionStore]]:
    server: StoreProcess = request.getfixturevalue(f"{request.param}_server")
    client = store_from_url(server.url, timeout=1.0)
    try:
        yield server, client
    finally:
        client.close()


def test_compare_and_set(store: tuple[StoreProcess, SessionStore]) -> None:
    _, client = store
    assert client.load("sid") is None
    assert client.save("sid", b'{"a":1}', None, 60)
    assert not client.save("sid", b'{"a":2}', None, 60)  # "new" only while nothing is stored
    found = client.load("sid")
    assert found is not None and found[0] == b'{"a":1}'
    assert client.save("sid", b'{"a":3}', found[1], 60)
    assert not client.save("sid", b'{"a":4}', found[1], 60)  # read before the last save: loses
    again = client.load("sid")
    assert again is not None and again[0] == b'{"a":3}' and again[1] != found[1]
    client.delete("sid")
    assert client.load("sid") is None
    assert not client.save("sid", b'{"a":5}', again[1], 60)  # deleted meanwhile: not brought back
    assert client.load("sid") is None


def test_redis_keys_carry_the_ttl(redis_server: StoreProcess) -> None:
    import redis

    client = store_from_url(redis_server.url)
    try:
        client.save("sid", b"{}", None, 77)
    finally:
        client.close()
    with redis.Redis(port=redis_server.port) as direct:
        assert 0 < direct.ttl("prefork_lb:session:sid") <= 77


def test_a_stopped_store_fails_with_its_address(store: tuple[StoreProcess, SessionStore]) -> None:
    server, client = store
    assert client.load("sid") is None  # connected
    server.pause()
    try:
        with pytest.raises(SessionStoreError, match=f"session store {server.url}"):
            client.load("sid")
    finally:
        server.resume()
    server.stop()
    with pytest.raises(SessionStoreError, match=f"session store {server.url}"):
        client.save("sid", b"{}", None, 60)


async def asgi_counter(scope: Any, receive: Any, send: Any) -> None:
    session = scope["session"]
    session["count"] = session.get("count", 0) + 1
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": str(session["count"]).encode()})


def test_asgi_middleware_over_a_real_store(store: tuple[StoreProcess, SessionStore]) -> None:
    _, client = store
    apps = [ASGISessionMiddleware(asgi_counter, client, "an integration secret, long") for _ in range(2)]
    cookie = None
    for n in range(1, 5):
        status, headers, body = asgi_get(apps[n % 2], cookie)
        assert (status, body) == (200, str(n).encode())
        cookie = headers[b"set-cookie"].decode().split(";")[0]
