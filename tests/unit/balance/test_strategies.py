"""prefork_lb.balance: the shared contract (every strategy) and each strategy's distribution."""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

import pytest

from prefork_lb.balance import (
    CLASSES,
    STRATEGIES,
    LeastConnections,
    PowerOfTwoChoices,
    RoundRobin,
    Sticky,
    Strategy,
    make,
    sticky,
)


class Clock:
    """An injected clock that moves only when told to."""

    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, dt: float) -> None:
        self.t += dt


def build(name: str, keys: Any = "abc", weights: Any = None, **options: Any) -> Strategy[Any]:
    if name in ("random", "p2c") or (name == "sticky" and options.get("inner") in ("random", "p2c")):
        options.setdefault("rng", random.Random(7))
    s = make(name, **options)
    for i, k in enumerate(keys):
        s.add(k, weights[i] if weights else 1)
    return s


def picks(s: Strategy[Any], n: int, hint: Any = None) -> list[Any]:
    return [s.pick(hint) for _ in range(n)]


ALL = sorted(STRATEGIES)


# -- registry ----------------------------------------------------------------------------------------


def test_registry_names() -> None:
    assert set(STRATEGIES) == {
        "round_robin",
        "weighted_round_robin",
        "least_connections",
        "random",
        "p2c",
        "least_latency",
        "hash",
        "sticky",
    }
    for name, cls in CLASSES.items():
        assert cls.name == name
        assert isinstance(make(name), cls)


def test_make_unknown_name() -> None:
    with pytest.raises(ValueError, match=r"unknown balancing strategy 'fastest' \(choose from round_robin, "):
        make("fastest")


def test_make_passes_options() -> None:
    s = make("least_connections", slow_start=30)
    assert s.slow_start == 30
    with pytest.raises(TypeError):
        make("round_robin", vnodes=3)


def test_sticky_inner_by_name_or_class() -> None:
    s = make("sticky", inner="p2c", rng=random.Random(1))
    assert isinstance(s, Sticky) and isinstance(s, PowerOfTwoChoices)
    assert type(s).__name__ == "StickyPowerOfTwoChoices"
    t = sticky(inner=RoundRobin)
    assert isinstance(t, RoundRobin) and isinstance(t, Sticky)
    assert type(sticky(inner="round_robin")) is type(t)  # one combined class per inner class
    assert isinstance(make("sticky"), LeastConnections)
    with pytest.raises(ValueError, match="unknown inner strategy for sticky: 'nope'"):
        sticky(inner="nope")
    with pytest.raises(ValueError, match="sticky cannot wrap sticky"):
        sticky(inner=type(t))


def test_base_class_has_no_pick() -> None:
    s: Strategy[str] = Strategy()
    s.add("a")
    with pytest.raises(NotImplementedError):
        s.pick()


# -- the contract, for every strategy -----------------------------------------------------------------


@pytest.mark.parametrize("name", ALL)
def test_empty_pool_picks_none(name: str) -> None:
    s = build(name, keys="")
    assert s.pick() is None
    assert s.pick("hint") is None
    assert len(s) == 0 and s.keys() == [] and s.snapshot() == []


@pytest.mark.parametrize("name", ALL)
def test_every_member_gets_picked(name: str) -> None:
    s = build(name, keys="abcd")
    seen = Counter(picks(s, 400))
    assert set(seen) == set("abcd")
    assert sum(m.picks for m in s.members.values()) == 400


@pytest.mark.parametrize("name", ALL)
def test_add_and_remove(name: str) -> None:
    s = build(name, keys="ab")
    s.add("c")
    assert "c" in s and s.keys() == ["a", "b", "c"] and len(s) == 3
    assert "c" in set(picks(s, 100))
    s.remove("a")
    assert "a" not in s and "a" not in s.members
    assert set(picks(s, 100)) == {"b", "c"}
    s.remove("b")
    s.remove("c")
    assert s.pick() is None
    s.add("d")
    assert s.pick() == "d"


@pytest.mark.parametrize("name", ALL)
def test_add_twice_remove_unknown_bad_weight(name: str) -> None:
    s = build(name, keys="a")
    with pytest.raises(ValueError, match="'a' is already a member"):
        s.add("a")
    with pytest.raises(KeyError):
        s.remove("zz")
    for bad in (0, -1, 1.5, True, "2"):
        with pytest.raises(ValueError, match="weight must be an integer >= 1"):
            s.add("b", bad)
        with pytest.raises(ValueError, match="weight must be an integer >= 1"):
            s.set_weight("a", bad)
    with pytest.raises(KeyError):
        s.mark_down("zz")
    with pytest.raises(KeyError):
        s.on_start("zz")


@pytest.mark.parametrize("name", ALL)
def test_down_members_are_skipped(name: str) -> None:
    s = build(name, keys="abc")
    s.mark_down("b")
    assert s.members["b"].state == "down"
    assert s.eligible() == ["a", "c"]
    assert set(picks(s, 200, "10.1.1.1")) <= {"a", "c"}
    assert set(picks(s, 200)) == {"a", "c"}
    s.mark_down("a")
    s.mark_down("c")
    assert s.pick() is None
    assert s.pick("10.1.1.1") is None
    s.mark_up("b")
    assert s.members["b"].state == "up"
    assert set(picks(s, 20)) == {"b"}


@pytest.mark.parametrize("name", ALL)
def test_drain(name: str) -> None:
    s = build(name, keys="abc")
    s.on_start("b")
    s.on_start("b")
    s.drain("b")
    assert s.members["b"].state == "draining"
    assert "b" not in set(picks(s, 200))
    # Work in flight finishes and is counted down; the member stays until removed.
    s.on_finish("b", 0.01)
    s.on_finish("b", 0.01)
    assert s.members["b"].in_flight == 0
    s.mark_down("b")
    assert s.members["b"].state == "down"  # down wins over draining
    s.mark_up("b")
    assert s.members["b"].state == "draining"  # a health check does not undo a drain
    assert "b" not in set(picks(s, 50))
    s.undrain("b")
    assert s.members["b"].state == "up"
    for k in "ac":  # least_latency probes members never measured first: measure them
        s.on_start(k)
        s.on_finish(k, 0.01)
    assert "b" in set(picks(s, 200))
    s.drain("a")
    s.drain("b")
    s.drain("c")
    assert s.pick() is None


@pytest.mark.parametrize("name", ALL)
def test_state_changes_are_idempotent(name: str) -> None:
    """The dispatcher marks every ready slot up on each scoreboard read."""
    clock = Clock()
    s = build(name, keys="ab", clock=clock, slow_start=10)
    clock.advance(20)
    s.snapshot()
    for _ in range(3):
        s.mark_up("a")
        s.undrain("a")
    assert s.members["a"].eff == 1  # no slow start restarted
    s.mark_down("a")
    s.mark_down("a")
    s.drain("b")
    s.drain("b")
    assert s.eligible() == []


@pytest.mark.parametrize("name", ALL)
def test_in_flight_tracking(name: str) -> None:
    s = build(name, keys="ab")
    s.on_start("a")
    s.on_start("a")
    s.on_finish("a")
    assert s.members["a"].in_flight == 1
    s.on_finish("a", ok=False)
    s.on_finish("a")  # one finish too many: stays at zero
    assert s.members["a"].in_flight == 0
    assert s.members["a"].failures == 1
    s.on_finish("gone", 0.5)  # removed while in flight: ignored
    s.set_load("b", 7)
    assert s.members["b"].in_flight == 7
    with pytest.raises(ValueError, match="in_flight must be >= 0"):
        s.set_load("b", -1)
    with pytest.raises(ValueError, match="latency must be >= 0"):
        s.on_finish("b", -0.1)
    with pytest.raises(ValueError, match="latency must be >= 0"):
        s.set_load("b", 1, -0.1)


@pytest.mark.parametrize("name", ALL)
def test_snapshot(name: str) -> None:
    clock = Clock()
    s = build(name, keys=["10.0.0.1:80", "10.0.0.2:80"], weights=[3, 1], clock=clock)
    key = s.pick()
    assert key is not None
    s.on_start(key)
    s.on_finish("10.0.0.2:80", 0.25)
    s.mark_down("10.0.0.2:80")
    snap = {row["key"]: row for row in s.snapshot()}
    assert snap["10.0.0.1:80"] == {
        "key": "10.0.0.1:80",
        "weight": 3,
        "effective_weight": 3,
        "state": "up",
        "in_flight": 1 if key == "10.0.0.1:80" else 0,
        "picks": 1 if key == "10.0.0.1:80" else 0,
        "failures": 0,
        "latency": None,
    }
    assert snap["10.0.0.2:80"]["state"] == "down"
    assert snap["10.0.0.2:80"]["latency"] == pytest.approx(0.25)
    assert "1/2 eligible" in repr(s)
    assert "<Member '10.0.0.2:80' weight=1 down" in repr(s.members["10.0.0.2:80"])
    with pytest.raises(TypeError):
        s.members["x"] = None  # type: ignore[index]  # read-only view


@pytest.mark.parametrize("name", ALL)
def test_invalid_options(name: str) -> None:
    with pytest.raises(ValueError, match="slow_start must be >= 0"):
        make(name, slow_start=-1)
    with pytest.raises(ValueError, match="latency decay must be > 0"):
        make(name, decay=0)
    with pytest.raises(ValueError, match="default latency must be > 0"):
        make(name, default_latency=0)


# -- round robin ---------------------------------------------------------------------------------------


def test_round_robin_exact_order() -> None:
    s = build("round_robin", keys="abc", weights=[5, 1, 1])  # weights ignored
    assert "".join(picks(s, 7)) == "abcabca"
    s.mark_down("b")
    assert "".join(picks(s, 4)) == "caca"
    s.mark_up("b")
    s.remove("c")
    assert "".join(picks(s, 4)) == "baba"


def test_round_robin_continues_after_shrink() -> None:
    s = build("round_robin", keys="abcd")
    assert picks(s, 3) == ["a", "b", "c"]
    s.remove("d")
    s.remove("c")
    assert picks(s, 3) == ["a", "b", "a"]


# -- smooth weighted round robin ------------------------------------------------------------------------


def test_weighted_round_robin_nginx_sequence() -> None:
    s = build("weighted_round_robin", keys="abc", weights=[5, 1, 1])
    assert "".join(picks(s, 14)) == "aabacaa" * 2


def test_weighted_round_robin_skips_down_and_follows_weights() -> None:
    s = build("weighted_round_robin", keys="abc", weights=[2, 1, 1])
    assert "".join(picks(s, 4)) == "abca"
    s.mark_down("a")
    assert Counter(picks(s, 10)) == {"b": 5, "c": 5}
    s.mark_up("a")
    s.set_weight("c", 4)
    assert s.members["c"].weight == 4
    got = Counter(picks(s, 700))
    assert got == {"a": 200, "b": 100, "c": 400}


def test_weighted_round_robin_equal_weights_is_round_robin() -> None:
    s = build("weighted_round_robin", keys="abcd")
    assert "".join(picks(s, 8)) == "abcdabcd"


# -- least connections ------------------------------------------------------------------------------


def test_least_connections_prefers_idle() -> None:
    s = build("least_connections", keys="abc")
    s.set_load("a", 3)
    s.set_load("b", 1)
    s.set_load("c", 2)
    assert s.pick() == "b"
    s.on_start("b")
    s.on_start("b")
    assert s.pick() == "c"  # b 3, c 2, a 3
    s.set_load("a", 0)
    assert s.pick() == "a"


def test_least_connections_alternates_on_ties() -> None:
    s = build("least_connections", keys="ab")
    assert picks(s, 6) == ["a", "b", "a", "b", "a", "b"]
    seq = []
    for _ in range(6):
        k = s.pick()
        s.on_start(k)
        seq.append(k)
        s.on_finish(k, 0.01)
    assert seq == ["a", "b", "a", "b", "a", "b"]


def test_least_connections_balances_in_flight() -> None:
    s = build("least_connections", keys="abcd")
    for _ in range(40):
        s.on_start(s.pick())
    assert [m.in_flight for m in s.members.values()] == [10, 10, 10, 10]


def test_least_connections_respects_weights() -> None:
    s = build("least_connections", keys="abc", weights=[2, 1, 1])
    for _ in range(40):
        s.on_start(s.pick())
    assert {k: m.in_flight for k, m in s.members.items()} == {"a": 20, "b": 10, "c": 10}
    s.set_load("a", 1)
    s.set_load("b", 1)
    s.set_load("c", 1)
    assert s.pick() == "a"  # 1/2 beats 1/1
    s.set_load("a", 0)
    assert s.pick() == "a"  # idle wins at once


# -- random --------------------------------------------------------------------------------------------


def test_random_is_uniform_with_equal_weights() -> None:
    s = build("random", keys="abcd")
    got = Counter(picks(s, 40_000))
    for k in "abcd":
        assert 9_000 < got[k] < 11_000


def test_random_follows_weights() -> None:
    s = build("random", keys="abc", weights=[6, 3, 1])
    got = Counter(picks(s, 50_000))
    assert 29_000 < got["a"] < 31_000
    assert 14_000 < got["b"] < 16_000
    assert 4_400 < got["c"] < 5_600
    s.mark_down("a")
    got = Counter(picks(s, 20_000))
    assert set(got) == {"b", "c"} and 14_500 < got["b"] < 15_500


def test_random_is_reproducible_with_a_seeded_rng() -> None:
    a = build("random", keys="abcdef", rng=random.Random(42))
    b = build("random", keys="abcdef", rng=random.Random(42))
    assert picks(a, 50) == picks(b, 50)


# -- power of two choices -------------------------------------------------------------------------------


def test_p2c_never_picks_the_busy_one_of_two() -> None:
    s = build("p2c", keys="ab", rng=random.Random(3))
    s.set_load("a", 5)
    assert set(picks(s, 1000)) == {"b"}
    s.set_load("a", 0)
    s.set_load("b", 1)
    assert set(picks(s, 1000)) == {"a"}


def test_p2c_single_member_and_weights() -> None:
    s = build("p2c", keys="a")
    assert picks(s, 3) == ["a", "a", "a"]
    s.add("b", 4)
    s.set_load("a", 1)
    s.set_load("b", 3)  # 3/4 < 1/1
    assert set(picks(s, 100)) == {"b"}


def test_p2c_spreads_load() -> None:
    s = build("p2c", keys=[f"m{i}" for i in range(8)], rng=random.Random(5))
    for _ in range(800):
        s.on_start(s.pick())
    loads = [m.in_flight for m in s.members.values()]
    assert max(loads) - min(loads) <= 3


def test_p2c_never_picks_the_single_busiest() -> None:
    s = build("p2c", keys="abcde", rng=random.Random(9))
    for i, k in enumerate("abcde"):
        s.set_load(k, i)
    assert "e" not in set(picks(s, 2000))


# -- least latency -------------------------------------------------------------------------------------


def test_least_latency_prefers_the_fast_member() -> None:
    clock = Clock()
    s = build("least_latency", keys="ab", clock=clock)
    s.on_finish("a", 0.010)
    s.on_finish("b", 0.100)
    assert set(picks(s, 20)) == {"a"}
    # The work in flight multiplies the cost: 0.010 x (8 + 1) < 0.1 < 0.010 x (10 + 1).
    s.set_load("a", 8)
    assert s.pick() == "a"
    s.set_load("a", 10)
    assert s.pick() == "b"


def test_least_latency_peak_jumps_up_at_once() -> None:
    clock = Clock()
    s = build("least_latency", keys="ab", clock=clock)
    for _ in range(5):
        clock.advance(0.2)
        s.on_finish("a", 0.010)
        s.on_finish("b", 0.020)
    assert s.pick() == "a"
    s.on_finish("a", 0.500)  # one slow answer
    assert s.members["a"].estimate == 0.5
    assert s.pick() == "b"


def test_least_latency_recovers_a_once_slow_member() -> None:
    clock = Clock()
    s = build("least_latency", keys="ab", clock=clock)
    s.on_finish("a", 0.05)
    s.on_finish("b", 1.0)  # b was slow once, then got nothing
    s.set_load("a", 4)  # a: 0.05 x 5 = 0.25 < 1.0
    assert s.pick() == "a"
    estimates = []
    for _ in range(60):  # a minute; a keeps answering in 50 ms
        clock.advance(1.0)
        s.on_finish("a", 0.05)
        s.set_load("a", 4)
        estimates.append(s.snapshot()[1]["latency"])
    assert estimates == sorted(estimates, reverse=True)  # b's estimate only falls...
    assert estimates[-1] < 0.25  # ...toward a's (the median of the others)
    assert s.pick() == "b"


def test_least_latency_decays_toward_the_median_of_the_others() -> None:
    """With two members, the median of both would hold a slow one halfway up for ever."""
    clock = Clock()
    s = build("least_latency", keys="ab", clock=clock)
    s.on_finish("a", 0.05)
    s.on_finish("b", 1.0)
    clock.advance(100)  # ten decays without a refresh in between
    s.on_finish("a", 0.05)
    assert s.snapshot()[1]["latency"] == pytest.approx(0.05, abs=1e-4)


def test_least_latency_samples_below_pull_slowly() -> None:
    clock = Clock()
    s = build("least_latency", keys="a", clock=clock)
    s.on_finish("a", 1.0)
    clock.advance(0.001)
    s.on_finish("a", 0.0)  # 1 ms later: weight 1 - exp(-0.0001)
    assert s.members["a"].estimate == pytest.approx(1.0, abs=1e-3)
    clock.advance(10.0)  # one decay later: weight 1 - 1/e
    s.on_finish("a", 0.0)
    assert s.members["a"].estimate == pytest.approx(0.3679, abs=1e-3)


def test_least_latency_new_member_starts_at_the_median_and_gets_a_share() -> None:
    clock = Clock()
    s = build("least_latency", keys="abc", clock=clock)
    for k, lat in zip("abc", (0.01, 0.02, 0.40), strict=True):
        s.on_finish(k, lat)
    clock.advance(1.0)
    s.pick()  # refresh: the neutral value is the median, 0.02
    s.add("d")
    assert s.members["d"].estimate == pytest.approx(0.02, rel=0.01)
    got: Counter[str] = Counter()
    for _ in range(300):  # 30 s of work, 10 in flight at a time
        for _ in range(10):
            k = s.pick()
            s.on_start(k)
            got[k] += 1
        clock.advance(0.1)
        for key, m in s.members.items():
            for _ in range(m.in_flight):
                s.on_finish(key, {"a": 0.01, "b": 0.02, "c": 0.40, "d": 0.01}[key])
    assert got["d"] > 0.25 * got.total()  # as fast as a: about as much work
    assert got["c"] < 0.05 * got.total()


def test_least_latency_without_samples_is_least_connections() -> None:
    s = build("least_latency", keys="abc")
    assert picks(s, 6) == list("abcabc")
    s.set_load("b", 2)
    s.set_load("c", 1)
    assert s.pick() == "a"
    assert s.snapshot()[0]["latency"] is None


def test_least_latency_set_load_replaces_the_estimate() -> None:
    clock = Clock()
    s = build("least_latency", keys="ab", clock=clock)
    s.set_load("a", 0, 0.5)
    s.set_load("b", 0, 0.1)
    assert s.pick() == "b"
    s.set_load("b", 2, 0.3)
    assert s.members["b"].estimate == 0.3
    assert s.pick() == "a"  # 0.5 x 1 < 0.3 x 3


def test_least_latency_failures_count_as_slow() -> None:
    clock = Clock()
    s = build("least_latency", keys="ab", clock=clock)
    s.on_finish("a", 0.02)
    s.on_finish("b", 0.02)
    s.on_finish("b", 0.001, ok=False)  # a fast failure: at least twice the estimate
    assert s.members["b"].estimate == pytest.approx(0.04)
    s.on_finish("b", ok=False)
    assert s.members["b"].estimate == pytest.approx(0.08)
    assert s.members["b"].failures == 2
    assert set(picks(s, 10)) == {"a"}
    s.add("c")
    s.on_finish("c", 0.001, ok=False)  # first sample a failure: twice the neutral value
    assert s.members["c"].estimate >= 0.04


def test_least_latency_weights() -> None:
    s = build("least_latency", keys="ab", weights=[4, 1])
    s.on_finish("a", 0.1)
    s.on_finish("b", 0.1)
    s.set_load("a", 3)  # 0.1 x 4 / 4 = 0.1 ties b's 0.1 x 1 / 1
    s.set_load("b", 0)
    assert sorted(picks(s, 2)) == ["a", "b"]
    s.set_load("a", 2)
    assert s.pick() == "a"


def test_least_latency_ignores_down_members_for_the_neutral_value() -> None:
    clock = Clock()
    s = build("least_latency", keys="abc", clock=clock)
    s.on_finish("a", 0.01)
    s.on_finish("b", 0.03)
    s.on_finish("c", 9.0)
    s.mark_down("c")
    clock.advance(1)
    s.pick()
    s.add("d")
    assert s.members["d"].estimate == pytest.approx(0.02, rel=0.05)
    # The down member's estimate drifts toward the neutral value too.
    assert s.snapshot()[2]["latency"] < 9.0


# -- slow start ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", [n for n in ALL if n != "round_robin"])
def test_slow_start_ramp_is_linear(name: str) -> None:
    clock = Clock()
    s = build(name, keys="ab", weights=[10, 10], clock=clock, slow_start=100)
    clock.advance(200)
    s.pick()
    s.mark_down("b")
    clock.advance(5)
    s.mark_up("b")
    weights = []
    for _ in range(11):
        s.pick()
        weights.append(s.members["b"].eff)
        clock.advance(10)
    assert weights == pytest.approx([1 + 0.9 * i for i in range(10)] + [10])
    assert s.members["a"].eff == 10
    assert s._ramping == []


def test_slow_start_shifts_the_share() -> None:
    clock = Clock()
    s = build("weighted_round_robin", keys="ab", clock=clock, slow_start=60)
    clock.advance(100)
    s.mark_down("b")
    s.mark_up("b")  # b now ramps from 0.1 to 1 over 60 s
    early = Counter(picks(s, 110))
    assert 8 <= early["b"] <= 12  # 0.1 / 1.1 of the picks
    clock.advance(30)  # halfway: 0.55
    mid = Counter(picks(s, 155))
    assert 50 <= mid["b"] <= 60
    clock.advance(30)
    assert Counter(picks(s, 100)) == {"a": 50, "b": 50}


def test_slow_start_restarts_when_marked_up_again_and_on_add() -> None:
    clock = Clock()
    s = build("least_connections", keys="a", clock=clock, slow_start=10)
    assert s.members["a"].eff == pytest.approx(0.1)  # added members ramp too
    clock.advance(5)
    s.mark_down("a")
    s.mark_up("a")
    assert s._ramping == [s.members["a"]]
    assert s.snapshot()[0]["effective_weight"] == pytest.approx(0.1)
    clock.advance(-1)  # a clock that steps back does not go below the floor
    assert s.snapshot()[0]["effective_weight"] == pytest.approx(0.1)
    s.remove("a")
    assert s._ramping == []


def test_slow_start_set_weight_while_ramping() -> None:
    clock = Clock()
    s = build("random", keys="ab", clock=clock, slow_start=10)
    clock.advance(5)
    s.set_weight("a", 3)
    assert s.members["a"].eff == pytest.approx(3 * 0.55)
    clock.advance(5)
    s.set_weight("b", 2)
    assert s.members["b"].eff == 2
    assert s.members["a"].eff == 3


def test_least_connections_with_a_ramping_member() -> None:
    clock = Clock()
    s = build("least_connections", keys="ab", clock=clock, slow_start=10)
    clock.advance(20)
    s.pick()
    s.mark_down("b")
    s.mark_up("b")  # b: effective weight 0.1
    s.set_load("a", 3)
    s.set_load("b", 1)  # 1 / 0.1 = 10 > 3 / 1
    assert s.pick() == "a"
    s.set_load("b", 0)
    assert s.pick() == "b"  # idle still wins


def test_load_of_ineligible_members_is_kept_apart() -> None:
    """Totals cover eligible members only; a member's load counts again when it comes back."""
    s = build("least_connections", keys="ab")
    s.on_start("a")
    s.mark_down("b")
    s.set_load("b", 5)
    s.on_start("b")
    assert s.members["b"].in_flight == 6 and s._load == 1
    s.on_finish("b")
    assert s._load == 1
    s.mark_up("b")
    assert s._load == 6
    assert s.pick() == "a"


def test_least_latency_probes_a_member_never_measured() -> None:
    """A new member is tried (one request at a time) even while a measured one is faster than
    the neutral estimate it would otherwise get, so it is never left unmeasured."""
    for weights in ({"fast": 1, "new": 1}, {"fast": 2, "new": 1}):
        s = make("least_latency", clock=lambda: 0.0)
        for k, w in weights.items():
            s.add(k, w)
        s.on_start("fast")
        s.on_finish("fast", 0.001)
        assert s.pick() == "new"
        s.on_start("new")
        assert s.pick() == "fast"  # the probe is in flight: no second one
        s.on_finish("new", 0.002)
        assert s.members["new"].ewma == 0.002
