"""--mount in the proxy, in process (fake transports, a real scoreboard): each request goes to
its pool's backends, with its pool's strategy and limit; retries and fallbacks stay in the
pool; no route is a 404; the scoreboard's slots become each pool's backends and /lb-stats
shows the pools (prefork_lb.proxy.pools, state, exchange, process)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from prefork_lb import scoreboard as sb
from prefork_lb.cli import parse
from prefork_lb.proxy.backend import Backend
from prefork_lb.proxy.exchange import Exchange
from prefork_lb.proxy.pools import PooledStrategy
from prefork_lb.proxy.process import ProxyProcess, make_strategy
from prefork_lb.proxy.server import ClientConn, Proxy
from tests.unit.proxy.test_fuzz import FakeTransport

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
MOUNTS = [
    "--mount",
    "/api=a:app;workers=2;strategy=round_robin;max-concurrency=1;queue-size=0",
    "--mount",
    "/=b:app;workers=1;strategy=sticky",
    "--mount",
    "admin.example.com/=c:app;workers=1",
]


def get(path: str, host: str = "x") -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    lp = asyncio.new_event_loop()
    yield lp
    lp.close()


class Rig:
    """A proxy over the pools of MOUNTS with one backend per slot; connects wait in
    ``connects``."""

    def __init__(self, loop: asyncio.AbstractEventLoop, *extra: str) -> None:
        self.cfg = parse([*MOUNTS, *extra], environ={})
        self.proxy = Proxy(self.cfg, make_strategy(self.cfg, b"s" * 32), loop)
        table = self.cfg.mounts
        self.backends = [
            Backend("127.0.0.1", 9000 + slot, slot=slot, pool=table.for_slot(slot).route)
            for slot in range(table.total_workers)
        ]
        for b in self.backends:
            self.proxy.add_backend(b)
        self.connects: list[tuple[Backend, Exchange]] = []
        self.proxy.connect = lambda b, ex: self.connects.append((b, ex))  # type: ignore[assignment,method-assign,arg-type,func-returns-value]

    def client(self) -> tuple[ClientConn, FakeTransport]:
        c = ClientConn(self.proxy, "http")
        t = FakeTransport()
        c.connection_made(t)
        return c, t

    def send(self, data: bytes) -> tuple[Backend | None, FakeTransport]:
        """One request on a new client: the backend it is connecting to (None: none)."""
        before = len(self.connects)
        c, t = self.client()
        c.data_received(data)
        return (self.connects[-1][0] if len(self.connects) > before else None), t


def got(t: FakeTransport) -> bytes:
    return b"".join(t.data)


def test_requests_go_to_their_pools_backends(loop) -> None:
    rig = Rig(loop)
    api = {b.key for b in rig.backends[:2]}
    seen = {rig.send(get(f"/api/{i}"))[0].key for i in range(2)}  # type: ignore[union-attr]
    assert seen == api  # round robin over the /api pool's two slots (one request each: its limit)
    assert rig.send(get("/apix"))[0] is rig.backends[2]
    assert rig.send(get("/"))[0] is rig.backends[2]
    assert rig.send(get("/api", host="Admin.Example.com:8080"))[0] is rig.backends[3]


def test_no_route_is_a_404_from_the_proxy(loop) -> None:
    rig = Rig(loop)
    rig.proxy.mounts = parse(["--mount", "/api=a:b"], environ={}).mounts
    backend, t = rig.send(get("/other"))
    assert backend is None and got(t).startswith(b"HTTP/1.1 404") and b"no --mount route" in got(t)


def test_a_retry_stays_in_the_pool(loop) -> None:
    rig = Rig(loop)
    first, t = rig.send(get("/api/x"))
    b, ex = rig.connects.pop()
    ex.connected(b, None, ConnectionRefusedError("refused"))
    b, ex = rig.connects.pop()
    assert b.pool == "/api" and b is not first
    ex.connected(b, None, ConnectionRefusedError("refused"))
    # both /api backends ejected: 503, not a try on another pool's backend
    assert not rig.connects and got(t).startswith(b"HTTP/1.1 503")


def test_a_pool_with_no_worker_up_queues_on_its_own_slot(loop) -> None:
    rig = Rig(loop)
    for b in rig.backends[:2]:
        rig.proxy.strategy.mark_down(b.key)
    assert rig.proxy.pick(None, [], "/api") is rig.backends[0]
    assert rig.proxy.pick(None, [rig.backends[0], rig.backends[1]], "/api") is None
    assert rig.proxy.with_room([], "/api") is None
    assert rig.proxy.with_room([], "/") is rig.backends[2]


def test_each_pool_has_its_own_limit(loop) -> None:
    rig = Rig(loop)
    assert rig.proxy.pool_limits == {"/api": 1, "/": 0, "admin.example.com/": 0}
    rig.send(get("/api/1"))
    rig.send(get("/api/2"))
    backend, t = rig.send(get("/api/3"))  # both /api workers hold their one request
    assert backend is None and got(t).startswith(b"HTTP/1.1 503") and rig.proxy.shed == 1
    for _ in range(3):  # the / pool has no limit
        assert rig.send(get("/"))[0] is rig.backends[2]


def test_only_the_sticky_pool_sets_a_cookie(loop) -> None:
    rig = Rig(loop)
    assert rig.proxy.hints == {"/api": "", "/": "sticky", "admin.example.com/": ""}
    for path, cookie in (("/page", True), ("/api/x", False)):
        c, t = rig.client()
        c.data_received(get(path))
        b, ex = rig.connects.pop()
        assert (ex.set_cookie is not None) is cookie, path


def test_hash_pool_keys_on_the_client(loop) -> None:
    rig = Rig(loop, "--mount", "/h=d:app;workers=1;strategy=hash")
    assert rig.proxy.hints["/h"] == "hash"
    backend, _ = rig.send(get("/h/x"))
    assert backend is not None and backend.pool == "/h"


def test_the_pooled_strategy_hands_each_call_to_the_members_pool() -> None:
    from prefork_lb.balance import make

    cfg = parse(MOUNTS, environ={})
    s = PooledStrategy(
        cfg.mounts, lambda name: make(name, **({"secret": b"k" * 32} if name == "sticky" else {}))
    )
    for key, pool in (("a1", "/api"), ("a2", "/api"), ("b1", "/")):
        s.place(key, pool)
        s.add(key)
    assert s.keys() == ["a1", "a2", "b1"] and set(s.members) == {"a1", "a2", "b1"}
    assert s.pick() in ("a1", "a2") and s.pick_in("/") == "b1"
    s.on_start("a1")
    assert s.members["a1"].in_flight == 1
    s.on_finish("a1", 0.01, True)
    s.set_weight("a2", 3)
    s.drain("a2")
    assert s.members["a2"].weight == 3 and s.members["a2"].state == "draining"
    s.undrain("a2")
    s.mark_down("b1")
    assert s.pick_in("/") is None
    s.mark_up("b1")
    assert s.pick_in("/") == "b1" and s.of("b1").key_for(s.cookie_for("b1")) == "b1"
    assert {m["key"] for m in s.snapshot()} == {"a1", "a2", "b1"}
    s.remove("a1")
    s.remove("nobody")
    assert s.keys() == ["a2", "b1"] and "a1" not in s.members


def test_the_scoreboard_slots_become_pool_backends_and_lb_stats_shows_the_pools(loop) -> None:
    cfg = parse(MOUNTS, environ={})
    board = sb.Scoreboard(16)
    for slot in range(cfg.mounts.total_workers):
        e = board.allocate(100 + slot, slot)
        board.set_port(e, 9100 + slot)
        board.put(e, sb.STATE, sb.READY)
        if slot < 2:
            board.set_interface(e, "asgi")
        elif slot == 2:
            board.set_interface(e, "wsgi")  # slot 3's worker has not said (0)
    proc = ProxyProcess(cfg, [], [], board, None, None, loop)
    proc.sync()
    assert {b.key: b.pool for b in proc.proxy.backends.values()} == {
        "127.0.0.1:9100": "/api",
        "127.0.0.1:9101": "/api",
        "127.0.0.1:9102": "/",
        "127.0.0.1:9103": "admin.example.com/",
    }
    doc = proc.stats_doc()
    pools: list[dict[str, Any]] = doc["pools"]
    assert [(p["route"], p["app"], p["workers"], p["ready_workers"], p["strategy"]) for p in pools] == [
        ("/api", "a:app", 2, 2, "round_robin"),
        ("/", "b:app", 1, 1, "sticky"),
        ("admin.example.com/", "c:app", 1, 1, "least_connections"),
    ]
    assert pools[0]["backends"] == ["127.0.0.1:9100", "127.0.0.1:9101"] and pools[0]["slots"] == [0, 1]
    assert [p["serving"] for p in pools] == [{"asgi": 2}, {"wsgi": 1}, {}]
    assert pools[2]["host"] == "admin.example.com" and pools[2]["prefix"] == "/"
    assert {b["pool"] for b in doc["backends"]} == {"/api", "/", "admin.example.com/"}
    assert {b["pool"] for b in proc.health_doc()["backends"]} == {"/api", "/", "admin.example.com/"}

    from prefork_lb.admin.metrics import backend_metrics

    got = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for m in backend_metrics({"stats": doc, "health": proc.health_doc()})
        for sample in m.samples
        if "mount" in sample.name
    }
    assert (
        got[("prefork_lb_mount_workers", (("app", "a:app"), ("interface", "auto"), ("mount", "/api")))] == 2
    )
    assert got[("prefork_lb_mount_ready_workers", (("mount", "/"),))] == 1
    assert (
        got[("prefork_lb_backend_mount", (("backend", "127.0.0.1:9103"), ("mount", "admin.example.com/")))]
        == 1
    )
    assert len([k for k in got if k[0] == "prefork_lb_backend_mount"]) == 4


def test_without_mounts_nothing_changes(loop) -> None:
    cfg = parse(["tests.apps:echo", "--dispatch", "proxy"], environ={})
    proc = ProxyProcess(cfg, [], [], None, None, None, loop)
    assert proc.stats_doc()["pools"] is None and proc.pool_of(0) is None
    assert proc.proxy.mounts is None and proc.proxy.hints == {None: ""}


def test_the_control_socket_drains_a_pools_worker_but_adds_no_remote_backend(loop) -> None:
    from prefork_lb.proxy.operator import OperatorError, apply

    rig = Rig(loop)
    with pytest.raises(OperatorError, match="with --mount every backend is a pool's worker"):
        apply(rig.proxy, {"op": "add", "name": "127.0.0.1:9999"})
    doc = apply(rig.proxy, {"op": "drain", "name": rig.backends[0].key})
    assert doc["backend"]["state"] == "draining"
    assert rig.send(get("/api/x"))[0] is rig.backends[1]  # the drained one gets no new request


def test_two_sticky_pools_keep_their_own_cookies(loop) -> None:
    """A client of two sticky pools keeps both pins: each pool sets and reads its own cookie
    (both have Path=/, so one shared name would be overwritten by the other pool)."""
    rig = Rig(loop, "--mount", "/s=d:app;workers=2;strategy=sticky")
    pins = {}
    for path in ("/page", "/s/x"):
        c, _ = rig.client()
        c.data_received(get(path))
        b, ex = rig.connects.pop()
        assert ex.set_cookie is not None
        name, _, value = ex.set_cookie.decode().split(";")[0].partition("=")
        pins[path] = (name, value, b.key)
    assert pins["/page"][0] == "lb" and pins["/s/x"][0] == "lb-3"  # the first sticky pool, then by position
    both = "; ".join(f"{n}={v}" for n, v, _ in pins.values())
    for path, (_, _, key) in pins.items():
        c, _ = rig.client()
        c.data_received(f"GET {path} HTTP/1.1\r\nHost: x\r\nCookie: {both}\r\n\r\n".encode())
        b, ex = rig.connects.pop()
        assert b.key == key and ex.set_cookie is None, path  # pinned, and nothing to set again
