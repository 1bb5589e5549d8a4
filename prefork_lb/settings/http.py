"""The Timeouts and Limits settings: deadlines and size limits of HTTP connections and requests.

Declared once here; :class:`prefork_lb.config.Config` inherits them, and the registry, the CLI,
the environment variables and the docs follow their order in this class. The limits keep
gunicorn's names and defaults.
"""

from __future__ import annotations

from typing import Any

from prefork_lb.settings.base import (
    SERVER,
    Setting,
    boolean,
    non_negative_float,
    non_negative_int,
    positive_int,
)

SHUTDOWN_DELAY_MAX = 3600.0


def delay_seconds(value: Any) -> float:
    """Seconds, 0 to SHUTDOWN_DELAY_MAX."""
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"expected seconds, got {value!r}") from None
    if not 0 <= x <= SHUTDOWN_DELAY_MAX:  # (NaN fails this too)
        raise ValueError(f"must be between 0 and {SHUTDOWN_DELAY_MAX:g} seconds, got {value!r}")
    return x


class HttpSettings:
    """Timeouts and Limits sections."""

    # --- timeouts
    timeout = Setting(
        non_negative_float,
        30.0,
        "Seconds without a heartbeat before the master aborts a worker (SIGABRT, then SIGKILL) "
        "and logs the request it was stuck in. 0 disables.",
        flags=("-t", "--timeout"),
        section="Timeouts",
        metavar="SECONDS",
        common=True,
        summary="Seconds without a heartbeat before the master aborts a worker or the proxy (0: off)",
    )

    keepalive = Setting(
        non_negative_float,
        5.0,
        "Seconds an idle keep-alive connection is kept open (0 disables keep-alive).",
        flags=("--keep-alive",),
        section="Timeouts",
        metavar="SECONDS",
        common=True,
    )

    header_timeout = Setting(
        non_negative_float,
        10.0,
        "Seconds a client has to send a whole request head; past it: 408 and close (slowloris).",
        flags=("--header-timeout",),
        section="Timeouts",
        metavar="SECONDS",
    )

    graceful_timeout = Setting(
        non_negative_float,
        30.0,
        "Seconds in-flight requests get to finish on a graceful stop.",
        flags=("--graceful-timeout",),
        section="Timeouts",
        metavar="SECONDS",
        common=True,
    )

    shutdown_delay = Setting(
        delay_seconds,
        0.0,
        "On TERM, keep serving this many seconds before the graceful stop begins, while the admin "
        "listener's /readyz answers 503 from the TERM on: the load balancer in front (a Kubernetes "
        "Service, a cloud load balancer polling /readyz) stops sending new connections before the "
        "listeners close. A second TERM ends the delay at once; INT and QUIT stop at once. Give "
        "the orchestrator a grace period of at least this plus --graceful-timeout.",
        flags=("--shutdown-delay",),
        section="Timeouts",
        metavar="SECONDS",
        summary="Seconds to keep serving after TERM, /readyz saying 503, before draining",
    )

    # --- limits (gunicorn's names and defaults)
    limit_request_line = Setting(
        non_negative_int,
        4094,
        "Longest request line in bytes; longer gets 414. 0 means unlimited.",
        flags=("--limit-request-line",),
        section="Limits",
        metavar="BYTES",
    )

    limit_request_fields = Setting(
        positive_int,
        100,
        "Most header fields in a request; more gets 431.",
        flags=("--limit-request-fields",),
        section="Limits",
        metavar="N",
    )

    limit_request_field_size = Setting(
        non_negative_int,
        8190,
        "Largest header field (name and value) in bytes; larger gets 431. 0 means unlimited.",
        flags=("--limit-request-field-size",),
        section="Limits",
        metavar="BYTES",
    )

    require_host = Setting(
        boolean,
        True,
        "Answer 400 to an HTTP/1.1 request without a Host header, as RFC 9112 section 3.2 asks.",
        flags=("--require-host",),
        section="Limits",
        metavar="BOOL",
    )

    limit_request_body = Setting(
        non_negative_int,
        0,
        "Largest request body in bytes; larger gets 413. 0 means unlimited.",
        flags=("--limit-request-body",),
        section="Limits",
        metavar="BYTES",
    )

    # --- websockets (the ASGI worker; uvicorn's names and defaults)
    ws_max_size = Setting(
        positive_int,
        16 * 1024 * 1024,
        "Largest websocket message in bytes (text counted as UTF-8) an ASGI app is handed; a "
        "bigger one closes the connection with code 1009.",
        flags=("--ws-max-size",),
        section="Limits",
        metavar="BYTES",
        commands=(SERVER,),
    )

    ws_ping_interval = Setting(
        non_negative_float,
        20.0,
        "Seconds between the pings the ASGI worker sends on each websocket. 0: none.",
        flags=("--ws-ping-interval",),
        section="Timeouts",
        metavar="SECONDS",
        commands=(SERVER,),
    )

    ws_ping_timeout = Setting(
        non_negative_float,
        20.0,
        "Seconds a websocket ping may go unanswered before the connection is closed with code 1011. 0: forever.",
        flags=("--ws-ping-timeout",),
        section="Timeouts",
        metavar="SECONDS",
        commands=(SERVER,),
    )

    ws_per_message_deflate = Setting(
        boolean,
        True,
        "Accept the permessage-deflate websocket extension (compressed messages) when a client offers it.",
        flags=("--ws-per-message-deflate",),
        section="Limits",
        metavar="BOOL",
        commands=(SERVER,),
    )
