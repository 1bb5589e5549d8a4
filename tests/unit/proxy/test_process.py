"""The proxy process's set-up, without starting it: the sticky cookie's secret."""

from __future__ import annotations

from prefork_lb import cli
from prefork_lb.arbiter import Arbiter
from prefork_lb.proxy.process import make_strategy

ARGS = ["proxy", "--backends", "127.0.0.1:9001,127.0.0.1:9002", "--strategy", "sticky"]


def test_a_sticky_secret_keeps_cookies_across_masters() -> None:
    cfg = cli.parse([*ARGS, "--sticky-secret", "s3cret"], environ={})
    one, two = Arbiter(cfg), Arbiter(cfg)
    assert one.sticky_secret == two.sticky_secret == b"s3cret"
    a, b = make_strategy(cfg, one.sticky_secret), make_strategy(cfg, two.sticky_secret)
    for s in (a, b):
        s.add("127.0.0.1:9001")
    assert a.cookie_for("127.0.0.1:9001") == b.cookie_for("127.0.0.1:9001")
    assert "9001" not in a.cookie_for("127.0.0.1:9001")


def test_without_a_secret_each_master_draws_its_own() -> None:
    cfg = cli.parse(ARGS, environ={})
    one, two = Arbiter(cfg), Arbiter(cfg)
    assert one.sticky_secret != two.sticky_secret
    a, b = make_strategy(cfg, one.sticky_secret), make_strategy(cfg, two.sticky_secret)
    assert a.cookie_for("127.0.0.1:9001") != b.cookie_for("127.0.0.1:9001")


def test_the_secret_comes_from_the_environment_too() -> None:
    cfg = cli.parse(ARGS, environ={"PREFORK_LB_STICKY_SECRET": "from-env"})
    assert Arbiter(cfg).sticky_secret == b"from-env"
