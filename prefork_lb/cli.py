"""The command line: ``python -m prefork_lb MODULE:APP [options]``, ``... proxy [options]`` and
``... ctl COMMAND`` (the control socket's client, prefork_lb.ctl).

The argparse parser of each command is generated from the settings registry in ``config.py``:
a command has the flags of the settings that apply to it (``Setting.commands``). ``--help`` is
the short help (``usage.py``), ``--help-all`` every flag with its default. Errors a user can
cause (a bad or unknown flag, a flag of the other command, an app path, config file, address)
end in one line and exit code 2.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NoReturn

from prefork_lb import __version__, usage
from prefork_lb.config import BY_NAME, SETTINGS, Config, ConfigError, build
from prefork_lb.config_check import check, log_warnings
from prefork_lb.settings import gunicorn_names as gn
from prefork_lb.settings.base import COMMAND_LINES, COMMANDS, PROXY, SERVER

EXIT_USAGE = 2
# Flags in environment variables, lowest precedence first; both above PREFORK_LB_* settings and
# below the command line (gunicorn: config file < GUNICORN_CMD_ARGS < command line).
CMD_ARGS = ("GUNICORN_CMD_ARGS", "PREFORK_LB_CMD_ARGS")
# What the command line does besides settings (not settings themselves: no config-file name).
ACTIONS = ("check_config", "print_config", "json")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"prefork_lb: error: {message} (see --help)\n")


class _Help(argparse.Action):
    """``-h``/``--help`` (the short help) and ``--help-all`` (argparse's full help)."""

    def __init__(self, option_strings: Sequence[str], dest: str, text: Callable[[], str], help: str) -> None:
        super().__init__(option_strings, argparse.SUPPRESS, nargs=0, default=argparse.SUPPRESS, help=help)
        self.text = text

    def __call__(self, parser: argparse.ArgumentParser, *args: Any, **kwargs: Any) -> None:
        sys.stdout.write(self.text())
        parser.exit(0)


def _help_text(s: Any) -> str:
    return f"{s.help} (default: {s.default_text()})".replace("%", "%%")  # argparse %-formats help


def make_parser(command: str = SERVER) -> argparse.ArgumentParser:
    """The parser of ``command`` (:data:`SERVER` or :data:`PROXY`): the flags of the settings
    that apply to it, grouped by section; its full help is ``--help-all``."""
    if command == PROXY:
        parser = _Parser(
            prog=COMMAND_LINES[PROXY],
            usage=f"{COMMAND_LINES[PROXY]} --backends LIST [options]",
            description="The standalone L7 load balancer in front of --backends (no app, no workers).",
            add_help=False,
        )
        parser.add_argument("app", nargs="?", help=argparse.SUPPRESS)  # refused with a clear line
    else:
        parser = _Parser(
            prog="prefork_lb",
            usage=f"{COMMAND_LINES[SERVER]} [options]\n       {usage.MOUNT_LINE} [options]"
            f"\n       {COMMAND_LINES[PROXY]} --backends LIST [options]",
            description=f"{usage.DESCRIPTION} `prefork_lb proxy --help-all`: the standalone proxy's options.",
            add_help=False,
        )
        parser.add_argument(
            "app",
            nargs="?",
            help="the WSGI or ASGI app, as MODULE:ATTRIBUTE (e.g. myapp:app); none with --mount",
        )
    parser.epilog = f"Environment variables and config file names of every option: {usage.DOCS}"
    parser.add_argument(
        "-h",
        "--help",
        action=_Help,
        text=lambda: usage.short_help(SETTINGS, command),
        help="the common options",
    )
    parser.add_argument("--help-all", action=_Help, text=parser.format_help, help="this help")
    parser.add_argument("--version", action="version", version=f"prefork_lb {__version__}")
    parser.add_argument(
        "--check-config",
        action="store_true",
        help="load the config and import the app, then exit: 0, or one line and exit code 2",
    )
    parser.add_argument(
        "--print-config",
        action="store_true",
        help="print every setting, its value and where it came from (default, config file, "
        "environment, command line), then exit",
    )
    parser.add_argument("--json", action="store_true", help="with --print-config: as one JSON object")
    groups: dict[str, Any] = {}
    for s in SETTINGS:
        if not s.flags or not s.cli or not s.applies_to(command):
            continue
        group = groups.get(s.section)
        if group is None:
            group = groups[s.section] = parser.add_argument_group(s.section)
        kwargs: dict[str, Any] = {"dest": s.name, "default": None, "help": _help_text(s)}
        if s.append:
            kwargs["action"] = "append"
        if s.choices:
            kwargs["choices"] = s.choices
        if s.metavar:
            kwargs["metavar"] = s.metavar
        group.add_argument(*s.flags, **kwargs)
    return parser


def check_flags(argv: Sequence[str], command: str) -> None:
    """Refuse, in one line, a flag ``command`` does not have: one of another command
    ("-w does not apply to prefork_lb proxy"), or an unknown one, with the closest flag."""
    flags = usage.flags_of(SETTINGS, command)
    name = usage.unknown_flag(argv, flags)
    if name is None:
        return
    other = usage.setting_for(name, SETTINGS)
    if other is not None:
        where = " or ".join(COMMAND_LINES[c] for c in other.commands)
        raise UsageError(
            f"{'/'.join(other.flags)} does not apply to {COMMAND_LINES[command]}, only to {where}"
        )
    others = [c for c in COMMANDS if c != command and usage.known_in(name, usage.flags_of(SETTINGS, c))]
    if others:  # an abbreviation of several flags of other commands
        where = " or ".join(COMMAND_LINES[c] for c in others)
        raise UsageError(f"{name} does not apply to {COMMAND_LINES[command]}, only to {where}")
    why = gn.refusal(name)
    if why is not None:  # -k gevent, --preload: said as what they are in gunicorn
        raise UsageError(why)
    near = usage.closest(name, flags)
    raise UsageError(
        f"unrecognized arguments: {name} " + (f"(did you mean {near}?)" if near else "(see --help)")
    )


class UsageError(Exception):
    """A flag the command does not have: one line, exit code 2."""


def _parse_args(argv: Sequence[str], command: str) -> argparse.Namespace:
    argv, _ = gn.translate_argv(argv, drop_unsupported=False)  # gunicorn's --reuse-port, ...
    parser = make_parser(command)
    try:
        check_flags(argv, command)
    except UsageError as exc:
        parser.exit(EXIT_USAGE, f"prefork_lb: error: {exc}\n")
    return parser.parse_args(argv)


def _settings_of(args: argparse.Namespace) -> dict[str, Any]:
    return {k: v for k, v in vars(args).items() if k != "app" and k not in ACTIONS}


def _env_layers(
    environ: Mapping[str, str], command: str
) -> tuple[list[tuple[dict[str, Any], str]], tuple[str, str] | None, list[str]]:
    """The flags of :data:`CMD_ARGS` as layers for :func:`build`: ([(values, variable)], (the
    app the last of them names, that variable) or None, the warnings). gunicorn's flags are translated
    (settings/gunicorn_names.py); one without an equivalent is dropped and named in a warning.
    A bad flag or value is one line naming the variable."""
    layers: list[tuple[dict[str, Any], str]] = []
    app: tuple[str, str] | None = None
    warnings: list[str] = []
    for var in CMD_ARGS:
        text = environ.get(var, "")
        if not text.strip():
            continue
        try:
            tokens = shlex.split(text)
        except ValueError as exc:
            raise ConfigError(f"environment variable {var}: {exc}") from None
        if var == "GUNICORN_CMD_ARGS":
            tokens, dropped = gn.translate_argv(tokens)
            if dropped:
                warnings.append(gn.unsupported_warning(dropped, f"environment variable {var}"))
        # The server's flags, for either command: the variable may be shared by the server and
        # the proxy, so a flag of the server only is ignored by the proxy with a warning, as a
        # config file's setting is (the server's flags are a superset of the proxy's).
        parser = make_parser(SERVER)

        def error(message: str, var: str = var) -> NoReturn:
            raise ConfigError(f"environment variable {var}: {message}")

        parser.error = error  # type: ignore[method-assign]
        try:
            check_flags(tokens, SERVER)
        except UsageError as exc:
            error(str(exc))
        args = parser.parse_args(tokens)
        if any(getattr(args, a) for a in ACTIONS):
            error("--check-config, --print-config and --json belong on the command line")
        values = _settings_of(args)
        for name in [n for n, v in values.items() if v is not None and not BY_NAME[n].applies_to(command)]:
            warnings.append(
                f"environment variable {var}: {name} does not apply to {COMMAND_LINES[command]}; ignored"
            )
            del values[name]
        layers.append((values, var))
        if args.app and command == PROXY:
            warnings.append(f"environment variable {var}: the proxy takes no app ({args.app}); ignored")
        elif args.app:
            app = (args.app, var)
    return layers, app, warnings


def parse_command(
    argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None
) -> tuple[Config, argparse.Namespace]:
    """The config of a command line, and its parsed flags (the actions: --check-config ...)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    environ = os.environ if environ is None else environ
    command = PROXY if argv[:1] == ["proxy"] else SERVER
    if command == PROXY:
        argv = argv[1:]
    args = _parse_args(argv, command)
    if args.json and not args.print_config:
        raise ConfigError("--json goes with --print-config")
    layers, env_app, warnings = _env_layers(environ, command)
    if command == PROXY:
        cfg = _proxy_config(args, layers, environ)
    else:
        app, app_source = (args.app, "command line") if args.app else env_app or (None, None)
        cfg = build(
            _settings_of(args),
            environ,
            app_uri=app,
            arg_layers=layers,
            discover=True,
            app_source=app_source,
        )
        if not cfg.app_uri and not cfg.mount:
            raise ConfigError("no app given: pass MODULE:APP (for example prefork_lb.demo:app)")
    cfg.warnings[:0] = warnings
    check(cfg)
    return cfg, args


def parse(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> Config:
    return parse_command(argv, environ)[0]


def _proxy_config(
    args: argparse.Namespace, layers: list[tuple[dict[str, Any], str]], environ: Mapping[str, str]
) -> Config:
    """``python -m prefork_lb proxy --backends ...``: the standalone load balancer (no app)."""
    if args.app:
        raise ConfigError(f"the proxy takes no app (got {args.app!r}); use --backends")
    cfg = build(_settings_of(args), environ, command=PROXY, arg_layers=layers, discover=True)
    if not cfg.backends:
        raise ConfigError("the proxy needs --backends HOST:PORT[,HOST:PORT...]")
    cfg.drop_local_workers("the proxy subcommand")
    return cfg


def parse_proxy(argv: Sequence[str], environ: Mapping[str, str] | None = None) -> Config:
    return parse(["proxy", *argv], environ)


def fail(message: str) -> NoReturn:
    sys.stderr.write(f"prefork_lb: error: {message}\n")
    sys.exit(EXIT_USAGE)


def main(argv: Sequence[str] | None = None) -> None:
    from prefork_lb.arbiter import Arbiter
    from prefork_lb.logs import setup_error_log
    from prefork_lb.privileges import prepare_master
    from prefork_lb.sockets import BindError

    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["ctl"]:
        from prefork_lb import ctl

        ctl.main(argv[1:])

    try:
        cfg, args = parse_command(argv)
        if args.print_config or args.check_config:
            sys.exit(report(cfg, args))
        # A reload reads the same config file, whatever --chdir did to the working directory.
        reload_argv = [*argv, "-c", cfg.config] if cfg.config and "--" not in argv else argv

        def reload_config() -> Config:
            new = parse(reload_argv)
            log_warnings(new)
            return new

        prepare_master(cfg)
        setup_error_log(cfg.log_level, cfg.error_logfile)
        log_warnings(cfg)
        if cfg.chdir:
            os.chdir(cfg.chdir)
        arbiter = Arbiter(cfg, reload_config=reload_config, argv=argv)
        arbiter.bind()
    except (ConfigError, BindError) as exc:
        fail(str(exc))
    except OSError as exc:  # e.g. an error log file or --chdir that cannot be used
        fail(f"{exc.strerror or exc}: {getattr(exc, 'filename', '') or ''}".rstrip(": "))
    sys.exit(arbiter.run())


def report(cfg: Config, args: argparse.Namespace) -> int:
    """--print-config (stdout) and --check-config (the app imported): the exit code."""
    from prefork_lb import config_report

    if args.print_config:
        sys.stdout.write((config_report.render_json if args.json else config_report.render_text)(cfg))
    else:  # --print-config shows them as comments
        for line in cfg.warnings:
            sys.stderr.write(f"prefork_lb: warning: {line}\n")
    if args.check_config:
        found: dict[str, str] = {}
        why = config_report.check_app(cfg, found)
        if why is not None:
            fail(why)
        sys.stdout.write(config_report.ok_line(cfg, found) + "\n")
    return 0
