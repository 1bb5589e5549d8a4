"""Resolution of the proxy's named backends (prefork_lb.proxy.resolve), with a fake resolver."""

from __future__ import annotations

import asyncio
import logging

import pytest

from prefork_lb.proxy.backend import Backend
from prefork_lb.proxy.health import HealthState
from prefork_lb.proxy.resolve import Lookup, Resolution, resolver


class FakeStrategy:
    def __init__(self) -> None:
        self.down: set[str] = set()

    def mark_down(self, key: str) -> None:
        self.down.add(key)


class FakeProxy:
    def __init__(self, backends: list[Backend]) -> None:
        self.backends = {b.key: b for b in backends}
        self.strategy = FakeStrategy()
        self.up: list[str] = []

    def set_up(self, b: Backend) -> None:
        if b.health is None or b.health.healthy:
            self.up.append(b.key)
            self.strategy.down.discard(b.key)


def answers(*results: str | None) -> tuple[list[str], Lookup]:
    """A lookup that answers ``results`` in turn (then resolves), recording the names asked."""
    asked: list[str] = []
    left = list(results)

    async def lookup(host: str, port: int) -> str | None:
        asked.append(host)
        return left.pop(0) if left else None

    return asked, lookup


def test_addresses_are_not_looked_up_and_a_failing_name_is_down_until_it_resolves(
    caplog: pytest.LogCaptureFixture,
) -> None:
    named, literal = Backend("db.example", 80), Backend("127.0.0.1", 81)
    proxy = FakeProxy([named, literal])
    asked, lookup = answers("Name or service not known", "Temporary failure in name resolution")
    dns = Resolution(proxy, lookup, every=0.001)

    async def go() -> None:
        with caplog.at_level(logging.INFO, "prefork_lb.error"):
            failed = await dns.start(proxy.backends.values())
            assert failed == [named] and proxy.strategy.down == {named.key}
            assert named.down_reason == "DNS: Name or service not known"
            await dns.retry(named)

    asyncio.run(go())
    assert asked == ["db.example", "db.example", "db.example"]  # one start, two retries
    assert proxy.up == [named.key] and not proxy.strategy.down
    assert [r.getMessage() for r in caplog.records] == [
        "proxy: backend db.example:80: cannot resolve db.example: Name or service not known; "
        "it counts as down and the name is looked up again every 0.001 s",
        "proxy: backend db.example:80: db.example resolves now",
    ]


def test_with_health_checks_a_resolved_name_waits_for_its_checks() -> None:
    b = Backend("db.example", 80)
    b.health = HealthState(rise=2, fall=3)
    proxy = FakeProxy([b])
    _, lookup = answers("Name or service not known")
    dns = Resolution(proxy, lookup, every=0.001)

    async def go() -> None:
        for failed in await dns.start([b]):
            await dns.retry(failed)

    asyncio.run(go())
    assert b.health.healthy is False and proxy.up == []  # the checks bring it up (rise passes)
    assert b.down_reason == "health check"


def test_the_real_resolver_fails_an_invalid_name_and_passes_an_address() -> None:
    async def go() -> tuple[str | None, str | None]:
        lookup = resolver(asyncio.get_running_loop(), 5.0)
        return await lookup("nosuchhost.invalid", 80), await lookup("127.0.0.1", 80)

    bad, good = asyncio.run(go())
    assert bad and good is None
