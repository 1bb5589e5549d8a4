"""A gunicorn config as gunicorn users have it: gunicorn.conf.py found in the working directory,
GUNICORN_CMD_ARGS, the warning line for settings without an equivalent, --check-config and
--print-config, and the per-worker SQLite pool of examples/per_worker_db (a config file's
post_worker_init and worker_exit, and the same from prefork_lb.run())."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.helpers import HOST, ROOT, http_get, server_env, spawn, stop_process, wait_for
from tests.server import ServerProcess

UNSUPPORTED = re.compile(
    r"gunicorn settings without an equivalent in prefork_lb, ignored: (.*) \(docs/gunicorn.md"
)


class CommandServer(ServerProcess):
    """A server started by an arbitrary command in a working directory of the test's choosing;
    ``prepare(port)`` returns (the command, extra environment) for the port it is to listen on."""

    def __init__(
        self, cwd: Path, prepare: Callable[[int], tuple[list[str], dict[str, str]]], workdir: Path
    ) -> None:
        super().__init__("unused:app", (), workdir=workdir)
        self.cwd = cwd
        self.prepare = prepare

    def _spawn(self) -> None:
        cmd, extra = self.prepare(self.port)
        env = server_env({"PYTHONPATH": str(ROOT), **extra})
        with open(self.out_path, "wb") as out, open(self.err_path, "wb") as err:
            self.proc = spawn(cmd, cwd=self.cwd, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=err)

    def stop_gracefully(self) -> int | None:
        """TERM to the master only: it stops its workers gracefully (their worker_exit runs)."""
        return None if self.proc is None else stop_process(self.proc, 30.0, group=False)


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[Callable[..., CommandServer]]:
    started: list[CommandServer] = []

    def start(cwd: Path, prepare: Callable[[int], tuple[list[str], dict[str, str]]]) -> CommandServer:
        srv = CommandServer(cwd, prepare, tmp_path / f"server{len(started)}")
        started.append(srv)
        return srv.start(ready_timeout=30.0)

    try:
        yield start
    finally:
        for srv in started:
            srv.stop()


def unsupported_names(log: str) -> list[list[str]]:
    return [m.group(1).split(", ") for m in UNSUPPORTED.finditer(log)]


def write_gunicorn_conf(cwd: Path, port: int, body: str = "") -> None:
    (cwd / "gunicorn.conf.py").write_text(f'bind = ["{HOST}:{port}"]\nworkers = 3\n' + textwrap.dedent(body))


def test_gunicorn_conf_py_in_the_working_directory_applies(servers, tmp_path: Path) -> None:
    cwd = tmp_path / "app"
    cwd.mkdir()

    def prepare(port: int) -> tuple[list[str], dict[str, str]]:
        write_gunicorn_conf(
            cwd,
            port,
            """
            accesslog = "-"
            loglevel = "WARNING"
            threads = 8
            preload_app = True
            wsgi_app = "tests.apps:echo"

            def worker_int(worker):
                pass

            def post_fork(server, worker):  # gunicorn's server.log and worker attributes
                server.log.warning("post_fork hook: worker %s is pid %s", worker.slot, worker.pid)

            def when_ready(server):
                server.log.warning("when_ready hook")
            """,
        )
        return [sys.executable, "-m", "prefork_lb"], {}

    srv = servers(cwd, prepare)
    assert http_get(srv.port, "/")[0] == 200
    wait_for(lambda: len(srv.children_titled("worker")) == 3, 30.0, "3 workers")
    log = srv.log_text()
    assert unsupported_names(log) == [["threads", "preload_app", "worker_int"]]
    assert "[INFO]" not in log  # loglevel = "WARNING": no info lines
    srv.wait_log("when_ready hook", 20.0)
    for pid in srv.children_titled("worker"):
        assert re.search(rf"post_fork hook: worker \d is pid {pid}\b", srv.log_text()), srv.log_text()
    srv.wait_log('"GET / HTTP/1.1" 200', 20.0, stdout=True)  # accesslog = "-": stdout


def test_gunicorn_cmd_args_apply_over_the_file_and_name_unsupported_flags(servers, tmp_path: Path) -> None:
    cwd = tmp_path / "app"
    cwd.mkdir()

    def prepare(port: int) -> tuple[list[str], dict[str, str]]:
        write_gunicorn_conf(cwd, port)
        return [sys.executable, "-m", "prefork_lb", "tests.apps:echo"], {
            "GUNICORN_CMD_ARGS": "--workers 2 -k gevent --worker-connections 50"
        }

    srv = servers(cwd, prepare)
    assert http_get(srv.port, "/")[0] == 200
    wait_for(
        lambda: len(srv.children_titled("worker")) == 2, 30.0, "2 workers (GUNICORN_CMD_ARGS over the file)"
    )
    assert unsupported_names(srv.log_text()) == [["worker_class"]]


def run_cli(
    args: list[str], cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "prefork_lb", *args],
        cwd=cwd,
        env=server_env({"PYTHONPATH": str(ROOT), **(env or {})}),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_check_config_exits_0_or_2_with_one_line(tmp_path: Path) -> None:
    (tmp_path / "gunicorn.conf.py").write_text("workers = 2\n")
    ok = run_cli(["tests.apps:echo", "--check-config"], tmp_path)
    assert (ok.returncode, ok.stderr) == (0, "")
    assert ok.stdout == "config OK: tests.apps:echo (wsgi), 2 workers, reuseport on 127.0.0.1:8000\n"
    for args, conf, why in (
        (["tests.apps:no_such_app"], "workers = 2\n", "no_such_app"),
        (["tests.apps:echo"], "workers = 'many'\n", "invalid value 'many' for workers"),
        (["tests.apps:echo"], "import no_such_module_4c1d\n", "No module named 'no_such_module_4c1d'"),
        (["tests.apps:echo"], "workers = (\n", "syntax error"),
    ):
        (tmp_path / "gunicorn.conf.py").write_text(conf)
        # a bad config stops a plain start too, before it binds; a bad app only a check does
        # (a plain start reports it once a worker fails to import it)
        checks = (["--check-config"],) if "no_such_app" in args[0] else (["--check-config"], [])
        for check in checks:
            bad = run_cli([*args, *check, "-b", f"{HOST}:1"], tmp_path)  # never bound: it stops first
            assert bad.returncode == 2, bad.stderr
            assert bad.stderr.count("\n") == 1 and why in bad.stderr and "Traceback" not in bad.stderr


def test_print_config_says_where_each_value_came_from(tmp_path: Path) -> None:
    (tmp_path / "gunicorn.conf.py").write_text("workers = 3\naccesslog = '-'\n")
    done = run_cli(
        ["tests.apps:echo", "--print-config", "-t", "9"],
        tmp_path,
        {"PREFORK_LB_BACKLOG": "77", "GUNICORN_CMD_ARGS": "--max-requests 5"},
    )
    assert done.returncode == 0, done.stderr
    lines = {line.split(" = ")[0].strip(): line for line in done.stdout.splitlines() if " = " in line}
    conf = repr(str(tmp_path / "gunicorn.conf.py"))
    assert lines["workers"].endswith(f"= 3  (config file {conf})")
    assert lines["access_logfile"].endswith(f"= '-'  (config file {conf}, as accesslog)")
    assert lines["backlog"].endswith("= 77  (environment variable PREFORK_LB_BACKLOG)")
    assert lines["max_requests"].endswith("= 5  (GUNICORN_CMD_ARGS)")
    assert lines["timeout"].endswith("= 9.0  (command line)")
    assert lines["keepalive"].endswith("= 5.0  (default)")
    as_json = run_cli(["tests.apps:echo", "--print-config", "--json"], tmp_path)
    assert json.loads(as_json.stdout)["settings"]["workers"] == {"value": 3, "source": f"config file {conf}"}


# -- the per-worker SQLite pool (examples/per_worker_db) --------------------------------------------


def check_per_worker_pools(srv: CommandServer, workers: int) -> None:
    """Each worker answers from its own pool, opened after fork in post_worker_init; on a
    graceful stop each closes it in worker_exit."""
    pids = wait_for(
        lambda: srv.children_titled("worker") if len(srv.children_titled("worker")) == workers else [],
        30.0,
        "the workers",
    )
    seen: dict[int, dict[str, object]] = {}

    def answer_from_every_worker() -> bool:
        status, body = http_get(srv.port, "/")
        assert status == 200, body
        doc = json.loads(body)
        seen[doc["pid"]] = doc
        return set(seen) == set(pids)

    wait_for(answer_from_every_worker, 30.0, f"an answer from each of the workers {pids}")
    for pid, doc in seen.items():
        assert doc["pool_pid"] == pid  # opened in that worker, not inherited from the master
        assert isinstance(doc["hits_by_this_worker"], int) and doc["hits_by_this_worker"] >= 1
        assert re.fullmatch(r"\d+\.\d+\.\d+", str(doc["sqlite"]))
    log = srv.log_text()
    for pid in pids:
        assert f"Worker {pid}: opened 4 SQLite connection(s)" in log
    assert srv.pid not in seen and f"Worker {srv.pid}: opened" not in log  # never in the master
    assert srv.stop_gracefully() == 0
    log = srv.log_text()
    for pid in pids:
        assert f"Worker {pid}: closed 4 SQLite connection(s)" in log, log


def example_env(port: int, tmp_path: Path) -> dict[str, str]:
    return {
        "EXAMPLE_BIND": f"{HOST}:{port}",
        "EXAMPLE_WORKERS": "2",
        "EXAMPLE_DATABASE": str(tmp_path / "example.sqlite3"),
    }


def test_per_worker_pool_from_the_example_config_file(servers, tmp_path: Path) -> None:
    def prepare(port: int) -> tuple[list[str], dict[str, str]]:
        return [sys.executable, "-m", "prefork_lb"], example_env(port, tmp_path)

    check_per_worker_pools(servers(ROOT / "examples" / "per_worker_db", prepare), 2)


def test_per_worker_pool_from_prefork_lb_run(servers, tmp_path: Path) -> None:
    def prepare(port: int) -> tuple[list[str], dict[str, str]]:
        return [sys.executable, "-m", "examples.per_worker_db.run"], example_env(port, tmp_path)

    check_per_worker_pools(servers(ROOT, prepare), 2)


def test_the_example_config_passes_check_config() -> None:
    done = run_cli(["--check-config", "-c", "examples/per_worker_db/gunicorn.conf.py"], ROOT)
    assert (done.returncode, done.stderr) == (0, ""), done.stderr
    assert os.path.isfile(ROOT / "examples" / "per_worker_db" / "gunicorn.conf.py")


# -- user, group, umask ---------------------------------------------------------------------------


def others_can_run_python() -> bool:
    """Whether a user other than root can read this interpreter's standard library (not when it
    lives under /root, as pyenv puts it)."""
    path = Path(os.__file__).resolve()
    return all(p.stat().st_mode & 0o005 == 0o005 for p in path.parents) and bool(path.stat().st_mode & 0o004)


def start_as(servers, tmp_path: Path, user_lines: str) -> tuple[CommandServer, Path]:
    cwd = tmp_path / "app"
    cwd.mkdir()
    for p in (tmp_path, cwd):
        p.chmod(0o755)
    access = tmp_path / "access.log"

    def prepare(port: int) -> tuple[list[str], dict[str, str]]:
        write_gunicorn_conf(
            cwd,
            port,
            f"""
            workers = 1
            umask = "077"
            pidfile = {str(tmp_path / "master.pid")!r}
            accesslog = {str(access)!r}
            """
            + textwrap.dedent(user_lines),
        )
        return [sys.executable, "-m", "prefork_lb", "tests.apps:echo"], {}

    srv = servers(cwd, prepare)
    assert http_get(srv.port, "/")[0] == 200
    wait_for(lambda: '"GET / HTTP/1.1" 200' in access.read_text(), 20.0, "the access log line")
    assert (tmp_path / "master.pid").stat().st_mode & 0o777 == 0o600  # umask 077, in the master
    return srv, access


@pytest.mark.skipif(os.geteuid() != 0, reason="switching groups needs root")
def test_group_and_umask_from_a_gunicorn_conf(servers, tmp_path: Path) -> None:
    import grp

    import psutil

    nogroup = next(g for g in ("nogroup", "nobody") if g in {e.gr_name for e in grp.getgrall()})
    gid = grp.getgrnam(nogroup).gr_gid
    srv, access = start_as(servers, tmp_path, f"group = {nogroup!r}\n")
    (worker,) = wait_for(lambda: srv.children_titled("worker"), 30.0, "the worker")
    assert psutil.Process(worker).gids().real == gid
    assert psutil.Process(worker).gids().effective == gid
    assert psutil.Process(srv.pid).gids().real == 0  # the master keeps its own
    assert access.stat().st_gid == gid  # handed over, so the worker can reopen it


@pytest.mark.skipif(os.geteuid() != 0, reason="switching users needs root")
@pytest.mark.skipif(not others_can_run_python(), reason="this Python is not readable by other users")
def test_user_from_a_gunicorn_conf(servers, tmp_path: Path) -> None:
    import pwd

    import psutil

    nobody = pwd.getpwnam("nobody")
    srv, access = start_as(servers, tmp_path, 'user = "nobody"\n')
    (worker,) = wait_for(lambda: srv.children_titled("worker"), 30.0, "the worker")
    assert psutil.Process(worker).uids().real == nobody.pw_uid
    assert psutil.Process(srv.pid).uids().real == 0  # the master stays root
    assert access.stat().st_uid == nobody.pw_uid


def test_user_without_root_is_one_line(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("as root the switch is allowed")
    done = run_cli(["tests.apps:echo", "--user", "root", "--check-config"], tmp_path)
    assert done.returncode == 2 and "need the master to run as root" in done.stderr


def test_hup_rereads_the_found_config_file_after_chdir(servers, tmp_path: Path) -> None:
    import signal

    cwd = tmp_path / "app"
    elsewhere = tmp_path / "elsewhere"
    cwd.mkdir()
    elsewhere.mkdir()
    conf = cwd / "gunicorn.conf.py"

    def prepare(port: int) -> tuple[list[str], dict[str, str]]:
        conf.write_text(f'bind = "{HOST}:{port}"\nworkers = 1\nchdir = {str(elsewhere)!r}\n')
        return [sys.executable, "-m", "prefork_lb", "tests.apps:echo"], {}

    srv = servers(cwd, prepare)
    wait_for(lambda: len(srv.children_titled("worker")) == 1, 30.0, "1 worker")
    conf.write_text(conf.read_text().replace("workers = 1", "workers = 3\nthreads = 2"))
    os.kill(srv.pid, signal.SIGHUP)
    srv.wait_log("Reload finished", 30.0)
    wait_for(lambda: len(srv.children_titled("worker")) == 3, 30.0, "3 workers after HUP")
    assert unsupported_names(srv.log_text()) == [["threads"]]
