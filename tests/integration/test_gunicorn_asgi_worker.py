"""Real gunicorn running our ASGI worker class on a FastAPI app:
gunicorn -k prefork_lb.gunicorn.AsgiWorker tests.apps_asgi_gunicorn:app."""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

pytest.importorskip("gunicorn")
pytest.importorskip("fastapi")
from websockets.sync.client import connect as ws_connect  # noqa: E402

from tests.helpers import wait_for  # noqa: E402
from tests.integration.test_gunicorn_worker import Gunicorn, starter  # noqa: E402

APP = "tests.apps_asgi_gunicorn:app"
WORKER = "prefork_lb.gunicorn.AsgiWorker"


@pytest.fixture
def gunicorn(tmp_path: Path) -> Iterator:
    yield from starter(tmp_path, WORKER)


def fresh_get(port: int, path: str = "/", **kw: object) -> httpx.Response:
    """One request on a connection of its own (a recycled worker closes kept-alive ones)."""
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
        return client.get(path, **kw)  # type: ignore[arg-type]


def test_serves_fastapi_http_websocket_lifespan_with_gunicorns_settings(gunicorn) -> None:
    g = gunicorn(
        APP,
        "-w",
        "1",
        "--access-logfile",
        "-",
        "--access-logformat",
        "%(m)s %(U)s %(s)s %(b)s %({x-test}i)s",
        "--forwarded-allow-ips",
        "127.0.0.1",
        "--root-path",
        "/api",
        "--limit-request-line",
        "100",
    )
    (pid,) = wait_for(lambda: g.workers(), what="worker")
    with httpx.Client(base_url=f"http://127.0.0.1:{g.port}", timeout=10) as client:
        r = client.get("/", headers={"X-Test": "abc"})
        assert r.status_code == 200 and r.json() == {"hello": "world", "pid": pid}
        assert client.get("/stream", params={"n": 3}).text == "chunk 0\nchunk 1\nchunk 2\n"
        # lifespan ran in this worker, before the first request, and its state reaches requests
        assert client.get("/state").json() == {
            "greeting": "hello from lifespan",
            "started_by": pid,
            "pid": pid,
        }
        assert client.get("/scope", headers={"X-Forwarded-Proto": "https"}).json() == {
            "scheme": "https",
            "root_path": "/api",
        }
        assert client.get("/scope").json()["scheme"] == "http"
        assert client.get("/offload/20").json() == {"fib": 6765}
        assert client.get("/" + "a" * 200).status_code == 414  # limit_request_line
    with ws_connect(f"ws://127.0.0.1:{g.port}/ws", open_timeout=10, close_timeout=5) as ws:
        for text in ("one", "two"):
            ws.send(text)
            assert ws.recv(timeout=10) == "echo: " + text
    # A malformed request (Content-Length with Transfer-Encoding) is refused before the app.
    with socket.create_connection(("127.0.0.1", g.port), timeout=10) as s:
        s.sendall(
            b"GET /smuggled HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        assert s.recv(100).startswith(b"HTTP/1.1 400")
    assert "/smuggled" not in fresh_get(g.port, "/seen").json()
    # %(U)s is the scope's path, root_path included (as uvicorn logs it)
    line = f"GET /api/ 200 {len(r.content)} abc"
    wait_for(lambda: line in g.text(), what=f"gunicorn's access log line {line!r}, in:\n{g.text()}")
    g.proc.send_signal(signal.SIGTERM)
    assert g.proc.wait(timeout=40) == 0
    assert "Traceback" not in g.text()


def test_max_requests_hup_and_quit_replace_the_worker_without_a_failed_request(
    gunicorn, tmp_path: Path
) -> None:
    out = tmp_path / "int.log"
    conf = tmp_path / "gconf.py"
    conf.write_text(
        f"def worker_int(worker):\n    open({str(out)!r}, 'a').write(f'worker_int {{worker.pid}}\\n')\n"
    )
    # --preload: the app is imported once, in the master; each replacement is only a fork
    g = gunicorn(APP, "-w", "1", "--max-requests", "3", "--preload", "-c", str(conf))
    (first,) = wait_for(lambda: g.workers(), what="worker")
    pids = []
    for _ in range(4):
        r = fresh_get(g.port)
        assert r.status_code == 200
        pids.append(r.json()["pid"])
    # 3 requests per worker: the readiness probe was the first one's first
    assert pids[:2] == [first] * 2 and first not in pids[2:], pids
    wait_for(lambda: "Autorestarting worker after current request." in g.text(), what="the recycle line")
    # HUP: gunicorn starts new workers and stops the old ones gracefully.
    (before,) = wait_for(lambda: len(g.workers()) == 1 and g.workers(), what="one worker")
    os.kill(g.proc.pid, signal.SIGHUP)
    deadline = time.monotonic() + 20
    for _ in range(400):
        r = fresh_get(g.port)
        assert r.status_code == 200
        if r.json()["pid"] != before or time.monotonic() > deadline:
            break
    assert r.json()["pid"] != before
    # QUIT: gunicorn's quick stop of a worker, with its worker_int hook; gunicorn starts another.
    (quitting,) = wait_for(lambda: len(g.workers()) == 1 and g.workers(), what="one worker")
    os.kill(quitting, signal.SIGQUIT)
    wait_for(lambda: out.exists() and f"worker_int {quitting}" in out.read_text(), what="worker_int hook")
    wait_for(lambda: g.workers() and quitting not in g.workers(), what="a new worker")
    assert fresh_get(g.port).status_code == 200


def test_a_blocked_loop_meets_gunicorns_timeout(gunicorn, tmp_path: Path) -> None:
    out = tmp_path / "abort.log"
    conf = tmp_path / "gconf.py"
    conf.write_text(f"def worker_abort(worker):\n    open({str(out)!r}, 'a').write('worker_abort\\n')\n")
    g = gunicorn(APP, "-w", "1", "--timeout", "2", "--preload", "-c", str(conf))
    (first,) = wait_for(lambda: g.workers(), what="worker")
    # A wait longer than the timeout that leaves the loop free: the worker goes on notifying.
    r = fresh_get(g.port, "/sleep", params={"s": 2.5})
    assert r.status_code == 200 and r.json()["pid"] == first and "WORKER TIMEOUT" not in g.text()
    with pytest.raises(httpx.TransportError):  # the blocked worker dies under this request
        fresh_get(g.port, "/block")
    wait_for(lambda: "WORKER TIMEOUT" in g.text(), what="gunicorn's timeout")
    wait_for(lambda: out.exists() and "worker_abort" in out.read_text(), what="worker_abort hook")
    r = fresh_get(g.port)
    assert r.status_code == 200 and r.json()["pid"] != first


def test_a_failed_lifespan_startup_stops_gunicorn_with_one_line(tmp_path: Path) -> None:
    g = Gunicorn(tmp_path, "tests.apps_asgi_gunicorn:startup_fails", "-w", "1", worker=WORKER)
    try:
        wait_for(lambda: g.proc.poll() is not None, 60.0, "gunicorn to stop")
    finally:
        g.stop()
    text = g.text()
    assert g.proc.returncode == 3, text  # gunicorn's "Worker failed to boot."
    lines = [line for line in text.splitlines() if "no database at db.invalid" in line]
    assert (
        len(lines) == 1 and "[ERROR] the app's lifespan startup failed: RuntimeError: no database" in lines[0]
    ), text
    assert "Traceback" not in text and "Worker failed to boot." in text
    assert text.count("Booting worker") == 1, text  # no respawn loop


def test_a_request_cut_at_the_graceful_timeout_is_one_error_line_not_a_500(gunicorn) -> None:
    """TERM while a request runs past graceful_timeout: its client's connection is cut (no
    response), so the access log has no line for it (as gunicorn's own workers) and one error
    line names it, written before gunicorn's master kills the worker at the timeout."""
    g = gunicorn(APP, "-w", "1", "--graceful-timeout", "1", "--access-logfile", "-")
    outcome: list[object] = []

    def slow() -> None:
        try:
            outcome.append(fresh_get(g.port, "/sleep", params={"s": 30}).status_code)
        except httpx.TransportError as exc:
            outcome.append(exc)

    client = threading.Thread(target=slow)
    client.start()
    try:
        wait_for(lambda: "/sleep" in fresh_get(g.port, "/seen").json(), what="the slow request in the app")
        g.proc.send_signal(signal.SIGTERM)
        assert g.proc.wait(timeout=20) == 0
    finally:
        client.join(timeout=30)
    assert len(outcome) == 1 and isinstance(outcome[0], httpx.TransportError), outcome
    text = g.text()
    cut = [line for line in text.splitlines() if "Graceful timeout" in line]
    assert cut == [cut[0]] and cut[0].endswith(
        "[ERROR] Graceful timeout (1 s): cut 1 request(s) still running: GET /sleep?s=30 (no response sent)"
    ), text
    assert '"GET /sleep?s=30 ' not in text, text  # no access line with a status it never got
    assert '"GET /seen HTTP/1.1" 200' in text and "Worker exiting" in text, text
