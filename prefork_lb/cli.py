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
    args = make_parser().parse_args(argv)
    values = {k: v for k, v in vars(args).items() if k != "app"}
    cfg = build(values, os.environ if environ is None else environ, app_uri=args.app)
    if not cfg.app_uri:
        raise ConfigError("no app given: pass MODULE:APP (for example prefork_lb.demo:app)")
    return cfg


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
    except OSError as exc:   # e.g. an error log file or --chdir that cannot be used
        fail(f"{exc.strerror or exc}: {getattr(exc, 'filename', '') or ''}".rstrip(": "))
    sys.exit(arbiter.run())
