"""``prefork_lb ctl``'s pure parts (prefork_lb.ctl): its command line, the decisions of its
waits, and what it prints."""

from __future__ import annotations

from typing import Any

import pytest

from prefork_lb import ctl


@pytest.mark.parametrize(
    ("argv", "want", "extra"),
    [
        (["status"], {"cmd": "status"}, {}),
        (["--json", "workers"], {"cmd": "workers"}, {"json": True}),
        (["--socket", "/s", "reload", "--timeout=5"], {"cmd": "reload"}, {"socket": "/s", "timeout": 5.0}),
        (["-p", "/run/a.pid", "scale", "+1"], {"cmd": "scale", "workers": "+1"}, {"pidfile": "/run/a.pid"}),
        (["scale", "-1"], {"cmd": "scale", "workers": "-1"}, {}),
        (["stop", "--graceful-timeout", "3"], {"cmd": "stop", "graceful_timeout": 3.0}, {}),
        (["backend", "list"], {"cmd": "backend", "op": "list"}, {}),
        (["backend", "drain", "a:1"], {"cmd": "backend", "op": "drain", "name": "a:1"}, {}),
        (
            ["backend", "weight", "a:1", "9"],
            {"cmd": "backend", "op": "weight", "name": "a:1", "weight": 9},
            {},
        ),
        (["backend", "add", "a:1=2"], {"cmd": "backend", "op": "add", "name": "a:1=2"}, {}),
        (["cache", "purge"], {"cmd": "cache", "op": "purge"}, {}),
        (["cache", "purge", "/img/"], {"cmd": "cache", "op": "purge", "prefix": "/img/"}, {}),
    ],
)
def test_command_lines(argv: list[str], want: dict[str, Any], extra: dict[str, Any]) -> None:
    opts = ctl.parse_argv(argv)
    assert opts.request == want
    for k, v in extra.items():
        assert getattr(opts, k) == v


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "no command given"),
        (["explode"], "unknown command 'explode'"),
        (["status", "now"], "status takes no argument"),
        (["scale"], "scale takes one count"),
        (["scale", "1", "2"], "scale takes one count"),
        (["scale", "x"], "expected N, [+]N or -N"),
        (["--bogus", "status"], "unknown option --bogus"),
        (["--socket"], "--socket needs a value"),
        (["--timeout", "soon", "status"], "expected seconds"),
        (["reload", "--graceful-timeout", "3"], "goes with stop"),
        (["backend"], "needs an operation"),
        (["backend", "explode", "a:1"], "unknown operation"),
        (["backend", "drain"], "usage: backend drain NAME"),
        (["backend", "weight", "a:1"], "usage: backend weight NAME W"),
        (["backend", "weight", "a:1", "x"], "expected an integer"),
        (["backend", "weight", "a:1", "0"], "1 to 1000"),
        (["backend", "list", "a:1"], "usage: backend list"),
        (["cache"], "cache needs an operation: purge$"),
        (["cache", "drop"], "cache needs an operation: purge \\(got 'drop'\\)"),
        (["cache", "purge", "/a", "/b"], "usage: cache purge \\[PREFIX\\]"),
        (["cache", "purge", "a b"], "printable ASCII"),
    ],
)
def test_bad_command_lines(argv: list[str], message: str) -> None:
    with pytest.raises(ctl.UsageError, match=message):
        ctl.parse_argv(argv)


def test_the_socket_is_found_as_the_server_finds_it() -> None:
    assert ctl.find_socket(ctl.Options(socket="/x.sock"), {}) == "/x.sock"
    assert ctl.find_socket(ctl.Options(pidfile="/run/a.pid"), {}) == "/run/a.ctl"
    assert ctl.find_socket(ctl.Options(), {"PREFORK_LB_PIDFILE": "/run/b.pid"}) == "/run/b.ctl"
    assert ctl.find_socket(ctl.Options(), {"PREFORK_LB_CONTROL_SOCKET": "/e.sock"}) == "/e.sock"
    with pytest.raises(ctl.Unreachable, match="off"):
        ctl.find_socket(ctl.Options(socket="off"), {})


def status(target: int, workers: list[tuple[int, int, str]], **master: Any) -> dict[str, Any]:
    return {
        "master": {"workers_target": target, "boot_failed": 0, **master},
        "workers": [{"slot": s, "pid": p, "state": st} for s, p, st in workers],
        "processes": [],
    }


def test_reload_is_done_once_every_slot_has_a_new_ready_worker_and_the_old_drain() -> None:
    before = [10, 11]
    assert ctl.reload_outcome(before, 0, status(2, [(0, 10, "ready"), (1, 11, "ready")])) is None
    mid = status(2, [(0, 10, "ready"), (0, 20, "ready"), (1, 11, "ready"), (1, 21, "booting")])
    assert ctl.reload_outcome(before, 0, mid) is None
    both = status(2, [(0, 10, "ready"), (0, 20, "ready"), (1, 11, "draining"), (1, 21, "ready")])
    assert ctl.reload_outcome(before, 0, both) is None  # worker 10 still takes requests
    done = status(2, [(0, 10, "draining"), (0, 20, "ready"), (1, 21, "ready")])
    assert ctl.reload_outcome(before, 0, done) == "done"


def test_reload_fails_when_a_new_worker_fails_to_boot() -> None:
    s = status(1, [(0, 10, "ready")], boot_failed=3)
    assert ctl.reload_outcome([10], 2, s) == "failed"
    assert ctl.reload_outcome([10], 3, s) is None


def test_reload_waits_for_a_new_helper() -> None:
    s = status(1, [(0, 20, "ready")])
    s["processes"] = [{"role": "helper", "pid": 5, "state": "ready"}]
    assert ctl.reload_outcome([10], 0, s, helper=[5]) is None
    s["processes"].append({"role": "helper", "pid": 6, "state": "ready"})
    assert ctl.reload_outcome([10], 0, s, helper=[5]) == "done"
    standalone = status(0, [])
    standalone["processes"] = [{"role": "helper", "pid": 7, "state": "ready"}]
    assert ctl.reload_outcome([], 0, standalone, helper=[5]) == "done"


def test_scale_done() -> None:
    assert not ctl.scale_done(status(2, [(0, 1, "ready"), (1, 2, "ready")]), 3)
    assert not ctl.scale_done(status(3, [(0, 1, "ready"), (1, 2, "ready"), (2, 3, "booting")]), 3)
    assert ctl.scale_done(status(3, [(0, 1, "ready"), (1, 2, "ready"), (2, 3, "ready")]), 3)
    assert not ctl.scale_done(status(1, [(0, 1, "ready"), (1, 2, "draining")]), 1)
    assert ctl.scale_done(status(1, [(0, 1, "ready")]), 1)


def test_status_for_a_person() -> None:
    doc = {
        "mode": "proxy",
        "health": "ok",
        "master": {"pid": 100, "uptime": 12.5, "version": "1.0", "workers_target": 1},
        "in_flight": 1,
        "served": 7,
        "workers": [
            {
                "slot": 0,
                "pid": 101,
                "state": "ready",
                "in_flight": 1,
                "served": 7,
                "rss": 31 * 1024 * 1024,
                "current_request": "GET /slow",
                "current_for": 1.25,
            }
        ],
        "backends": [
            {
                "name": "127.0.0.1:9001",
                "state": "draining",
                "weight": 3,
                "in_flight": 1,
                "requests": 7,
                "errors": 0,
                "p50_ms": 1.5,
                "p99_ms": None,
            },
        ],
    }
    text = ctl.format_status(doc)
    lines = text.splitlines()
    assert lines[0] == "master 100, dispatch proxy, health ok, up 12.5 s, prefork_lb 1.0"
    assert lines[1] == "workers: 1 (target 1), in flight 1, served 7"
    assert lines[2].split() == ["SLOT", "PID", "STATE", "IN", "FLIGHT", "SERVED", "RSS", "CURRENT", "REQUEST"]
    assert lines[3].split() == ["0", "101", "ready", "1", "7", "31.0", "MiB", "GET", "/slow", "(1.2", "s)"]
    assert lines[4] == "backends: 1"
    assert lines[6].split() == ["127.0.0.1:9001", "draining", "3", "1", "7", "0", "1.5", "ms", "-"]
    workers_only = ctl.format_status(doc, workers_only=True)
    assert workers_only.startswith("workers: 1") and "backends" not in workers_only
    standalone = {**doc, "master": {**doc["master"], "workers_target": 0}, "workers": []}
    assert ctl.format_status(standalone, workers_only=True).startswith(
        "workers: none (the standalone proxy; its backends: prefork_lb ctl backend list)"
    )


def test_status_under_mount_has_a_pool_column() -> None:
    worker = {"pid": 101, "state": "ready", "in_flight": 0, "served": 3, "rss": None}
    backend = {
        "state": "up",
        "weight": 1,
        "in_flight": 0,
        "requests": 3,
        "errors": 0,
        "p50_ms": None,
        "p99_ms": None,
    }
    doc = {
        "mode": "proxy",
        "health": "ok",
        "master": {"pid": 100, "uptime": 1.0, "version": "1.0", "workers_target": 2},
        "in_flight": 0,
        "served": 3,
        "workers": [{**worker, "slot": 0, "pool": "/api"}, {**worker, "slot": 1, "pool": "/"}],
        "backends": [{**backend, "name": "127.0.0.1:9001", "slot": 0, "pool": "/api"}],
    }
    lines = ctl.format_status(doc).splitlines()
    assert lines[2].split()[:3] == ["SLOT", "POOL", "PID"]
    assert lines[3].split()[:3] == ["0", "/api", "101"] and lines[4].split()[:3] == ["1", "/", "101"]
    backends = lines[lines.index("backends: 1") + 1 :]
    assert backends[0].split()[:3] == ["BACKEND", "POOL", "STATE"]
    assert backends[1].split()[:3] == ["127.0.0.1:9001", "/api", "up"]


def test_backend_changes_for_a_person() -> None:
    req = {"cmd": "backend", "op": "disable", "name": "a:1"}
    assert ctl.format_backend_change(req, {"backend": {"name": "a:1", "state": "disabled", "weight": 1}}) == (
        "backend a:1: disabled, weight 1\n"
    )
    assert ctl.format_backend_change({**req, "op": "remove"}, {}) == "backend a:1 removed\n"


def test_a_purge_for_a_person() -> None:
    doc = {"purged": 2, "prefix": "/img/", "cache": {"entries": 1, "bytes": 2048}, "pid": 7}
    assert ctl.format_purge(doc) == (
        "purged 2 cached responses under /img/; 1 left (2.0 KiB) in the proxy process (pid 7)\n"
    )
    one = {"purged": 1, "prefix": None, "cache": {"entries": 0, "bytes": 0}, "pid": 7}
    assert ctl.format_purge(one).startswith("purged 1 cached response; 0 left")


def test_a_socket_of_another_user_is_refused(tmp_path: Any) -> None:
    path = tmp_path / "s"
    path.write_text("")
    ctl.check_owner(str(path), uid=path.stat().st_uid)
    ctl.check_owner(str(tmp_path / "missing"), uid=12345)
    with pytest.raises(ctl.Unreachable, match="belongs to another user"):
        ctl.check_owner(str(path), uid=path.stat().st_uid + 1)


def test_help_and_bad_usage(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        ctl.main(["--help"], {})
    assert done.value.code == 0 and capsys.readouterr().out.startswith("usage: prefork_lb ctl")
    with pytest.raises(SystemExit) as done:
        ctl.main(["scale"], {})
    err = capsys.readouterr().err
    assert done.value.code == 2 and err.count("\n") == 1 and err.startswith("prefork_lb ctl: scale takes one")
    with pytest.raises(SystemExit) as done:
        ctl.main(["--socket", "off", "status"], {})
    assert done.value.code == 2 and "off" in capsys.readouterr().err
