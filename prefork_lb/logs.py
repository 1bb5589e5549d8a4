"""Error log set-up and the access log (gunicorn's format atoms)."""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import IO, Any

ERROR_FORMAT = "[%(asctime)s] [%(process)d] [%(levelname)s] %(message)s"


def setup_error_log(level: str = "info", path: str = "-") -> logging.Logger:
    logger = logging.getLogger("prefork_lb")
    for h in list(logger.handlers):
        logger.removeHandler(h)
        h.close()
    handler: logging.Handler
    if path in ("-", "", None):
        handler = logging.StreamHandler(sys.stderr)
    else:
        handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter(ERROR_FORMAT, "%Y-%m-%d %H:%M:%S %z"))
    logger.addHandler(handler)
    logger.setLevel(level.upper())
    logger.propagate = False
    return logger


class _Atoms(dict[str, Any]):
    """Resolves %({name}i)s-style atoms lazily; unknown ones read as '-'."""

    def __init__(self, base: dict[str, Any], env: dict[str, Any], resp_headers: list[tuple[str, str]]):
        super().__init__(base)
        self.env = env
        self.resp_headers = resp_headers

    def __missing__(self, key: str) -> str:
        if key.startswith("{") and len(key) > 3 and key[-2] == "}":
            name, kind = key[1:-2], key[-1]
            if kind == "i":
                return str(self.env.get("HTTP_" + name.upper().replace("-", "_"), "-"))
            if kind == "o":
                lname = name.lower()
                for k, v in self.resp_headers:
                    if k.lower() == lname:
                        return v
                return "-"
            if kind == "e":
                return str(os.environ.get(name, "-"))
        return "-"


class AccessLog:
    """One line per request, written with gunicorn's atoms (see the access_log_format setting)."""

    def __init__(self, fmt: str, path: str | None) -> None:
        self.fmt = fmt
        self.path = path
        self.stream: IO[str] = sys.stdout
        self.reopen()

    def reopen(self) -> None:
        if self.path in ("-", None):
            self.stream = sys.stdout
        else:
            old = self.stream
            self.stream = open(self.path, "a", buffering=1)  # noqa: SIM115 - kept open
            if old not in (sys.stdout, sys.stderr):
                old.close()

    def log(self, env: dict[str, Any], conn: Any, duration: float) -> None:
        status = conn.status or "-"
        headers = conn.out_headers or []
        qs = env.get("QUERY_STRING", "")
        uri = env.get("PATH_INFO", "") + ("?" + qs if qs else "")
        request_line = (
            f"{env.get('REQUEST_METHOD', '-')} {env.get('RAW_URI', uri)} {env.get('SERVER_PROTOCOL', '-')}"
        )
        base = {
            "h": env.get("REMOTE_ADDR") or "-",
            "l": "-",
            "u": "-",
            "t": time.strftime("[%d/%b/%Y:%H:%M:%S %z]"),
            "r": request_line,
            "m": env.get("REQUEST_METHOD", "-"),
            "U": env.get("PATH_INFO", "-"),
            "q": qs,
            "H": env.get("SERVER_PROTOCOL", "-"),
            "s": status.split(" ", 1)[0],
            "B": conn.bytes_sent,
            "b": conn.bytes_sent or "-",
            "f": env.get("HTTP_REFERER", "-"),
            "a": env.get("HTTP_USER_AGENT", "-"),
            "T": int(duration),
            "D": int(duration * 1_000_000),
            "M": int(duration * 1000),
            "L": f"{duration:.6f}",
            "p": f"<{os.getpid()}>",
        }
        try:
            line = self.fmt % _Atoms(base, env, headers)
        except (ValueError, TypeError) as exc:
            line = f"access log format error: {exc}"
        self.stream.write(line + "\n")
        if self.stream is sys.stdout:
            self.stream.flush()  # a pipe or file (systemd, docker) would hold lines back
