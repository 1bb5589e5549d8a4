"""/metrics with real processes, for what issue 13 added: the queue wait and the requests queued
under --max-concurrency, the offload tasks, and the 504s of --request-timeout by where the
deadline was kept. Each test scrapes with prometheus_client's parser before and after exactly N
of something and checks that the numbers moved by exactly N. Every wait polls with a deadline."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from tests.helpers import DISPATCH_MODES, HOST, free_port, http_get, wait_for
from tests.integration.conftest import StartServer
from tests.integration.test_admin import Samples, answers, scrape, total
from tests.server import HTTPStream, ServerProcess, build_request

WAIT = "prefork_lb_request_queue_wait_seconds"


def start(
    start_server: StartServer, app: str, *flags: str, env: dict[str, str] | None = None
) -> tuple[ServerProcess, int]:
    admin = free_port()
    srv = start_server(app, "--stats-bind", f"{HOST}:{admin}", *flags, env=env)
    wait_for(lambda: answers(admin), 20, "the admin listener saying every worker is ready")
    return srv, admin


def moved(admin: int, before: Samples, name: str, n: int, what: str, **labels: str) -> Samples:
    """Wait until ``name`` (summed over ``labels``) has grown by ``n`` since ``before`` (the
    workers publish at their heartbeat), then check it grew by exactly ``n``."""
    wait_for(lambda: total(scrape(admin), name, **labels) - total(before, name, **labels) >= n, 20, what)
    after = scrape(admin)
    assert total(after, name, **labels) - total(before, name, **labels) == n, (name, labels)
    return after


@pytest.mark.parametrize("mode", DISPATCH_MODES)
def test_every_request_has_one_queue_wait(start_server: StartServer, mode: str) -> None:
    srv, admin = start(start_server, "tests.apps:hello", "-w", "2", "--dispatch", mode)
    before = scrape(admin)
    n = 6
    for _ in range(n):
        assert http_get(srv.port)[0] == 200
    with socket.create_connection((HOST, srv.port), timeout=20) as sock:  # and 3 pipelined in one write
        sock.sendall(build_request("GET", "/") * 3)
        stream = HTTPStream(sock)
        assert [stream.read_response().status for _ in range(3)] == [200] * 3
    n += 3
    after = moved(admin, before, "prefork_lb_requests_total", n, f"{n} requests counted")
    for name in (WAIT + "_count", WAIT + "_bucket"):
        labels = {"le": "+Inf"} if name.endswith("_bucket") else {}
        assert total(after, name, **labels) - total(before, name, **labels) == n, name
    assert total(after, WAIT + "_sum") >= total(before, WAIT + "_sum")
    assert total(after, "prefork_lb_requests_queued") == 0


def send_get(port: int, path: str) -> socket.socket:
    sock = socket.create_connection((HOST, port), timeout=20)
    sock.sendall(build_request("GET", path))
    return sock


def status_of(sock: socket.socket) -> int:
    data = b""
    while b"\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    sock.close()
    return int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/") else 0


@pytest.mark.parametrize("interface", ["wsgi", "asgi"])
@pytest.mark.parametrize("mode", ["reuseport", "handoff"])
def test_requests_waiting_for_a_place_are_queued_and_then_have_waited(
    start_server: StartServer, mode: str, interface: str, tmp_path: Path
) -> None:
    """One request holds the one place, three wait in the queue (of three), a fifth gets 503:
    the gauges show them as they wait, the counters once they are done."""
    gate = tmp_path / "gate"
    srv, admin = start(
        start_server,
        "tests.apps:overload" if interface == "wsgi" else "tests.apps_asgi_worker:app",
        "-w", "1", "--dispatch", mode, "--interface", interface,
        "--max-concurrency", "1", "--queue-size", "3",
        env={"PREFORK_LB_TEST_GATE": str(gate)},
    )  # fmt: skip
    before = scrape(admin)
    holder = send_get(srv.port, "/hold")  # takes the one place until the gate opens
    wait_for(lambda: total(scrape(admin), "prefork_lb_requests_in_flight") == 1, 20, "/hold in the app")
    n = 3
    waiting = []
    for k in range(1, n + 1):
        # One at a time: each after the last shows as queued. At the very limit a connection
        # arriving while the worker moves the one before from one count to the next may be
        # refused (the handoff dispatcher errs on the side of full: never one too many).
        waiting.append(send_get(srv.port, "/"))
        wait_for(
            lambda k=k: total(scrape(admin), "prefork_lb_requests_queued") == k, 20, f"{k} requests queued"
        )
    assert total(scrape(admin), "prefork_lb_requests_in_flight") == 1
    assert status_of(send_get(srv.port, "/")) == 503  # no room in the queue
    moved(admin, before, "prefork_lb_admission_rejected_total", 1, "the 503 counted")
    gate.touch()
    assert status_of(holder) == 200 and [status_of(s) for s in waiting] == [200] * n
    after = moved(admin, before, WAIT + "_count", n + 1, "the queue waits counted")
    assert total(after, "prefork_lb_requests_queued") == 0
    # The last client can have its answer a loop pass before an ASGI app's task ends.
    wait_for(lambda: total(scrape(admin), "prefork_lb_requests_in_flight") == 0, 5, "nothing in flight")


def test_offload_tasks_by_outcome_and_their_durations(start_server: StartServer) -> None:
    srv, admin = start(start_server, "tests.apps:compute", "-w", "1", "--offload-processes", "2")
    before = scrape(admin)
    n = 4
    for _ in range(n):
        assert http_get(srv.port, "/offload/10") == (200, b"55")
    assert http_get(srv.port, "/offload-fail") == (200, b"failed")
    assert http_get(srv.port, "/offload-sleep/30/0.2", timeout=20) == (200, b"timeout")
    tasks = "prefork_lb_offload_tasks_total"
    after = moved(admin, before, tasks, n + 2, "the tasks counted at a heartbeat", outcome="submitted")
    for outcome, k in (("completed", n), ("failed", 1), ("timed_out", 1), ("cancelled", 0)):
        assert total(after, tasks, outcome=outcome) - total(before, tasks, outcome=outcome) == k, outcome
    duration = "prefork_lb_offload_task_duration_seconds_count"
    assert total(after, duration) - total(before, duration) == n + 1  # the ones that answered
    assert total(after, "prefork_lb_offload_pool_size") == 2


def test_the_workers_own_deadline_counts_each_504(start_server: StartServer) -> None:
    srv, admin = start(start_server, "tests.apps:deadlines", "-w", "1", "--request-timeout", "1")
    before = scrape(admin)
    n = 2
    for _ in range(n):
        assert http_get(srv.port, "/sleep/10", timeout=20)[0] == 504
    timeouts = "prefork_lb_request_timeouts_total"
    after = moved(admin, before, timeouts, n, f"{n} deadlines counted", where="worker")
    assert total(after, timeouts, where="master") == total(before, timeouts, where="master")


def test_a_blocked_worker_aborted_by_the_master_and_the_proxys_504(start_server: StartServer) -> None:
    srv, admin = start(
        start_server, "tests.apps:deadlines", "-w", "1", "--request-timeout", "1", "--dispatch", "proxy"
    )
    wait_for(lambda: http_get(srv.port, "/pid")[0] == 200, 20, "the proxy reaching its worker")
    before = scrape(admin)
    assert http_get(srv.port, "/burn/5", timeout=20)[0] == 504  # the proxy answers for its lost worker
    timeouts = "prefork_lb_request_timeouts_total"
    after = moved(admin, before, timeouts, 1, "the master's abort counted", where="master")
    after = moved(admin, before, timeouts, 1, "the proxy's 504 counted", where="proxy")
    assert total(after, timeouts, where="worker") == total(before, timeouts, where="worker")
