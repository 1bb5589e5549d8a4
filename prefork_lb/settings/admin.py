"""The Admin settings: the --stats-bind listener (/lb-health, /lb-stats, /metrics), every mode.

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


class AdminSettings:
    """Admin section: where the admin process listens, and who may ask it."""

    stats_bind = Setting(
        admin_address,
        "127.0.0.1:9000",
        "Admin address, in every dispatch mode: /lb-health and /lb-stats (JSON) and /metrics "
        "(Prometheus), served by an admin process the master supervises. 'off' starts none. When "
        "the default address is taken the server starts without it (a warning says so); an "
        "address given explicitly must be free. With --dispatch proxy, 'public' serves /lb-health "
        "and /lb-stats on the public listeners instead (otherwise those paths are forwarded to "
        "backends like any other) and starts no admin process (an error in the other modes).",
        flags=("--stats-bind",),
        section="Admin",
        metavar="ADDRESS",
        common=True,
        summary="Admin address (/lb-health, /lb-stats, /metrics); 'off' disables it",
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
