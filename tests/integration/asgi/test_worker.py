"""The ASGI worker under the master (``--interface asgi`` and ``auto``), in every dispatch mode:
what a user sees of it. The master's behaviours shared with the WSGI worker (respawn, reload
under load, TTIN/TTOU, TERM, a blocked loop's abort, autoscaling) run over both interfaces in
tests/integration/test_master.py; admission and the /lb-stats and /metrics worker rows in
test_admission.py and test_admin.py."""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from websockets.exceptions import ConnectionClosed, ConnectionClosedOK
from websockets.sync.client import connect as ws_connect

from tests.helpers import (
    DISPATCH_MODES,
    ROOT,
    free_port,
    http_get,
    kill_group,
    server_env,
    spawn,
    wait_for,
)
from tests.integration.test_master import start_masters

APP = "tests.apps_asgi_worker:app"


@pytest.fixture
def start(tmp_path: Path) -> Iterator:
    yield from start_masters(tmp_path, APP, stats_off=True)


def _json_or_none(port: int) -> dict | None:
    """The /json answer, or None while nothing accepts on ``port`` yet."""
    try:
        return json_get(port)
    except OSError:
        return None


def json_get(port: int, path: str = "/json") -> dict:
    status, body = http_get(port, path)
    assert status == 200, body
    return json.loads(body)


def error_lines(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if ln.startswith("prefork_lb: error:")]


@pytest.mark.parametrize("interface", ["asgi", "auto"])
@pytest.mark.parametrize("mode", DISPATCH_MODES)
def test_every_mode_serves_an_asgi_app_with_two_workers(start, mode: str, interface: str) -> None:
    m = start("-w", "2", "--dispatch", mode, "--interface", interface)
    workers = wait_for(lambda: len(m.workers()) == 2 and m.workers(), what="2 workers")
    pids = set()
    for _ in range(40):
        data = json_get(m.port)
        assert data["path"] == "/json"
        pids.add(data["pid"])
        if pids == set(workers):
            break
    assert pids <= set(workers)
    assert json_get(m.port, "/state")["started_by"] in workers, "the lifespan state reaches requests"
    flipped = m.text().count("The app is an ASGI application: starting ASGI workers")
    assert flipped == (1 if interface == "auto" else 0), m.text()
    assert "Traceback" not in m.text()


def test_request_timeout_answers_504_and_the_worker_serves_on(start) -> None:
    m = start("-w", "1", "--request-timeout", "0.5", "--interface", "asgi")
    status, _ = http_get(m.port, "/sleep?5", timeout=10)
    assert status == 504  # the app itself would answer 200 after 5 s
    assert json_get(m.port)["path"] == "/json"


def test_a_loop_blocked_past_request_timeout_is_aborted_by_the_master_and_its_connection_closed(
    start,
) -> None:
    """Sync code in an async view stops the loop, so the task's deadline cannot fire: the
    master aborts the worker (the request named, the stack from faulthandler), no response."""
    m = start("-w", "1", "--request-timeout", "1", "--interface", "asgi")
    first = json_get(m.port)["pid"]
    with pytest.raises(OSError):
        http_get(m.port, "/block?10", timeout=20)  # the app would answer 200 after 10 s
    log = wait_for(lambda: "apps_asgi_worker.py" in m.text() and m.text(), what="the blocked worker's stack")
    assert "aborted: GET /block?10 over --request-timeout 1s" in log, log
    assert "its event loop blocked for" in log and "WORKER TIMEOUT" not in log, log
    assert wait_for(lambda: (_json_or_none(m.port) or {}).get("pid"), what="a new worker") != first


@pytest.mark.parametrize("interface", ["asgi", "auto"])
def test_a_failed_lifespan_startup_is_one_line_and_exit_3_without_respawning(start, interface: str) -> None:
    m = start("-w", "2", "--interface", interface, ready=False, app="tests.apps_asgi_worker:lifespan_fails")
    assert m.proc.wait(timeout=30) == 3
    text = m.text()
    assert error_lines(text) == [
        "prefork_lb: error: the app's lifespan startup failed: no database at db.invalid"
    ]
    assert "died unexpectedly" not in text and "Traceback" not in text


UNSUPPORTED = (
    "the app does not support the ASGI lifespan protocol (it raised ValueError); going on without it"
)


@pytest.mark.parametrize(
    ("lifespan", "app", "serves"),
    [
        ("auto", "no_lifespan", True),  # raises on the lifespan scope: unsupported, one info line
        ("on", "no_lifespan", False),  # the same is a boot failure
        ("off", "lifespan_fails", True),  # never sent: its failing startup never runs
    ],
)
def test_the_lifespan_setting(start, lifespan: str, app: str, serves: bool) -> None:
    m = start(
        "-w",
        "2",
        "--interface",
        "asgi",
        "--lifespan",
        lifespan,
        ready=serves,
        app=f"tests.apps_asgi_worker:{app}",
    )
    if serves:
        assert http_get(m.port, "/json")[0] == 200
        wait_for(lambda: m.text().count(UNSUPPORTED) == (2 if lifespan == "auto" else 0), what="info lines")
        assert "lifespan startup failed" not in m.text()
    else:
        assert m.proc.wait(timeout=30) == 3
        assert error_lines(m.text()) == [
            "prefork_lb: error: the app's lifespan startup raised ValueError: unsupported scope 'lifespan'"
        ]
        assert "died unexpectedly" not in m.text()
    assert "Traceback" not in m.text()


def test_a_reload_whose_lifespan_fails_keeps_the_old_workers(start, tmp_path: Path) -> None:
    module = tmp_path / "flaky_lifespan.py"
    module.write_text(
        "import os\n"
        "async def app(scope, receive, send):\n"
        "    if scope['type'] == 'lifespan':\n"
        "        await receive()\n"
        "        kind = 'failed' if os.path.exists(__file__ + '.fail') else 'complete'\n"
        "        await send({'type': 'lifespan.startup.' + kind, 'message': 'broken config'})\n"
        "        await receive()\n"
        "        await send({'type': 'lifespan.shutdown.complete'})\n"
        "        return\n"
        "    await send({'type': 'http.response.start', 'status': 200, 'headers': []})\n"
        "    await send({'type': 'http.response.body', 'body': b'ok'})\n"
    )
    m = start("-w", "1", "--chdir", str(tmp_path), app="flaky_lifespan:app")
    old = wait_for(lambda: m.workers(), what="worker")
    Path(str(module) + ".fail").write_text("")
    m.signal(signal.SIGHUP)
    wait_for(lambda: "failed to boot" in m.text(), what="the replacement's failure")
    assert "the app's lifespan startup failed: broken config; the old worker keeps serving" in m.text()
    assert m.workers() == old and http_get(m.port, "/") == (200, b"ok"), m.text()


@pytest.mark.parametrize(
    ("app", "interface", "line"),
    [
        ("not_an_app", "auto", "app 'tests.apps_asgi_worker:not_an_app' is not callable (it is a dict)"),
        (
            "async_gen",
            "auto",
            "app 'tests.apps_asgi_worker:async_gen' is neither a WSGI nor an ASGI application (async def "
            "(with yield) async_gen(scope, receive, send): an async generator function",
        ),
        (
            "app",
            "wsgi",
            "app 'tests.apps_asgi_worker:app' is an ASGI application (async def app(scope, receive",
        ),
    ],
    ids=["not-callable", "async-generator", "asgi-app-as-wsgi"],
)
def test_an_app_of_neither_interface_is_one_line_and_exit_2(
    start, app: str, interface: str, line: str
) -> None:
    m = start("-w", "2", "--interface", interface, ready=False, app=f"tests.apps_asgi_worker:{app}")
    assert m.proc.wait(timeout=30) == 2
    (got,) = error_lines(m.text())
    assert got.startswith("prefork_lb: error: " + line), got
    assert "Traceback" not in m.text()


def test_a_wsgi_app_under_interface_asgi_is_one_line_and_exit_2(start) -> None:
    m = start("-w", "1", "--interface", "asgi", ready=False, app="prefork_lb.demo:app")
    assert m.proc.wait(timeout=30) == 2
    assert error_lines(m.text()) == [
        "prefork_lb: error: app 'prefork_lb.demo:app' is a WSGI application (def app(environ, "
        "start_response)), not an ASGI one: start it with --interface wsgi (or auto)"
    ]


def test_an_asgi2_class_is_served(start) -> None:
    m = start("-w", "1", app="tests.apps_asgi_worker:asgi2")
    assert http_get(m.port, "/") == (200, b'{"asgi": 2}')


def test_root_path_reaches_the_scope(start) -> None:
    m = start("-w", "1", "--root-path", "/api/", "--interface", "asgi")
    got = json_get(m.port, "/api/root")
    assert got["root_path"] == "/api" and got["path"] == "/api/root"  # ASGI: path includes it


def test_access_log_lines_and_graceful_stop_with_lifespan_shutdown(tmp_path: Path) -> None:
    calls = tmp_path / "calls.txt"
    port = free_port()
    log = tmp_path / "out.log"
    cmd = [sys.executable, "-m", "prefork_lb", APP, "-b", f"127.0.0.1:{port}", "-w", "2"]
    cmd += ["--access-logfile", "-", "--stats-bind", "off", "--control-socket", "off"]
    env = dict(os.environ, PREFORK_LB_TEST_CALLS=str(calls))
    with open(log, "wb") as out:
        proc = spawn(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        wait_for(lambda: "Ready:" in log.read_text(), what="ready")
        assert http_get(port, "/json?x=1")[0] == 200
        wait_for(lambda: '"GET /json?x=1 HTTP/1.1" 200 ' in log.read_text(), what="the access log line")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        kill_group(proc)
        proc.wait(timeout=5)
    assert calls.read_text().count("lifespan shutdown") == 2, "each worker ran its lifespan shutdown"


def test_max_requests_recycles_an_asgi_worker_without_failures(start) -> None:
    m = start("-w", "1", "--max-requests", "20", "--interface", "asgi")
    first = wait_for(lambda: m.workers(), what="worker")
    statuses = [http_get(m.port, "/json")[0] for _ in range(60)]
    assert statuses == [200] * 60
    wait_for(lambda: m.workers() and m.workers()[0] not in first, what="recycled worker")
    assert "asking to be replaced" in m.text()


def test_the_run_api_serves_an_asgi_app_object(tmp_path: Path) -> None:
    port = free_port()
    script = tmp_path / "serve.py"
    script.write_text(
        "import prefork_lb\n"
        "from tests.apps_asgi_worker import app\n"
        "if __name__ == '__main__':\n"
        f"    raise SystemExit(prefork_lb.run(app, bind=['127.0.0.1:{port}'], workers=1,"
        " stats_bind='off', control_socket='off'))\n"
    )
    log = tmp_path / "run.log"
    with open(log, "wb") as out:
        # The script's own folder is sys.path[0], not the checkout: tests/ comes from PYTHONPATH.
        env = server_env(
            {"PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
        )
        proc = spawn([sys.executable, str(script)], stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        wait_for(lambda: "Ready:" in log.read_text() or proc.poll() is not None, what="ready")
        assert proc.poll() is None, log.read_text()
        assert wait_for(lambda: _json_or_none(port), what="the first answer")["path"] == "/json"
        assert "The app is an ASGI application" not in log.read_text(), "detected in the master"
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        finally:
            kill_group(proc)


def test_concurrent_requests_on_one_worker_are_served_at_once(start) -> None:
    """The loop serves other requests while one sleeps (cooperatively)."""
    m = start("-w", "1", "--interface", "asgi")
    results: list[int] = []
    threads = [
        threading.Thread(target=lambda: results.append(http_get(m.port, "/sleep?1", timeout=20)[0]))
        for _ in range(8)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert results == [200] * 8


@pytest.mark.parametrize("mode", ["reuseport", "proxy"])
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP], ids=["term", "reload"])
def test_a_graceful_stop_closes_websockets_1001_and_awaits_their_app(
    start, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sig: signal.Signals, mode: str
) -> None:
    """Behind the proxy too: it lets the workers' close frames through its tunnels (it waits
    for its HTTP exchanges only before the workers are told to stop), and all exit promptly."""
    calls = tmp_path / "calls.txt"
    monkeypatch.setenv("PREFORK_LB_TEST_CALLS", str(calls))
    m = start("-w", "1", "--interface", "asgi", "--graceful-timeout", "10", "--dispatch", mode)
    (old,) = wait_for(lambda: m.workers(), what="worker")
    with ws_connect(f"ws://127.0.0.1:{m.port}/ws", open_timeout=10) as ws:
        ws.send("hi")
        assert ws.recv(timeout=10) == "hi"
        m.signal(sig)
        with pytest.raises(ConnectionClosedOK):
            ws.recv(timeout=15)
    assert ws.close_code == 1001, (ws.close_code, ws.close_reason)
    wait_for(lambda: f"ws disconnect 1001 {old}" in calls.read_text(), what="the app's disconnect 1001")
    if sig == signal.SIGTERM:
        assert m.proc.wait(timeout=20) == 0
        text = calls.read_text()
        assert text.index("ws disconnect") < text.index("lifespan shutdown"), "awaited before the shutdown"
        log = m.text()
        assert "draining 0 connection(s) and 1 websocket(s)" in log, log
        assert "SIGKILL" not in log and "replacing it" not in log, log
    else:
        wait_for(lambda: m.workers() and old not in m.workers(), what="the reload's new worker")
        assert json_get(m.port)["path"] == "/json"
    assert "Traceback" not in m.text()


def test_proxy_tunnel_closes_when_either_end_goes_without_a_close_frame(
    start, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client that vanishes (its socket closed, no close frame): the app behind the proxy hears
    1006 as it would straight from its worker. A worker that vanishes: the client's connection
    closes."""
    calls = tmp_path / "calls.txt"
    monkeypatch.setenv("PREFORK_LB_TEST_CALLS", str(calls))
    m = start("-w", "1", "--interface", "asgi", "--dispatch", "proxy")
    (worker,) = wait_for(lambda: m.workers(), what="worker")
    sock = socket.create_connection(("127.0.0.1", m.port), timeout=10)
    key = base64.b64encode(os.urandom(16))
    sock.sendall(
        b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: " + key + b"\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(4096)
        assert chunk, head
        head += chunk
    assert head.startswith(b"HTTP/1.1 101"), head
    sock.close()
    wait_for(
        lambda: calls.exists() and f"ws disconnect 1006 {worker}" in calls.read_text(),
        what="the app's disconnect 1006",
    )
    with ws_connect(f"ws://127.0.0.1:{m.port}/ws", open_timeout=10) as ws:
        ws.send("hi")
        assert ws.recv(timeout=10) == "hi"
        os.kill(worker, signal.SIGKILL)
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=10)
