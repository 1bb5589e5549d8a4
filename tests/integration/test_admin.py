"""The admin listener (--stats-bind) in every dispatch mode, with real processes: /metrics read
back with prometheus_client's parser, /lb-health and /lb-stats, the admin process's supervision,
the bearer token, and bad values of its flags. Every wait polls with a deadline."""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import threading
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import DISPATCH_MODES, HOST, ROOT, free_port, http_get, server_env, wait_for
from tests.server import ServerProcess

TOKEN = "test-token-0123456789abcdef"
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def ask(port: int, path: str, token: str | None = None) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(HOST, port, timeout=5)
    try:
        conn.request("GET", path, headers={"Authorization": f"Bearer {token}"} if token else {})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def scrape(port: int, token: str | None = None) -> Samples:
    status, body = ask(port, "/metrics", token)
    assert status == 200, body
    out: Samples = {}
    for fam in text_string_to_metric_families(body.decode()):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum of ``name``'s samples whose labels include ``labels``."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= set(ls))


def admin_pids(srv: ServerProcess) -> list[int]:
    return srv.children_titled("admin")


def worker_pids(srv: ServerProcess) -> list[int]:
    return srv.children_titled("worker")


def answers(port: int, token: str | None = None) -> bool:
    """/lb-health says every worker slot is ready."""
    try:
        status, body = ask(port, "/lb-health", token)
    except OSError:
        return False
    return status == 200 and json.loads(body)["status"] == "ok"


# The worker rows over both interfaces: each app sleeps cooperatively on /sleep/S.
APP_OF = {"wsgi": "tests.apps:overload", "asgi": "tests.apps_asgi_worker:app"}


@pytest.fixture
def admin_server(start_server: Any) -> Any:
    def start(*flags: str, env: dict[str, str] | None = None) -> tuple[ServerProcess, int]:
        port = free_port()
        srv = start_server("tests.apps:hello", "--stats-bind", f"{HOST}:{port}", *flags, env=env)
        token = (env or {}).get("PREFORK_LB_STATS_TOKEN")
        wait_for(lambda: answers(port, token), 10, "the admin listener saying every worker is ready")
        return srv, port

    return start


CASES = [(mode, interface) for interface in APP_OF for mode in DISPATCH_MODES]


@pytest.fixture(scope="module", params=CASES, ids=[f"{m}-{i}" for m, i in CASES])
def two_workers(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """(server, admin port, mode): one ``-w 2`` server per (mode, interface) that the tests
    below share (pytest runs every test of one case before starting the next case's server);
    none of them replaces a worker, and each counts from what it finds."""
    mode, interface = request.param
    port = free_port()
    flags = ["--stats-bind", f"{HOST}:{port}", "-w", "2", "--dispatch", mode, "--interface", interface]
    srv = ServerProcess(APP_OF[interface], flags, workdir=tmp_path_factory.mktemp("admin"))
    try:
        srv.start()
        wait_for(lambda: answers(port), 10, "the admin listener saying every worker is ready")
        yield srv, port, mode
    finally:
        srv.discard()


def served(admin: int) -> int:
    return sum(w["served"] for w in json.loads(ask(admin, "/lb-stats")[1])["workers"])


def test_metrics_move_by_exactly_the_requests_sent(two_workers: Any) -> None:
    srv, admin, mode = two_workers
    before = scrape(admin)
    n = 7
    for _ in range(n):
        assert http_get(srv.port)[0] == 200
    # A worker counts a request once its response is sent: the client may read it first.
    requests = "prefork_lb_requests_total"
    wait_for(
        lambda: total(scrape(admin), requests) >= total(before, requests) + n, 5, f"{n} requests counted"
    )
    after = scrape(admin)
    assert total(after, requests) - total(before, requests) == n
    assert total(after, requests, code="2xx") - total(before, requests, code="2xx") == n
    by_method = "prefork_lb_requests_by_method_total"
    assert total(after, by_method, method="GET") - total(before, by_method, method="GET") == n
    count = "prefork_lb_request_duration_seconds_count"
    assert total(after, count) - total(before, count) == n
    inf = "prefork_lb_request_duration_seconds_bucket"
    assert total(after, inf, le="+Inf") - total(before, inf, le="+Inf") == n
    assert total(after, "prefork_lb_workers_target") == 2
    assert total(after, "prefork_lb_workers", state="ready") == 2
    assert total(after, "prefork_lb_build_info", dispatch=mode) == 1
    assert total(after, "prefork_lb_worker_spawns_total", reason="start") == 2
    assert total(after, "prefork_lb_process_resident_memory_bytes", role="master") > 0
    if mode == "proxy":  # the proxy's per-backend numbers, asked over its channel
        for name in ("prefork_lb_backend_requests_total", "prefork_lb_backend_latency_seconds_count"):
            wait_for(lambda n_=name: total(scrape(admin), n_) - total(before, n_) >= n, 5, name)
            assert total(scrape(admin), name) - total(before, name) == n, name
        assert total(after, "prefork_lb_backend_up") == 2


def _in_flight(admin: int, request: str) -> list[dict[str, Any]] | None:
    """The /lb-stats worker rows once one of them has ``request`` in flight and nothing else is,
    with /metrics's per-worker in-flight series saying the same; else None.

    The request before it may still show for a moment after its client has the answer: an ASGI
    app's task ends a loop pass or more after its last body went out, and only then is the
    request done."""
    stats = json.loads(ask(admin, "/lb-stats")[1])
    busy = [w for w in stats["workers"] if w["in_flight"]]
    if stats["in_flight"] != 1 or [w["current_request"] for w in busy] != [request]:
        return None
    series = total(scrape(admin), "prefork_lb_requests_in_flight", worker=str(busy[0]["slot"]))
    return stats["workers"] if series == 1 else None


def test_lb_health_and_lb_stats_answer_in_every_mode(two_workers: Any) -> None:
    srv, admin, mode = two_workers
    before = served(admin) if mode != "proxy" else 0
    assert http_get(srv.port)[0] == 200
    if mode != "proxy":  # the worker rows: a request in flight, then the requests served
        slow = threading.Thread(target=http_get, args=(srv.port, "/sleep/1.5", 10))
        slow.start()
        try:
            rows = wait_for(lambda: _in_flight(admin, "GET /sleep/1.5"), 5, "the slow request in flight")
        finally:
            slow.join(timeout=15)
        assert [w["current_request"] for w in rows if w["in_flight"]] == ["GET /sleep/1.5"], rows
        wait_for(lambda: served(admin) == before + 2, 5, "2 more served")
    status, body = ask(admin, "/lb-health")
    health = json.loads(body)
    assert status == 200 and health["status"] == "ok" and health["healthy"] == 2 == health["total"], health
    status, body = ask(admin, "/lb-stats")
    stats = json.loads(body)
    assert status == 200
    if mode == "proxy":  # the proxy's own document, as before
        assert len(stats["backends"]) == 2 and stats["local_workers"] == 2, stats
    else:
        assert sorted(w["pid"] for w in stats["workers"]) == worker_pids(srv), stats
        assert stats["master_pid"] == srv.pid and stats["dispatch"] == mode
    assert ask(admin, "/nope")[0] == 404 and ask(admin, "/lb-stats/../etc")[0] == 404  # "/" is the dashboard


def test_the_admin_process_is_respawned_after_kill_9(admin_server: Any) -> None:
    srv, admin = admin_server("-w", "1")
    (first,) = wait_for(lambda: admin_pids(srv), 5, "the admin process in the process list")
    assert ask(admin, "/lb-health")[0] == 200
    os.kill(first, signal.SIGKILL)
    (second,) = wait_for(lambda: [p for p in admin_pids(srv) if p != first], 10, "a new admin process")
    wait_for(lambda: answers(admin), 10, "the new admin process answering")
    assert first not in admin_pids(srv) and second != first
    assert f"Admin process (pid {first}) died unexpectedly" in srv.log_text()


def test_stats_bind_off_starts_no_admin_process(start_server: Any) -> None:
    srv = start_server("tests.apps:hello", "-w", "2", "--stats-bind", "off")
    wait_for(lambda: len(worker_pids(srv)) == 2, 5, "two workers")
    assert admin_pids(srv) == []
    assert "Admin endpoints" not in srv.log_text()


def test_stats_token_refuses_without_it_and_accepts_with_it(admin_server: Any) -> None:
    srv, admin = admin_server("-w", "1", env={"PREFORK_LB_STATS_TOKEN": TOKEN})
    for path in ("/metrics", "/lb-health", "/lb-stats", "/nowhere"):
        assert ask(admin, path)[0] == 401, path
        assert ask(admin, path, "not-the-token-0123456789")[0] == 401, path
    assert ask(admin, "/lb-health", TOKEN)[0] == 200
    assert total(scrape(admin, TOKEN), "prefork_lb_workers_target") == 1


def test_a_dead_workers_counts_stay_in_the_totals(admin_server: Any) -> None:
    srv, admin = admin_server("-w", "1")
    for _ in range(5):
        assert http_get(srv.port)[0] == 200
    requests = "prefork_lb_requests_total"
    wait_for(lambda: total(scrape(admin), requests, worker="0") == 5, 5, "5 requests counted")
    (old,) = worker_pids(srv)
    os.kill(old, signal.SIGKILL)
    wait_for(lambda: worker_pids(srv) and worker_pids(srv) != [old], 10, "the worker replaced")
    assert total(scrape(admin), requests, worker="0") == 5  # not back to 0
    wait_for(lambda: http_get(srv.port)[0] == 200, 10, "the new worker answering")
    assert http_get(srv.port)[0] == 200
    wait_for(lambda: total(scrape(admin), requests, worker="0") == 7, 5, "7 requests counted")
    after = scrape(admin)
    assert total(after, "prefork_lb_request_duration_seconds_count", worker="0") == 7
    assert total(after, "prefork_lb_worker_spawns_total", reason="crash") == 1


@pytest.mark.parametrize(
    ("flags", "says"),
    [
        (["--stats-bind", "nowhere"], "invalid value 'nowhere' for stats_bind"),
        (["--stats-bind", "127.0.0.1:99999"], "invalid port"),
        (["--stats-bind", "fd://3"], "fd:// is not supported"),
        (["--stats-bind", "public"], "--stats-bind public needs --dispatch proxy"),
        (["--stats-token", "short"], "must be 16 to 512 characters"),
        (["--stats-token", "has spaces in it, sixteen+"], "may hold only"),
    ],
)
def test_bad_admin_flags_are_one_clear_line_and_exit_2(flags: list[str], says: str) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "prefork_lb", "tests.apps:hello", "-b", f"{HOST}:{free_port()}", *flags],
        cwd=ROOT,
        env=server_env(),
        capture_output=True,
        timeout=20,
        start_new_session=True,
    )
    err = r.stderr.decode()
    assert r.returncode == 2, err
    assert says in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err


def test_an_explicit_stats_bind_in_use_exits_2(tmp_path: Any) -> None:
    with __import__("socket").socket() as taken:
        taken.bind((HOST, 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        r = subprocess.run(
            [sys.executable, "-m", "prefork_lb", "tests.apps:hello", "-b", f"{HOST}:{free_port()}"]
            + ["--stats-bind", f"{HOST}:{port}"],
            cwd=ROOT,
            env=server_env(),
            capture_output=True,
            timeout=20,
            start_new_session=True,
        )
    err = r.stderr.decode()
    assert r.returncode == 2, err
    assert err.strip() == f"prefork_lb: error: address {HOST}:{port} is already in use (--stats-bind)"
