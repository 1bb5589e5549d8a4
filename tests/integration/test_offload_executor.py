"""--offload-executor against real executors: a Dask LocalCluster started here (dask://) and a
ThreadPoolExecutor factory (MODULE:FACTORY), behind a real server (tests.apps_offload:app).

What must hold: the task runs on the executor (not in the worker); the worker's loop keeps
serving while a slow task is in flight; a timeout answers as the local pool's does (504 in the
app); a scheduler SIGKILLed answers the OffloadError path (503) at once, in flight or not,
and one back on the same address is used again;
a factory that fails at boot is one line and exit 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.dask_cluster import DaskCluster
from tests.helpers import HOST, free_port, http_get, kill_group, server_env, spawn, wait_for
from tests.server import ServerProcess

APP = "tests.apps_offload:app"
CLIENT_TIMEOUT_S = 30.0  # an answer must come well within this; a hang fails the test


def get_json(port: int, path: str, timeout: float = CLIENT_TIMEOUT_S) -> tuple[int, dict[str, Any]]:
    status, body = http_get(port, path, timeout=timeout)
    return status, json.loads(body)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaskCluster]:
    c = DaskCluster(tmp_path_factory.mktemp("dask"))
    try:
        yield c.start()
    finally:
        c.stop()


@pytest.fixture(scope="module")
def dask_server(cluster: DaskCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    srv = ServerProcess(APP, ["--offload-executor", cluster.spec], workdir=tmp_path_factory.mktemp("server"))
    try:
        yield srv.start(ready_timeout=30)
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def thread_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    flags = ["--offload-executor", "tests.apps_offload:thread_executor"]
    srv = ServerProcess(APP, flags, workdir=tmp_path_factory.mktemp("server"))
    try:
        yield srv.start(ready_timeout=30)
    finally:
        srv.stop()


def slow_request_in_flight(port: int, gate: Path, query: str = "") -> tuple[threading.Thread, dict[str, Any]]:
    """Start GET /gate in a thread and return once its task has started (gate.started)."""
    answer: dict[str, Any] = {}

    def run() -> None:
        answer["status"], answer["body"] = get_json(port, f"/gate?path={gate}{query}", timeout=60)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    wait_for(
        lambda: Path(f"{gate}.started").exists() or not thread.is_alive(), 30.0, "the slow task to start"
    )
    assert "status" not in answer, answer
    return thread, answer


def assert_serves_while_in_flight(srv: ServerProcess, gate: Path) -> dict[str, Any]:
    thread, answer = slow_request_in_flight(srv.port, gate)
    for _ in range(20):
        status, body = get_json(srv.port, "/fast")
        assert status == 200 and body["fast"] == "ok"
    assert thread.is_alive() and "status" not in answer  # the slow one is still waiting
    gate.write_text("")
    thread.join(60)
    assert answer["status"] == 200 and answer["body"]["gate"] == "opened", answer
    return answer


# -- dask:// -------------------------------------------------------------------------------------


def test_dask_runs_the_task_on_the_cluster(dask_server: ServerProcess, cluster: DaskCluster) -> None:
    status, body = get_json(dask_server.port, "/run/22")
    assert status == 200, body
    assert body["ran"]["result"] == 17711
    assert body["ran"]["pid"] == cluster.pid != body["worker"]
    assert body["ran"]["dask_worker"].startswith("tcp://127.0.0.1:")
    assert body["worker"] in dask_server.worker_pids()
    status, body = get_json(dask_server.port, "/stats")  # the cluster's 4 threads, none busy now
    assert status == 200 and body["stats"] == {"size": 4, "busy": 0, "idle": 4, "restarts": 0}, body


def test_dask_errors_propagate(dask_server: ServerProcess) -> None:
    status, body = get_json(dask_server.port, "/fail")
    assert status == 500 and body["error"] == "ValueError: as asked", body


def test_dask_loop_serves_during_a_slow_offload(dask_server: ServerProcess, tmp_path: Path) -> None:
    assert_serves_while_in_flight(dask_server, tmp_path / "gate")


@pytest.mark.parametrize("executor", ["dask", "local"])
def test_timeout_answers_as_the_local_pool_does(
    executor: str, request: pytest.FixtureRequest, start_server: Any, tmp_path: Path
) -> None:
    if executor == "dask":
        srv = request.getfixturevalue("dask_server")
    else:
        srv = start_server(APP, "--offload-processes", "1")
    gate = tmp_path / "gate"
    try:
        status, body = get_json(srv.port, f"/gate?path={gate}&timeout=0.5")
    finally:
        gate.write_text("")  # let the abandoned task end
    assert status == 504, body
    assert body["error"].startswith(
        "timeout: offload: tests.apps_offload.wait_gate did not finish within 0.5 s"
    )


def test_dask_scheduler_killed_gives_offload_error(tmp_path: Path) -> None:
    cluster = DaskCluster(tmp_path).start()
    srv = ServerProcess(APP, ["--offload-executor", cluster.spec], workdir=tmp_path / "server")
    try:
        srv.start(ready_timeout=30)
        status, body = get_json(srv.port, "/run/10")
        assert status == 200 and body["ran"]["pid"] == cluster.pid, body
        thread, answer = slow_request_in_flight(srv.port, tmp_path / "gate")
        cluster.kill()
        thread.join(CLIENT_TIMEOUT_S)
        assert not thread.is_alive(), "the in-flight offload hung after the scheduler died"
        assert answer["status"] == 503, answer
        assert "lost the Dask scheduler" in answer["body"]["error"], answer
        for _ in range(3):  # later tasks fail too, each within the client's timeout
            status, body = get_json(srv.port, "/run/10")
            assert status == 503 and body["error"].startswith("offload error: "), body
        status, body = get_json(srv.port, "/fast")
        assert status == 200, body
        assert srv.alive
        # A scheduler back on the same address: the worker reconnects by itself.
        cluster = DaskCluster(tmp_path / "again").start(port=cluster.port)
        body = wait_for(lambda: ran_on(srv.port), 60.0, "an offload on the restarted cluster")
        assert body["ran"]["pid"] == cluster.pid
    finally:
        srv.stop()
        cluster.stop()


def ran_on(port: int) -> dict[str, Any] | None:
    status, body = get_json(port, "/run/10")
    return body if status == 200 else None


# -- MODULE:FACTORY ------------------------------------------------------------------------------


def test_factory_executor_runs_the_task(thread_server: ServerProcess) -> None:
    status, body = get_json(thread_server.port, "/run/20")
    assert status == 200, body
    assert body["ran"]["result"] == 6765
    assert body["ran"]["thread"].startswith("test-executor")
    assert body["ran"]["pid"] == body["worker"]  # a thread pool runs in the worker itself


def test_factory_executor_loop_serves_during_a_slow_offload(
    thread_server: ServerProcess, tmp_path: Path
) -> None:
    assert_serves_while_in_flight(thread_server, tmp_path / "gate")


@pytest.mark.parametrize(
    ("value", "must"),
    [
        ("tests.apps_offload:failing_factory", "the factory raised RuntimeError: no executor today"),
        ("no_such_module_7a1b:make", "cannot import no_such_module_7a1b"),
        ("dask://127.0.0.1", "expected dask://HOST:PORT"),
    ],
)
def test_a_bad_executor_is_one_line_and_exit_2(value: str, must: str) -> None:
    proc = spawn(
        [
            sys.executable,
            "-m",
            "prefork_lb",
            APP,
            "-b",
            f"{HOST}:{free_port()}",
            "-w",
            "1",
            "--offload-executor",
            value,
        ],
        env=server_env(
            {
                "PYTHONPATH": os.pathsep.join(
                    filter(None, [str(Path(__file__).resolve().parents[2]), os.environ.get("PYTHONPATH")])
                )
            }
        ),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        out, err = proc.communicate(timeout=CLIENT_TIMEOUT_S)
    finally:
        kill_group(proc)
    text = err.decode("utf-8", "replace").strip()
    assert proc.returncode == 2, text
    assert len(text.splitlines()) == 1 and text.startswith("prefork_lb: error: ") and must in text, text
