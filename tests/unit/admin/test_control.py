"""The control socket's server side (prefork_lb.admin.control): what each command asks of the
master (signals, the totals' control words), and a server that no client can stall or crash."""

from __future__ import annotations

import json
import signal
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from prefork_lb import scoreboard as sb
from prefork_lb.admin import control
from prefork_lb.admin import protocol as p
from prefork_lb.admin.totals import Totals


@pytest.fixture
def actions() -> tuple[control.ControlActions, list[tuple[int, int]]]:
    board = sb.Scoreboard(16)
    totals = Totals(board.entries)
    totals.started(4242, 0.0)
    totals.set_target(2)
    for slot, pid in ((0, 100), (1, 101), (-1, 99)):
        e = board.allocate(pid, slot)
        board.put(e, sb.STATE, sb.READY)
    sent: list[tuple[int, int]] = []
    acts = control.ControlActions(
        board,
        totals,
        "shared",
        None,
        30.0,
        kill=lambda pid, sig: sent.append((pid, sig)),
        process_info=lambda pid: (1024.0 * pid, 0.0),
    )
    return acts, sent


def run(acts: control.ControlActions, **req: Any) -> dict[str, Any]:
    doc, after = acts.handle(p.check_request(dict(req)))
    if after is not None:
        after()
    return doc


def test_status_reads_shared_memory(actions: Any) -> None:
    acts, sent = actions
    doc = run(acts, cmd="status")
    assert doc["master"]["pid"] == 4242 and doc["mode"] == "shared"
    assert [(w["slot"], w["pid"], w["state"], w["rss"]) for w in doc["workers"]] == [
        (0, 100, "ready", 102400),
        (1, 101, "ready", 103424),
    ]
    assert doc["processes"] == [{"role": "helper", "pid": 99, "state": "ready"}]
    assert "backends" not in doc and not sent


def test_scale_writes_the_target_then_sends_ttin(actions: Any) -> None:
    acts, sent = actions
    assert run(acts, cmd="scale", workers="+1") == {"master_pid": 4242, "from": 2, "workers": 3}
    assert sent == [(4242, signal.SIGTTIN)] and acts.totals.take_scale() == 3
    assert acts.totals.take_scale() == 0  # taken once
    with pytest.raises(p.CommandError, match="out of range"):
        run(acts, cmd="scale", workers="-2")


def test_scale_is_refused_up_front_under_mount(actions: Any) -> None:
    acts, sent = actions
    acts.pools = {0: "/api", 1: "/"}
    assert [(w["slot"], w["pool"]) for w in run(acts, cmd="status")["workers"]] == [(0, "/api"), (1, "/")]
    with pytest.raises(p.CommandError, match="with --mount each pool has its workers=") as exc:
        run(acts, cmd="scale", workers="+1")
    assert exc.value.code == p.EXIT_USAGE and not sent and acts.totals.take_scale() == 0


def test_reload_lists_the_workers_before_the_hup(actions: Any) -> None:
    acts, sent = actions
    doc = run(acts, cmd="reload")
    assert sorted(doc["before"]) == [100, 101] and doc["before_helper"] == [99] and doc["boot_failed"] == 0
    assert sent == [(4242, signal.SIGHUP)]


def test_stop_and_reopen(actions: Any) -> None:
    acts, sent = actions
    assert run(acts, cmd="stop", graceful_timeout=0)["graceful_timeout"] == 0.0
    assert acts.totals.take_stop_grace() == 0.0 and acts.totals.take_stop_grace() is None
    assert run(acts, cmd="stop")["graceful_timeout"] == 30.0
    assert acts.totals.take_stop_grace() is None
    run(acts, cmd="reopen-logs")
    assert sent == [(4242, signal.SIGTERM), (4242, signal.SIGTERM), (4242, signal.SIGUSR1)]


def test_backend_without_a_proxy_is_refused(actions: Any) -> None:
    acts, _ = actions
    with pytest.raises(p.CommandError, match="no proxy"):
        run(acts, cmd="backend", op="list")


def test_cache_without_a_proxy_is_refused(actions: Any) -> None:
    acts, _ = actions
    with pytest.raises(p.CommandError, match="^cache: this server has no proxy"):
        run(acts, cmd="cache", op="purge")


class Link:
    """The admin process's end of the link, answering as a given proxy would."""

    def __init__(self, answer: dict[str, Any] | None) -> None:
        self.answer = answer
        self.asked: list[str] = []

    def ask(self, what: str) -> dict[str, Any] | None:
        self.asked.append(what)
        return self.answer


@pytest.mark.parametrize(
    ("answer", "code", "message"),
    [
        (None, p.EXIT_FAILED, "the proxy is not answering"),
        ({"error": "the response cache is off"}, p.EXIT_USAGE, "^cache purge: the response cache is off$"),
    ],
)
def test_cache_purge_asks_the_proxy(actions: Any, answer: Any, code: int, message: str) -> None:
    acts, _ = actions
    acts.link = Link(answer)
    with pytest.raises(p.CommandError, match=message) as err:
        run(acts, cmd="cache", op="purge", prefix="/a")
    assert err.value.code == code
    assert acts.link.asked == ['cache {"op":"purge","prefix":"/a"}']
    acts.link = Link({"purged": 3})
    assert run(acts, cmd="cache", op="purge") == {"purged": 3}
    assert acts.link.asked == ['cache {"op":"purge"}']


def test_backend_list_joins_stats_and_health() -> None:
    docs = {
        "stats": {
            "backends": [
                {
                    "name": "a:1",
                    "state": "disabled",
                    "weight": 2,
                    "requests": 3,
                    "latency_ms": {"p50": 1.0, "p99": 2.0},
                }
            ]
        },
        "health": {"backends": [{"name": "a:1", "healthy": True, "in_flight": 1}]},
    }
    assert control.backend_list(docs) == [
        {
            "name": "a:1",
            "state": "disabled",
            "weight": 2,
            "in_flight": 1,
            "requests": 3,
            "errors": 0,
            "p50_ms": 1.0,
            "p99_ms": 2.0,
        }
    ]


# -- the server ---------------------------------------------------------------------------------


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> Iterator[str]:
    monkeypatch.setattr(p, "READ_TIMEOUT", 0.5)
    path = str(tmp_path / "c.sock")
    lst = socket.socket(socket.AF_UNIX)
    lst.bind(path)
    lst.listen(128)

    def handle(req: dict[str, Any]) -> control.Reply:
        if req["cmd"] == "reload":
            raise RuntimeError("a bug")
        return {"cmd": req["cmd"]}, None

    srv = control.ControlServer(lst, handle)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield path
    srv.shutdown()
    t.join(5)
    lst.close()


def talk(path: str, data: bytes) -> list[dict[str, Any]]:
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(10)
        s.connect(path)
        s.sendall(data)
        buf = b""
        while chunk := s.recv(65536):
            buf += chunk
    return [json.loads(line) for line in buf.splitlines()]


def test_several_requests_on_one_connection_then_the_idle_timeout(server: str) -> None:
    got = talk(server, b'{"cmd": "status"}\n\n{"cmd": "workers"}\n{oops\n')
    assert [g.get("cmd") for g in got[:2]] == ["status", "workers"]
    assert got[2]["ok"] is False and got[2]["exit"] == 2


def test_a_failing_command_is_an_answer_not_a_crash(server: str) -> None:
    (got,) = talk(server, b'{"cmd": "reload"}\n')
    assert got == {"ok": False, "error": "internal error: a bug", "exit": 1}
    assert talk(server, b'{"cmd": "status"}\n')[0]["ok"]


def test_an_oversized_request_is_refused(server: str) -> None:
    (got,) = talk(server, b"{" * (p.REQUEST_MAX + 10))
    assert "longer than" in got["error"]


def test_a_silent_client_is_hung_up_on(server: str) -> None:
    assert talk(server, b"") == []  # no line within READ_TIMEOUT: closed, nothing said


def test_a_client_accepted_before_shutdown_still_gets_its_answer(tmp_path: Any) -> None:
    """A reload stops this admin process while ctl clients keep connecting: one it accepted
    must get its answer, not a reset (shutdown waits for it)."""
    path = str(tmp_path / "c.sock")
    lst = socket.socket(socket.AF_UNIX)
    lst.bind(path)
    lst.listen(8)
    entered, release = threading.Event(), threading.Event()

    def handle(req: dict[str, Any]) -> control.Reply:
        entered.set()
        release.wait(5)
        return {"cmd": req["cmd"]}, None

    srv = control.ControlServer(lst, handle)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    got: list[list[dict[str, Any]]] = []
    client = threading.Thread(target=lambda: got.append(talk(path, b'{"cmd": "status"}\n')))
    client.start()
    assert entered.wait(5)
    stopper = threading.Thread(target=srv.shutdown, kwargs={"wait": 5.0})
    stopper.start()
    stopper.join(0.2)
    assert stopper.is_alive()  # still waiting for the client being answered
    release.set()
    stopper.join(5)
    client.join(5)
    assert not stopper.is_alive() and got and got[0][0]["cmd"] == "status"
    lst.close()


def test_backend_rows_keep_the_pool() -> None:
    docs = {"stats": {"backends": [{"name": "a:1", "pool": "/api"}, {"name": "b:2"}]}, "health": {}}
    assert [b.get("pool") for b in control.backend_list(docs)] == ["/api", None]
