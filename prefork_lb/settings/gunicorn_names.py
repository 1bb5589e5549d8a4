"""gunicorn's settings, name by name: what each one is here, or why it has no equivalent.

One declared table, :data:`GUNICORN`, used everywhere a gunicorn name can come in: a config
file (``gunicorn.conf.py`` read with ``-c`` or found in the working directory), the flags of
``GUNICORN_CMD_ARGS``, and the flag-by-flag table of docs/gunicorn.md (:func:`markdown_table`,
kept in step by a test). A unit test checks it against ``gunicorn.config.KNOWN_SETTINGS``, so a
gunicorn setting is either mapped or knowingly unsupported, never forgotten.

Pure: no import of gunicorn (only prefork_lb.gunicorn imports it), no I/O.

Invariants:

- Every entry is exactly one of: a setting here (``setting``, with an optional ``convert`` for
  a value of another shape), a hook prefork_lb calls (``hook``), the app (``wsgi_app``), the
  config file itself (``config``), a command-line action (``action``: ``--check-config``), or
  no equivalent (``reason``, said in the one warning line that names every such setting given).
- ``flags`` are gunicorn's own, and ``takes_value`` says whether its flag reads the next
  argument, so :func:`translate_argv` can drop an unsupported flag together with its value.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

SETTING = "setting"
HOOK = "hook"
APP = "wsgi_app"
CONFIG = "config"
ACTION = "action"
NONE = "none"


@dataclass(frozen=True)
class GunicornName:
    """One gunicorn setting and what it is here."""

    name: str
    kind: str  # SETTING, HOOK, APP, CONFIG, ACTION or NONE
    flags: tuple[str, ...] = ()  # gunicorn's flags for it
    target: str = ""  # SETTING: our setting's name; ACTION: our flag
    note: str = ""  # what differs (SETTING), or why there is no equivalent (NONE)
    convert: Callable[[Any], Any] | None = None  # a gunicorn value of another shape -> ours
    takes_value: bool = True  # its flag reads a value (False: store_true / store_const)
    our_flags: tuple[str, ...] = ()  # the flags GUNICORN_CMD_ARGS's flag becomes (default: ours)


def _lower(value: Any) -> Any:
    return value.lower() if isinstance(value, str) else value


def _reuse_port(value: Any) -> str:
    if isinstance(value, str):
        value = value.strip().lower() in ("1", "true", "yes", "on")
    return "reuseport" if value else "shared"


def _header_count(value: Any) -> Any:
    """gunicorn reads limit_request_fields 0 (or past 32768) as its maximum, 32768."""
    try:
        n = int(value)
    except (TypeError, ValueError):
        return value  # the setting's converter says what is wrong with it
    return 32768 if n <= 0 or n > 32768 else n


def _same(name: str, flags: tuple[str, ...], note: str = "", **kw: Any) -> GunicornName:
    return GunicornName(name, SETTING, flags, name, note, **kw)


def _to(name: str, flags: tuple[str, ...], target: str, note: str = "", **kw: Any) -> GunicornName:
    return GunicornName(name, SETTING, flags, target, note, **kw)


def _hook(name: str) -> GunicornName:
    return GunicornName(name, HOOK, note="called with gunicorn's arguments")


def _none(name: str, flags: tuple[str, ...], reason: str, takes_value: bool = True) -> GunicornName:
    return GunicornName(name, NONE, flags, note=reason, takes_value=takes_value)


_TLS = "TLS is the proxy's (--certfile, --keyfile)"
_H2 = "HTTP/1.1 only"
_DIRTY = "no dirty arbiters; use the per-worker offload pool (prefork_lb.offload)"
_STRICT = "the HTTP parser is strict (llhttp) and has no leniency switches"
_SYSLOG = "log to stderr or a file and let the supervisor (journald) collect it"
_LOGCONF = "the error log is set by --log-level and --error-logfile only"
_CTL = "the master's control socket is prefork_lb's own (docs/operations.md)"
_NOT_CALLED = "not called by prefork_lb's own master (it is with -k prefork_lb.gunicorn.Worker)"

GUNICORN: tuple[GunicornName, ...] = (
    GunicornName("config", CONFIG, ("-c", "--config"), note="a Python file, as gunicorn's"),
    GunicornName("wsgi_app", APP, note="the MODULE:APP argument"),
    _same("bind", ("-b", "--bind"), "same forms plus fd://N; a list or a string"),
    _same("backlog", ("--backlog",)),
    _same("workers", ("-w", "--workers"), "default: the usable CPUs (gunicorn: 1)"),
    _none("worker_class", ("-k", "--worker-class"), "one worker type (gevent + httptools); see --dispatch"),
    _none("threads", ("--threads",), "a greenlet per connection; CPU work goes to offload()"),
    _same("worker_connections", ("--worker-connections",)),
    _same("max_requests", ("--max-requests",)),
    _same("max_requests_jitter", ("--max-requests-jitter",)),
    _same("timeout", ("-t", "--timeout"), "heartbeat timeout; see also --request-timeout"),
    _same("graceful_timeout", ("--graceful-timeout",)),
    _same("keepalive", ("--keep-alive",), "default 5 s (gunicorn: 2 s)"),
    _same("limit_request_line", ("--limit-request-line",), "414 past it"),
    _same(
        "limit_request_fields",
        ("--limit-request-fields",),
        "431 past it; in a config file 0 is gunicorn's 32768",
        convert=_header_count,
    ),
    _same(
        "limit_request_field_size",
        ("--limit-request-field_size",),
        "431 past it",
        our_flags=("--limit-request-field-size",),
    ),
    _none("reload", ("--reload",), "send HUP: new workers load the new code", False),
    _none("reload_engine", ("--reload-engine",), "no code reloader; send HUP"),
    _none("reload_extra_files", ("--reload-extra-file",), "no code reloader; send HUP"),
    _none("spew", ("--spew",), "no tracing switch", False),
    GunicornName("check_config", ACTION, ("--check-config",), "--check-config", takes_value=False),
    GunicornName("print_config", ACTION, ("--print-config",), "--print-config", takes_value=False),
    _none(
        "preload_app",
        ("--preload",),
        "workers always import the app after fork(), so HUP loads new code",
        False,
    ),
    _none("sendfile", ("--no-sendfile",), "wsgi.file_wrapper is always served with sendfile", False),
    _to(
        "reuse_port",
        ("--reuse-port",),
        "dispatch",
        "True: --dispatch reuseport (the default here), False: --dispatch shared",
        convert=_reuse_port,
        takes_value=False,
        our_flags=("--dispatch", "reuseport"),
    ),
    _same("chdir", ("--chdir",)),
    _none("daemon", ("-D", "--daemon"), "run it under a supervisor (systemd, a container runtime)", False),
    _none("raw_env", ("-e", "--env"), "set the environment in the service or the shell"),
    _same("pidfile", ("-p", "--pid")),
    _none("worker_tmp_dir", ("--worker-tmp-dir",), "heartbeats are in shared memory, not in files"),
    _same("user", ("-u", "--user"), "the workers switch to it after fork (the master needs root)"),
    _same("group", ("-g", "--group"), "the workers switch to it after fork (the master needs root)"),
    _same("umask", ("-m", "--umask"), "the master's umask from the start: files and unix sockets it makes"),
    _none("initgroups", ("--initgroups",), "--user sets the user's supplementary groups always", False),
    _none("tmp_upload_dir", (), "request bodies are streamed to the app, never spooled to files"),
    _none(
        "secure_scheme_headers",
        (),
        "fixed: X-Forwarded-Proto, else Forwarded proto=, from --forwarded-allow-ips peers",
    ),
    _same("forwarded_allow_ips", ("--forwarded-allow-ips",), "addresses and networks, a list or a string"),
    _to("accesslog", ("--access-logfile",), "access_logfile", "'-' for stdout, as gunicorn"),
    _none("disable_redirect_access_to_syslog", ("--disable-redirect-access-to-syslog",), _SYSLOG, False),
    _same("access_log_format", ("--access-logformat",), "gunicorn's atoms, or json"),
    _to("errorlog", ("--error-logfile", "--log-file"), "error_logfile", "'-' for stderr, as gunicorn"),
    _to("loglevel", ("--log-level",), "log_level", "the same names, any case", convert=_lower),
    _none("capture_output", ("--capture-output",), "the app's stdout and stderr are the master's", False),
    _none("logger_class", ("--logger-class",), _LOGCONF),
    _none("logconfig", ("--log-config",), _LOGCONF),
    _none("logconfig_dict", (), _LOGCONF),
    _none("logconfig_json", ("--log-config-json",), _LOGCONF),
    _none("syslog_addr", ("--log-syslog-to",), _SYSLOG),
    _none("syslog", ("--log-syslog",), _SYSLOG, False),
    _none("syslog_prefix", ("--log-syslog-prefix",), _SYSLOG),
    _none("syslog_facility", ("--log-syslog-facility",), _SYSLOG),
    _none(
        "enable_stdio_inheritance", ("-R", "--enable-stdio-inheritance"), "stdio is always inherited", False
    ),
    _same("statsd_host", ("--statsd-host",), "pushed by the admin process, gunicorn's metric names"),
    _same("dogstatsd_tags", ("--dogstatsd-tags",)),
    _same("statsd_prefix", ("--statsd-prefix",)),
    _none("enable_backlog_metric", ("--enable-backlog-metric",), "see /metrics and lb-stats", False),
    _same("proc_name", ("-n", "--name")),
    _none("default_proc_name", (), "gunicorn's internal default; set proc_name"),
    _none("pythonpath", ("--pythonpath",), "set PYTHONPATH, or --chdir"),
    _none("paste", ("--paste", "--paster"), "no PasteDeploy loader; give MODULE:APP"),
    _hook("on_starting"),
    _none("on_reload", (), "not called: HUP starts new workers, see when_ready"),
    _hook("when_ready"),
    _hook("pre_fork"),
    _hook("post_fork"),
    _hook("post_worker_init"),
    _none("worker_int", (), _NOT_CALLED),
    _none("worker_abort", (), _NOT_CALLED),
    _none("pre_exec", (), "not called: USR2 starts a new master"),
    _none("pre_request", (), _NOT_CALLED),
    _none("post_request", (), _NOT_CALLED),
    _hook("child_exit"),
    _hook("worker_exit"),
    _none("nworkers_changed", (), "not called; TTIN/TTOU and autoscaling are logged"),
    _hook("on_exit"),
    _none("ssl_context", (), _TLS),
    _none("proxy_protocol", ("--proxy-protocol",), "no PROXY protocol; the proxy sends X-Forwarded-*"),
    _none("proxy_allow_ips", ("--proxy-allow-from",), "no PROXY protocol"),
    _none("protocol", ("--protocol",), "HTTP only (no uwsgi protocol)"),
    _none("uwsgi_allow_ips", ("--uwsgi-allow-from",), "HTTP only (no uwsgi protocol)"),
    _same("keyfile", ("--keyfile",), "the proxy's listeners (--dispatch proxy, prefork_lb proxy)"),
    _same("certfile", ("--certfile",), "the proxy's listeners (--dispatch proxy, prefork_lb proxy)"),
    _none("ssl_version", ("--ssl-version",), _TLS),
    _none("cert_reqs", ("--cert-reqs",), _TLS),
    _none("ca_certs", ("--ca-certs",), _TLS),
    _none("suppress_ragged_eofs", ("--suppress-ragged-eofs",), _TLS, False),
    _none("do_handshake_on_connect", ("--do-handshake-on-connect",), _TLS, False),
    _none("ciphers", ("--ciphers",), _TLS),
    _none("http_protocols", ("--http-protocols",), _H2),
    _none("http2_cleartext", ("--http2-cleartext",), _H2),
    _none("http2_max_concurrent_streams", ("--http2-max-concurrent-streams",), _H2),
    _none("http2_initial_window_size", ("--http2-initial-window-size",), _H2),
    _none("http2_max_frame_size", ("--http2-max-frame-size",), _H2),
    _none("http2_max_header_list_size", ("--http2-max-header-list-size",), _H2),
    _none("raw_paste_global_conf", ("--paste-global",), "no PasteDeploy loader"),
    _none("permit_obsolete_folding", ("--permit-obsolete-folding",), _STRICT, False),
    _none("strip_header_spaces", ("--strip-header-spaces",), _STRICT, False),
    _none("permit_unconventional_http_method", ("--permit-unconventional-http-method",), _STRICT, False),
    _none("permit_unconventional_http_version", ("--permit-unconventional-http-version",), _STRICT, False),
    _none("casefold_http_method", ("--casefold-http-method",), _STRICT, False),
    _none("forwarder_headers", ("--forwarder-headers",), "SCRIPT_NAME comes from --root-path only"),
    _none("header_map", ("--header-map",), "headers with '_' are refused (400), never mapped"),
    _none("asgi_loop", ("--asgi-loop",), "the ASGI worker always runs uvloop"),
    _to("asgi_lifespan", ("--asgi-lifespan",), "lifespan", convert=_lower),
    _none(
        "asgi_disconnect_grace_period",
        ("--asgi-disconnect-grace-period",),
        "the app gets http.disconnect and its task is not cancelled for it (--request-timeout bounds it)",
    ),
    _to("websocket_max_message_size", ("--websocket-max-message-size",), "ws_max_size"),
    _none("http_parser", ("--http-parser",), "one parser: httptools (llhttp)"),
    _same("root_path", ("--root-path",)),
    _none("dirty_apps", ("--dirty-app",), _DIRTY),
    _none("dirty_workers", ("--dirty-workers",), _DIRTY),
    _none("dirty_timeout", ("--dirty-timeout",), _DIRTY),
    _none("dirty_threads", ("--dirty-threads",), _DIRTY),
    _none("dirty_graceful_timeout", ("--dirty-graceful-timeout",), _DIRTY),
    _none("on_dirty_starting", (), _DIRTY),
    _none("dirty_post_fork", (), _DIRTY),
    _none("dirty_worker_init", (), _DIRTY),
    _none("dirty_worker_exit", (), _DIRTY),
    _none("control_socket", ("--control-socket",), _CTL),
    _none("control_socket_mode", ("--control-socket-mode",), _CTL),
    _none("control_socket_disable", ("--no-control-socket",), _CTL, False),
)

BY_GUNICORN_NAME: dict[str, GunicornName] = {g.name: g for g in GUNICORN}
_BY_FLAG: dict[str, GunicornName] = {f: g for g in GUNICORN for f in g.flags}


def unsupported_warning(names: Iterable[str], source: str) -> str:
    """The one warning line that names every gunicorn setting ``source`` gave without an
    equivalent here (see docs/gunicorn.md for why each)."""
    return (
        f"{source}: gunicorn settings without an equivalent in prefork_lb, ignored: "
        f"{', '.join(names)} (docs/gunicorn.md says why)"
    )


def translate_argv(argv: Sequence[str], drop_unsupported: bool = True) -> tuple[list[str], list[str]]:
    """``GUNICORN_CMD_ARGS`` (split) as prefork_lb's flags: (argv, the gunicorn settings dropped
    for having no equivalent). A gunicorn flag spelt otherwise here becomes ours
    (``--limit-request-field_size``, ``--reuse-port``); every other token stays as it is, so
    prefork_lb's own flags are fine there too and a typo is still refused. With
    ``drop_unsupported=False`` (the command line itself) those stay too, for the parser to
    refuse with :func:`refusal`."""
    out: list[str] = []
    dropped: list[str] = []
    tokens = list(argv)
    i = 0
    while i < len(tokens):
        token = tokens[i]
        i += 1
        if token == "--":
            out += tokens[i - 1 :]
            break
        flag, eq, value = token.partition("=") if token.startswith("--") else (token, "", "")
        g = _BY_FLAG.get(flag)
        if g is None:
            out.append(token)
            continue
        if g.kind == NONE and not drop_unsupported:
            out.append(token)
            continue
        if g.kind == NONE:
            if g.name not in dropped:
                dropped.append(g.name)
            if g.takes_value and not eq and i < len(tokens):
                i += 1  # its value goes with it
            continue
        if g.our_flags:
            out += list(g.our_flags) + ([value] if eq else [])
        else:
            out.append(token)
    return out, dropped


def refusal(flag: str) -> str | None:
    """Why the command line refuses ``flag`` when it is a gunicorn flag with no equivalent here
    (one line), else None."""
    g = _BY_FLAG.get(flag)
    if g is None or g.kind != NONE:
        return None
    return f"{flag} is gunicorn's {g.name}, which has no equivalent in prefork_lb: {g.note} (see docs/gunicorn.md)"


def our_flags(g: GunicornName, settings: dict[str, Any]) -> str:
    """The flag column of the docs' table: the flags here for ``g``."""
    if g.kind == SETTING:
        s = settings[g.target]
        if g.name == "reuse_port":
            return "`--dispatch reuseport`"
        return ", ".join(f"`{f}`" for f in s.flags) if s.flags else "n/a"
    if g.kind == ACTION:
        return f"`{g.target}`"
    if g.kind == CONFIG:
        return "`-c, --config`"
    if g.kind == APP:
        return "the `MODULE:APP` argument"
    return "n/a"


def markdown_table(settings: dict[str, Any]) -> str:
    """docs/gunicorn.md's flag-by-flag table, from :data:`GUNICORN` (``settings``: the
    registry by name, prefork_lb.config.BY_NAME)."""
    lines = [
        "| gunicorn | flag here | config-file name here | notes |",
        "|---|---|---|---|",
    ]
    for g in GUNICORN:
        gflags = f" (`{'`, `'.join(g.flags)}`)" if g.flags else ""
        if g.kind == SETTING:
            name = f"`{g.target}`" if g.target == g.name else f"`{g.target}` or `{g.name}`"
            if g.name == "reuse_port":
                name = "`dispatch` or `reuse_port`"
        elif g.kind in (HOOK, APP):
            name = f"`{g.name}`"
        else:
            name = "n/a"
        note = g.note if g.kind != NONE else f"**no equivalent**: {g.note}"
        lines.append(f"| `{g.name}`{gflags} | {our_flags(g, settings)} | {name} | {note} |")
    return "\n".join(lines) + "\n"
