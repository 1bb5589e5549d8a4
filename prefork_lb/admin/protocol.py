"""The control socket's protocol, and where the socket is: pure, no I/O beyond reading paths.

The master binds a unix socket (--control-socket, mode 0600) and the admin process serves it
(prefork_lb.admin.control); ``prefork_lb ctl`` (prefork_lb.ctl) is its client. Both find the
default path with :func:`socket_path`, from the same settings, so ``prefork_lb ctl -p PIDFILE``
finds the socket of a server started with ``-p PIDFILE``.

Wire format: one JSON object per line each way. A request is ``{"cmd": NAME, ...arguments}``
(:data:`COMMANDS` lists the names and their arguments); an answer is ``{"ok": true, ...}`` or
``{"ok": false, "error": ONE_LINE, "exit": CODE}``. A connection may carry several requests,
one after the other; a request longer than :data:`REQUEST_MAX` bytes, or not complete within
:data:`READ_TIMEOUT` seconds, ends the connection (after an error answer when one fits).

Exit codes (:data:`EXIT_OK`, :data:`EXIT_FAILED`, :data:`EXIT_USAGE`): 0 done; 1 the action
was taken but did not succeed (a reload whose new workers did not become ready, a scale that
did not reach its target in time); 2 the command was refused (malformed, an unknown worker or
backend, a value out of range) or the server cannot be reached.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from typing import Any

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2

REQUEST_MAX = 64 * 1024  # bytes in one request line
READ_TIMEOUT = 5.0  # seconds a client has to send a whole request line
SOCKET_NAME = "prefork_lb.ctl"
MAX_WEIGHT = 1000

BACKEND_OPS = ("list", "drain", "disable", "enable", "weight", "add", "remove")
CACHE_OPS = ("purge",)
PREFIX_MAX = 400  # characters: the question to the proxy must fit in one link datagram (1 KiB)
# Command -> the arguments it takes (name -> kind). Kinds: see _check_arg.
COMMANDS: dict[str, dict[str, str]] = {
    "status": {},
    "workers": {},
    "reload": {},
    "scale": {"workers": "scale"},
    "reopen-logs": {},
    "stop": {"graceful_timeout": "seconds?"},
    "backend": {"op": "op", "name": "name?", "weight": "weight?"},
    "cache": {"op": "cache_op", "prefix": "prefix?"},
}
_SCALE = re.compile(r"^[+-]?\d{1,6}$")
_URL_TEXT = re.compile(r"[!-~]+")  # printable ASCII, no space


class CommandError(ValueError):
    """A request the server refuses: one line for the user, exit code 2."""

    def __init__(self, message: str, code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.code = code


# -- where the socket is ----------------------------------------------------------------------


def default_path(pidfile: str | None, environ: Mapping[str, str], uid: int) -> str:
    """Next to the pid file (``app.pid`` -> ``app.ctl``), else in $XDG_RUNTIME_DIR, else in /tmp
    with the user id in the name (one default per user)."""
    if pidfile:
        stem, ext = os.path.splitext(pidfile)
        return (stem if ext == ".pid" else pidfile) + ".ctl"
    runtime = environ.get("XDG_RUNTIME_DIR", "")
    if runtime and os.path.isabs(runtime):
        return os.path.join(runtime, SOCKET_NAME)
    return f"/tmp/prefork_lb-{uid}.ctl"


def socket_path(value: str | None, pidfile: str | None, environ: Mapping[str, str], uid: int) -> str | None:
    """The control socket's path for a --control-socket value (None: the default; 'off': none)."""
    if value == "off":
        return None
    if value:
        return value
    return default_path(pidfile, environ, uid)


# -- requests -----------------------------------------------------------------------------------


def parse_request(line: bytes) -> dict[str, Any]:
    """A request line -> the checked request (CommandError for anything malformed)."""
    try:
        req = json.loads(line)
    except (ValueError, UnicodeDecodeError):
        raise CommandError("malformed request: not a JSON object on one line") from None
    if not isinstance(req, dict):
        raise CommandError("malformed request: not a JSON object")
    return check_request(req)


def check_request(req: dict[str, Any]) -> dict[str, Any]:
    cmd = req.get("cmd")
    if not isinstance(cmd, str) or cmd not in COMMANDS:
        raise CommandError(f"unknown command {cmd!r} (commands: {', '.join(COMMANDS)})")
    spec = COMMANDS[cmd]
    extra = sorted(set(req) - {"cmd"} - set(spec))
    if extra:
        raise CommandError(f"{cmd}: unexpected argument {extra[0]!r}")
    out: dict[str, Any] = {"cmd": cmd}
    for name, kind in spec.items():
        optional = kind.endswith("?")
        if name not in req or req[name] is None:
            if not optional:
                raise CommandError(f"{cmd}: missing {name!r}")
            continue
        out[name] = _check_arg(cmd, name, kind.rstrip("?"), req[name])
    if cmd == "backend":
        _check_backend(out)
    return out


def _check_arg(cmd: str, name: str, kind: str, value: Any) -> Any:
    if kind == "scale":
        text = str(value) if isinstance(value, int) and not isinstance(value, bool) else value
        if not isinstance(text, str) or not _SCALE.match(text.strip()):
            raise CommandError(f"{cmd}: expected N, +N or -N workers, got {value!r}")
        return text.strip()
    if kind == "seconds":
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 86400:
            raise CommandError(f"{cmd}: {name} must be 0 to 86400 seconds, got {value!r}")
        return float(value)
    if kind == "weight":
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_WEIGHT:
            raise CommandError(f"{cmd}: weight must be an integer from 1 to {MAX_WEIGHT}, got {value!r}")
        return value
    if kind == "cache_op":
        if value not in CACHE_OPS:
            raise CommandError(f"cache: unknown operation {value!r} (one of {', '.join(CACHE_OPS)})")
        return value
    if kind == "prefix":
        if not isinstance(value, str) or not 1 <= len(value) <= PREFIX_MAX or not _URL_TEXT.fullmatch(value):
            raise CommandError(
                f"cache purge: the prefix must be 1 to {PREFIX_MAX} printable ASCII characters without "
                f"spaces (/PATH, HOST/PATH or SCHEME://HOST/PATH), got {value!r}"
            )
        return value
    if kind == "op":
        if value not in BACKEND_OPS:
            raise CommandError(f"backend: unknown operation {value!r} (one of {', '.join(BACKEND_OPS)})")
        return value
    if not isinstance(value, str) or not value or len(value) > 300 or not value.isprintable():
        raise CommandError(f"{cmd}: {name} must be a backend name (HOST:PORT), got {value!r}")
    return value


def _check_backend(req: dict[str, Any]) -> None:
    op = req["op"]
    if op != "list" and "name" not in req:
        raise CommandError(f"backend {op}: missing the backend (HOST:PORT)")
    if op == "weight" and "weight" not in req:
        raise CommandError("backend weight: missing the weight")
    if op != "weight" and "weight" in req:
        raise CommandError(f"backend {op}: takes no weight")
    if op == "list" and "name" in req:
        raise CommandError("backend list: takes no backend")
    if op == "add" and "=" in req["name"]:  # HOST:PORT=WEIGHT: the same range as backend weight
        weight = req["name"].rpartition("=")[2]
        if not weight.isdigit() or not 1 <= int(weight) <= MAX_WEIGHT:
            raise CommandError(
                f"backend add: weight must be an integer from 1 to {MAX_WEIGHT}, got {weight!r}"
            )


def scale_target(spec: str, current: int, most: int) -> int:
    """``N``, ``+N`` or ``-N`` against the current worker count -> the new count (CommandError
    when it is not 1..most)."""
    n = int(spec)
    target = current + n if spec[0] in "+-" else n
    if not 1 <= target <= most:
        raise CommandError(
            f"scale: {target} workers is out of range (1 to {most}; the scoreboard was sized at start "
            "from --workers and --max-workers)"
        )
    return target


def answer(ok: bool = True, **fields: Any) -> bytes:
    return json.dumps({"ok": ok, **fields}, separators=(",", ":")).encode() + b"\n"


def refusal(message: str, code: int = EXIT_USAGE) -> bytes:
    return answer(False, error=message, exit=code)
