"""--max-concurrency / --queue-size hold while the view blocks the worker's loop, in every
dispatch mode and over both interfaces: past both limits a client gets 503 with Retry-After while the first request is
still being computed, not its turn after the requests before it."""

from __future__ import annotations

import http.client
import json
import threading
import time

import pytest

from tests.helpers import DISPATCH_MODES, HOST, free_port
from tests.integration.conftest import StartServer

CLIENTS = 8


def _wave(port: int, path: str, n: int) -> list[tuple[int, str | None, bool]]:
    """``n`` concurrent GETs of ``path``: (status, Retry-After, late) in the order the answers
    came; ``late``: the request was sent after the first 200 had come back (a client thread the
    machine's load held back past the first request's whole computation)."""
    results: list[tuple[int, str | None, float, float]] = []
    lock = threading.Lock()
    go = threading.Barrier(n)

    def one() -> None:
        conn = http.client.HTTPConnection(HOST, port, timeout=30)
        try:
            go.wait(timeout=10)
            conn.connect()
            sent = time.monotonic()
            conn.request("GET", path)
            resp = conn.getresponse()
            resp.read()
            with lock:
                results.append((resp.status, resp.getheader("Retry-After"), sent, time.monotonic()))
        except OSError as exc:
            with lock:
                results.append((0, repr(exc), 0.0, 0.0))
        finally:
            conn.close()

    threads = [threading.Thread(target=one) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    first_done = min((done for status, _, _, done in results if status == 200), default=float("inf"))
    return [(status, ra, sent > first_done) for status, ra, sent, _ in results]


@pytest.mark.parametrize("interface", ["wsgi", "asgi"])
@pytest.mark.parametrize("mode", DISPATCH_MODES)
def test_full_worker_answers_503_while_its_view_blocks_the_loop(
    start_server: StartServer, mode: str, interface: str
) -> None:
    """(The ASGI app's view waits instead: see tests/apps_blocking.py.)"""
    flags = ["--max-concurrency", "1", "--queue-size", "1", "--dispatch", mode, "--interface", interface]
    stats_port = free_port()
    if mode == "proxy":
        flags += ["--stats-bind", f"{HOST}:{stats_port}"]
    app = "tests.apps_blocking:app" if interface == "wsgi" else "tests.apps_blocking:asgi_app"
    srv = start_server(app, *flags)
    results = _wave(srv.port, "/burn/1.5", CLIENTS)
    statuses = [s for s, _, _ in results]
    assert len(results) == CLIENTS and set(statuses) <= {200, 503}, (results, srv.log_text())
    # The requests sent while the first was being computed; a late one found the worker free.
    at_once = [s for s, _, late in results if not late]
    assert len(at_once) >= CLIENTS - 2, results
    served = at_once.count(200)
    assert 1 <= served <= 2, results  # one place, one in the queue
    # Every 503 came before the first 200: while the first request was still being computed.
    assert at_once == [503] * (len(at_once) - served) + [200] * served, results
    assert all(ra == "1" for s, ra, _ in results if s == 503), results
    if mode == "proxy":  # the proxy answered them, and counts them
        conn = http.client.HTTPConnection(HOST, stats_port, timeout=10)
        conn.request("GET", "/lb-stats")
        assert json.loads(conn.getresponse().read())["shed"] == statuses.count(503)
        conn.close()
