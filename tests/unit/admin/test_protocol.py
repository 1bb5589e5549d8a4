"""The control socket's protocol (prefork_lb.admin.protocol): requests checked, scale targets,
the default path."""

from __future__ import annotations

import json

import pytest

from prefork_lb.admin import protocol as p


def line(**req: object) -> bytes:
    return json.dumps(req).encode()


@pytest.mark.parametrize(
    ("req", "want"),
    [
        ({"cmd": "status"}, {"cmd": "status"}),
        ({"cmd": "scale", "workers": "+1"}, {"cmd": "scale", "workers": "+1"}),
        ({"cmd": "scale", "workers": 3}, {"cmd": "scale", "workers": "3"}),
        ({"cmd": "stop", "graceful_timeout": 5}, {"cmd": "stop", "graceful_timeout": 5.0}),
        ({"cmd": "stop", "graceful_timeout": None}, {"cmd": "stop"}),
        ({"cmd": "backend", "op": "list"}, {"cmd": "backend", "op": "list"}),
        (
            {"cmd": "backend", "op": "add", "name": "a:1=1000"},
            {"cmd": "backend", "op": "add", "name": "a:1=1000"},
        ),
        (
            {"cmd": "backend", "op": "weight", "name": "a:1", "weight": 4},
            {"cmd": "backend", "op": "weight", "name": "a:1", "weight": 4},
        ),
        ({"cmd": "cache", "op": "purge"}, {"cmd": "cache", "op": "purge"}),
        (
            {"cmd": "cache", "op": "purge", "prefix": "https://a.example/img/?x=1"},
            {"cmd": "cache", "op": "purge", "prefix": "https://a.example/img/?x=1"},
        ),
    ],
)
def test_good_requests(req: dict[str, object], want: dict[str, object]) -> None:
    assert p.parse_request(line(**req)) == want


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"{nope", "not a JSON object on one line"),
        (b"[1]", "not a JSON object"),
        (b"\xff\xfe", "not a JSON object"),
        (line(cmd="explode"), "unknown command 'explode'"),
        (line(), "unknown command None"),
        (line(cmd="status", extra=1), "unexpected argument 'extra'"),
        (line(cmd="scale"), "missing 'workers'"),
        (line(cmd="scale", workers="many"), "expected N, [+]N or -N"),
        (line(cmd="scale", workers=True), "expected N, [+]N or -N"),
        (line(cmd="stop", graceful_timeout=-1), "0 to 86400 seconds"),
        (line(cmd="stop", graceful_timeout="5"), "0 to 86400 seconds"),
        (line(cmd="backend", op="explode"), "unknown operation"),
        (line(cmd="backend", op="drain"), "missing the backend"),
        (line(cmd="backend", op="weight", name="a:1"), "missing the weight"),
        (line(cmd="backend", op="weight", name="a:1", weight=0), "1 to 1000"),
        (line(cmd="backend", op="drain", name="a:1", weight=2), "takes no weight"),
        (line(cmd="backend", op="list", name="a:1"), "takes no backend"),
        (
            line(cmd="backend", op="add", name="a:1=5000"),
            "backend add: weight must be an integer from 1 to 1000",
        ),
        (line(cmd="backend", op="add", name="a:1=x"), "backend add: weight must be"),
        (line(cmd="backend", op="drain", name="a\nb"), "backend name"),
        (line(cmd="backend", op="drain", name=7), "backend name"),
        (line(cmd="cache"), "missing 'op'"),
        (line(cmd="cache", op="drop"), "cache: unknown operation 'drop' \\(one of purge\\)"),
        (line(cmd="cache", op="purge", prefix=""), "1 to 400 printable ASCII"),
        (line(cmd="cache", op="purge", prefix="a b"), "without spaces"),
        (line(cmd="cache", op="purge", prefix="/\n"), "printable ASCII"),
        (line(cmd="cache", op="purge", prefix="/é"), "printable ASCII"),
        (line(cmd="cache", op="purge", prefix="/" * 401), "1 to 400"),
        (line(cmd="cache", op="purge", prefix=3), "printable ASCII"),
    ],
)
def test_bad_requests_are_one_line_and_exit_2(data: bytes, message: str) -> None:
    with pytest.raises(p.CommandError, match=message) as err:
        p.parse_request(data)
    assert err.value.code == p.EXIT_USAGE and "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("spec", "current", "want"), [("3", 2, 3), ("+1", 2, 3), ("-1", 2, 1), ("+0", 2, 2), ("6", 1, 6)]
)
def test_scale_target(spec: str, current: int, want: int) -> None:
    assert p.scale_target(spec, current, 6) == want


@pytest.mark.parametrize(("spec", "current"), [("0", 2), ("-2", 2), ("7", 2), ("+5", 2)])
def test_scale_target_out_of_range(spec: str, current: int) -> None:
    with pytest.raises(p.CommandError, match="out of range"):
        p.scale_target(spec, current, 6)


def test_default_path() -> None:
    assert p.default_path("/run/app.pid", {}, 5) == "/run/app.ctl"
    assert p.default_path("/run/app", {}, 5) == "/run/app.ctl"
    assert p.default_path("/run/app.lock", {}, 5) == "/run/app.lock.ctl"
    assert p.default_path(None, {"XDG_RUNTIME_DIR": "/run/user/5"}, 5) == "/run/user/5/prefork_lb.ctl"
    assert p.default_path(None, {"XDG_RUNTIME_DIR": "relative"}, 5) == "/tmp/prefork_lb-5.ctl"
    assert p.default_path(None, {}, 5) == "/tmp/prefork_lb-5.ctl"


def test_socket_path() -> None:
    assert p.socket_path("off", "/run/app.pid", {}, 0) is None
    assert p.socket_path("/x/c.sock", "/run/app.pid", {}, 0) == "/x/c.sock"
    assert p.socket_path(None, "/run/app.pid", {}, 0) == "/run/app.ctl"


def test_answers_are_one_line() -> None:
    assert p.answer(True, x=1) == b'{"ok":true,"x":1}\n'
    assert json.loads(p.refusal("no such worker")) == {"ok": False, "error": "no such worker", "exit": 2}
