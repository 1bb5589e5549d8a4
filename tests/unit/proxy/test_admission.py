"""The proxy under --max-concurrency (--dispatch proxy): it counts what it has in flight to each
local worker and answers 503 with Retry-After itself once every local worker has its places and
queue taken, rather than send more to a worker whose loop a view may block. Remote backends
(--backends) have no such limit."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from prefork_lb.balance import make
from prefork_lb.config import defaults
from prefork_lb.proxy.backend import Backend
from prefork_lb.proxy.server import Proxy
from tests.unit.proxy.test_exchange import GET, OK, Rig, got


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    lp = asyncio.new_event_loop()
    yield lp
    lp.close()


def local_rig(loop: asyncio.AbstractEventLoop, workers: int = 1, remote: int = 0) -> Rig:
    rig = Rig(loop, backends=0, max_concurrency=1, queue_size=1)
    for i in range(workers):
        b = Backend("127.0.0.1", 9100 + i, slot=i)
        rig.proxy.add_backend(b)
        rig.backends.append(b)
    for i in range(remote):
        b = Backend("127.0.0.1", 9200 + i)
        rig.proxy.add_backend(b)
        rig.backends.append(b)
    return rig


def test_past_the_limit_of_the_only_worker_the_proxy_answers_503(loop) -> None:
    rig = local_rig(loop)
    assert rig.proxy.worker_limit == 2
    sent = []
    for _ in range(2):
        c, t = rig.client()
        c.data_received(GET)
        sent.append(t)
    assert len(rig.connects) == 2 and rig.in_flight() == [2]
    c, t = rig.client()
    c.data_received(GET)
    answer = got(t)
    assert answer.startswith(b"HTTP/1.1 503") and b"\r\nRetry-After: 1\r\n" in answer
    assert b"server busy, try again" in answer and t.closed
    assert len(rig.connects) == 2 and rig.proxy.shed == 1 and rig.in_flight() == [2]
    # One answered: there is room again.
    up, _ = rig.open()
    up.data_received(OK)
    assert got(sent[0]).startswith(b"HTTP/1.1 200") and rig.in_flight() == [1]
    c, t = rig.client()
    c.data_received(GET)
    assert got(t) == b"" and rig.in_flight() == [2] and rig.proxy.shed == 1  # sent (on the idle connection)


def test_a_full_worker_is_passed_over_for_one_with_room(loop) -> None:
    rig = local_rig(loop, workers=2)
    for _ in range(4):
        c, _ = rig.client()
        c.data_received(GET)
    assert rig.in_flight() == [2, 2] and rig.proxy.shed == 0
    c, t = rig.client()
    c.data_received(GET)
    assert got(t).startswith(b"HTTP/1.1 503") and rig.proxy.shed == 1


def test_remote_backends_have_no_limit(loop) -> None:
    rig = local_rig(loop, workers=1, remote=1)
    for _ in range(6):
        c, t = rig.client()
        c.data_received(GET)
        assert got(t) == b""
    assert rig.in_flight()[0] <= 2 and sum(rig.in_flight()) == 6 and rig.proxy.shed == 0


def test_without_max_concurrency_there_is_no_limit(loop) -> None:
    proxy = Proxy(defaults(), make("round_robin"), loop)
    assert proxy.worker_limit == 0
