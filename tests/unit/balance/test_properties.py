"""prefork_lb.balance: properties over random operation sequences (hypothesis)."""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from prefork_lb.balance import STRATEGIES, Strategy, make
from prefork_lb.balance.latency import median, median_without

KEYS = ["a", "b", "c", "d", "e"]
OPS = [
    "add",
    "remove",
    "mark_up",
    "mark_down",
    "drain",
    "undrain",
    "on_start",
    "on_finish",
    "set_load",
    "set_weight",
    "pick",
    "advance",
]

# No example database: it would be written into the working tree.
SETTINGS = settings(database=None, max_examples=150, deadline=None)


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def check_invariants(s: Strategy[Any]) -> None:
    members = list(s.members.values())
    eligible = [m for m in members if m.up and not m.draining]
    assert s._eligible == eligible
    assert [m.pos for m in eligible] == list(range(len(eligible)))
    assert all(m.eligible == (m in eligible) for m in members)
    assert s._load == sum(m.in_flight for m in eligible)
    assert s._weight == sum(m.eff for m in eligible)
    assert all(m.in_flight >= 0 for m in members)
    assert all(m.weight * 0.1 - 1e-9 <= m.eff <= m.weight for m in members)


@SETTINGS
@given(
    name=st.sampled_from(sorted(STRATEGIES)),
    slow_start=st.sampled_from([0.0, 5.0]),
    ops=st.lists(st.tuples(st.sampled_from(OPS), st.sampled_from(KEYS), st.integers(1, 4)), max_size=60),
)
def test_pick_never_returns_an_ineligible_member(
    name: str, slow_start: float, ops: list[tuple[str, str, int]]
) -> None:
    clock = Clock()
    options: dict[str, Any] = {"clock": clock, "slow_start": slow_start}
    if name in ("random", "p2c"):
        options["rng"] = random.Random(0)
    s = make(name, **options)
    for op, key, n in ops:
        if op == "advance":
            clock.t += n
        elif op == "pick":
            hint = key if name == "hash" else s.cookie_for(key) if name == "sticky" else None  # type: ignore[attr-defined]
            got = s.pick(hint)
            if got is None:
                assert not any(m.eligible for m in s.members.values())
            else:
                m = s.members[got]
                assert m.up and not m.draining
                s.on_start(got)
        elif op == "add":
            if key not in s:
                s.add(key, n)
        elif key in s:
            if op == "on_finish":
                s.on_finish(key, n / 100, ok=n != 4)
            elif op == "set_load":
                s.set_load(key, n, n / 50 if n % 2 else None)
            elif op == "set_weight":
                s.set_weight(key, n)
            else:
                getattr(s, op)(key)
        check_invariants(s)


@SETTINGS
@given(weights=st.lists(st.integers(1, 12), min_size=1, max_size=8))
def test_weighted_round_robin_period_matches_weights_exactly(weights: list[int]) -> None:
    s = make("weighted_round_robin")
    for i, w in enumerate(weights):
        s.add(i, w)
    for _ in range(3):  # every period, not only the first
        got = Counter(s.pick() for _ in range(sum(weights)))
        assert got == {i: w for i, w in enumerate(weights)}


@SETTINGS
@given(weights=st.lists(st.integers(1, 5), min_size=2, max_size=6))
def test_least_connections_keeps_in_flight_proportional(weights: list[int]) -> None:
    s = make("least_connections")
    for i, w in enumerate(weights):
        s.add(i, w)
    for _ in range(sum(weights) * 4):
        s.on_start(s.pick())
    assert [m.in_flight for m in s.members.values()] == [4 * w for w in weights]


@SETTINGS
@given(values=st.lists(st.floats(0, 10), min_size=2, max_size=9), data=st.data())
def test_median_without_matches_the_definition(values: list[float], data: st.DataObject) -> None:
    values.sort()
    p = data.draw(st.integers(0, len(values) - 1))
    assert median_without(values, p) == median(values[:p] + values[p + 1 :])
