"""The command line, without starting a server: flags from the registry, parsing, one-line errors."""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from prefork_lb import __version__, cli
from prefork_lb.config import SETTINGS, ConfigError, Setting

APP = "prefork_lb.demo:app"


@pytest.fixture(autouse=True)
def clean_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    """main() reads os.environ: keep the developer's PREFORK_LB_* variables out of these tests."""
    for var in list(os.environ):
        if var.startswith("PREFORK_LB_") or var == "WEB_CONCURRENCY":
            monkeypatch.delenv(var)


@pytest.fixture
def error_log_restored() -> Iterator[None]:
    """main() installs a handler on the 'prefork_lb' logger before it binds; take it off again."""
    yield
    logger = logging.getLogger("prefork_lb")
    for h in list(logger.handlers):
        logger.removeHandler(h)
        h.close()
    logger.setLevel(logging.NOTSET)
    logger.propagate = True


def sample_value(s: Setting) -> str:
    if s.choices:
        return s.choices[-1]
    return {"bind": "127.0.0.1:9000", "config": "conf.py"}.get(s.name, "1")


def one_line(err: str) -> str:
    lines = err.splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got {err!r}"
    return lines[0]


# -- the parser ------------------------------------------------------------------------------------


@pytest.mark.parametrize("setting", [s for s in SETTINGS if s.flags and s.cli], ids=lambda s: s.name)
def test_parser_has_every_setting_flag(setting: Setting) -> None:
    parser = cli.make_parser()
    value = sample_value(setting)
    for flag in setting.flags:
        args = parser.parse_args([flag, value])
        got = getattr(args, setting.name)
        assert got == ([value] if setting.append else value), flag
        assert flag in parser.format_help()


def test_unset_flags_are_none_so_lower_layers_show_through() -> None:
    args = cli.make_parser().parse_args([APP])
    assert args.app == APP
    for s in SETTINGS:
        if s.flags and s.cli:
            assert getattr(args, s.name) is None, s.name


def test_parse_argv() -> None:
    cfg = cli.parse(
        [
            APP,
            "-w",
            "3",
            "-b",
            "127.0.0.1:9001",
            "--bind",
            "unix:/tmp/x.sock",
            "--keep-alive",
            "0",
            "--require-host",
            "false",
            "--log-level",
            "debug",
        ],
        environ={},
    )
    assert cfg.app_uri == APP
    assert cfg.workers == 3
    assert cfg.bind == ["127.0.0.1:9001", "unix:/tmp/x.sock"]
    assert cfg.keepalive == 0.0
    assert cfg.require_host is False
    assert cfg.log_level == "debug"
    assert cfg.backlog == 2048  # untouched: the default


def test_parse_command_line_wins_over_environment() -> None:
    environ = {"PREFORK_LB_WORKERS": "5", "PREFORK_LB_BACKLOG": "64"}
    cfg = cli.parse([APP, "-w", "2"], environ=environ)
    assert cfg.workers == 2
    assert cfg.backlog == 64


def test_parse_app_from_config_file(tmp_path: Path) -> None:
    conf = tmp_path / "conf.py"
    conf.write_text("wsgi_app = 'prefork_lb.demo:app'\nworkers = 2\n")
    cfg = cli.parse(["-c", str(conf)], environ={})
    assert cfg.app_uri == APP
    assert cfg.workers == 2


def test_parse_without_app_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="no app given: pass MODULE:APP"):
        cli.parse(["-w", "2"], environ={})


def test_parse_bad_value_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="command line: invalid value 'zero' for workers"):
        cli.parse([APP, "-w", "zero"], environ={})


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([APP, "--bogus"], "prefork_lb: error: unrecognized arguments: --bogus (see --help)"),
        ([APP, "-w"], "prefork_lb: error: argument -w/--workers: expected one argument (see --help)"),
        ([APP, "--log-level", "loud"], "prefork_lb: error: argument --log-level: invalid choice: 'loud'"),
    ],
)
def test_usage_error_exits_2_with_one_line(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        cli.parse(argv, environ={})
    assert info.value.code == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert one_line(err).startswith(message)


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.parse(["--version"], environ={})
    assert info.value.code == 0
    assert capsys.readouterr().out == f"prefork_lb {__version__}\n"


# -- main(): errors before anything is served ------------------------------------------------------


def test_main_without_app_exits_2_with_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main([])
    assert info.value.code == 2
    assert one_line(capsys.readouterr().err).startswith("prefork_lb: error: no app given")


def test_main_bad_setting_exits_2_with_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main([APP, "--backlog", "0"])
    assert info.value.code == 2
    assert one_line(capsys.readouterr().err) == (
        "prefork_lb: error: command line: invalid value '0' for backlog: must be at least 1, got 0"
    )


@pytest.mark.usefixtures("error_log_restored")
def test_main_bad_address_exits_2_with_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main([APP, "-b", "nowhere"])
    assert info.value.code == 2
    assert one_line(capsys.readouterr().err) == (
        "prefork_lb: error: invalid address 'nowhere': expected HOST:PORT"
    )


@pytest.mark.usefixtures("error_log_restored")
def test_main_port_in_use_exits_2_with_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        with pytest.raises(SystemExit) as info:
            cli.main([APP, "-b", f"127.0.0.1:{port}"])
    assert info.value.code == 2
    assert one_line(capsys.readouterr().err) == (
        f"prefork_lb: error: address 127.0.0.1:{port} is already in use (--bind)"
    )


@pytest.mark.usefixtures("error_log_restored")
def test_main_unwritable_error_log_exits_2_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "no-such-dir" / "error.log"
    with pytest.raises(SystemExit) as info:
        cli.main([APP, "--error-logfile", str(missing)])
    assert info.value.code == 2
    line = one_line(capsys.readouterr().err)
    assert line.startswith("prefork_lb: error: No such file or directory")
    assert str(missing) in line


# -- the proxy subcommand ---------------------------------------------------------------------------

PROXY = ["proxy", "--backends", "127.0.0.1:9001,127.0.0.1:9002"]


def test_proxy_subcommand_runs_no_local_workers() -> None:
    cfg = cli.parse(PROXY, environ={"WEB_CONCURRENCY": "3", "PREFORK_LB_MAX_WORKERS": "4"})
    assert cfg.app_uri is None
    assert cfg.dispatch == "proxy"
    assert cfg.workers == 0 and cfg.max_workers == 0
    assert not cfg.local_workers
    assert cfg.backends == ["127.0.0.1:9001", "127.0.0.1:9002"]


@pytest.mark.parametrize(
    ("flags", "names"),
    [
        (["-w", "4"], "-w/--workers"),
        (["-w0"], "-w/--workers"),
        (["--workers=0"], "-w/--workers"),
        (["--dispatch", "handoff"], "--dispatch"),
        (["--max-workers", "4"], "--max-workers"),
        (["--worker-base-port", "8100"], "--worker-base-port"),
        (["--max-request", "9"], "--max-request"),  # --max-requests or --max-requests-jitter
    ],
)
def test_proxy_subcommand_refuses_the_servers_flags(
    flags: list[str], names: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        cli.parse([*PROXY, *flags], environ={})
    assert info.value.code == 2
    assert one_line(capsys.readouterr().err) == (
        f"prefork_lb: error: {names} does not apply to prefork_lb proxy, only to prefork_lb MODULE:APP"
    )


def test_proxy_subcommand_ignores_the_servers_settings_from_env_and_config_file(tmp_path: Path) -> None:
    conf = tmp_path / "shared.py"
    conf.write_text("workers = 3\ndispatch = 'handoff'\nretries = 5\n")
    cfg = cli.parse([*PROXY, "-c", str(conf)], environ={"PREFORK_LB_WORKERS": "0"})
    assert (cfg.workers, cfg.dispatch, cfg.retries) == (0, "proxy", 5)
    assert cfg.warnings == [
        f"config file {str(conf)!r}: workers does not apply to prefork_lb proxy; ignored",
        f"config file {str(conf)!r}: dispatch does not apply to prefork_lb proxy; ignored",
        "environment variable PREFORK_LB_WORKERS: workers does not apply to prefork_lb proxy; ignored",
    ]
    served = cli.parse([APP, "-c", str(conf)], environ={})  # the same file serves the server
    assert (served.workers, served.dispatch, served.retries, served.warnings) == (3, "handoff", 5, [])


def test_serve_and_proxy_configs_differ_only_where_the_proxy_says() -> None:
    serve = cli.parse([APP, "--dispatch", "proxy", "--backends", "127.0.0.1:9001,127.0.0.1:9002"], environ={})
    proxy = cli.parse(PROXY, environ={})
    differ = {name for name in serve.values if serve.values[name] != proxy.values[name]}
    assert differ <= {"workers"}  # dispatch and max_workers already agree here


def test_sighup_reload_of_the_standalone_proxy_keeps_no_local_workers() -> None:
    from prefork_lb.arbiter import Arbiter

    arb = Arbiter(cli.parse(PROXY, environ={}), reload_config=lambda: cli.parse(PROXY, environ={}))
    arb.handle_hup()
    assert arb.num_workers == 0 and arb.cfg.workers == 0
    assert arb.cfg.dispatch == "proxy"
