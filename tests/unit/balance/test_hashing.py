"""prefork_lb.balance.hashing: consistent hashing with bounded loads."""

from __future__ import annotations

import math
import os
import random
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from prefork_lb.balance import ConsistentHash, make
from prefork_lb.balance.hashing import hint_bytes, ring_point

REPO = Path(__file__).resolve().parents[3]
BACKENDS = [f"10.0.0.{i}:8000" for i in range(1, 11)]
CLIENTS = [f"192.168.{i // 250}.{i % 250}" for i in range(10_000)]


def ring(keys: list[str] = BACKENDS, **options: object) -> ConsistentHash[str]:
    s: ConsistentHash[str] = ConsistentHash(**options)  # type: ignore[arg-type]
    for k in keys:
        s.add(k)
    return s


def mapping(s: ConsistentHash[str]) -> dict[str, str | None]:
    return {c: s.pick(c) for c in CLIENTS}


def test_same_hint_same_member() -> None:
    s = ring()
    assert all(s.pick(c) == s.pick(c) for c in CLIENTS[:500])
    assert len(set(mapping(s).values())) == 10


def test_keys_spread_evenly() -> None:
    counts = Counter(mapping(ring()).values())
    assert min(counts.values()) > 600 and max(counts.values()) < 1400  # 1000 each, +-40%


def test_removing_one_of_ten_remaps_about_a_tenth() -> None:
    s = ring()
    before = mapping(s)
    s.remove(BACKENDS[3])
    after = mapping(s)
    moved = sum(before[c] != after[c] for c in CLIENTS)
    assert 0.05 < moved / len(CLIENTS) < 0.20
    # Only the removed member's clients move.
    assert all(before[c] == BACKENDS[3] for c in CLIENTS if before[c] != after[c])


def test_adding_an_eleventh_remaps_about_an_eleventh() -> None:
    s = ring()
    before = mapping(s)
    s.add("10.0.0.11:8000")
    after = mapping(s)
    moved = [c for c in CLIENTS if before[c] != after[c]]
    assert 0.045 < len(moved) / len(CLIENTS) < 0.18
    assert all(after[c] == "10.0.0.11:8000" for c in moved)


def test_down_member_keys_go_elsewhere_and_come_back() -> None:
    s = ring()
    before = mapping(s)
    s.mark_down(BACKENDS[0])
    during = mapping(s)
    assert BACKENDS[0] not in during.values()
    assert all(during[c] == before[c] for c in CLIENTS if before[c] != BACKENDS[0])
    s.mark_up(BACKENDS[0])
    assert mapping(s) == before


def test_bounded_loads_with_skewed_hints() -> None:
    s = ring(factor=1.25)
    rng = random.Random(11)
    hot = CLIENTS[:3]
    # 1000 connections held open: 80% from three hot clients, the rest from anywhere.
    for _ in range(1000):
        hint = rng.choice(hot) if rng.random() < 0.8 else rng.choice(CLIENTS)
        key = s.pick(hint)
        assert key is not None
        s.on_start(key)
    loads = [m.in_flight for m in s.members.values()]
    assert sum(loads) == 1000
    assert max(loads) <= math.ceil(1.25 * 1000 / 10)
    # Without the bound, the hot clients would pile onto at most three members.
    unbounded = Counter(
        s.owner(rng.choice(hot) if rng.random() < 0.8 else rng.choice(CLIENTS)) for _ in range(1000)
    )
    assert max(unbounded.values()) > 200


def test_bound_keeps_affinity_while_there_is_room() -> None:
    s = ring(factor=2.0)
    for k in BACKENDS:
        s.set_load(k, 10)
    c = CLIENTS[0]
    home = s.owner(c)
    assert home is not None
    stayed = 0
    while (got := s.pick(c)) == home:
        s.on_start(home)
        stayed += 1
    # It stays home until home's load would pass ceil(2 x (total + 1) / 10), and no longer.
    total = 100 + stayed
    assert s.members[home].in_flight + 1 > math.ceil(2.0 * (total + 1) / 10)
    assert s.members[home].in_flight <= math.ceil(2.0 * total / 10)
    assert stayed == 13 and got != home
    s.set_load(got, 0)  # type: ignore[arg-type]
    s.set_load(home, 0)
    assert s.pick(c) == home


def test_weighted_members_get_more_of_the_ring() -> None:
    s = ring(["a", "b"])
    s.set_weight("b", 3)
    counts = Counter(mapping(s).values())
    assert 2.4 < counts["b"] / counts["a"] < 3.6
    before = mapping(s)
    s.set_weight("b", 1)  # points of "b" beyond the first 160 go; "a" keeps all of its
    after = mapping(s)
    assert all(after[c] == "a" for c in CLIENTS if before[c] != after[c])
    s.pick("x")
    assert len(s._points) == 320


def test_bounds_follow_weights() -> None:
    s = ring(["a", "b"], factor=1.0)
    s.set_weight("a", 3)
    for i in range(40):
        key = s.pick(f"client-{i % 3}")
        assert key is not None
        s.on_start(key)
    assert s.members["a"].in_flight == 30 and s.members["b"].in_flight == 10


def test_no_hint_spreads_like_random() -> None:
    s = ring()
    counts = Counter(s.pick() for _ in range(10_000))
    assert len(counts) == 10 and min(counts.values()) > 600


def test_hint_types() -> None:
    s = ring()
    assert s.pick(b"10.1.2.3") == s.pick("10.1.2.3")
    assert s.pick(12345) == s.pick("12345")
    assert hint_bytes("\udcff") == b"\xed\xb3\xbf"  # undecodable bytes from the OS survive


def test_ring_is_stable_across_processes() -> None:
    """Placement must not depend on PYTHONHASHSEED: every process and restart agree."""
    code = (
        "from prefork_lb.balance import make; s = make('hash'); "
        "[s.add(f'10.0.0.{i}:8000') for i in range(1, 11)]; "
        "print([s.pick(f'192.168.0.{i}') for i in range(50)])"
    )
    outs = {
        subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            check=True,
            cwd=REPO,
            env={**os.environ, "PYTHONHASHSEED": seed},
        ).stdout
        for seed in ("1", "2")
    }
    assert len(outs) == 1
    s = ring()
    assert outs.pop().strip() == repr([s.pick(f"192.168.0.{i}") for i in range(50)])
    # Pinned: a change of the ring's hash would move every client of every deployed proxy.
    assert ring_point(b"10.0.0.1:8000#0") == 453513131588556189


def test_owner() -> None:
    s = ring(["a", "b", "c"])
    assert s.owner("anything") in {"a", "b", "c"}
    owner = s.owner("anything")
    s.mark_down(owner)  # type: ignore[arg-type]
    assert s.owner("anything") not in {owner, None}
    for k in "abc":
        s.drain(k)
    assert s.owner("anything") is None


def test_options_are_checked() -> None:
    for bad in (0, -3, 1.5, True):
        with pytest.raises(ValueError, match="vnodes must be an integer >= 1"):
            make("hash", vnodes=bad)
    with pytest.raises(ValueError, match="load factor must be >= 1"):
        make("hash", factor=0.9)
    s = ring(["a"], vnodes=4)
    assert s.owner("x") == "a"
    assert len(s._points) == 4


def test_inconsistent_totals_still_pick_the_least_loaded() -> None:
    """The bound always leaves room while _load is right; if it ever were wrong, pick anyway."""
    s = ring(["a", "b", "c"])
    s.set_load("a", 5)
    s.set_load("b", 2)
    s.set_load("c", 9)
    s._load = -100  # corrupt: every bound is now below every member's load
    assert s.pick("x") == "b"
