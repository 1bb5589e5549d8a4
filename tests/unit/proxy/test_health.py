"""prefork_lb.proxy.health: backend lists, rise/fall, passive ejection, retry budget (fake clock)."""

from __future__ import annotations

import pytest

from prefork_lb.proxy.health import HealthState, PassiveEjector, RetryBudget, parse_backends


class Clock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


# -- parse_backends -------------------------------------------------------------------------------


def test_parse_backends() -> None:
    assert parse_backends("127.0.0.1:9001,127.0.0.1:9002=3") == [
        ("127.0.0.1", 9001, 1),
        ("127.0.0.1", 9002, 3),
    ]
    assert parse_backends(" [::1]:8080 = 2 , app-1.internal:80,, ") == [
        ("::1", 8080, 2),
        ("app-1.internal", 80, 1),
    ]
    assert parse_backends(["a:1,b:2", "[2001:db8::1]:443"]) == [
        ("a", 1, 1),
        ("b", 2, 1),
        ("2001:db8::1", 443, 1),
    ]
    assert parse_backends("") == []
    assert parse_backends("x_y:65535=10") == [("x_y", 65535, 10)]


@pytest.mark.parametrize(
    ("item", "why"),
    [
        ("127.0.0.1", "missing :PORT"),
        ("h:", "the port must be 1-65535"),
        ("h:0", "the port must be 1-65535"),
        ("h:65536", "the port must be 1-65535"),
        ("h:80x", "the port must be 1-65535"),
        ("h:²", "the port must be 1-65535"),
        ("h:80=0", "the weight must be an integer >= 1"),
        ("h:80=", "the weight must be an integer >= 1"),
        ("h:80=-2", "the weight must be an integer >= 1"),
        ("h:80=1.5", "the weight must be an integer >= 1"),
        (":80", "'' is not a host name or address"),
        ("a b:80", "'a b' is not a host name or address"),
        ("-h:80", "'-h' is not a host name or address"),
        ("::1:80", "write an IPv6 address in brackets"),
        ("[::1:80", "missing ']'"),
        ("[::1]80", "missing :PORT"),
        ("[::1]", "missing :PORT"),
        ("[nope]:80", "'nope' is not an IPv6 address"),
        ("[1.2.3.4]:80", "'1.2.3.4' is not an IPv6 address"),
    ],
)
def test_parse_backends_errors_name_the_item(item: str, why: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_backends(f"ok:1,{item}")
    msg = str(info.value)
    assert msg.startswith(f"invalid backend {item.strip()!r}: {why}")
    assert "HOST:PORT" in msg


def test_parse_backends_duplicate() -> None:
    with pytest.raises(ValueError, match="listed twice"):
        parse_backends("a:1,b:2,a:1=5")


# -- HealthState ----------------------------------------------------------------------------------


def test_health_falls_after_fall_consecutive_failures() -> None:
    h = HealthState(rise=2, fall=3)
    assert h.healthy
    assert [h.observe(False), h.observe(False)] == [False, False]
    assert h.observe(True) is False  # a pass breaks the run
    assert [h.observe(False), h.observe(False)] == [False, False] and h.healthy
    assert h.observe(False) is True and not h.healthy
    assert h.observe(False) is False


def test_health_rises_after_rise_consecutive_passes() -> None:
    h = HealthState(rise=2, fall=1, healthy=False)
    assert h.observe(True) is False
    assert h.observe(False) is False  # resets
    assert h.observe(True) is False and not h.healthy
    assert h.observe(True) is True and h.healthy
    assert h.observe(False) is True and not h.healthy  # fall=1


def test_a_backend_not_checked_yet_is_decided_by_its_first_result() -> None:
    for first in (True, False):
        h = HealthState(rise=3, fall=3, healthy=None)
        assert h.checking and not h.healthy
        assert h.observe(first) is True and h.healthy is first and not h.checking
        assert h.observe(first) is False  # agrees: nothing changes
        assert [h.observe(not first) for _ in range(3)] == [False, False, True]  # hysteresis from now on
        assert h.healthy is (not first)
    assert not HealthState(rise=1, fall=1).checking


def test_health_rejects_zero() -> None:
    with pytest.raises(ValueError):
        HealthState(rise=0, fall=1)
    with pytest.raises(ValueError):
        HealthState(rise=1, fall=0)


# -- PassiveEjector -------------------------------------------------------------------------------


def test_ejects_after_consecutive_failures_within_window() -> None:
    c = Clock()
    e = PassiveEjector(errors=3, window=10.0, eject_for=5.0, clock=c)
    assert not e.failure() and not e.failure()
    assert not e.ejected()
    assert e.failure() is True
    assert e.ejected() and e.eject_for == 5.0
    c.t += 4.9
    assert e.ejected()
    assert e.failure() is False  # while out: nothing extends the ejection
    c.t += 0.2
    assert not e.ejected()


def test_success_resets_the_count() -> None:
    c = Clock()
    e = PassiveEjector(errors=3, clock=c)
    for _ in range(10):
        assert not e.failure() and not e.failure()
        e.success()
    assert not e.ejected()


def test_failures_spread_beyond_window_do_not_eject() -> None:
    c = Clock()
    e = PassiveEjector(errors=3, window=10.0, clock=c)
    for _ in range(10):
        assert not e.failure()
        c.t += 6.0
    assert not e.ejected()


def test_repeated_ejection_doubles_up_to_8x_and_success_streak_resets() -> None:
    c = Clock()
    e = PassiveEjector(errors=2, window=10.0, eject_for=1.0, clock=c)
    assert e.eject_for == 1.0
    e.failure()
    assert e.failure()
    durations = [e.eject_for]
    for _ in range(5):
        c.t = e.until
        e.success()  # one success is not a streak: still on trial
        assert e.failure() is True  # on trial: one failure is enough
        durations.append(e.eject_for)
    assert durations == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    c.t = e.until
    e.success()
    e.success()  # a streak of `errors` ends the trial
    assert not e.failure()
    assert e.failure() and e.eject_for == 1.0


def test_forced_eject() -> None:
    c = Clock()
    e = PassiveEjector(errors=5, eject_for=3.0, clock=c)
    assert e.eject() == 3.0 and e.ejected()
    c.t = e.until
    assert e.eject() == 6.0 and e.until == c.t + 6.0


def test_ejector_rejects_zero_errors() -> None:
    with pytest.raises(ValueError):
        PassiveEjector(errors=0)


# -- RetryBudget ----------------------------------------------------------------------------------


def test_budget_floor_per_second_over_the_window() -> None:
    c = Clock()
    b = RetryBudget(ratio=0.2, min_per_second=1.0, clock=c, window=10.0)
    spent = sum(b.try_spend() for _ in range(50))
    assert spent == 10  # 1/s over a 10 s window
    c.t += 5.0
    assert not b.try_spend()  # still inside the window of those spends
    c.t += 5.0
    assert sum(b.try_spend() for _ in range(50)) == 10


def test_budget_ratio_of_requests() -> None:
    c = Clock()
    b = RetryBudget(ratio=0.2, min_per_second=0.0, clock=c)
    assert not b.try_spend()
    for _ in range(4):
        b.on_request()
    assert not b.try_spend()
    b.on_request()
    assert b.try_spend()  # 5 requests x 0.2 = one retry
    assert not b.try_spend()
    for _ in range(100):
        b.on_request()
    assert sum(b.try_spend() for _ in range(100)) == 20


def test_budget_deposits_expire() -> None:
    c = Clock(5.5)
    b = RetryBudget(ratio=0.5, min_per_second=0.0, clock=c, window=3.0)
    for _ in range(10):
        b.on_request()
    c.t += 2.0
    assert b.try_spend()
    c.t += 1.0  # the deposit's second has left the window
    assert not b.try_spend()
    c.t += 100.0  # a long gap clears everything, including debts
    assert not b.try_spend() and b.balance == 0.0
    b.on_request()
    b.on_request()
    assert b.try_spend() and not b.try_spend()


def test_budget_rejects_negative() -> None:
    with pytest.raises(ValueError):
        RetryBudget(ratio=-0.1)
    with pytest.raises(ValueError):
        RetryBudget(min_per_second=-1)


def test_budget_tiny_window_has_one_slot() -> None:
    c = Clock()
    b = RetryBudget(ratio=1.0, min_per_second=0.0, clock=c, window=0.1)
    b.on_request()
    assert b.try_spend() and not b.try_spend()
    c.t += 1.0
    b.on_request()
    assert b.try_spend()
