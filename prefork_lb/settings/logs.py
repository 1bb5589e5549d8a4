"""The Logging settings: the error log, the access log (gunicorn's format atoms, or JSON) and
request ids.

Declared once here; :class:`prefork_lb.config.Config` inherits them, and the registry, the CLI,
the environment variables and the docs follow their order in this class.
"""

from __future__ import annotations

import re
from typing import Any

from prefork_lb.settings.base import Setting, boolean, optional_str

_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,100}").fullmatch


def header_name_or_off(value: Any) -> str | None:
    """A header field name (an RFC 9110 token), or None for 'off' / ''."""
    if value is None:
        return None
    s = str(value).strip()
    if s.lower() in ("", "off", "none"):
        return None
    if _TOKEN(s) is None or "_" in s:
        raise ValueError("not a header name (letters, digits and '-', as in X-Request-ID), or 'off'")
    return s


class LogSettings:
    """Logging section."""

    # --- logging
    log_level = Setting(
        str,
        "info",
        "Error log level.",
        flags=("--log-level",),
        section="Logging",
        choices=("debug", "info", "warning", "error", "critical"),
        common=True,
    )

    error_logfile = Setting(
        str,
        "-",
        "Error log file, '-' for stderr.",
        flags=("--error-logfile", "--log-file"),
        section="Logging",
        metavar="FILE",
        common=True,
    )

    access_logfile = Setting(
        optional_str,
        None,
        "Access log file, '-' for stdout; off when unset.",
        flags=("--access-logfile",),
        section="Logging",
        metavar="FILE",
        common=True,
    )

    access_log_format = Setting(
        str,
        '%(h)s %(l)s %(u)s %(t)s "%(r)s" %(s)s %(b)s "%(f)s" "%(a)s"',
        "Access log line, with gunicorn's format atoms (h, l, u, t, r, m, U, q, H, s, B, b, f, a, T, "
        "D, M, L, p, {header}i, {header}o, {var}e; {x-request-id}o is the request id), or 'json' for "
        "one JSON object per line with OpenTelemetry's field names (docs/access-log.md).",
        flags=("--access-logformat",),
        section="Logging",
        metavar="FORMAT",
    )

    request_id_header = Setting(
        header_name_or_off,
        "X-Request-ID",
        "Request id header: a valid incoming one (1-200 of A-Z a-z 0-9 . _ : / + = -) is the "
        "request's id; it goes to the app (environ 'prefork_lb.request_id'), the backend, the "
        "response and the access log. 'off': none of that.",
        flags=("--request-id-header",),
        section="Logging",
        metavar="NAME",
    )

    request_id = Setting(
        boolean,
        False,
        "Generate a request id for a request that comes without a valid one (an invalid one is "
        "then replaced). Off by default: it costs a few per cent of a hello-world request, and "
        "behind the proxy it makes every request head unique; a valid incoming id is used "
        "either way.",
        flags=("--request-id",),
        section="Logging",
        metavar="BOOL",
    )
