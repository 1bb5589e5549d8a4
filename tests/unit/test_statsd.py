"""prefork_lb.statsd: targets, tags, the lines for a change between two samples, datagrams, and
a push to a UDP socket the test owns."""

from __future__ import annotations

import socket

import pytest

from prefork_lb.statsd import (
    Pusher,
    Sample,
    Target,
    lines,
    normalise_prefix,
    packets,
    parse_tags,
    parse_target,
)


@pytest.mark.parametrize(
    ("value", "family", "address"),
    [
        ("localhost:8125", socket.AF_INET, ("localhost", 8125)),
        ("127.0.0.1:9125", socket.AF_INET, ("127.0.0.1", 9125)),
        ("[::1]:8125", socket.AF_INET6, ("::1", 8125)),
        ("unix:/run/statsd.sock", socket.AF_UNIX, "/run/statsd.sock"),
    ],
)
def test_targets(value: str, family: int, address: object) -> None:
    t = parse_target(value)
    assert (t.family, t.address) == (family, address)
    assert str(t) == value


@pytest.mark.parametrize(
    "value", ["", "localhost", "localhost:", ":8125", "host:0", "host:70000", "host:x", "::1:8125", "unix:"]
)
def test_bad_targets_say_what_is_expected(value: str) -> None:
    with pytest.raises(ValueError, match="expected|brackets"):
        parse_target(value)


def test_tags() -> None:
    assert parse_tags("env:prod, service:web ,canary") == "env:prod,service:web,canary"
    assert parse_tags("") == ""
    with pytest.raises(ValueError, match="'bad tag'"):
        parse_tags("env:prod,bad tag")
    with pytest.raises(ValueError, match="'1x'"):
        parse_tags("1x")


@pytest.mark.parametrize(
    ("prefix", "want"), [("", ""), ("app", "app."), ("svc.app.", "svc.app."), ("my app", "my_app.")]
)
def test_prefix(prefix: str, want: str) -> None:
    assert normalise_prefix(prefix) == want


def sample(**kw: object) -> Sample:
    base: dict[str, object] = {"bounds": (0.005, 0.1), "histogram": (0, 0, 0), "workers": 2}
    base.update(kw)
    return Sample(**base)  # type: ignore[arg-type]


def test_first_push_sends_everything_from_zero() -> None:
    cur = sample(requests=3, by_status={"200": 2, "404": 1}, histogram=(2, 0, 1), counters={"shed": 0})
    assert lines(None, cur) == [
        "gunicorn.requests:3|c",
        "gunicorn.request.status.200:2|c",
        "gunicorn.request.status.404:1|c",
        "gunicorn.request.duration:5|ms|@0.5",  # two samples in the 5 ms bucket
        "gunicorn.request.duration:200|ms",  # one past the last bound: twice the last bound
        "gunicorn.workers:2|g",
    ]


def test_a_push_sends_only_what_changed_with_prefix_and_tags() -> None:
    prev = sample(requests=3, by_status={"200": 3}, histogram=(3, 0, 0), counters={"shed": 1})
    cur = sample(
        requests=103,
        by_status={"200": 3, "503": 100},
        histogram=(3, 100, 0),
        counters={"shed": 101},
        gauges={"in_flight": 4},
        workers=3,
    )
    assert lines(prev, cur, "svc.", "env:prod") == [
        "svc.gunicorn.requests:100|c|#env:prod",
        "svc.gunicorn.request.status.503:100|c|#env:prod",
        "svc.gunicorn.request.duration:100|ms|@0.01|#env:prod",
        "svc.gunicorn.workers:3|g|#env:prod",
        "svc.prefork_lb.shed:100|c|#env:prod",
        "svc.prefork_lb.in_flight:4|g|#env:prod",
    ]


def test_a_counter_that_went_back_sends_its_new_value() -> None:
    # A new master (after USR2) starts from zero: what it counted is sent, never a negative.
    assert lines(sample(requests=50), sample(requests=7))[0] == "gunicorn.requests:7|c"


def test_nothing_new_sends_only_the_gauges() -> None:
    s = sample(requests=5, gauges={"in_flight": 0.5})
    assert lines(s, s) == ["gunicorn.workers:2|g", "prefork_lb.in_flight:0.5|g"]


def test_packets_keep_under_the_limit_and_split_on_lines() -> None:
    items = [f"gunicorn.request.status.{200 + i}:1|c" for i in range(100)]
    got = packets(items, limit=200)
    assert all(len(p) <= 200 for p in got)
    assert b"\n".join(got).split(b"\n") == [i.encode() for i in items]
    assert packets(["x" * 300], limit=200) == [b"x" * 300]  # a long line goes alone
    assert packets([]) == []


def test_push_to_a_udp_socket() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as server:
        server.bind(("127.0.0.1", 0))
        server.settimeout(5)
        port = server.getsockname()[1]
        pusher = Pusher(parse_target(f"127.0.0.1:{port}"), prefix="app", tags="env:test")
        try:
            assert pusher.push(sample(requests=2, by_status={"200": 2})) == 1
            got = server.recv(2048).decode().split("\n")
            assert got[0] == "app.gunicorn.requests:2|c|#env:test"
            assert "app.gunicorn.request.status.200:2|c|#env:test" in got
            pusher.push(sample(requests=3, by_status={"200": 3}))
            assert server.recv(2048).decode().split("\n")[0] == "app.gunicorn.requests:1|c|#env:test"
        finally:
            pusher.close()
        assert pusher.errors == 0 and pusher.sent == 2


def test_push_never_raises() -> None:
    # A Unix datagram path nobody listens on, and a host that does not resolve: counted, not raised.
    p = Pusher(Target(socket.AF_UNIX, "/nonexistent/statsd.sock"))
    assert p.push(sample(requests=1)) == 0 and p.errors >= 1
    p.close()
    q = Pusher(parse_target("nosuchhost.invalid:8125"))
    assert q.push(sample(requests=1)) == 0 and q.errors == 1
    q.close()
