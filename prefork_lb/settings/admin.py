"""The Admin settings: the --stats-bind listener (/lb-health, /lb-stats, /metrics, the dashboard),
every mode, and the StatsD push from the admin process.

Declared once here; :class:`prefork_lb.config.Config` inherits them (see prefork_lb.settings).
"""

from __future__ import annotations

import string
from typing import Any

from prefork_lb.settings.base import Setting

_TOKEN_CHARS = frozenset(string.ascii_letters + string.digits + "-._~+/=")


def admin_address(value: Any) -> str:
    """'off', 'public', HOST:PORT, [IPV6]:PORT or unix:PATH."""
    from prefork_lb.sockets import BindError, parse_address

    text = str(value).strip()
    if text in ("off", "public"):
        return text
    try:
        addr = parse_address(text)
    except BindError as exc:
        raise ValueError(f"{exc} (or 'off', or 'public')") from None
    if addr.kind == "fd":
        raise ValueError("fd:// is not supported here: use HOST:PORT, unix:PATH, off or public")
    return text


def control_path(value: Any) -> str | None:
    """'off', or the path of a unix socket (None: the default path)."""
    if value is None:
        return None
    text = str(value).strip()
    if text in ("", "auto"):
        return None
    if text.startswith("unix:"):
        text = text[5:]
    if text != "off" and (len(text.encode()) > 100 or "\0" in text):
        raise ValueError("a unix socket path must be at most 100 bytes long")
    return text


def bearer_token(value: Any) -> str | None:
    """A token as RFC 6750 allows it (letters, digits, -._~+/=), 16 to 512 characters."""
    if value is None:
        return None
    text = str(value)
    if not 16 <= len(text) <= 512:
        raise ValueError(f"must be 16 to 512 characters long, got {len(text)}")
    if not set(text) <= _TOKEN_CHARS:
        raise ValueError("may hold only letters, digits and -._~+/=")
    return text


def statsd_target(value: Any) -> str | None:
    """HOST:PORT, [IPV6]:PORT or unix:PATH (gunicorn's --statsd-host forms)."""
    if value is None or str(value).strip() in ("", "off"):
        return None
    from prefork_lb.statsd import parse_target

    return str(parse_target(str(value)))


def tag_list(value: Any) -> str:
    from prefork_lb.statsd import parse_tags

    return parse_tags(str(value or ""))


def prefix_text(value: Any) -> str:
    text = str(value or "").strip()
    if len(text) > 200 or any(c.isspace() or c in "|:@#" for c in text):
        raise ValueError("a StatsD prefix is at most 200 characters, without spaces or | : @ #")
    return text


def push_interval(value: Any) -> float:
    try:
        f = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"expected seconds, got {value!r}") from None
    if not 0.1 <= f <= 3600:
        raise ValueError(f"must be between 0.1 and 3600 seconds, got {value!r}")
    return f


class AdminSettings:
    """Admin section: where the admin process listens, and who may ask it."""

    stats_bind = Setting(
        admin_address,
        "127.0.0.1:9000",
        "Admin address, in every dispatch mode: /lb-health and /lb-stats (JSON), /metrics "
        "(Prometheus), the probes /livez and /readyz (public even with --stats-token) and the "
        "dashboard at /, served by an admin process the master supervises. 'off' starts none. When "
        "the default address is taken the server starts without it (a warning says so); an "
        "address given explicitly must be free. With --dispatch proxy, 'public' serves /lb-health "
        "and /lb-stats on the public listeners instead (otherwise those paths are forwarded to "
        "backends like any other) and starts no admin process (an error in the other modes).",
        flags=("--stats-bind",),
        section="Admin",
        metavar="ADDRESS",
        common=True,
        summary="Admin address (/metrics, /livez, /readyz, /lb-stats, dashboard); 'off' disables it",
    )

    control_socket = Setting(
        control_path,
        None,
        "The control socket that 'prefork_lb ctl' talks to: a unix socket (mode 0600) the master "
        "binds and the admin process serves (status, reload, scale, stop, proxy backends; see "
        "docs/operations.md). 'off' creates none. The default path is taken (a stale socket is "
        "replaced; one a running server answers on is a warning and no control socket); a path "
        "given explicitly must be free.",
        flags=("--control-socket",),
        section="Admin",
        metavar="PATH",
        default_doc="PIDFILE with .ctl for .pid when -p is set, else $XDG_RUNTIME_DIR/prefork_lb.ctl, "
        "else /tmp/prefork_lb-UID.ctl",
    )

    stats_token = Setting(
        bearer_token,
        None,
        "Require 'Authorization: Bearer TOKEN' on the admin listener (401 without it). Prefer "
        "PREFORK_LB_STATS_TOKEN or the config file to the command line, which other users see.",
        flags=("--stats-token",),
        section="Admin",
        metavar="TOKEN",
        default_doc="none",
    )

    statsd_host = Setting(
        statsd_target,
        None,
        "Push metrics to this StatsD server (HOST:PORT over UDP, or unix:PATH), from the admin "
        "process once per --statsd-interval, with gunicorn's names (gunicorn.requests, "
        "gunicorn.request.duration, gunicorn.workers, ...): see docs/observability.md. Needs the "
        "admin process (--stats-bind not off).",
        flags=("--statsd-host",),
        section="Admin",
        metavar="ADDRESS",
        default_doc="none",
    )

    statsd_prefix = Setting(
        prefix_text,
        "",
        "Put this in front of every StatsD name (a dot is added), as gunicorn's --statsd-prefix.",
        flags=("--statsd-prefix",),
        section="Admin",
        metavar="PREFIX",
    )

    dogstatsd_tags = Setting(
        tag_list,
        "",
        "DogStatsD tags added to every StatsD line: comma-separated key:value (or bare) tags, "
        "as gunicorn's --dogstatsd-tags.",
        flags=("--dogstatsd-tags",),
        section="Admin",
        metavar="TAGS",
    )

    statsd_interval = Setting(
        push_interval,
        1.0,
        "Seconds between two StatsD pushes (each sends what changed since the last).",
        flags=("--statsd-interval",),
        section="Admin",
        metavar="SECONDS",
    )
