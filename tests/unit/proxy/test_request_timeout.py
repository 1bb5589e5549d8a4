"""prefork_lb.proxy in process: a local worker lost under a request older than the workers'
--request-timeout (the master aborted it, prefork_lb.request_deadline) is answered 504 and never
tried again; one lost earlier is retried as before. Fake transports as in test_exchange.py."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from tests.unit.proxy.test_exchange import GET, Rig, got


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    lp = asyncio.new_event_loop()
    yield lp
    lp.close()


def local_workers(loop: asyncio.AbstractEventLoop, remote: bool = False) -> Rig:
    rig = Rig(loop, backends=2, request_timeout=1.0)
    for slot, b in enumerate(rig.backends):
        b.slot = None if remote else slot
    return rig


@pytest.mark.parametrize("how", [None, ConnectionResetError()])
def test_a_worker_lost_past_request_timeout_gives_504_and_no_other_try(loop, how) -> None:
    rig = local_workers(loop)
    c, t = rig.client()
    c.data_received(GET)
    up, _ = rig.open()
    assert c.ex is not None
    c.ex.started -= 2.5  # the request has been on its way for longer than --request-timeout
    up.connection_lost(how)
    assert got(t).startswith(b"HTTP/1.1 504") and b"too long" in got(t)
    assert not rig.connects  # never sent to the other worker
    assert rig.in_flight() == [0, 0]


def test_a_worker_lost_before_request_timeout_is_retried_elsewhere(loop) -> None:
    rig = local_workers(loop)
    c, t = rig.client()
    c.data_received(GET)
    up, _ = rig.open()
    up.connection_lost(None)
    assert [b for b, _ in rig.connects] == [rig.backends[1]] and not got(t)


def test_remote_backends_are_not_judged_by_the_workers_request_timeout(loop) -> None:
    rig = local_workers(loop, remote=True)
    c, t = rig.client()
    c.data_received(GET)
    up, _ = rig.open()
    assert c.ex is not None
    c.ex.started -= 2.5
    up.connection_lost(None)
    assert [b for b, _ in rig.connects] == [rig.backends[1]] and not got(t)
