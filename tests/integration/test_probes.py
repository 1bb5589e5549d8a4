"""The orchestrators' probes on the admin listener, in every dispatch mode, with real processes:
/readyz 200 once ready, 503 from the TERM on while --shutdown-delay keeps the public port serving
(new connections get 200), then the server drains and exits 0; /livez 503 while the helper (or,
without one, the master) is stopped long enough for its heartbeat to age; both public under
--stats-token. Every wait polls with a deadline; nothing asserts on time."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from typing import Any

import pytest

from tests.helpers import DISPATCH_MODES, HOST, ROOT, free_port, http_get, server_env, wait_for
from tests.integration.test_admin import TOKEN, ask
from tests.server import ServerProcess

HELPERS = {"handoff": "dispatcher", "proxy": "proxy"}
DELAY_OVER = "Shutdown delay over"


def probe(port: int, path: str) -> tuple[int, dict[str, Any]]:
    try:
        status, body = ask(port, path)
    except OSError:
        return 0, {}
    return status, json.loads(body) if body.startswith(b"{") else {}


def start(start_server: Any, mode: str, *flags: str) -> tuple[ServerProcess, int]:
    admin = free_port()
    srv = start_server(
        "tests.apps:hello",
        "-w",
        "2",
        "--dispatch",
        mode,
        "--stats-bind",
        f"{HOST}:{admin}",
        *flags,
        env={"PREFORK_LB_STATS_TOKEN": TOKEN},
    )
    wait_for(lambda: probe(admin, "/readyz")[0] == 200, 20, "/readyz 200")
    return srv, admin


@pytest.mark.parametrize("mode", DISPATCH_MODES)
def test_readyz_turns_503_at_term_while_the_delay_keeps_serving(start_server: Any, mode: str) -> None:
    srv, admin = start(start_server, mode, "--shutdown-delay", "3")
    status, doc = probe(admin, "/readyz")
    assert doc["status"] == "ok" and doc["ready_workers"] >= 1 and doc["phase"] == "serving", doc
    assert probe(admin, "/livez")[0] == 200
    assert ask(admin, "/lb-stats")[0] == 401  # the token still guards the numbers
    os.kill(srv.pid, signal.SIGTERM)
    status, doc = wait_for(lambda: (s := probe(admin, "/readyz"))[0] == 503 and s, 20, "/readyz 503")
    assert doc["phase"] in ("shutdown delay", "draining"), doc
    # New connections to the public port are served until the delay is over: each request
    # either gets 200, or was sent after the master logged the delay's end.
    served_in_delay = 0
    for _ in range(10_000):
        if DELAY_OVER in srv.log_text():
            break
        try:
            status, _body = http_get(srv.port, timeout=10)
        except OSError:
            status = 0
        over = DELAY_OVER in srv.log_text()
        assert status == 200 or over, (status, srv.log_text())
        if status == 200 and not over:
            served_in_delay += 1
            assert probe(admin, "/readyz")[0] in (503, 0)
    assert served_in_delay >= 1, srv.log_text()
    assert srv.proc is not None
    assert srv.proc.wait(40) == 0, srv.log_text()
    log = srv.log_text()
    assert "SIGTERM: serving 3 s more" in log and DELAY_OVER in log and "Traceback" not in log, log


@pytest.mark.parametrize("mode", DISPATCH_MODES)
def test_livez_fails_while_a_helper_or_the_master_is_stuck(start_server: Any, mode: str) -> None:
    srv, admin = start(start_server, mode, "--timeout", "6")  # stale after 3 s
    role = HELPERS.get(mode)
    if role is None:
        stuck, says = srv.pid, "the master's loop last ran"
    else:
        (stuck,) = wait_for(lambda: srv.children_titled(role), 20, f"the {role} process")
        says = f"the {role}'s heartbeat is"
    assert probe(admin, "/livez")[0] == 200
    os.kill(stuck, signal.SIGSTOP)
    try:
        status, doc = wait_for(lambda: (s := probe(admin, "/livez"))[0] == 503 and s, 20, "/livez 503")
    finally:
        os.kill(stuck, signal.SIGCONT)
    assert doc["status"] == "fail" and any(says in r for r in doc["reasons"]), doc
    # Continued (or, if the watchdog was quicker, replaced): alive again.
    wait_for(lambda: probe(admin, "/livez")[0] == 200, 30, "/livez 200 again")
    assert srv.alive


def test_a_bad_shutdown_delay_is_one_clear_line_and_exit_2() -> None:
    r = subprocess.run(
        [sys.executable, "-m", "prefork_lb", "tests.apps:hello", "-b", f"{HOST}:{free_port()}"]
        + ["--shutdown-delay", "-5"],
        cwd=ROOT,
        env=server_env(),
        capture_output=True,
        timeout=20,
        start_new_session=True,
    )
    err = r.stderr.decode()
    assert r.returncode == 2, err
    assert "invalid value '-5' for shutdown_delay: must be between 0 and 3600 seconds" in err, err
    assert len(err.strip().splitlines()) == 1, err
