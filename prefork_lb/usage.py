"""What the command line tells a user: the short ``--help``, and which flag of an argv is unknown.

Pure functions of the settings registry (``prefork_lb.config.SETTINGS``) and an argv; ``cli.py``
builds the parsers and prints. A setting's declaration decides everything here: which
commands have its flag (``commands``), whether the short help shows it (``common``, with its
``summary`` and default); ``--help-all`` (argparse's full help) shows every flag of a command.

Invariants:

- The short help of a command names only flags that command's parser accepts.
- :func:`unknown_flag` treats an argv token as argparse does: an option is a token that starts
  with ``-`` (not ``-`` alone, not a negative number, no space in it) before ``--``, known when it
  is a flag, a unique or ambiguous prefix of a long flag (argparse resolves those), a short flag
  with its value attached (``-w4``) or a flag with ``=VALUE``. So a value is never taken for a
  flag, and argparse still reports what it reports today for everything else.
"""

from __future__ import annotations

import difflib
import re
import textwrap
from collections.abc import Iterable, Sequence
from typing import Any

from prefork_lb.settings.base import COMMAND_LINES, PROXY, SERVER, Setting

HELP_FLAGS = ("-h", "--help", "--help-all", "--version", "--check-config", "--print-config", "--json")
DOCS = "docs/reference/settings.md"
WIDTH = 100  # the short help's lines fit this many columns
FLAG_COLUMN = 30

DESCRIPTION = "A prefork WSGI and ASGI server and load balancer."
MOUNT_LINE = "prefork_lb --mount ROUTE=MODULE:APP [--mount ...]"  # one pool per app, no MODULE:APP
_NEGATIVE_NUMBER = re.compile(r"^-\d+$|^-\d*\.\d+$")


def flags_of(settings: Iterable[Setting[Any]], command: str) -> list[str]:
    """Every flag ``command``'s parser accepts, help and version included."""
    out = [f for s in settings if s.cli and s.applies_to(command) for f in s.flags]
    return [*out, *HELP_FLAGS]


def _option_name(token: str) -> str | None:
    """The flag part of ``token`` when argparse would read it as an option, else None."""
    if not token.startswith("-") or token == "-" or " " in token or _NEGATIVE_NUMBER.match(token):
        return None
    return token.split("=", 1)[0] if token.startswith("--") else token


def _known(name: str, flags: Sequence[str]) -> bool:
    if name in flags:
        return True
    if name.startswith("--"):  # an abbreviation: argparse resolves it (or says it is ambiguous)
        return any(f.startswith(name) for f in flags if f.startswith("--"))
    return len(name) > 2 and name[:2] in flags  # -w4: a short flag with its value


def unknown_flag(argv: Sequence[str], flags: Sequence[str]) -> str | None:
    """The first option of ``argv`` that is none of ``flags`` (as the user wrote it, without
    ``=VALUE``), or None."""
    for token in argv:
        if token == "--":
            return None
        name = _option_name(token)
        if name is not None and not _known(name, flags):
            return name
    return None


def known_in(name: str, flags: Sequence[str]) -> bool:
    """Whether ``name`` (an option as :func:`unknown_flag` returns it) is one of ``flags``."""
    return _known(name, flags)


def closest(name: str, flags: Sequence[str]) -> str | None:
    """The flag ``name`` was most likely meant to be (difflib), or None when none is close."""
    match = difflib.get_close_matches(name, [f for f in flags if f.startswith("--")], n=1, cutoff=0.75)
    return match[0] if match else None


def setting_for(name: str, settings: Iterable[Setting[Any]]) -> Setting[Any] | None:
    """The setting whose flag ``name`` is (exactly, as a prefix of one long flag, or -w4)."""
    matches = []
    for s in settings:
        if not s.cli:
            continue
        for f in s.flags:
            if f == name or (len(name) > 2 and not name.startswith("--") and f == name[:2]):
                return s
            if name.startswith("--") and f.startswith(name):
                matches.append(s)
    return matches[0] if len(matches) == 1 else None


def _flag_text(s: Setting[Any]) -> str:
    # choices are in --help-all and the docs; here a word keeps the line short
    metavar = s.metavar or s.name.rsplit("_", 1)[-1].upper()
    return ", ".join(s.flags) + " " + metavar


def _entry(left: str, text: str) -> list[str]:
    left = "  " + left
    if len(left) >= FLAG_COLUMN:
        lines = [left]
        left = ""
    else:
        lines = []
    wrapped = textwrap.wrap(text, WIDTH - FLAG_COLUMN) or [""]
    lines.append(left.ljust(FLAG_COLUMN) + wrapped[0])
    lines += [" " * FLAG_COLUMN + w for w in wrapped[1:]]
    return lines


def short_help(settings: Iterable[Setting[Any]], command: str) -> str:
    """``--help``: usage, the commands, the common flags of ``command`` with their defaults,
    and where the rest are (``--help-all``, the settings reference)."""
    if command == PROXY:
        lines = [
            f"usage: {COMMAND_LINES[PROXY]} --backends HOST:PORT[,...] [options]",
            "",
            "The standalone L7 load balancer in front of --backends (no app, no workers).",
            f"The server with its workers: {COMMAND_LINES[SERVER]} [options] (see prefork_lb --help).",
        ]
    else:
        lines = [
            f"usage: {COMMAND_LINES[SERVER]} [options]",
            f"       {MOUNT_LINE} [options]",
            f"       {COMMAND_LINES[PROXY]} --backends HOST:PORT[,...] [options]",
            "",
            f"{DESCRIPTION} Commands:",
            *_entry("MODULE:APP", "serve a WSGI or ASGI app (e.g. myapp:app) from worker processes"),
            *_entry("proxy", "the standalone load balancer in front of --backends (see proxy --help)"),
            *_entry("ctl COMMAND", "talk to a running server: status, reload, scale, stop (see ctl --help)"),
        ]
    lines += ["", "Common options:"]
    for s in settings:
        if s.common and s.cli and s.flags and s.applies_to(command):
            lines += _entry(_flag_text(s), f"{s.brief()} (default: {s.default_text()})")
    lines += [
        *_entry("-h, --help", "this help"),
        *_entry("--help-all", "every option of this command, by section, with defaults"),
        *_entry("--version", "the version"),
        *_entry("--check-config", "load the config and import the app, then exit (0, or one line and 2)"),
        *_entry("--print-config", "every setting with its value and source, then exit (--json: JSON)"),
        "",
        "Every option (--help-all), and its environment variable and config file name",
        f"({DOCS}).",
    ]
    return "\n".join(lines) + "\n"
