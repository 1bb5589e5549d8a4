"""The Logging settings: the error log and the access log (gunicorn's format atoms).

Declared once here; :class:`prefork_lb.config.Config` inherits them, and the registry, the CLI,
the environment variables and the docs follow their order in this class.
"""

from __future__ import annotations

from prefork_lb.settings.base import Setting, optional_str


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
        "D, M, L, p, {header}i, {header}o, {var}e).",
        flags=("--access-logformat",),
        section="Logging",
        metavar="FORMAT",
    )
