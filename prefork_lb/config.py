"""Every setting, declared once.

A :class:`Setting` names its type, default, command-line flags, environment variable and help.
That one declaration drives the argparse CLI (``cli.py``), the ``PREFORK_LB_*`` environment
variables, the Python config file (``-c``) and the generated ``docs/reference/settings.md``.

Precedence, lowest first: defaults < config file < environment < command line.
"""

from __future__ import annotations

import os
import runpy
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

ENV_PREFIX = "PREFORK_LB_"


class ConfigError(Exception):
    """A user error in a setting: reported as one line, exit code 2."""


def _positive_int(value: Any) -> int:
    n = int(value)
    if n < 1:
        raise ValueError(f"must be at least 1, got {n}")
    return n


def _non_negative_int(value: Any) -> int:
    n = int(value)
    if n < 0:
        raise ValueError(f"must be 0 or more, got {n}")
    return n


def _non_negative_float(value: Any) -> float:
    x = float(value)
    if x < 0:
        raise ValueError(f"must be 0 or more, got {x}")
    return x


def _bind_list(value: Any) -> list[str]:
    if isinstance(value, str):
        items = [v.strip() for v in value.split(",")]
    else:
        items = [str(v).strip() for v in value]
    items = [v for v in items if v]
    if not items:
        raise ValueError("needs at least one address")
    return items


def _optional_list(value: Any) -> list[str] | None:
    if value is None:
        return None
    items = (
        [v.strip() for v in value.split(",")] if isinstance(value, str) else [str(v).strip() for v in value]
    )
    return [v for v in items if v] or None


def _optional_str(value: Any) -> str | None:
    if value is None:
        return None
    s = str(value)
    return s or None


def _bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    s = str(value).strip().lower()
    if s in ("1", "true", "yes", "on"):
        return True
    if s in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"not a boolean: {value!r}")


def _offload_count(value: Any) -> int:
    """'auto' (-1: CPUs divided among the workers) or a count (0: off)."""
    if str(value).strip().lower() in ("auto", "-1"):
        return -1
    return _non_negative_int(value)


def _default_workers() -> int:
    return os.cpu_count() or 1


@dataclass(frozen=True)
class Setting:
    name: str
    type: Callable[[Any], Any]
    default: Any
    help: str
    flags: tuple[str, ...] = ()
    section: str = "Server"
    choices: tuple[str, ...] | None = None
    metavar: str | None = None
    append: bool = False  # flag may be repeated; values accumulate
    store_true: bool = False  # flag without a value
    extra_env: tuple[str, ...] = ()  # further env vars honoured (e.g. WEB_CONCURRENCY)
    default_doc: str | None = None  # how the default reads in the docs when it is computed
    cli: bool = True

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.name.upper()

    def resolve_default(self) -> Any:
        return self.default() if callable(self.default) else self.default

    def convert(self, value: Any, source: str) -> Any:
        if self.choices is not None and str(value) not in self.choices:
            raise ConfigError(
                f"{source}: invalid value {value!r} for {self.name} (choose from {', '.join(self.choices)})"
            )
        try:
            return self.type(value)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{source}: invalid value {value!r} for {self.name}: {exc}") from None


SETTINGS: list[Setting] = [
    # --- server
    Setting(
        "bind",
        _bind_list,
        lambda: ["127.0.0.1:8000"],
        "Address to listen on: HOST:PORT, [IPV6]:PORT, "
        "unix:PATH or fd://N. Repeat the flag to listen on several.",
        flags=("-b", "--bind"),
        append=True,
        metavar="ADDRESS",
        default_doc="127.0.0.1:8000",
    ),
    Setting(
        "workers",
        _positive_int,
        _default_workers,
        "Number of worker processes.",
        flags=("-w", "--workers"),
        extra_env=("WEB_CONCURRENCY",),
        metavar="N",
        default_doc="the number of CPUs",
    ),
    Setting(
        "dispatch",
        str,
        "reuseport",
        "How connections reach workers: reuseport (one SO_REUSEPORT listener per worker slot, "
        "held by the master), shared (one listener inherited by every worker) or handoff (a "
        "dispatcher process accepts and passes each connection to the worker --strategy picks) or "
        "proxy (workers listen on their own loopback ports and a proxy process routes each request "
        "to one; see the Proxy section).",
        flags=("--dispatch",),
        choices=("reuseport", "shared", "handoff", "proxy"),
    ),
    Setting(
        "strategy",
        str,
        "least_connections",
        "Balancing strategy of --dispatch handoff (which worker gets the next connection) and of "
        "the proxy (which backend gets the next request). hash keys on the client address; "
        "sticky (proxy only) pins a client to a backend with a cookie.",
        flags=("--strategy",),
        choices=(
            "round_robin",
            "weighted_round_robin",
            "least_connections",
            "random",
            "p2c",
            "least_latency",
            "hash",
            "sticky",
        ),
    ),
    Setting(
        "max_requests",
        _non_negative_int,
        0,
        "Recycle a worker after it served this many requests (0: never). Its replacement is "
        "started and ready before it stops, so no request is refused.",
        flags=("--max-requests",),
        metavar="N",
    ),
    Setting(
        "max_requests_jitter",
        _non_negative_int,
        0,
        "Add a random 0..N to max_requests per worker, so workers do not recycle together.",
        flags=("--max-requests-jitter",),
        metavar="N",
    ),
    Setting(
        "pidfile",
        _optional_str,
        None,
        "Write the master's pid to this file.",
        flags=("-p", "--pid"),
        metavar="FILE",
    ),
    Setting(
        "proc_name",
        _optional_str,
        None,
        "Name shown in process titles (default: the app path).",
        flags=("-n", "--name"),
        metavar="NAME",
    ),
    Setting(
        "offload_processes",
        _offload_count,
        -1,
        "Processes in each worker's CPU offload pool (prefork_lb.offload, also "
        "environ['prefork_lb.offload']). auto: the CPUs divided among the workers, at least 1, so "
        "all pools together fill the machine without oversubscribing it; they start on first "
        "use. 0: no pool is offered in the environ.",
        flags=("--offload-processes",),
        metavar="N|auto",
        default_doc="auto",
    ),
    Setting(
        "max_workers",
        _non_negative_int,
        0,
        "Autoscaling: up to this many workers (0: off). --workers is then the minimum: a worker "
        "is added while every worker has requests in flight for --autoscale-up-after seconds, "
        "and one removed after --autoscale-down-after seconds with at most one busy worker.",
        flags=("--max-workers",),
        section="Overload",
        metavar="N",
    ),
    Setting(
        "autoscale_up_after",
        _non_negative_float,
        2.0,
        "Seconds every worker must stay busy before autoscaling adds one.",
        flags=("--autoscale-up-after",),
        section="Overload",
        metavar="SECONDS",
    ),
    Setting(
        "autoscale_down_after",
        _non_negative_float,
        30.0,
        "Seconds of little load before autoscaling removes a worker (never below --workers).",
        flags=("--autoscale-down-after",),
        section="Overload",
        metavar="SECONDS",
    ),
    Setting(
        "max_concurrency",
        _non_negative_int,
        0,
        "Requests one worker processes at once (0: no limit). Past it requests wait in a queue "
        "of --queue-size; past both they get 503 with Retry-After at once.",
        flags=("--max-concurrency",),
        section="Overload",
        metavar="N",
    ),
    Setting(
        "queue_size",
        _non_negative_int,
        100,
        "Requests that may wait for a free place when --max-concurrency is reached.",
        flags=("--queue-size",),
        section="Overload",
        metavar="N",
    ),
    Setting(
        "request_timeout",
        _non_negative_float,
        0.0,
        "Deadline of one request in seconds (0: none). A request past it gets 504 when nothing "
        "was sent yet, else its connection is closed. A worker whose event loop is blocked "
        "is the master's --timeout's business.",
        flags=("--request-timeout",),
        section="Overload",
        metavar="SECONDS",
    ),
    Setting(
        "max_rss",
        _non_negative_int,
        0,
        "Recycle a worker whose resident memory passes this many MiB (0: never), after a random "
        "delay of up to --max-rss-jitter seconds; its replacement is ready before it drains.",
        flags=("--max-rss",),
        section="Overload",
        metavar="MIB",
    ),
    Setting(
        "max_rss_jitter",
        _non_negative_float,
        5.0,
        "Upper bound of the random delay before a worker over --max-rss asks to be replaced.",
        flags=("--max-rss-jitter",),
        section="Overload",
        metavar="SECONDS",
    ),
    Setting(
        "worker_connections",
        _positive_int,
        1000,
        "Most connections one worker serves at once; further ones wait in the listen backlog.",
        flags=("--worker-connections",),
        metavar="N",
    ),
    Setting(
        "backlog",
        _positive_int,
        2048,
        "Listen backlog of each listening socket.",
        flags=("--backlog",),
        metavar="N",
    ),
    Setting(
        "root_path",
        str,
        "",
        "SCRIPT_NAME given to the app, for apps mounted below a path prefix.",
        flags=("--root-path",),
        metavar="PATH",
    ),
    Setting(
        "chdir",
        _optional_str,
        None,
        "Change to this directory before loading the app.",
        flags=("--chdir",),
        metavar="DIR",
    ),
    Setting(
        "server_header",
        _bool,
        True,
        "Send a 'Server: prefork_lb' header.",
        flags=("--server-header",),
        metavar="BOOL",
    ),
    # --- the L7 proxy (--dispatch proxy, and `python -m prefork_lb proxy`)
    Setting(
        "backends",
        _optional_list,
        None,
        "Backends of the proxy, comma-separated HOST:PORT or [IPV6]:PORT, each optionally =WEIGHT "
        "(e.g. 10.0.0.5:8000=3,10.0.0.6:8000). Required by the standalone proxy; with --dispatch "
        "proxy they are added to the local workers.",
        flags=("--backends",),
        section="Proxy",
        metavar="LIST",
        default_doc="none",
    ),
    Setting(
        "stats_bind",
        str,
        "127.0.0.1:9000",
        "Admin address of the proxy, serving /lb-health and /lb-stats (JSON). 'off' disables it; "
        "'public' serves them on the public listeners instead (otherwise those paths are "
        "forwarded to backends like any other).",
        flags=("--stats-bind",),
        section="Proxy",
        metavar="ADDRESS",
    ),
    Setting(
        "worker_base_port",
        _non_negative_int,
        0,
        "--dispatch proxy: worker slot N listens on 127.0.0.1 at this port + N (0: ports chosen by "
        "the kernel). The master holds these ports, so a request to a worker being replaced waits.",
        flags=("--worker-base-port",),
        section="Proxy",
        metavar="PORT",
    ),
    Setting(
        "sticky_cookie",
        str,
        "lb",
        "Cookie name of --strategy sticky. Its value is an HMAC that reveals no address.",
        flags=("--sticky-cookie",),
        section="Proxy",
        metavar="NAME",
    ),
    Setting(
        "sticky_secret",
        _optional_str,
        None,
        "Secret of the sticky cookie's HMAC. Unset: random bytes drawn when the master starts, so "
        "a replaced proxy keeps the cookies but a restarted master does not. Set it (for example "
        "from PREFORK_LB_STICKY_SECRET) to keep them across restarts and between proxies.",
        flags=("--sticky-secret",),
        section="Proxy",
        metavar="SECRET",
        default_doc="random per master",
    ),
    Setting(
        "health_check_path",
        str,
        "/health",
        "Active health check of remote backends: GET this path; 2xx and 3xx pass. Local workers "
        "are watched through the scoreboard instead.",
        flags=("--health-check-path",),
        section="Proxy",
        metavar="PATH",
    ),
    Setting(
        "health_check_interval",
        _non_negative_float,
        2.0,
        "Seconds between active health checks of each remote backend (0: none).",
        flags=("--health-check-interval",),
        section="Proxy",
        metavar="SECONDS",
    ),
    Setting(
        "health_check_timeout",
        _non_negative_float,
        1.0,
        "Seconds a health check may take before it counts as failed.",
        flags=("--health-check-timeout",),
        section="Proxy",
        metavar="SECONDS",
    ),
    Setting(
        "health_check_rise",
        _positive_int,
        2,
        "Consecutive passed checks that bring a down backend back up (with --slow-start).",
        flags=("--health-check-rise",),
        section="Proxy",
        metavar="N",
    ),
    Setting(
        "health_check_fall",
        _positive_int,
        3,
        "Consecutive failed checks that take a backend down.",
        flags=("--health-check-fall",),
        section="Proxy",
        metavar="N",
    ),
    Setting(
        "slow_start",
        _non_negative_float,
        0.0,
        "Seconds over which a backend that comes (back) up ramps from a tenth of its weight to all of "
        "it (strategies that read weights: not round_robin, hash or sticky).",
        flags=("--slow-start",),
        section="Proxy",
        metavar="SECONDS",
    ),
    Setting(
        "retries",
        _non_negative_int,
        2,
        "Further tries on other backends for a request that failed before any byte reached its "
        "backend, or an idempotent one that failed on a connection error before a response byte "
        "came back. A request whose body was sent is never retried unless it is idempotent.",
        flags=("--retries",),
        section="Proxy",
        metavar="N",
    ),
    Setting(
        "retry_budget",
        _non_negative_float,
        0.2,
        "Retries may add at most this fraction of requests (plus 10 a second), so retries cannot "
        "multiply an outage.",
        flags=("--retry-budget",),
        section="Proxy",
        metavar="RATIO",
    ),
    Setting(
        "upstream_connect_timeout",
        _non_negative_float,
        3.0,
        "Seconds to connect to a backend; past it the backend counts as failed and the request is retried.",
        flags=("--upstream-connect-timeout",),
        section="Proxy",
        metavar="SECONDS",
    ),
    Setting(
        "upstream_timeout",
        _non_negative_float,
        60.0,
        "Seconds a backend has to start its response (and between response bytes); past it: 504.",
        flags=("--upstream-timeout",),
        section="Proxy",
        metavar="SECONDS",
    ),
    Setting(
        "upstream_keepalive",
        _non_negative_int,
        256,
        "Idle keep-alive connections kept open to each backend.",
        flags=("--upstream-keepalive",),
        section="Proxy",
        metavar="N",
    ),
    Setting(
        "upstream_pipeline",
        _positive_int,
        8,
        "The most requests sent at once on one backend connection (HTTP/1.1 pipelining). Only "
        "GETs without a body whose exact head was answered before in under 10 ms, with at most "
        "64 KiB of body and the connection kept open, and that arrive in the same pass of the "
        "event loop, share a connection: one write and one read for all of them. 1: one "
        "request per connection at a time.",
        flags=("--upstream-pipeline",),
        section="Proxy",
        metavar="N",
    ),
    Setting(
        "forwarded_allow_ips",
        str,
        "127.0.0.1,::1",
        "Peers (IPs or CIDRs, comma-separated, '*' for all) whose X-Forwarded-* and Forwarded "
        "headers the proxy keeps and appends to; from any other peer they are replaced.",
        flags=("--forwarded-allow-ips",),
        section="Proxy",
        metavar="LIST",
    ),
    Setting(
        "lb_headers",
        _bool,
        True,
        "Add X-Forwarded-By to requests and X-Backend-Server (the backend's address) to responses.",
        flags=("--lb-headers",),
        section="Proxy",
        metavar="BOOL",
    ),
    Setting(
        "certfile",
        _optional_str,
        None,
        "TLS certificate (PEM) of the proxy's public listeners.",
        flags=("--certfile",),
        section="Proxy",
        metavar="FILE",
    ),
    Setting(
        "keyfile",
        _optional_str,
        None,
        "TLS private key (PEM) for --certfile.",
        flags=("--keyfile",),
        section="Proxy",
        metavar="FILE",
    ),
    Setting(
        "max_connections",
        _non_negative_int,
        10000,
        "Client connections the proxy serves at once (0: no limit). Further ones wait, unread, "
        "for up to --queue-timeout, then get 503 with Retry-After.",
        flags=("--max-connections",),
        section="Proxy",
        metavar="N",
    ),
    Setting(
        "queue_timeout",
        _non_negative_float,
        5.0,
        "Seconds a connection waits for a place under --max-connections.",
        flags=("--queue-timeout",),
        section="Proxy",
        metavar="SECONDS",
    ),
    Setting(
        "client_body_timeout",
        _non_negative_float,
        60.0,
        "Seconds the proxy waits for the next bytes of a request body; past it: 408 and close.",
        flags=("--client-body-timeout",),
        section="Proxy",
        metavar="SECONDS",
    ),
    Setting(
        "proxy_loop",
        str,
        "auto",
        "Event loop of the proxy: uvloop, asyncio, or auto (uvloop when installed).",
        flags=("--proxy-loop",),
        section="Proxy",
        choices=("auto", "uvloop", "asyncio"),
    ),
    # --- timeouts
    Setting(
        "timeout",
        _non_negative_float,
        30.0,
        "Seconds without a heartbeat before the master aborts a worker (SIGABRT, then SIGKILL) "
        "and logs the request it was stuck in. 0 disables.",
        flags=("-t", "--timeout"),
        section="Timeouts",
        metavar="SECONDS",
    ),
    Setting(
        "keepalive",
        _non_negative_float,
        5.0,
        "Seconds an idle keep-alive connection is kept open (0 disables keep-alive).",
        flags=("--keep-alive",),
        section="Timeouts",
        metavar="SECONDS",
    ),
    Setting(
        "header_timeout",
        _non_negative_float,
        10.0,
        "Seconds a client has to send a whole request head; past it: 408 and close (slowloris).",
        flags=("--header-timeout",),
        section="Timeouts",
        metavar="SECONDS",
    ),
    Setting(
        "graceful_timeout",
        _non_negative_float,
        30.0,
        "Seconds in-flight requests get to finish on a graceful stop.",
        flags=("--graceful-timeout",),
        section="Timeouts",
        metavar="SECONDS",
    ),
    # --- limits (gunicorn's names and defaults)
    Setting(
        "limit_request_line",
        _non_negative_int,
        4094,
        "Longest request line in bytes; longer gets 414. 0 means unlimited.",
        flags=("--limit-request-line",),
        section="Limits",
        metavar="BYTES",
    ),
    Setting(
        "limit_request_fields",
        _positive_int,
        100,
        "Most header fields in a request; more gets 431.",
        flags=("--limit-request-fields",),
        section="Limits",
        metavar="N",
    ),
    Setting(
        "limit_request_field_size",
        _non_negative_int,
        8190,
        "Largest header field (name and value) in bytes; larger gets 431. 0 means unlimited.",
        flags=("--limit-request-field-size",),
        section="Limits",
        metavar="BYTES",
    ),
    Setting(
        "require_host",
        _bool,
        True,
        "Answer 400 to an HTTP/1.1 request without a Host header, as RFC 9112 section 3.2 asks.",
        flags=("--require-host",),
        section="Limits",
        metavar="BOOL",
    ),
    Setting(
        "limit_request_body",
        _non_negative_int,
        0,
        "Largest request body in bytes; larger gets 413. 0 means unlimited.",
        flags=("--limit-request-body",),
        section="Limits",
        metavar="BYTES",
    ),
    # --- logging
    Setting(
        "log_level",
        str,
        "info",
        "Error log level.",
        flags=("--log-level",),
        section="Logging",
        choices=("debug", "info", "warning", "error", "critical"),
    ),
    Setting(
        "error_logfile",
        str,
        "-",
        "Error log file, '-' for stderr.",
        flags=("--error-logfile", "--log-file"),
        section="Logging",
        metavar="FILE",
    ),
    Setting(
        "access_logfile",
        _optional_str,
        None,
        "Access log file, '-' for stdout; off when unset.",
        flags=("--access-logfile",),
        section="Logging",
        metavar="FILE",
    ),
    Setting(
        "access_log_format",
        str,
        '%(h)s %(l)s %(u)s %(t)s "%(r)s" %(s)s %(b)s "%(f)s" "%(a)s"',
        "Access log line, with gunicorn's format atoms (h, l, u, t, r, m, U, q, H, s, B, b, f, a, T, "
        "D, M, L, p, {header}i, {header}o, {var}e).",
        flags=("--access-logformat",),
        section="Logging",
        metavar="FORMAT",
    ),
    # --- config itself
    Setting(
        "config",
        _optional_str,
        None,
        "Python config file; its module-level names set settings.",
        flags=("-c", "--config"),
        section="Config",
        metavar="FILE",
        cli=True,
    ),
]

BY_NAME: dict[str, Setting] = {s.name: s for s in SETTINGS}


@dataclass
class Config:
    """Resolved settings plus the app path. Attribute access: ``cfg.workers``."""

    values: dict[str, Any] = field(default_factory=dict)
    app_uri: str | None = None
    hooks: dict[str, Callable[..., Any]] = field(default_factory=dict)
    app_object: Any = None  # prefork_lb.run(app): an app given as an object, not a path

    def __getattr__(self, name: str) -> Any:
        try:
            return self.__dict__["values"][name]
        except KeyError:
            raise AttributeError(name) from None

    def set(self, name: str, value: Any, source: str) -> None:
        setting = BY_NAME.get(name)
        if setting is None:
            raise ConfigError(f"{source}: unknown setting {name!r}")
        self.values[name] = setting.convert(value, source)


def defaults() -> Config:
    cfg = Config()
    for s in SETTINGS:
        cfg.values[s.name] = s.resolve_default()
    return cfg


HOOK_NAMES = (
    "on_starting",
    "when_ready",
    "pre_fork",
    "post_fork",
    "post_worker_init",
    "worker_exit",
    "child_exit",
    "on_exit",
    "pre_request",
    "post_request",
)


def load_config_file(cfg: Config, path: str) -> None:
    """Run a Python config file; its module-level names that are settings or hooks apply."""
    if not os.path.isfile(path):
        raise ConfigError(f"config file {path!r} does not exist")
    try:
        namespace = runpy.run_path(path)
    except SyntaxError as exc:
        raise ConfigError(f"config file {path!r}: syntax error at line {exc.lineno}: {exc.msg}") from None
    except Exception as exc:  # the user's file raised: one line, not a traceback
        raise ConfigError(f"config file {path!r} failed: {type(exc).__name__}: {exc}") from None
    for name, value in namespace.items():
        if name.startswith("_") or name == "config":
            continue
        if name in HOOK_NAMES:
            if not callable(value):
                raise ConfigError(f"config file {path!r}: hook {name} is not callable")
            cfg.hooks[name] = value
        elif name in BY_NAME:
            cfg.set(name, value, f"config file {path!r}")
        elif name == "wsgi_app":
            cfg.app_uri = str(value)


def apply_env(cfg: Config, environ: Mapping[str, str]) -> None:
    for s in SETTINGS:
        if s.name == "config":
            continue
        for var in (*s.extra_env, s.env):  # the prefixed name wins over a generic one
            if var in environ and environ[var] != "":
                cfg.set(s.name, environ[var], f"environment variable {var}")


def build(
    cli_values: Mapping[str, Any], environ: Mapping[str, str] | None = None, app_uri: str | None = None
) -> Config:
    """Resolve defaults < config file < environment < command line."""
    environ = os.environ if environ is None else environ
    cfg = defaults()
    config_path = cli_values.get("config") or environ.get(BY_NAME["config"].env) or None
    if config_path:
        load_config_file(cfg, config_path)
        cfg.values["config"] = config_path
    apply_env(cfg, environ)
    for name, value in cli_values.items():
        if value is not None and name != "config":
            cfg.set(name, value, "command line")
    if app_uri:
        cfg.app_uri = app_uri
    return cfg


def _fmt_default(s: Setting) -> str:
    if s.default_doc is not None:
        return s.default_doc
    d = s.resolve_default()
    if d is None:
        return "unset"
    if isinstance(d, bool):
        return "true" if d else "false"
    if isinstance(d, str):
        return repr(d) if d else "''"
    return str(d)


def reference_markdown(settings: Iterable[Setting] = SETTINGS) -> str:
    """The text of docs/reference/settings.md (a test keeps the file in step)."""
    lines = [
        "# Settings reference",
        "",
        "Generated from `prefork_lb/config.py` by `python -m prefork_lb.config > docs/reference/settings.md`;",
        "do not edit by hand.",
        "",
        "Each setting can be given, lowest precedence first, as its default, in a Python config file",
        "(`-c FILE`, a module-level name), as an environment variable, or on the command line.",
        "",
    ]
    section = None
    for s in settings:
        if s.section != section:
            section = s.section
            lines += [f"## {section}", ""]
        lines.append(f"### `{s.name}`")
        lines.append("")
        if s.flags and s.cli:
            lines.append(f"- flag: `{', '.join(s.flags)}`" + (" (repeatable)" if s.append else ""))
        envs = ", ".join(f"`{e}`" for e in (s.env, *s.extra_env))
        lines.append(f"- environment: {envs}")
        if s.choices:
            lines.append(f"- choices: {', '.join(f'`{c}`' for c in s.choices)}")
        lines.append(f"- default: {_fmt_default(s)}")
        lines.append("")
        lines.append(s.help)
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    print(reference_markdown(), end="")
