"""The settings registry: precedence, conversion errors, the config file, the generated reference."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest

from prefork_lb import config, resources
from prefork_lb.config import BY_NAME, SETTINGS, ConfigError, build

REPO = Path(__file__).resolve().parents[2]


def write_config(tmp_path: Path, text: str, name: str = "conf.py") -> str:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return str(path)


# -- defaults and precedence ----------------------------------------------------------------------


def test_defaults_without_any_source() -> None:
    cfg = build({}, environ={})
    for s in SETTINGS:
        assert getattr(cfg, s.name) == s.resolve_default(), s.name
    assert cfg.bind == ["127.0.0.1:8000"]
    assert cfg.workers == resources.cpu_count()  # the usable CPUs, not os.cpu_count()
    assert cfg.keepalive == 5.0
    assert cfg.require_host is True
    assert cfg.app_uri is None
    assert cfg.hooks == {}


def test_default_bind_list_is_not_shared_between_configs() -> None:
    a = build({}, environ={})
    a.bind.append("unix:/tmp/x")
    assert build({}, environ={}).bind == ["127.0.0.1:8000"]


def test_precedence_defaults_file_env_cli(tmp_path: Path) -> None:
    path = write_config(
        tmp_path,
        """
        workers = 2
        keepalive = 7
        backlog = 100
        root_path = "/from-file"
    """,
    )
    environ = {"PREFORK_LB_KEEPALIVE": "8", "PREFORK_LB_BACKLOG": "200"}
    cli = {"config": path, "backlog": "300", "workers": None}
    cfg = build(cli, environ=environ)
    assert cfg.header_timeout == 10.0  # default: nobody set it
    assert cfg.root_path == "/from-file"  # config file over default
    assert cfg.workers == 2  # config file; the CLI left it unset (None)
    assert cfg.keepalive == 8.0  # environment over config file
    assert cfg.backlog == 300  # command line over environment
    assert cfg.config == path


def test_each_layer_alone_overrides_the_default(tmp_path: Path) -> None:
    path = write_config(tmp_path, "graceful_timeout = 1.5\n")
    assert build({"config": path}, environ={}).graceful_timeout == 1.5
    assert build({}, environ={"PREFORK_LB_GRACEFUL_TIMEOUT": "2.5"}).graceful_timeout == 2.5
    assert build({"graceful_timeout": "3.5"}, environ={}).graceful_timeout == 3.5


def test_config_file_named_by_environment(tmp_path: Path) -> None:
    path = write_config(tmp_path, "backlog = 11\n")
    cfg = build({}, environ={"PREFORK_LB_CONFIG": path})
    assert cfg.backlog == 11
    assert cfg.config == path


def test_command_line_config_file_wins_over_environment_one(tmp_path: Path) -> None:
    env_file = write_config(tmp_path, "backlog = 11\n", "env_conf.py")
    cli_file = write_config(tmp_path, "backlog = 22\n", "cli_conf.py")
    cfg = build({"config": cli_file}, environ={"PREFORK_LB_CONFIG": env_file})
    assert cfg.backlog == 22
    assert cfg.config == cli_file


def test_empty_environment_variable_is_ignored() -> None:
    cfg = build({}, environ={"PREFORK_LB_BACKLOG": "", "WEB_CONCURRENCY": ""})
    assert cfg.backlog == 2048
    assert cfg.workers == resources.cpu_count()  # the usable CPUs, not os.cpu_count()


def test_environment_values_are_converted() -> None:
    cfg = build(
        {},
        environ={
            "PREFORK_LB_BIND": "127.0.0.1:1, unix:/tmp/a.sock ,",
            "PREFORK_LB_SERVER_HEADER": "off",
            "PREFORK_LB_REQUIRE_HOST": "false",
            "PREFORK_LB_ACCESS_LOGFILE": "-",
            "PREFORK_LB_LOG_LEVEL": "debug",
        },
    )
    assert cfg.bind == ["127.0.0.1:1", "unix:/tmp/a.sock"]
    assert cfg.server_header is False
    assert cfg.require_host is False
    assert cfg.access_logfile == "-"
    assert cfg.log_level == "debug"


def test_unrelated_environment_variables_are_ignored() -> None:
    cfg = build({}, environ={"PREFORK_LB_NO_SUCH_SETTING": "1", "BACKLOG": "5", "PATH": "/bin"})
    assert cfg.backlog == 2048


def test_app_uri_from_argument() -> None:
    assert build({}, environ={}, app_uri="pkg.mod:app").app_uri == "pkg.mod:app"


# -- WEB_CONCURRENCY --------------------------------------------------------------------------------


def test_web_concurrency_sets_workers() -> None:
    assert build({}, environ={"WEB_CONCURRENCY": "3"}).workers == 3


def test_prefork_lb_workers_wins_over_web_concurrency() -> None:
    environ = {"WEB_CONCURRENCY": "3", "PREFORK_LB_WORKERS": "5"}
    assert build({}, environ=environ).workers == 5


def test_command_line_wins_over_web_concurrency() -> None:
    assert build({"workers": "4"}, environ={"WEB_CONCURRENCY": "3"}).workers == 4


def test_web_concurrency_wins_over_config_file(tmp_path: Path) -> None:
    path = write_config(tmp_path, "workers = 2\n")
    assert build({"config": path}, environ={"WEB_CONCURRENCY": "3"}).workers == 3


def test_bad_web_concurrency_names_the_variable() -> None:
    with pytest.raises(ConfigError, match=r"environment variable WEB_CONCURRENCY: .*workers"):
        build({}, environ={"WEB_CONCURRENCY": "lots"})


# -- bad values -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "value", "why"),
    [
        ("workers", "0", "must be at least 1"),
        ("workers", "many", "expected a whole number"),
        ("backlog", "-5", "must be at least 1"),
        ("keepalive", "-1", "must be 0 or more"),
        ("keepalive", "soon", "expected a number"),
        ("limit_request_line", "-1", "must be 0 or more"),
        ("require_host", "maybe", "not a boolean"),
        ("server_header", "2", "not a boolean"),
        ("bind", " , ", "needs at least one address"),
    ],
)
def test_bad_value_on_command_line_names_the_setting(name: str, value: str, why: str) -> None:
    with pytest.raises(ConfigError) as info:
        build({name: value}, environ={})
    msg = str(info.value)
    assert msg.startswith("command line: ")
    assert f"invalid value {value!r} for {name}" in msg
    assert why in msg
    assert "\n" not in msg


def test_bad_choice_lists_the_choices() -> None:
    with pytest.raises(ConfigError, match=r"invalid value 'loud' for log_level \(choose from debug, info,"):
        build({"log_level": "loud"}, environ={})


def test_bad_value_in_environment_names_variable_and_setting() -> None:
    with pytest.raises(ConfigError) as info:
        build({}, environ={"PREFORK_LB_HEADER_TIMEOUT": "-3"})
    assert str(info.value) == (
        "environment variable PREFORK_LB_HEADER_TIMEOUT: invalid value '-3' "
        "for header_timeout: must be 0 or more, got -3.0"
    )


def test_bad_value_in_config_file_names_file_and_setting(tmp_path: Path) -> None:
    path = write_config(tmp_path, "worker_connections = 0\n")
    with pytest.raises(ConfigError) as info:
        build({"config": path}, environ={})
    msg = str(info.value)
    assert msg.startswith(f"config file {path!r}: ")
    assert "for worker_connections: must be at least 1" in msg


def test_bad_value_is_reported_even_when_a_higher_layer_sets_it() -> None:
    # Each layer is checked as it is applied, so a typo in the environment is not hidden.
    with pytest.raises(ConfigError, match="PREFORK_LB_WORKERS"):
        build({"workers": "2"}, environ={"PREFORK_LB_WORKERS": "x"})


def test_set_unknown_setting() -> None:
    cfg = build({}, environ={})
    with pytest.raises(ConfigError, match="somewhere: unknown setting 'nope'"):
        cfg.set("nope", 1, "somewhere")
    with pytest.raises(AttributeError):
        _ = cfg.nope


# -- the config file -------------------------------------------------------------------------------


def test_config_file_missing(tmp_path: Path) -> None:
    path = str(tmp_path / "absent.py")
    with pytest.raises(ConfigError, match=r"config file '.*absent\.py' does not exist"):
        build({"config": path}, environ={})


def test_config_file_syntax_error(tmp_path: Path) -> None:
    path = write_config(tmp_path, "workers = 2\nbacklog = = 3\n")
    with pytest.raises(ConfigError) as info:
        build({"config": path}, environ={})
    msg = str(info.value)
    assert msg.startswith(f"config file {path!r}: syntax error at line 2")
    assert "\n" not in msg


def test_config_file_that_raises(tmp_path: Path) -> None:
    path = write_config(tmp_path, "raise RuntimeError('no database')\n")
    with pytest.raises(ConfigError) as info:
        build({"config": path}, environ={})
    assert str(info.value) == f"config file {path!r} failed: RuntimeError: no database"
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_config_file_hook_not_callable(tmp_path: Path) -> None:
    path = write_config(tmp_path, "post_fork = 'not a function'\n")
    with pytest.raises(ConfigError, match=r"config file '.*': hook post_fork is not callable"):
        build({"config": path}, environ={})


def test_config_file_hooks_are_collected(tmp_path: Path) -> None:
    path = write_config(
        tmp_path,
        """
        def on_starting(server):
            return ("on_starting", server)

        def post_fork(server, worker):
            return ("post_fork", worker)

        when_ready = lambda server: "ready"
    """,
    )
    cfg = build({"config": path}, environ={})
    assert set(cfg.hooks) == {"on_starting", "post_fork", "when_ready"}
    assert cfg.hooks["on_starting"]("srv") == ("on_starting", "srv")
    assert cfg.hooks["post_fork"](None, 7) == ("post_fork", 7)
    assert cfg.hooks["when_ready"](None) == "ready"
    assert not set(cfg.hooks) & set(cfg.values)


def test_every_hook_name_is_accepted(tmp_path: Path) -> None:
    path = write_config(tmp_path, "".join(f"def {h}(*a):\n    pass\n" for h in config.HOOK_NAMES))
    assert set(build({"config": path}, environ={}).hooks) == set(config.HOOK_NAMES)


def test_split_hooks_takes_hooks_by_name_as_a_config_file_does() -> None:
    """prefork_lb.run(app, post_fork=f, workers=2): hooks apart, settings left for build()."""

    def post_fork(server: object, worker: object) -> None:
        pass

    hooks, rest = config.split_hooks({"post_fork": post_fork, "workers": 2}, "run()")
    assert hooks == {"post_fork": post_fork}
    assert rest == {"workers": 2}
    assert build(rest, environ={}, source="run()").workers == 2


def test_split_hooks_refuses_a_hook_that_is_not_callable() -> None:
    with pytest.raises(ConfigError, match=r"^run\(\): hook when_ready is not callable$"):
        config.split_hooks({"when_ready": "ready"}, "run()")


def test_build_names_its_source_in_errors() -> None:
    with pytest.raises(ConfigError, match=r"^run\(\): unknown setting 'post_frok'$"):
        build({"post_frok": print}, environ={}, source="run()")


def test_config_file_names_that_are_not_settings_are_ignored(tmp_path: Path) -> None:
    path = write_config(
        tmp_path,
        """
        import os
        import multiprocessing
        from math import ceil

        _private = "x"
        cores = multiprocessing.cpu_count()
        workers = ceil(cores / 2)

        def helper():
            return 1

        class Thing:
            pass
    """,
    )
    cfg = build({"config": path}, environ={})
    assert cfg.workers == -(-(os.cpu_count() or 1) // 2)
    for name in ("os", "multiprocessing", "ceil", "_private", "cores", "helper", "Thing"):
        assert name not in cfg.values
    assert cfg.hooks == {}


def test_config_file_misspelt_setting_is_ignored_today(tmp_path: Path) -> None:
    # Current behaviour, pinned so a change is deliberate: a name that is not a setting is
    # ignored even when it looks like a misspelt one ("worker" for "workers").
    path = write_config(tmp_path, "worker = 3\nkeep_alive = 9\n")
    cfg = build({"config": path}, environ={})
    assert cfg.workers == resources.cpu_count()  # the usable CPUs, not os.cpu_count()
    assert cfg.keepalive == 5.0


def test_config_file_cannot_name_another_config_file(tmp_path: Path) -> None:
    other = write_config(tmp_path, "backlog = 99\n", "other.py")
    path = write_config(tmp_path, f"config = {other!r}\nbacklog = 5\n")
    cfg = build({"config": path}, environ={})
    assert cfg.backlog == 5
    assert cfg.config == path


def test_config_file_wsgi_app_and_command_line_app(tmp_path: Path) -> None:
    path = write_config(tmp_path, "wsgi_app = 'from_file:app'\n")
    assert build({"config": path}, environ={}).app_uri == "from_file:app"
    assert build({"config": path}, environ={}, app_uri="from_cli:app").app_uri == "from_cli:app"


def test_config_file_values_are_converted(tmp_path: Path) -> None:
    path = write_config(
        tmp_path,
        """
        bind = ["127.0.0.1:9001", "[::1]:9002"]
        require_host = False
        limit_request_body = "1024"
    """,
    )
    cfg = build({"config": path}, environ={})
    assert cfg.bind == ["127.0.0.1:9001", "[::1]:9002"]
    assert cfg.require_host is False
    assert cfg.limit_request_body == 1024


# -- the registry and its generated reference ------------------------------------------------------


def test_registry_names_are_unique_and_env_names_derived() -> None:
    assert len(BY_NAME) == len(SETTINGS)
    flags = [f for s in SETTINGS for f in s.flags]
    assert len(flags) == len(set(flags))
    for s in SETTINGS:
        assert s.env == "PREFORK_LB_" + s.name.upper()


def test_reference_mentions_every_setting() -> None:
    text = config.reference_markdown()
    for s in SETTINGS:
        assert f"### `{s.name}`" in text
        assert f"`{s.env}`" in text
    assert "`WEB_CONCURRENCY`" in text


def test_settings_reference_is_fresh() -> None:
    path = REPO / "docs" / "reference" / "settings.md"
    regenerate = "run `python -m prefork_lb.config > docs/reference/settings.md` and commit the result"
    assert path.is_file(), f"{path} is missing: {regenerate}"
    assert path.read_text() == config.reference_markdown(), (
        f"docs/reference/settings.md is out of date with prefork_lb/config.py: {regenerate}"
    )


def test_strategy_choices_are_balancing_strategies() -> None:
    from prefork_lb.balance import STRATEGIES
    from prefork_lb.config import BY_NAME

    choices = BY_NAME["strategy"].choices
    assert choices and set(choices) == set(STRATEGIES)


def test_sticky_needs_the_proxy() -> None:
    from prefork_lb import cli

    # sticky keys on a cookie: the proxy sees cookies, the handoff dispatcher does not
    with pytest.raises(ConfigError, match="sticky needs --dispatch proxy"):
        cli.parse(["prefork_lb.demo:app", "--strategy", "sticky"], environ={})
    assert (
        cli.parse(["prefork_lb.demo:app", "--strategy", "sticky", "--dispatch", "proxy"], environ={}).strategy
        == "sticky"
    )


def test_offload_processes_auto_number_or_off() -> None:
    from prefork_lb.config import build

    assert build({}, environ={}).offload_processes == -1  # auto
    assert build({"offload_processes": "3"}, environ={}).offload_processes == 3
    assert build({"offload_processes": "0"}, environ={}).offload_processes == 0
    with pytest.raises(ConfigError):
        build({"offload_processes": "-2"}, environ={})


# -- typed attributes and overrides -----------------------------------------------------------------


def test_attributes_are_the_converted_values() -> None:
    cfg = build(
        {"workers": "3", "keepalive": "2", "bind": ["127.0.0.1:1"], "server_header": "off"},
        environ={"PREFORK_LB_BACKENDS": "127.0.0.1:9001, 127.0.0.1:9002"},
    )
    assert cfg.workers == 3 and type(cfg.workers) is int
    assert cfg.keepalive == 2.0 and type(cfg.keepalive) is float
    assert cfg.server_header is False
    assert cfg.bind == ["127.0.0.1:1"]
    assert cfg.backends == ["127.0.0.1:9001", "127.0.0.1:9002"]
    assert cfg.values["workers"] == 3  # the mapping view reads the same values


def test_class_attribute_is_the_declaration() -> None:
    assert config.Config.workers is BY_NAME["workers"]
    assert config.Config.workers.name == "workers"
    assert [s.name for s in SETTINGS][:3] == ["bind", "workers", "dispatch"]
    assert SETTINGS[-1].name == "config"


def test_set_converts_like_user_input() -> None:
    cfg = build({}, environ={})
    cfg.set("workers", "4", "a test")
    cfg.set("graceful_timeout", 1, "a test")
    cfg.set("dispatch", "shared", "a test")
    assert cfg.workers == 4
    assert cfg.graceful_timeout == 1.0 and type(cfg.graceful_timeout) is float
    assert cfg.dispatch == "shared"


@pytest.mark.parametrize(
    ("name", "value", "why"),
    [
        ("workers", 0, "must be at least 1, got 0"),
        ("workers", "x", "expected a whole number"),
        ("dispatch", "carrier-pigeon", "choose from reuseport, shared, handoff, proxy"),
        ("max_workers", -1, "must be 0 or more"),
    ],
)
def test_bad_override_is_a_config_error(name: str, value: object, why: str) -> None:
    cfg = build({}, environ={})
    before = getattr(cfg, name)
    with pytest.raises(ConfigError) as info:
        cfg.set(name, value, "SIGHUP reload")
    assert str(info.value).startswith(f"SIGHUP reload: invalid value {value!r} for {name}")
    assert why in str(info.value)
    assert getattr(cfg, name) == before  # a refused value changes nothing


def test_writes_through_values_are_converted_and_validated() -> None:
    cfg = build({}, environ={})
    cfg.values["workers"] = "5"
    assert cfg.workers == 5
    with pytest.raises(ConfigError, match="override: invalid value 0 for workers"):
        cfg.values["workers"] = 0
    with pytest.raises(ConfigError, match="unknown setting 'nope'"):
        cfg.values["nope"] = 1
    with pytest.raises(TypeError):
        del cfg.values["workers"]
    assert list(cfg.values) == [s.name for s in SETTINGS]
    assert len(cfg.values) == len(SETTINGS)
    assert "app_uri" not in cfg.values and "hooks" not in cfg.values


def test_assigning_a_setting_attribute_is_refused() -> None:
    cfg = build({}, environ={})
    with pytest.raises(AttributeError, match=r"workers is a setting: use cfg.set\('workers'"):
        cfg.workers = 3
    assert cfg.workers == resources.cpu_count()  # the usable CPUs, not os.cpu_count()
    cfg.app_uri = "pkg:app"  # not a setting: a plain attribute
    assert cfg.app_uri == "pkg:app"


def test_configs_do_not_share_values() -> None:
    a, b = config.defaults(), config.defaults()
    assert a == b
    a.set("backlog", 10, "a test")
    assert b.backlog == 2048
    assert a != b


def test_no_local_workers_only_through_drop_local_workers() -> None:
    cfg = build({"backends": "127.0.0.1:9001", "max_workers": "4"}, environ={})
    assert cfg.local_workers
    with pytest.raises(ConfigError, match="must be at least 1"):
        cfg.set("workers", 0, "a test")
    cfg.drop_local_workers("the proxy subcommand")
    assert (cfg.dispatch, cfg.workers, cfg.max_workers, cfg.local_workers) == ("proxy", 0, 0, False)
    cfg.set("workers", 0, "SIGHUP reload")  # the count it runs: kept on a reloaded config
    assert cfg.workers == 0
    cfg.set("workers", 2, "SIGTTIN")  # other values are converted as ever
    assert cfg.workers == 2
    with pytest.raises(ConfigError, match="must be at least 1"):
        cfg.set("workers", -1, "a test")
