"""gunicorn compatibility of the configuration: the table of gunicorn's settings, gunicorn.conf.py,
GUNICORN_CMD_ARGS and PREFORK_LB_CMD_ARGS, discovery in the working directory, the sources that
--print-config shows, --check-config, and --user/--group/--umask's values."""

from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path

import pytest

from prefork_lb import cli, config_report, privileges
from prefork_lb.config import BY_NAME, HOOK_NAMES, SETTINGS, ConfigError, build, gunicorn_keywords
from prefork_lb.settings import gunicorn_names as gn

REPO = Path(__file__).resolve().parents[2]
APP = "prefork_lb.demo:app"
gconfig = pytest.importorskip("gunicorn.config")


@pytest.fixture(autouse=True)
def clean_environ(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for var in list(os.environ):
        if var.startswith("PREFORK_LB_") or var in ("WEB_CONCURRENCY", *cli.CMD_ARGS):
            monkeypatch.delenv(var)
    monkeypatch.chdir(tmp_path)  # no config file found by accident
    # --check-config monkey-patches with gevent before importing the app, as a worker does:
    # never in the test process, whose later tests need the real standard library.
    monkeypatch.setattr("prefork_lb.worker.child.patch", lambda: None)


def write(tmp_path: Path, text: str, name: str = "gunicorn.conf.py") -> str:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return str(path)


# -- the table against gunicorn's own list --------------------------------------------------------


def test_every_gunicorn_setting_is_mapped_or_knowingly_unsupported() -> None:
    theirs = [s.name for s in gconfig.KNOWN_SETTINGS]
    ours = [g.name for g in gn.GUNICORN]
    assert sorted(set(theirs) - set(ours)) == [], "gunicorn settings missing from gunicorn_names.GUNICORN"
    assert sorted(set(ours) - set(theirs)) == [], "settings in gunicorn_names.GUNICORN that gunicorn lacks"
    assert len(ours) == len(set(ours))


def test_the_table_has_gunicorns_flags_and_whether_they_take_a_value() -> None:
    for s in gconfig.KNOWN_SETTINGS:
        g = gn.BY_GUNICORN_NAME[s.name]
        assert g.flags == tuple(s.cli or ()), s.name
        if g.flags:
            takes = getattr(s, "action", None) not in ("store_true", "store_const")
            assert g.takes_value == takes, s.name


def test_every_entry_says_what_it_is_here() -> None:
    for g in gn.GUNICORN:
        assert g.kind in (gn.SETTING, gn.HOOK, gn.APP, gn.CONFIG, gn.ACTION, gn.NONE), g.name
        if g.kind == gn.SETTING:
            assert g.target in BY_NAME, g.name
        if g.kind == gn.HOOK:
            assert g.name in HOOK_NAMES, g.name
        if g.kind == gn.NONE:
            assert g.note, f"{g.name}: no equivalent needs a reason"
    called = {g.name for g in gn.GUNICORN if g.kind == gn.HOOK}
    assert called <= set(HOOK_NAMES)


def test_the_settings_the_issue_names_have_an_equivalent() -> None:
    for name in (
        "bind workers timeout graceful_timeout keepalive max_requests max_requests_jitter "
        "limit_request_line limit_request_fields limit_request_field_size accesslog errorlog "
        "loglevel access_log_format proc_name pidfile user group umask forwarded_allow_ips"
    ).split():
        assert gn.BY_GUNICORN_NAME[name].kind == gn.SETTING, name
    for hook in ("post_fork", "when_ready", "worker_exit", "post_worker_init"):
        assert gn.BY_GUNICORN_NAME[hook].kind == gn.HOOK


def test_the_migration_guide_has_the_generated_table() -> None:
    text = (REPO / "docs" / "gunicorn.md").read_text()
    assert gn.markdown_table(BY_NAME) in text, (
        "docs/gunicorn.md's flag-by-flag table is out of date: replace it with the output of "
        "`python -m prefork_lb.config gunicorn`"
    )


# -- gunicorn.conf.py ------------------------------------------------------------------------------


def test_gunicorn_names_and_shapes_in_a_config_file(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        bind = "127.0.0.1:9001"
        workers = 3
        accesslog = "-"
        errorlog = "/tmp/err.log"
        loglevel = "DEBUG"
        access_log_format = '%(h)s "%(r)s" %(s)s'
        forwarded_allow_ips = ["10.0.0.1", "10.0.0.0/8"]
        umask = "022"
        reuse_port = False
        proc_name = "myapp"
        limit_request_fields = 0
        user = 0
        """,
    )
    cfg = build({"config": path}, environ={})
    assert cfg.bind == ["127.0.0.1:9001"]
    assert cfg.workers == 3
    assert cfg.access_logfile == "-"
    assert cfg.error_logfile == "/tmp/err.log"
    assert cfg.log_level == "debug"
    assert cfg.access_log_format == '%(h)s "%(r)s" %(s)s'
    assert cfg.forwarded_allow_ips == "10.0.0.1,10.0.0.0/8"
    assert cfg.umask == 0o22
    assert cfg.dispatch == "shared"
    assert cfg.proc_name == "myapp"
    assert cfg.limit_request_fields == 32768  # gunicorn's 0: its maximum
    assert cfg.user == "0"
    assert cfg.warnings == []
    assert cfg.source_of("log_level") == f"config file {path!r}, as loglevel"


def test_unsupported_gunicorn_settings_are_named_in_one_warning_line(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        worker_class = "gevent"
        threads = 4
        preload_app = True
        workers = 2

        def pre_request(worker, req):
            pass

        def worker_abort(worker):
            pass

        def post_fork(server, worker):
            pass
        """,
    )
    cfg = build({"config": path}, environ={})
    assert cfg.warnings == [
        f"config file {path!r}: gunicorn settings without an equivalent in prefork_lb, ignored: "
        "worker_class, threads, preload_app, pre_request, worker_abort (docs/gunicorn.md says why)"
    ]
    assert cfg.workers == 2
    assert set(cfg.hooks) == {"pre_request", "post_fork"}


def test_a_bad_gunicorn_value_is_one_line_naming_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "loglevel = 'loud'\n")
    with pytest.raises(
        ConfigError, match=r"^config file .*, as loglevel: invalid value 'loud' for log_level"
    ):
        build({"config": path}, environ={})


def test_run_takes_gunicorns_names_too() -> None:
    values, unsupported = gunicorn_keywords(
        {
            "accesslog": "-",
            "loglevel": "WARNING",
            "workers": 2,
            "threads": 3,
            "wsgi_app": "x:y",
            "post_fork": print,
        }
    )
    assert values == {"access_logfile": "-", "log_level": "warning", "workers": 2, "post_fork": print}
    assert unsupported == ["threads", "wsgi_app"]


# -- discovery -------------------------------------------------------------------------------------


def test_gunicorn_conf_py_in_the_working_directory_is_read(tmp_path: Path) -> None:
    path = write(tmp_path, "workers = 5\n")
    cfg = cli.parse([APP], environ={})
    assert cfg.workers == 5
    assert cfg.config == path
    assert cfg.source_of("config") == "found in the working directory"


def test_prefork_lb_conf_py_wins_over_gunicorn_conf_py(tmp_path: Path) -> None:
    write(tmp_path, "workers = 5\n")
    ours = write(tmp_path, "workers = 6\n", "prefork_lb.conf.py")
    cfg = cli.parse([APP], environ={})
    assert (cfg.workers, cfg.config) == (6, ours)


def test_a_named_config_file_wins_over_discovery(tmp_path: Path) -> None:
    write(tmp_path, "workers = 5\n")
    other = write(tmp_path, "workers = 7\n", "other.py")
    assert cli.parse([APP, "-c", other], environ={}).workers == 7
    assert cli.parse([APP], environ={"PREFORK_LB_CONFIG": other}).workers == 7


def test_no_discovery_without_the_command_line(tmp_path: Path) -> None:
    write(tmp_path, "workers = 5\n")
    assert build({}, environ={}).config is None  # prefork_lb.run() reads only what it is given


# -- GUNICORN_CMD_ARGS and PREFORK_LB_CMD_ARGS ------------------------------------------------------


def test_translate_argv_drops_unsupported_flags_with_their_values() -> None:
    argv, dropped = gn.translate_argv(
        [
            "-k",
            "gevent",
            "--threads=4",
            "--preload",
            "-w",
            "3",
            "--limit-request-field_size",
            "100",
            "--reuse-port",
        ]
    )
    assert argv == ["-w", "3", "--limit-request-field-size", "100", "--dispatch", "reuseport"]
    assert dropped == ["worker_class", "threads", "preload_app"]


def test_precedence_file_env_gunicorn_cmd_args_prefork_cmd_args_command_line(tmp_path: Path) -> None:
    write(tmp_path, "workers = 2\nbacklog = 10\nkeepalive = 1\nmax_requests = 1\ngraceful_timeout = 1\n")
    environ = {
        "PREFORK_LB_BACKLOG": "20",
        "PREFORK_LB_KEEPALIVE": "2",
        "PREFORK_LB_MAX_REQUESTS": "2",
        "GUNICORN_CMD_ARGS": "--keep-alive 3 --max-requests 3 --graceful-timeout 3",
        "PREFORK_LB_CMD_ARGS": "--max-requests 4 --graceful-timeout 4",
    }
    cfg = cli.parse([APP, "--graceful-timeout", "5"], environ=environ)
    assert (cfg.workers, cfg.backlog, cfg.keepalive, cfg.max_requests, cfg.graceful_timeout) == (
        2,
        20,
        3,
        4,
        5,
    )
    assert cfg.source_of("workers").startswith("config file ")
    assert cfg.source_of("backlog") == "environment variable PREFORK_LB_BACKLOG"
    assert cfg.source_of("keepalive") == "GUNICORN_CMD_ARGS"
    assert cfg.source_of("max_requests") == "PREFORK_LB_CMD_ARGS"
    assert cfg.source_of("graceful_timeout") == "command line"
    assert cfg.source_of("timeout") == "default"


def test_gunicorn_cmd_args_warns_and_may_name_the_config_file_and_app(tmp_path: Path) -> None:
    other = write(tmp_path, "workers = 7\n", "other.py")
    cfg = cli.parse([], environ={"GUNICORN_CMD_ARGS": f"-c {other} -k gevent prefork_lb.demo:app"})
    assert (cfg.workers, cfg.app_uri, cfg.source_of("wsgi_app")) == (7, APP, "GUNICORN_CMD_ARGS")
    assert cfg.warnings == [
        "environment variable GUNICORN_CMD_ARGS: gunicorn settings without an equivalent in prefork_lb, "
        "ignored: worker_class (docs/gunicorn.md says why)"
    ]


@pytest.mark.parametrize(
    ("var", "text", "why"),
    [
        ("GUNICORN_CMD_ARGS", "--wrokers 2", "unrecognized arguments: --wrokers"),
        ("PREFORK_LB_CMD_ARGS", "-w 0", "invalid value '0' for workers"),
        ("PREFORK_LB_CMD_ARGS", "--timeout 'x", "No closing quotation"),
        ("PREFORK_LB_CMD_ARGS", "--print-config", "belong on the command line"),
    ],
)
def test_a_bad_cmd_args_variable_is_one_line_naming_it(var: str, text: str, why: str) -> None:
    with pytest.raises(ConfigError) as err:
        cli.parse([APP], environ={var: text})
    line = str(err.value)
    assert var in line and why in line and "\n" not in line


# -- --print-config and --check-config ------------------------------------------------------------


def test_print_config_names_every_setting_with_its_value_and_source(tmp_path: Path) -> None:
    write(tmp_path, "workers = 3\n\ndef post_fork(server, worker):\n    pass\n")
    cfg = cli.parse([APP, "-t", "12"], environ={"PREFORK_LB_BACKLOG": "64"})
    lines = config_report.render_text(cfg).splitlines()
    by_name = {line.split(" = ")[0].strip(): line for line in lines if " = " in line}
    assert set(s.name for s in SETTINGS) <= set(by_name)
    assert by_name["workers"].endswith(f"= 3  (config file {str(tmp_path / 'gunicorn.conf.py')!r})")
    assert by_name["backlog"].endswith("= 64  (environment variable PREFORK_LB_BACKLOG)")
    assert by_name["timeout"].endswith("= 12.0  (command line)")
    assert by_name["keepalive"].endswith("= 5.0  (default)")
    assert by_name["wsgi_app"].endswith(f"= {APP!r}  (command line)")
    assert "(config file" in by_name["post_fork"]


def test_print_config_json() -> None:
    cfg = cli.parse([APP, "-w", "2"], environ={})
    doc = json.loads(config_report.render_json(cfg))
    assert doc["settings"]["workers"] == {"value": 2, "source": "command line"}
    assert doc["settings"]["bind"] == {"value": ["127.0.0.1:8000"], "source": "default"}
    assert doc["wsgi_app"] == {"value": APP, "source": "command line"}


def test_check_config_imports_the_app() -> None:
    assert config_report.check_app(cli.parse(["tests.apps:echo"], environ={})) is None
    why = config_report.check_app(cli.parse(["tests.apps:no_such_app"], environ={}))
    assert why is not None and "no_such_app" in why


def test_print_and_check_config_exit_without_serving(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        cli.main([APP, "--print-config", "--check-config", "-w", "2"])
    assert done.value.code == 0
    assert "workers                   = 2  (command line)" in capsys.readouterr().out
    with pytest.raises(SystemExit) as done:
        cli.main(["tests.apps:no_such_app", "--check-config"])
    assert done.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no_such_app" in err


@pytest.mark.parametrize(
    ("argv", "line"),
    [
        (
            ["tests.apps:echo", "-w", "2"],
            "config OK: tests.apps:echo (wsgi), 2 workers, reuseport on 127.0.0.1:8000",
        ),
        (
            ["tests.apps_asgi:echo", "-w", "1", "--dispatch", "shared", "-b", "127.0.0.1:8123"],
            "config OK: tests.apps_asgi:echo (asgi), 1 worker, shared on 127.0.0.1:8123",
        ),
        (
            ["--mount", "/api=tests.apps_asgi:echo;workers=2", "--mount", "/=tests.apps:echo", "-w", "1"],
            "config OK: pools /api -> tests.apps_asgi:echo (asgi), / -> tests.apps:echo (wsgi), 3 workers, "
            "proxy on 127.0.0.1:8000",
        ),
        (["proxy", "--backends", "127.0.0.1:9001"], "config OK: proxy to 127.0.0.1:9001 on 127.0.0.1:8000"),
    ],
)
def test_check_config_says_ok_in_one_line(
    argv: list[str], line: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as done:
        cli.main([*argv, "--check-config"])
    assert done.value.code == 0
    assert capsys.readouterr().out == line + "\n"


def test_json_needs_print_config() -> None:
    with pytest.raises(ConfigError, match="--json goes with --print-config"):
        cli.parse([APP, "--json"], environ={})


# -- --user, --group, --umask -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "mask"), [("022", 0o22), ("0o27", 0o27), ("18", 18), (0o77, 0o77), ("0", 0)]
)
def test_umask_reads_as_gunicorn_reads_it(given: object, mask: int) -> None:
    assert BY_NAME["umask"].convert(given, "test") == mask


def test_bad_umask_user_and_group_are_one_line() -> None:
    for name, value in (
        ("umask", "0o1777"),
        ("umask", "abc"),
        ("user", "no-such-user-4c1d"),
        ("group", "no-such-group-4c1d"),
    ):
        with pytest.raises(ConfigError, match=rf"^test: invalid value .* for {name}"):
            BY_NAME[name].convert(value, "test")


def test_identity_of_user_and_group() -> None:
    assert privileges.identity(None, None) is None
    ident = privileges.identity("0", None)
    assert ident is not None and (ident.uid, ident.gid, ident.name) == (0, 0, "root")
    assert privileges.identity(None, "0") == privileges.Identity(os.getuid(), 0, None)


def test_switching_user_needs_root(monkeypatch: pytest.MonkeyPatch) -> None:
    ident = privileges.Identity(4242, 4242, None)
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert privileges.check_can_switch(ident) is not None
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    assert privileges.check_can_switch(ident) is None
    assert privileges.check_can_switch(None) is None


def test_switch_sets_groups_then_gid_then_uid(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, object]] = []
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setattr(os, "getuid", lambda: 0)
    monkeypatch.setattr(os, "getgid", lambda: 0)
    monkeypatch.setattr(os, "initgroups", lambda name, gid: calls.append(("initgroups", (name, gid))))
    monkeypatch.setattr(os, "setgroups", lambda groups: calls.append(("setgroups", groups)))
    monkeypatch.setattr(os, "setgid", lambda gid: calls.append(("setgid", gid)))
    monkeypatch.setattr(os, "setuid", lambda uid: calls.append(("setuid", uid)))
    privileges.switch(privileges.Identity(65534, 65534, "nobody"))
    assert calls == [("initgroups", ("nobody", 65534)), ("setgid", 65534), ("setuid", 65534)]
    calls.clear()
    privileges.switch(privileges.Identity(0, 65534, None))
    assert calls == [("setgroups", [65534]), ("setgid", 65534), ("setuid", 0)]
    calls.clear()
    privileges.switch(privileges.Identity(0, 0, "root"))  # already that: nothing to do
    privileges.switch(None)
    assert calls == []


def test_the_command_line_takes_gunicorns_spellings_and_names_what_it_refuses(
    capsys: pytest.CaptureFixture[str],
) -> None:
    cfg = cli.parse([APP, "--limit-request-field_size", "99", "--reuse-port"], environ={})
    assert (cfg.limit_request_field_size, cfg.dispatch) == (99, "reuseport")
    with pytest.raises(SystemExit) as done:
        cli.parse([APP, "-k", "gevent"], environ={})
    assert done.value.code == 2
    err = capsys.readouterr().err
    assert err == (
        "prefork_lb: error: -k is gunicorn's worker_class, which has no equivalent in prefork_lb: "
        "one worker type (gevent + httptools); see --dispatch (see docs/gunicorn.md)\n"
    )


def test_the_app_source_is_the_variable_that_named_it() -> None:
    environ = {"GUNICORN_CMD_ARGS": "tests.apps:echo", "PREFORK_LB_CMD_ARGS": "-w 2"}
    cfg = cli.parse([], environ=environ)
    assert (cfg.app_uri, cfg.source_of("wsgi_app")) == ("tests.apps:echo", "GUNICORN_CMD_ARGS")
    cfg = cli.parse([APP], environ=environ)
    assert (cfg.app_uri, cfg.source_of("wsgi_app")) == (APP, "command line")


def test_the_proxy_ignores_the_servers_flags_in_a_shared_variable_with_a_warning() -> None:
    environ = {"GUNICORN_CMD_ARGS": "-w 4 -t 7 prefork_lb.demo:app"}
    cfg = cli.parse(["proxy", "--backends", "127.0.0.1:8001"], environ=environ)
    assert cfg.timeout == 7 and cfg.workers == 0
    assert cfg.warnings == [
        "environment variable GUNICORN_CMD_ARGS: workers does not apply to prefork_lb proxy; ignored",
        "environment variable GUNICORN_CMD_ARGS: the proxy takes no app (prefork_lb.demo:app); ignored",
    ]
