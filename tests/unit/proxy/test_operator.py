"""Backend pool changes from the control socket (prefork_lb.proxy.operator): pure state changes
on the backends and the balancing strategy."""

from __future__ import annotations

from typing import Any

import pytest

from prefork_lb.balance import make
from prefork_lb.proxy.backend import Backend
from prefork_lb.proxy.operator import OperatorError, apply, state_of


class Conn:
    def __init__(self, b: Backend) -> None:
        self.b = b
        self.closed = False

    def close(self) -> None:
        self.closed = True
        self.b.idle.remove(self)  # type: ignore[arg-type]


class Pool:
    """The part of ProxyState the operator uses."""

    def __init__(self, *keys: str) -> None:
        self.strategy: Any = make("round_robin")
        self.backends: dict[str, Backend] = {}
        for k in keys:
            host, _, port = k.rpartition(":")
            self.add_backend(Backend(host, int(port)))

    def add_backend(self, b: Backend) -> None:
        self.backends[b.key] = b
        self.strategy.add(b.key, b.weight)

    def remove_backend(self, key: str) -> None:
        self.backends.pop(key)
        self.strategy.remove(key)

    def picks(self, n: int = 20) -> set[str]:
        return {self.strategy.pick() for _ in range(n)} - {None}


def test_disable_takes_a_backend_out_and_closes_its_idle_connections() -> None:
    pool = Pool("10.0.0.1:80", "10.0.0.2:80")
    b = pool.backends["10.0.0.2:80"]
    idle = Conn(b)
    b.idle.append(idle)  # type: ignore[arg-type]
    got = apply(pool, {"op": "disable", "name": "10.0.0.2:80"})
    assert got == {"backend": {"name": "10.0.0.2:80", "state": "disabled", "weight": 1}}
    assert pool.picks() == {"10.0.0.1:80"} and idle.closed
    pool.strategy.mark_up("10.0.0.2:80")  # a health check passing does not undo it
    assert pool.picks() == {"10.0.0.1:80"} and state_of(pool, b) == "disabled"
    apply(pool, {"op": "enable", "name": "10.0.0.2:80"})
    assert pool.picks() == {"10.0.0.1:80", "10.0.0.2:80"} and state_of(pool, b) == "up"


def test_drain_keeps_what_is_in_flight() -> None:
    pool = Pool("10.0.0.1:80", "10.0.0.2:80")
    pool.strategy.on_start("10.0.0.1:80")
    b = pool.backends["10.0.0.1:80"]
    idle = Conn(b)
    b.idle.append(idle)  # type: ignore[arg-type]
    apply(pool, {"op": "drain", "name": "10.0.0.1:80"})
    assert pool.picks() == {"10.0.0.2:80"} and not idle.closed
    assert pool.strategy.members["10.0.0.1:80"].in_flight == 1 and state_of(pool, b) == "draining"
    apply(pool, {"op": "enable", "name": "10.0.0.1:80"})
    assert "10.0.0.1:80" in pool.picks()


def test_down_is_reported_when_not_drained() -> None:
    pool = Pool("10.0.0.1:80")
    pool.strategy.mark_down("10.0.0.1:80")
    assert state_of(pool, pool.backends["10.0.0.1:80"]) == "down"


def test_weight() -> None:
    pool = Pool("10.0.0.1:80", "10.0.0.2:80")
    assert apply(pool, {"op": "weight", "name": "10.0.0.1:80", "weight": 5})["backend"]["weight"] == 5
    assert pool.strategy.members["10.0.0.1:80"].weight == 5 and pool.backends["10.0.0.1:80"].weight == 5
    with pytest.raises(OperatorError, match="weight"):
        apply(pool, {"op": "weight", "name": "10.0.0.1:80", "weight": 0})


def test_add_and_remove_remote_backends() -> None:
    pool = Pool("10.0.0.1:80")
    got = apply(pool, {"op": "add", "name": "10.0.0.3:81=2"}, health=(2, 3))
    # With active checks, nothing goes to it until its first check passes.
    assert got == {"backend": {"name": "10.0.0.3:81", "state": "checking", "weight": 2}}
    added = pool.backends["10.0.0.3:81"]
    assert added.health.rise == 2 and "10.0.0.3:81" not in pool.picks()
    assert added.down_reason == "waiting for its first health check"
    assert added.health.observe(True) and added.health.healthy  # (one pass decides: no rise run)
    pool.strategy.mark_up(added.key)  # as ProxyState.set_up does
    assert state_of(pool, added) == "up" and "10.0.0.3:81" in pool.picks()
    apply(pool, {"op": "add", "name": "10.0.0.9:1"})  # without checks: up at once
    assert state_of(pool, pool.backends["10.0.0.9:1"]) == "up" and "10.0.0.9:1" in pool.picks()
    apply(pool, {"op": "remove", "name": "10.0.0.9:1"})
    with pytest.raises(OperatorError, match="already"):
        apply(pool, {"op": "add", "name": "10.0.0.3:81"})
    with pytest.raises(OperatorError, match="invalid backend"):
        apply(pool, {"op": "add", "name": "nope"})
    with pytest.raises(OperatorError, match="one HOST:PORT"):
        apply(pool, {"op": "add", "name": "10.0.0.4:1,10.0.0.5:1"})
    assert apply(pool, {"op": "remove", "name": "10.0.0.3:81"})["backend"]["state"] == "removed"
    assert list(pool.backends) == ["10.0.0.1:80"] and pool.picks() == {"10.0.0.1:80"}


def test_a_local_worker_slot_is_not_removed() -> None:
    pool = Pool()
    pool.add_backend(Backend("127.0.0.1", 9001, slot=0))
    with pytest.raises(OperatorError, match="local worker slot 0: scale"):
        apply(pool, {"op": "remove", "name": "127.0.0.1:9001"})


def test_unknown_backend_names_the_known_ones() -> None:
    pool = Pool("10.0.0.1:80")
    with pytest.raises(OperatorError, match=r"unknown backend '10.0.0.9:80' \(backends: 10.0.0.1:80\)"):
        apply(pool, {"op": "drain", "name": "10.0.0.9:80"})
    with pytest.raises(OperatorError, match="unknown operation"):
        apply(pool, {"op": "explode", "name": "10.0.0.1:80"})


def test_a_drained_local_slot_is_not_the_last_resort_either() -> None:
    """With nothing eligible the proxy still sends to a local slot (its port queues in the
    master while its worker is replaced), but never to one an operator took out."""
    import asyncio

    from prefork_lb.config import defaults
    from prefork_lb.proxy.state import ProxyState

    loop = asyncio.new_event_loop()
    try:
        state = ProxyState(defaults(), make("round_robin"), loop)
        a, b = Backend("127.0.0.1", 9001, slot=0), Backend("127.0.0.1", 9002, slot=1)
        state.add_backend(a)
        state.add_backend(b)
        state.strategy.mark_down(a.key)
        apply(state, {"op": "drain", "name": b.key})
        assert state.pick(None, []) is a
        apply(state, {"op": "disable", "name": a.key})
        assert state.pick(None, []) is None
    finally:
        loop.close()


def test_compact_keeps_the_last_change_of_each_kind() -> None:
    from prefork_lb.proxy.operator import compact

    e = [
        {"op": "drain", "key": "a"},
        {"op": "weight", "key": "a", "weight": 2},
        {"op": "enable", "key": "a"},
        {"op": "add", "key": "b"},
        {"op": "disable", "key": "b"},
        {"op": "remove", "key": "b"},
        {"op": "weight", "key": "a", "weight": 3},
    ]
    assert compact(e) == [
        {"op": "enable", "key": "a"},
        {"op": "remove", "key": "b"},
        {"op": "weight", "key": "a", "weight": 3},
    ]


def test_the_journal_replays_into_a_new_pool() -> None:
    from prefork_lb.proxy.operator import Journal, journal_entry

    journal = Journal(bytearray(4096))
    assert journal.entries() == []
    old = Pool("10.0.0.1:80", "10.0.0.2:80")
    for req in (
        {"op": "add", "name": "10.0.0.3:80=4"},
        {"op": "disable", "name": "10.0.0.2:80"},
        {"op": "weight", "name": "10.0.0.1:80", "weight": 6},
        {"op": "remove", "name": "10.0.0.1:80"},
        {"op": "add", "name": "10.0.0.1:80"},
    ):
        journal.record(journal_entry(req, apply(old, req)))
    new = Pool("10.0.0.1:80", "10.0.0.2:80")  # the configuration, as a new proxy reads it
    assert journal.replay(new, None) == 2  # the add of 10.0.0.1:80 no longer applies: it is there
    assert {k: (b.weight, state_of(new, b)) for k, b in new.backends.items()} == {
        "10.0.0.1:80": (1, "up"),
        "10.0.0.2:80": (1, "disabled"),
        "10.0.0.3:80": (4, "up"),
    }


def test_a_full_journal_drops_the_oldest() -> None:
    from prefork_lb.proxy.operator import Journal

    journal = Journal(bytearray(200))
    for i in range(20):
        journal.record({"op": "drain", "key": f"10.0.0.{i}:80", "name": f"10.0.0.{i}:80"})
    keys = [e["key"] for e in journal.entries()]
    assert keys and keys[-1] == "10.0.0.19:80" and "10.0.0.0:80" not in keys


class Cached:
    """A proxy with a response cache: the part cache_operation uses."""

    def __init__(self) -> None:
        from prefork_lb.proxy.cache import ProxyCache

        self.cache: Any = ProxyCache(1, 64)
        for target in ("/a/1", "/a/2", "/b"):
            self.cache.store.store(
                "GET", ("http", "h", target), [], 200, [("cache-control", b"max-age=60")], b"x", 0.0, 0.0
            )


def test_cache_purge_by_prefix_and_everything() -> None:
    from prefork_lb.proxy.operator import cache_operation

    proxy = Cached()
    doc = cache_operation(proxy, {"op": "purge", "prefix": "/a/"})
    assert doc["purged"] == 2 and doc["prefix"] == "/a/"
    assert doc["cache"]["entries"] == 1 and doc["cache"]["purged"] == 2
    assert cache_operation(proxy, {"op": "purge"})["purged"] == 1


@pytest.mark.parametrize(
    ("proxy", "req", "message"),
    [
        (Pool(), {"op": "purge"}, "^the response cache is off"),
        (Cached(), {"op": "drop"}, "unknown cache operation 'drop'"),
        (Cached(), {"op": "purge", "prefix": 3}, "the prefix must be a string"),
    ],
)
def test_cache_operations_refused(proxy: Any, req: dict[str, Any], message: str) -> None:
    from prefork_lb.proxy.operator import cache_operation

    with pytest.raises(OperatorError, match=message):
        cache_operation(proxy, req)
