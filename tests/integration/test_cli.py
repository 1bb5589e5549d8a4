"""The command line as a user meets it: mistakes end with exit code 2 and one line on stderr,
and SIGTERM stops gracefully."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import HOST, free_port, kill_group, server_env, spawn
from tests.server import HTTPStream, build_request, connect


def run_cli(*args: str, timeout: float = 20.0) -> tuple[int, str, str]:
    """Run the server with ``args`` in its own process group; (exit code, stdout, stderr).
    Whatever is left of the group when it returns (or times out) is killed."""
    proc = spawn(
        [sys.executable, "-m", "prefork_lb", *args],
        env=server_env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_group(proc)
        out, err = proc.communicate(timeout=5)
        pytest.fail(f"prefork_lb {args} still running after {timeout} s: {err.decode(errors='replace')}")
    finally:
        kill_group(proc)
    return proc.returncode, out.decode("utf-8", "replace"), err.decode("utf-8", "replace")


def bind_args(command: str = "server") -> list[str]:
    if command == "proxy":  # the proxy has no -w: it runs no workers
        return ["-b", f"{HOST}:{free_port()}"]
    return ["-b", f"{HOST}:{free_port()}", "-w", "1"]


# name -> (args before the bind flags, text the error line must contain, the app-path bug applies)
CASES = {
    "unknown_flag": (["tests.apps:echo", "--no-such-flag"], "--no-such-flag", False),
    "missing_module": (["no_such_module_4c1d:app"], "no_such_module_4c1d", True),
    "missing_attribute": (["tests.apps:no_such_app"], "no_such_app", True),
    "not_callable": (["tests.apps:NOT_CALLABLE"], "not callable", True),
    "asgi_function": (["tests.apps:asgi_app", "--interface", "wsgi"], "is an ASGI application", True),
    "asgi_instance": (["tests.apps:asgi_instance", "--interface", "wsgi"], "is an ASGI application", True),
    "proxy_without_backends": (["proxy"], "needs --backends", False),
    "proxy_bad_backend": (["proxy", "--backends", "127.0.0.1:80,nohost"], "nohost", False),
    "proxy_bad_weight": (["proxy", "--backends", "127.0.0.1:80=0"], "127.0.0.1:80=0", False),
    "proxy_with_app": (["proxy", "tests.apps:echo", "--backends", "127.0.0.1:80"], "takes no app", False),
    "proxy_missing_certfile": (
        ["proxy", "--backends", "127.0.0.1:80", "--certfile", "/nonexistent.pem"],
        "--certfile",
        False,
    ),
    "proxy_bad_allow_ips": (
        ["proxy", "--backends", "127.0.0.1:80", "--forwarded-allow-ips", "1.2.3.400"],
        "--forwarded-allow-ips",
        False,
    ),
    "bad_allow_ips": (
        ["tests.apps:echo", "--forwarded-allow-ips", "10.0.0.1,nohost"],
        "--forwarded-allow-ips",
        False,
    ),
    "sticky_without_proxy": (["tests.apps:echo", "--strategy", "sticky"], "sticky", False),
    "bad_request_id_header": (
        ["tests.apps:echo", "--request-id-header", "X Request"],
        "request_id_header",
        False,
    ),
    "bad_request_id": (["tests.apps:echo", "--request-id", "maybe"], "request_id", False),
}


def _run_case(name: str, tmp_path: Path) -> tuple[int, str, str, str]:
    if name == "port_in_use":
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((HOST, 0))
            s.listen(1)
            port = s.getsockname()[1]
            code, out, err = run_cli("tests.apps:echo", "-b", f"{HOST}:{port}", "-w", "1")
        return code, out, err, "in use"
    if name == "config_syntax_error":
        conf = tmp_path / "bad_conf.py"
        conf.write_text("workers = (\n")
        code, out, err = run_cli("tests.apps:echo", "-c", str(conf), *bind_args())
        return code, out, err, "syntax error"
    args, must, _ = CASES[name]
    code, out, err = run_cli(*args, *bind_args(args[0]))
    return code, out, err, must


ALL = [*CASES, "port_in_use", "config_syntax_error"]


@pytest.mark.parametrize("name", ALL)
def test_user_error_exits_2_with_an_error_line(name: str, tmp_path: Path) -> None:
    code, out, err, must = _run_case(name, tmp_path)
    assert code == 2, err
    assert "Traceback" not in err and "Traceback" not in out
    last = err.strip().splitlines()[-1]
    assert last.startswith("prefork_lb: error: ") and must in last, err


@pytest.mark.parametrize("name", ALL)
def test_user_error_is_one_line(name: str, tmp_path: Path) -> None:
    code, out, err, _ = _run_case(name, tmp_path)
    assert code == 2
    assert len(err.strip().splitlines()) == 1, err
    assert out == ""


# An app whose import raises, in every worker at the same moment: each waits until all have
# started importing it, as the workers of a real app that fails do when they boot together.
FAILING_APP = """\
import os, time
os.makedirs({barrier!r}, exist_ok=True)
open(os.path.join({barrier!r}, str(os.getpid())), "w").close()
deadline = time.monotonic() + 10
while len(os.listdir({barrier!r})) < {workers} and time.monotonic() < deadline:
    time.sleep(0.002)
{failure}
app = None
"""
IMPORT_FAILURES = {
    "raises": ("1 / 0", "ZeroDivisionError: division by zero"),
    "missing_dependency": (
        "import a_missing_dependency_9f2e",
        "ModuleNotFoundError: No module named 'a_missing_dependency_9f2e'",
    ),
}


@pytest.mark.parametrize("interface", ["wsgi", "asgi", "auto"])
@pytest.mark.parametrize("failure", list(IMPORT_FAILURES))
def test_an_app_that_fails_to_import_shows_its_traceback_once_and_exits_3(
    failure: str, interface: str, tmp_path: Path
) -> None:
    workers = 4
    statement, last_line = IMPORT_FAILURES[failure]
    source = FAILING_APP.format(barrier=str(tmp_path / "barrier"), workers=workers, failure=statement)
    (tmp_path / "failing_app.py").write_text(source)
    args = ["failing_app:app", "--chdir", str(tmp_path), "--interface", interface, "-w", str(workers)]
    code, out, err = run_cli(*args, "-b", f"{HOST}:{free_port()}")
    assert code == 3, err
    lines = err.splitlines()
    assert lines.count("Traceback (most recent call last):") == 1, err
    assert lines.count(last_line) == 1, err
    assert lines[-1] == f"prefork_lb: error: the app failed to import: {last_line}", err
    assert out == ""


def test_sigterm_lets_the_request_in_flight_finish(start_server) -> None:
    srv = start_server("tests.apps:slow_stream")
    with connect(srv.port, timeout=10) as sock:
        sock.sendall(build_request("GET", "/?n=6&delay=0.15"))
        s = HTTPStream(sock, timeout=10)
        # The response has started: the request is in flight.
        assert s.wait_bytes(b"chunk 0\n", timeout=5)
        os.kill(srv.pid, signal.SIGTERM)
        r = s.read_response()
        assert r.status == 200 and r.complete
        assert r.body == b"".join(b"chunk %d\n" % i for i in range(6))
        assert s.closed_by_server(5)  # drained: the connection ends with the response
    assert srv.proc is not None
    assert srv.proc.wait(10) == 0
    assert "Traceback" not in srv.log_text()


# -- help, misspelt flags, each command's own flags ---------------------------------------------------

HELP_LINES = 60  # the short --help fits a screen


def test_help_is_short_shows_defaults_and_the_proxy_command() -> None:
    code, out, err = run_cli("--help")
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert len(lines) < HELP_LINES, out
    assert lines[0] == "usage: prefork_lb MODULE:APP [options]"
    assert any(line.split()[:1] == ["proxy"] for line in lines), out  # the subcommand is named
    workers = next(line for line in lines if line.lstrip().startswith("-w, --workers"))
    assert workers.endswith("(default: the number of CPUs)"), workers
    text = " ".join(out.split())
    for shown in ("-b, --bind ADDRESS", "(default: 127.0.0.1:8000)", "--dispatch", "(default: 'reuseport')"):
        assert shown in text, shown
    assert "--help-all" in text and "docs/reference/settings.md" in text
    assert "--max-requests-jitter" not in text  # the rest is --help-all's


def test_help_all_lists_every_flag_with_its_default() -> None:
    from prefork_lb.config import SETTINGS

    code, out, err = run_cli("--help-all")
    assert (code, err) == (0, "")
    flags = [s for s in SETTINGS if s.flags and s.cli]
    for s in flags:
        for flag in s.flags:
            assert flag in out, flag
    text = " ".join(out.split())
    for s in flags:
        assert f"(default: {' '.join(s.default_text().split())})" in text, s.name
    for section in ("Server:", "Overload:", "Proxy:", "Timeouts:", "Limits:", "Logging:", "Config:"):
        assert section in out.splitlines(), section


def option_lines(help_text: str) -> str:
    """The lines of a help that list options (not the wrapped help texts, which name others)."""
    return "\n".join(line for line in help_text.splitlines() if line.startswith("  -"))


def test_proxy_help_lists_only_the_proxys_flags() -> None:
    from prefork_lb.config import SETTINGS

    for flag in ("--help", "--help-all"):
        code, out, err = run_cli("proxy", flag)
        assert (code, err) == (0, ""), flag
        assert out.startswith("usage: prefork_lb proxy"), out
        assert "--backends" in out and "--health-check-path" in out
        # the flags as tokens: "-g" is no flag of the proxy, though "--graceful-timeout" is
        listed = set(re.findall(r"(?<![\w-])--?[\w-]+", option_lines(out)))
        for s in SETTINGS:
            if not s.applies_to("proxy"):
                assert not any(f in listed for f in s.flags), (flag, s.flags)
            elif flag == "--help-all":
                assert all(f in listed for f in s.flags), s.flags
    assert len(run_cli("proxy", "--help")[1].splitlines()) < HELP_LINES


def test_a_misspelt_flag_is_named_alone_with_the_closest_flag() -> None:
    code, out, err = run_cli("--wrokers", "2", "prefork_lb.demo:app")
    assert code == 2 and out == ""
    assert err == "prefork_lb: error: unrecognized arguments: --wrokers (did you mean --workers?)\n"


@pytest.mark.parametrize(
    ("flags", "named"), [(["-w", "4"], "-w/--workers"), (["--dispatch", "handoff"], "--dispatch")]
)
def test_the_proxy_refuses_the_servers_flags(flags: list[str], named: str) -> None:
    code, out, err = run_cli("proxy", "--backends", "127.0.0.1:80", *flags, *bind_args("proxy"))
    assert code == 2 and out == ""
    assert err == (
        f"prefork_lb: error: {named} does not apply to prefork_lb proxy, only to prefork_lb MODULE:APP\n"
    )
