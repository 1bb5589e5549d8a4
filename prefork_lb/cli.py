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
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NoReturn

from prefork_lb import __version__, usage
from prefork_lb.config import SETTINGS, Config, ConfigError, build
from prefork_lb.settings.base import COMMAND_LINES, COMMANDS, PROXY, SERVER

EXIT_USAGE = 2


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
            usage=f"{COMMAND_LINES[SERVER]} [options]\n       {COMMAND_LINES[PROXY]} --backends LIST [options]",
            description="A prefork WSGI server and load balancer. `prefork_lb proxy --help-all`: "
            "the standalone proxy's options.",
            add_help=False,
        )
        parser.add_argument("app", nargs="?", help="the WSGI app, as MODULE:ATTRIBUTE (e.g. myapp:app)")
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
    near = usage.closest(name, flags)
    raise UsageError(
        f"unrecognized arguments: {name} " + (f"(did you mean {near}?)" if near else "(see --help)")
    )


class UsageError(Exception):
    """A flag the command does not have: one line, exit code 2."""


def _parse_args(argv: Sequence[str], command: str) -> argparse.Namespace:
    parser = make_parser(command)
    try:
        check_flags(argv, command)
    except UsageError as exc:
        parser.exit(EXIT_USAGE, f"prefork_lb: error: {exc}\n")
    return parser.parse_args(argv)


def parse(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> Config:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["proxy"]:
        return parse_proxy(argv[1:], environ)
    args = _parse_args(argv, SERVER)
    values = {k: v for k, v in vars(args).items() if k != "app"}
    cfg = build(values, os.environ if environ is None else environ, app_uri=args.app)
    if not cfg.app_uri:
        raise ConfigError("no app given: pass MODULE:APP (for example prefork_lb.demo:app)")
    check(cfg)
    return cfg


def parse_proxy(argv: Sequence[str], environ: Mapping[str, str] | None = None) -> Config:
    """``python -m prefork_lb proxy --backends ...``: the standalone load balancer (no app)."""
    args = _parse_args(argv, PROXY)
    if args.app:
        raise ConfigError(f"the proxy takes no app (got {args.app!r}); use --backends")
    values = {k: v for k, v in vars(args).items() if k != "app"}
    cfg = build(values, os.environ if environ is None else environ, command=PROXY)
    if not cfg.backends:
        raise ConfigError("the proxy needs --backends HOST:PORT[,HOST:PORT...]")
    cfg.drop_local_workers("the proxy subcommand")
    check(cfg)
    return cfg


def check(cfg: Config) -> None:
    """Settings that are only wrong together, or that name files: one line, exit code 2."""
    from prefork_lb.proxy.peers import TrustedPeers

    try:  # read by the proxy and by the workers (wsgi.url_scheme) alike
        TrustedPeers(cfg.forwarded_allow_ips)
    except ValueError as exc:
        raise ConfigError(f"--forwarded-allow-ips: {exc}") from None
    if isinstance(cfg.max_rss, str):  # N% needs a cgroup memory limit: refused now, not per worker
        from prefork_lb.resources import resolve_max_rss

        try:
            resolve_max_rss(cfg.max_rss, max(cfg.workers, cfg.max_workers))
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    if cfg.dispatch != "proxy":
        if cfg.strategy == "sticky":
            raise ConfigError("--strategy sticky needs --dispatch proxy (handoff sees no cookies)")
        return
    if cfg.backends:
        from prefork_lb.proxy.health import parse_backends

        try:
            parse_backends(cfg.backends)
        except ValueError as exc:
            raise ConfigError(f"--backends: {exc}") from None
    if cfg.keyfile and not cfg.certfile:
        raise ConfigError("--keyfile needs --certfile")
    if cfg.certfile:
        import ssl

        from prefork_lb.proxy.process import tls_context

        try:
            tls_context(cfg.certfile, cfg.keyfile)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"cannot use --certfile {cfg.certfile!r}: {exc}") from None


def log_warnings(cfg: Config) -> None:
    """The settings a config file or the environment gave that this command ignores."""
    import logging

    for line in cfg.warnings:
        logging.getLogger("prefork_lb.error").warning(line)


def fail(message: str) -> NoReturn:
    sys.stderr.write(f"prefork_lb: error: {message}\n")
    sys.exit(EXIT_USAGE)


def main(argv: Sequence[str] | None = None) -> None:
    from prefork_lb.arbiter import Arbiter
    from prefork_lb.logs import setup_error_log
    from prefork_lb.sockets import BindError

    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["ctl"]:
        from prefork_lb import ctl

        ctl.main(argv[1:])

    def reload_config() -> Config:
        new = parse(argv)
        log_warnings(new)
        return new

    try:
        cfg = parse(argv)
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
