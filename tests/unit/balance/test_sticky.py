"""prefork_lb.balance.sticky: cookie affinity."""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

import pytest

from prefork_lb.balance import Strategy, make

BACKENDS = ["10.0.0.5:8000", "10.0.0.6:8000", "10.0.0.7:8000"]


def pool(**options: Any) -> Strategy[str]:
    s = make("sticky", secret=b"s3cret", **options)
    for k in BACKENDS:
        s.add(k)
    return s


def test_cookie_roundtrip() -> None:
    s = pool()
    for k in BACKENDS:
        cookie = s.cookie_for(k)  # type: ignore[attr-defined]
        assert s.key_for(cookie) == k  # type: ignore[attr-defined]
        assert s.key_for(cookie.encode()) == k  # type: ignore[attr-defined]
        assert [s.pick(cookie) for _ in range(5)] == [k] * 5
    assert s.members["10.0.0.6:8000"].picks == 5


def test_new_client_gets_the_inner_strategys_pick() -> None:
    s = pool()
    first = s.pick()
    assert first == "10.0.0.5:8000"  # least_connections, all idle: the first
    s.on_start(first)
    assert s.pick(None) == "10.0.0.6:8000"
    assert s.pick("") == "10.0.0.7:8000"  # an empty cookie names nothing


def test_unknown_cookie_falls_through() -> None:
    s = pool()
    other = make("sticky", secret=b"another secret")
    other.add("10.0.0.5:8000")
    forged = other.cookie_for("10.0.0.5:8000")  # type: ignore[attr-defined]
    assert s.key_for(forged) is None  # type: ignore[attr-defined]
    assert s.key_for("0" * 20) is None  # type: ignore[attr-defined]
    assert s.pick(forged) == "10.0.0.5:8000"  # the inner pick, not the cookie's
    assert s.pick("0" * 20) == "10.0.0.6:8000"


def test_down_or_draining_member_is_redispatched() -> None:
    s = pool()
    cookie = s.cookie_for("10.0.0.5:8000")  # type: ignore[attr-defined]
    s.mark_down("10.0.0.5:8000")
    got = s.pick(cookie)
    assert got in ("10.0.0.6:8000", "10.0.0.7:8000")
    s.mark_up("10.0.0.5:8000")
    assert s.pick(cookie) == "10.0.0.5:8000"
    s.drain("10.0.0.5:8000")
    assert s.pick(cookie) != "10.0.0.5:8000"
    s.remove("10.0.0.5:8000")
    assert s.key_for(cookie) is None  # type: ignore[attr-defined]
    assert s.pick(cookie) in ("10.0.0.6:8000", "10.0.0.7:8000")
    s.remove("10.0.0.6:8000")
    s.mark_down("10.0.0.7:8000")
    assert s.pick(cookie) is None


def test_cookie_reveals_no_address() -> None:
    s = pool()
    for k in BACKENDS:
        cookie = s.cookie_for(k)  # type: ignore[attr-defined]
        assert len(cookie) == 20 and int(cookie, 16) >= 0
        assert "10.0.0" not in cookie and "8000" not in cookie and k not in cookie
        assert cookie == hmac.new(b"s3cret", k.encode(), hashlib.sha256).hexdigest()[:20]
    assert len({s.cookie_for(k) for k in BACKENDS}) == 3  # type: ignore[attr-defined]


def test_secret_and_length() -> None:
    a = make("sticky")
    b = make("sticky")
    assert a.cookie_for("x") != b.cookie_for("x")  # type: ignore[attr-defined]  # random per instance
    assert len(make("sticky", cookie_length=16).cookie_for(1)) == 16  # type: ignore[attr-defined]
    assert len(make("sticky", cookie_length=64).cookie_for(1)) == 64  # type: ignore[attr-defined]
    for bad in (15, 65, 20.0, True):
        with pytest.raises(ValueError, match="cookie_length must be an integer from 16 to 64"):
            make("sticky", cookie_length=bad)
    for secret in (b"", "text"):
        with pytest.raises(ValueError, match="the cookie secret must be non-empty bytes"):
            make("sticky", secret=secret)


def test_sticky_over_other_strategies() -> None:
    s = pool(inner="hash")
    assert s.pick("not a cookie") in BACKENDS
    cookie = s.cookie_for("10.0.0.7:8000")  # type: ignore[attr-defined]
    assert s.pick(cookie) == "10.0.0.7:8000"
    w = pool(inner="weighted_round_robin")
    w.set_weight("10.0.0.5:8000", 5)
    assert [w.pick() for _ in range(7)].count("10.0.0.5:8000") == 5


def test_slot_keys() -> None:
    """The dispatcher's keys are slot numbers: cookies are made from str(key)."""
    s = make("sticky", secret=b"k")
    s.add(0)
    s.add(1)
    assert s.pick(s.cookie_for(1)) == 1  # type: ignore[attr-defined]
