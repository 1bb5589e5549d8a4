"""The command line: ``python -m prefork_lb MODULE:APP [options]``.

The argparse parser is generated from the settings registry in ``config.py``. Errors a user
can cause (a bad flag, app path, config file, address) end in one line and exit code 2.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from prefork_lb import __version__
from prefork_lb.config import SETTINGS, Config, ConfigError, build

EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"prefork_lb: error: {message} (see --help)\n")


def make_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="prefork_lb", description="A prefork WSGI server and load balancer.")
    parser.add_argument("app", nargs="?", help="the WSGI app, as MODULE:ATTRIBUTE (e.g. myapp:app)")
    parser.add_argument("--version", action="version", version=f"prefork_lb {__version__}")
    groups: dict[str, Any] = {}
    for s in SETTINGS:
        if not s.flags or not s.cli:
            continue
        group = groups.get(s.section)
        if group is None:
            group = groups[s.section] = parser.add_argument_group(s.section)
        kwargs: dict[str, Any] = {"dest": s.name, "default": None, "help": s.help}
        if s.append:
            kwargs["action"] = "append"
        if s.choices:
            kwargs["choices"] = s.choices
        if s.metavar:
            kwargs["metavar"] = s.metavar
        group.add_argument(*s.flags, **kwargs)
    return parser


def parse(argv: Sequence[str] | None = None, environ: dict[str, str] | None = None) -> Config:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["proxy"]:
        return parse_proxy(argv[1:], environ)
    args = make_parser().parse_args(argv)
    values = {k: v for k, v in vars(args).items() if k != "app"}
    cfg = build(values, os.environ if environ is None else environ, app_uri=args.app)
    if not cfg.app_uri:
        raise ConfigError("no app given: pass MODULE:APP (for example prefork_lb.demo:app)")
    check(cfg)
    return cfg


def parse_proxy(argv: Sequence[str], environ: dict[str, str] | None = None) -> Config:
    """``python -m prefork_lb proxy --backends ...``: the standalone load balancer (no app)."""
    parser = make_parser()
    parser.prog = "prefork_lb proxy"
    parser.description = "The standalone L7 load balancer in front of --backends."
    args = parser.parse_args(argv)
    if args.app:
        raise ConfigError(f"the proxy takes no app (got {args.app!r}); use --backends")
    values = {k: v for k, v in vars(args).items() if k != "app"}
    cfg = build(values, os.environ if environ is None else environ)
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


def fail(message: str) -> NoReturn:
    sys.stderr.write(f"prefork_lb: error: {message}\n")
    sys.exit(EXIT_USAGE)


def main(argv: Sequence[str] | None = None) -> None:
    from prefork_lb.arbiter import Arbiter
    from prefork_lb.logs import setup_error_log
    from prefork_lb.sockets import BindError

    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        cfg = parse(argv)
        setup_error_log(cfg.log_level, cfg.error_logfile)
        if cfg.chdir:
            os.chdir(cfg.chdir)
        arbiter = Arbiter(cfg, reload_config=lambda: parse(argv), argv=argv)
        arbiter.bind()
    except (ConfigError, BindError) as exc:
        fail(str(exc))
    except OSError as exc:  # e.g. an error log file or --chdir that cannot be used
        fail(f"{exc.strerror or exc}: {getattr(exc, 'filename', '') or ''}".rstrip(": "))
    sys.exit(arbiter.run())
