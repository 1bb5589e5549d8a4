"""The Proxy settings: the L7 proxy of ``--dispatch proxy`` and of ``python -m prefork_lb proxy``.

Declared once here; :class:`prefork_lb.config.Config` inherits them, and the registry, the CLI,
the environment variables and the docs follow their order in this class.
"""

from __future__ import annotations

import re
from typing import Any

from prefork_lb.settings.base import (
    SERVER,
    STRATEGIES,
    ConfigError,
    Setting,
    boolean,
    comma_joined,
    non_negative_float,
    non_negative_int,
    optional_list,
    optional_str,
    positive_int,
)


def mount_list(value: Any) -> list[str]:
    """--mount: repeated on the command line, a list in a config file, one per line (or ``|``)
    in the environment; each checked for syntax here (prefork_lb.mounts), the table built by
    the config checks, which know the server-wide defaults. A bad one is one line that quotes
    it as the user wrote it (not the list the command line collects)."""
    from prefork_lb.mounts import MountError, parse_mount

    if isinstance(value, str):
        items = [v.strip() for v in re.split(r"[\n|]", value)]
    else:
        items = [str(v).strip() for v in value]
    items = [v for v in items if v]
    placeholder = {"workers": 1, "interface": "auto", "strategy": "", "max_concurrency": 0, "queue_size": 0}
    for item in items:
        try:
            parse_mount(item, placeholder, STRATEGIES)
        except MountError as exc:
            raise ConfigError(f"--mount {item}: {str(exc).removeprefix(f'{item!r}: ')}") from None
    return items


class ProxySettings:
    """Proxy section: backends, health checks, retries, upstream pools, TLS, admission."""

    # --- the L7 proxy (--dispatch proxy, and `python -m prefork_lb proxy`)
    backends = Setting(
        optional_list,
        None,
        "Backends of the proxy, comma-separated HOST:PORT or [IPV6]:PORT, each optionally =WEIGHT "
        "(e.g. 10.0.0.5:8000=3,10.0.0.6:8000). Required by the standalone proxy; with --dispatch "
        "proxy they are added to the local workers.",
        flags=("--backends",),
        section="Proxy",
        metavar="LIST",
        default_doc="none",
        common=True,
        summary="Remote backends of the proxy: HOST:PORT[=WEIGHT],...",
    )

    mount = Setting(
        mount_list,
        list,
        "--dispatch proxy: one worker pool per mount, ROUTE=MODULE:APP[;key=value...], repeated. "
        "ROUTE is [HOST]/PREFIX (/api, /, api.example.com/); a request goes to the mount of its Host, "
        "else of no host, with the longest prefix matching its path on a segment boundary; none "
        "matching: 404. Keys (default: the server-wide setting): workers, interface, strategy, "
        "max-concurrency, queue-size. The apps are given here, not as MODULE:APP.",
        flags=("--mount",),
        section="Proxy",
        metavar="ROUTE=APP[;KEY=VALUE...]",
        append=True,
        default_doc="none",
        commands=(SERVER,),
        common=True,
        summary="One worker pool per app: ROUTE=MODULE:APP[;workers=N;interface=...], repeated",
    )

    worker_base_port = Setting(
        non_negative_int,
        0,
        "--dispatch proxy: worker slot N listens on 127.0.0.1 at this port + N (0: ports chosen by "
        "the kernel). The master holds these ports, so a request to a worker being replaced waits.",
        flags=("--worker-base-port",),
        section="Proxy",
        metavar="PORT",
        commands=(SERVER,),
    )

    sticky_cookie = Setting(
        str,
        "lb",
        "Cookie name of --strategy sticky. Its value is an HMAC that reveals no address.",
        flags=("--sticky-cookie",),
        section="Proxy",
        metavar="NAME",
    )

    sticky_secret = Setting(
        optional_str,
        None,
        "Secret of the sticky cookie's HMAC. Unset: random bytes drawn when the master starts, so "
        "a replaced proxy keeps the cookies but a restarted master does not. Set it (for example "
        "from PREFORK_LB_STICKY_SECRET) to keep them across restarts and between proxies.",
        flags=("--sticky-secret",),
        section="Proxy",
        metavar="SECRET",
        default_doc="random per master",
    )

    health_check_path = Setting(
        str,
        "/health",
        "Active health check of remote backends: GET this path; 2xx and 3xx pass. Local workers "
        "are watched through the scoreboard instead.",
        flags=("--health-check-path",),
        section="Proxy",
        metavar="PATH",
        common=True,
        summary="Path the proxy GETs to check each remote backend",
    )

    health_check_interval = Setting(
        non_negative_float,
        2.0,
        "Seconds between active health checks of each remote backend (0: none).",
        flags=("--health-check-interval",),
        section="Proxy",
        metavar="SECONDS",
    )

    health_check_timeout = Setting(
        non_negative_float,
        1.0,
        "Seconds a health check may take before it counts as failed.",
        flags=("--health-check-timeout",),
        section="Proxy",
        metavar="SECONDS",
    )

    health_check_rise = Setting(
        positive_int,
        2,
        "Consecutive passed checks that bring a down backend back up (with --slow-start).",
        flags=("--health-check-rise",),
        section="Proxy",
        metavar="N",
    )

    health_check_fall = Setting(
        positive_int,
        3,
        "Consecutive failed checks that take a backend down.",
        flags=("--health-check-fall",),
        section="Proxy",
        metavar="N",
    )

    slow_start = Setting(
        non_negative_float,
        0.0,
        "Seconds over which a backend that comes (back) up ramps from a tenth of its weight to all of "
        "it (strategies that read weights: not round_robin, hash or sticky).",
        flags=("--slow-start",),
        section="Proxy",
        metavar="SECONDS",
    )

    retries = Setting(
        non_negative_int,
        2,
        "Further tries on other backends for a request that failed before any byte reached its "
        "backend, or an idempotent one that failed on a connection error before a response byte "
        "came back. A request whose body was sent is never retried unless it is idempotent.",
        flags=("--retries",),
        section="Proxy",
        metavar="N",
        common=True,
        summary="Further tries on other backends for a request that failed safely",
    )

    retry_budget = Setting(
        non_negative_float,
        0.2,
        "Retries may add at most this fraction of requests (plus 10 a second), so retries cannot "
        "multiply an outage.",
        flags=("--retry-budget",),
        section="Proxy",
        metavar="RATIO",
    )

    upstream_connect_timeout = Setting(
        non_negative_float,
        3.0,
        "Seconds to connect to a backend; past it the backend counts as failed and the request is retried.",
        flags=("--upstream-connect-timeout",),
        section="Proxy",
        metavar="SECONDS",
    )

    upstream_timeout = Setting(
        non_negative_float,
        60.0,
        "Seconds a backend has to start its response (and between response bytes); past it: 504.",
        flags=("--upstream-timeout",),
        section="Proxy",
        metavar="SECONDS",
    )

    retry_on_timeout = Setting(
        boolean,
        False,
        "Also try an idempotent request on another backend when its backend sent no byte of a "
        "response within --upstream-timeout (a host cut off the network mid-request), within "
        "--retries and --retry-budget; false: 504 at once.",
        flags=("--retry-on-timeout",),
        section="Proxy",
        metavar="BOOL",
    )

    upstream_keepalive = Setting(
        non_negative_int,
        256,
        "Idle keep-alive connections kept open to each backend.",
        flags=("--upstream-keepalive",),
        section="Proxy",
        metavar="N",
    )

    upstream_pipeline = Setting(
        positive_int,
        8,
        "The most requests sent at once on one backend connection (HTTP/1.1 pipelining). Only "
        "GETs without a body whose exact head was answered before within "
        "--upstream-pipeline-latency, with at most "
        "64 KiB of body and the connection kept open, and that arrive in the same pass of the "
        "event loop, share a connection: one write and one read for all of them. 1: one "
        "request per connection at a time.",
        flags=("--upstream-pipeline",),
        section="Proxy",
        metavar="N",
    )

    cache_size = Setting(
        non_negative_int,
        0,
        "MiB of memory for the proxy's response cache (RFC 9111 shared cache), per proxy process; "
        "0: no cache. Stores GET responses with explicit freshness (s-maxage, max-age, Expires) "
        "and a Content-Length, never private, no-store or Set-Cookie ones; answers fresh hits "
        "with Age and Cache-Status, revalidates stale ones, honours stale-while-revalidate and "
        "stale-if-error, coalesces concurrent misses. See docs/proxy.md, Response cache.",
        flags=("--cache-size",),
        section="Proxy",
        metavar="MIB",
    )

    cache_max_object = Setting(
        positive_int,
        1024,
        "KiB: the largest response (body and headers) the response cache stores (--cache-size).",
        flags=("--cache-max-object",),
        section="Proxy",
        metavar="KIB",
    )

    cache_lock_timeout = Setting(
        non_negative_float,
        5.0,
        "Seconds a request that misses the response cache waits for another request for the same "
        "URI already on its way to a backend (request coalescing: one backend request for many "
        "clients), then goes to the backend itself (nginx's proxy_cache_lock_timeout). "
        "0: no waiting, no coalescing.",
        flags=("--cache-lock-timeout",),
        section="Proxy",
        metavar="SECONDS",
    )

    upstream_pipeline_latency = Setting(
        non_negative_float,
        0.010,
        "Seconds: a GET may be pipelined (see --upstream-pipeline) only when the last answer to the "
        "same request head, connect time included, came within this. Keeps a slow answer from "
        "making others wait behind it. 0: never pipeline.",
        flags=("--upstream-pipeline-latency",),
        section="Proxy",
        metavar="SECONDS",
    )

    forwarded_allow_ips = Setting(
        comma_joined,
        "127.0.0.1,::1",
        "Peers (IPs or CIDRs, comma-separated, '*' for all) whose X-Forwarded-* and Forwarded "
        "headers the proxy keeps and appends to; from any other peer they are replaced. The "
        "workers believe the same peers' X-Forwarded-Proto (else Forwarded proto=) for "
        "wsgi.url_scheme, so behind the TLS-terminating proxy an app sees https; from any other "
        "peer those headers do not change it.",
        flags=("--forwarded-allow-ips",),
        section="Proxy",
        metavar="LIST",
    )

    lb_headers = Setting(
        boolean,
        True,
        "Add X-Forwarded-By to requests and X-Backend-Server (the backend's address) to responses.",
        flags=("--lb-headers",),
        section="Proxy",
        metavar="BOOL",
    )

    certfile = Setting(
        optional_str,
        None,
        "TLS certificate (PEM) of the proxy's public listeners.",
        flags=("--certfile",),
        section="Proxy",
        metavar="FILE",
        common=True,
    )

    keyfile = Setting(
        optional_str,
        None,
        "TLS private key (PEM) for --certfile.",
        flags=("--keyfile",),
        section="Proxy",
        metavar="FILE",
    )

    max_connections = Setting(
        non_negative_int,
        10000,
        "Client connections the proxy serves at once (0: no limit). Further ones wait, unread, "
        "for up to --queue-timeout, then get 503 with Retry-After.",
        flags=("--max-connections",),
        section="Proxy",
        metavar="N",
    )

    queue_timeout = Setting(
        non_negative_float,
        5.0,
        "Seconds a connection waits for a place under --max-connections.",
        flags=("--queue-timeout",),
        section="Proxy",
        metavar="SECONDS",
    )

    client_body_timeout = Setting(
        non_negative_float,
        60.0,
        "Seconds the proxy waits for the next bytes of a request body; past it: 408 and close.",
        flags=("--client-body-timeout",),
        section="Proxy",
        metavar="SECONDS",
    )

    proxy_loop = Setting(
        str,
        "auto",
        "Event loop of the proxy: uvloop, asyncio, or auto (uvloop when installed).",
        flags=("--proxy-loop",),
        section="Proxy",
        choices=("auto", "uvloop", "asyncio"),
    )
