"""``prefork_lb ctl``: the client of the control socket (prefork_lb.admin.control).

``python -m prefork_lb ctl [--socket PATH | -p PIDFILE] [--json] [--timeout S] COMMAND ...``
finds the socket as the server does (prefork_lb.admin.protocol.socket_path: --socket, else
$PREFORK_LB_CONTROL_SOCKET, else next to the pid file, else the runtime directory), sends one
request, and prints the answer for a person (or the JSON answer with ``--json``).

Commands that change something wait for it here, by polling ``status``: ``reload`` until every
worker slot has a ready successor of the workers seen before the HUP (exit 1 when a new worker
fails to boot, or at --timeout); ``scale`` until the target count of workers is ready; ``stop``
until the master has exited. Exit codes are prefork_lb.admin.protocol's: 0 done, 1 not done,
2 refused (bad usage, an unknown worker or backend, no server on the socket), each with one
line on stderr.

Parsing (:func:`parse_argv`), the waits' decisions (:func:`reload_outcome`, :func:`scale_done`)
and the human output (:func:`format_status` and friends) are pure functions, tested alone.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NoReturn

from prefork_lb.admin import protocol as p

USAGE = """\
usage: prefork_lb ctl [--socket PATH | -p PIDFILE] [--json] [--timeout S] COMMAND
commands:
  status                       mode, workers (state, in flight, served, RSS, current request), backends
  workers                      the workers only
  reload                       as SIGHUP; waits until the new workers are ready (exit 1 if not)
  scale N | +N | -N            set the worker count; waits until it is reached
  reopen-logs                  as SIGUSR1
  stop [--graceful-timeout S]  graceful stop; waits until the master has exited
  backend list                 the proxy's backends
  backend drain NAME           no new requests to NAME; those in flight finish
  backend disable NAME         no requests at all to NAME (idle connections closed)
  backend enable NAME          undo drain or disable
  backend weight NAME W        set NAME's weight (1 to 1000)
  backend add HOST:PORT[=W]    a new backend (remote backends only)
  backend remove NAME          forget a remote backend
  cache purge [PREFIX]         drop cached responses: all, or those whose URL starts with PREFIX
                               (/PATH on any host, HOST/PATH, or SCHEME://HOST/PATH)
options:
  --socket PATH   the control socket (default: as the server: next to -p PIDFILE, else the
                  runtime directory; or $PREFORK_LB_CONTROL_SOCKET)
  -p, --pid FILE  the server's pid file (finds the socket next to it)
  --json          print the server's JSON answer
  --timeout S     how long reload, scale and stop wait (default 60)
"""

POLL = 0.2
CONNECT_TIMEOUT = 5.0
ANSWER_TIMEOUT = 30.0


class UsageError(Exception):
    """Bad usage of ctl: one line, exit code 2."""


@dataclass
class Options:
    socket: str | None = None
    pidfile: str | None = None
    json: bool = False
    timeout: float = 60.0
    request: dict[str, Any] = field(default_factory=dict)


_VALUED = {"--socket": "socket", "-p": "pidfile", "--pid": "pidfile", "--timeout": "timeout"}


def _seconds(flag: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise UsageError(f"{flag}: expected seconds, got {text!r}") from None
    if not 0 <= value <= 86400:
        raise UsageError(f"{flag}: must be 0 to 86400 seconds, got {text!r}")
    return value


def parse_argv(argv: Sequence[str]) -> Options:
    """The ctl command line -> its options and the request (UsageError: one line)."""
    opts = Options()
    words: list[str] = []
    grace: float | None = None
    args = list(argv)
    while args:
        token = args.pop(0)
        name, eq, attached = token.partition("=")
        if token in ("-h", "--help"):
            raise UsageError("help")
        if name in _VALUED or name == "--graceful-timeout":
            if eq:
                value = attached
            elif args:
                value = args.pop(0)
            else:
                raise UsageError(f"{name} needs a value")
            if name == "--graceful-timeout":
                grace = _seconds(name, value)
            elif name == "--timeout":
                opts.timeout = _seconds(name, value)
            else:
                setattr(opts, _VALUED[name], value)
        elif token == "--json":
            opts.json = True
        elif token.startswith("--") or (token.startswith("-") and not token[1:].isdigit() and token != "-"):
            raise UsageError(f"unknown option {token}")
        else:
            words.append(token)
    opts.request = request_of(words)
    if grace is not None:
        if opts.request["cmd"] != "stop":
            raise UsageError("--graceful-timeout goes with stop")
        opts.request["graceful_timeout"] = grace
    try:
        p.check_request(dict(opts.request))
    except p.CommandError as exc:
        raise UsageError(str(exc)) from None
    return opts


def request_of(words: list[str]) -> dict[str, Any]:
    if not words:
        raise UsageError(
            "no command given (status, workers, reload, scale, reopen-logs, stop, backend, cache)"
        )
    cmd, rest = words[0], words[1:]
    if cmd not in p.COMMANDS:
        raise UsageError(
            f"unknown command {cmd!r} (status, workers, reload, scale, reopen-logs, stop, backend, cache)"
        )
    if cmd == "scale":
        if len(rest) != 1:
            raise UsageError("scale takes one count: N, +N or -N")
        return {"cmd": cmd, "workers": rest[0]}
    if cmd == "backend":
        return backend_request(rest)
    if cmd == "cache":
        return cache_request(rest)
    if rest:
        raise UsageError(f"{cmd} takes no argument (got {rest[0]!r})")
    return {"cmd": cmd}


def backend_request(rest: list[str]) -> dict[str, Any]:
    if not rest:
        raise UsageError("backend needs an operation: " + ", ".join(p.BACKEND_OPS))
    op, args = rest[0], rest[1:]
    if op not in p.BACKEND_OPS:
        raise UsageError(f"backend: unknown operation {op!r} (one of {', '.join(p.BACKEND_OPS)})")
    want = {"list": 0, "weight": 2}.get(op, 1)
    if len(args) != want:
        shape = {
            "list": "backend list",
            "weight": "backend weight NAME W",
            "add": "backend add HOST:PORT[=W]",
        }
        raise UsageError(f"usage: {shape.get(op, f'backend {op} NAME')}")
    req: dict[str, Any] = {"cmd": "backend", "op": op}
    if args:
        req["name"] = args[0]
    if op == "weight":
        if not args[1].isdigit():
            raise UsageError(f"backend weight: expected an integer from 1 to {p.MAX_WEIGHT}, got {args[1]!r}")
        req["weight"] = int(args[1])
    return req


def cache_request(rest: list[str]) -> dict[str, Any]:
    if not rest or rest[0] not in p.CACHE_OPS:
        got = f" (got {rest[0]!r})" if rest else ""
        raise UsageError(f"cache needs an operation: {', '.join(p.CACHE_OPS)}{got}")
    if len(rest) > 2:
        raise UsageError("usage: cache purge [PREFIX]")
    req: dict[str, Any] = {"cmd": "cache", "op": rest[0]}
    if len(rest) == 2:
        req["prefix"] = rest[1]
    return req


# -- talking to the server -------------------------------------------------------------------------


class Unreachable(Exception):
    """No server answers on the socket: one line, exit code 2."""


def find_socket(opts: Options, environ: Mapping[str, str]) -> str:
    value = opts.socket or environ.get("PREFORK_LB_CONTROL_SOCKET") or None
    pidfile = opts.pidfile or environ.get("PREFORK_LB_PIDFILE") or None
    path = p.socket_path(value, pidfile, environ, os.getuid())
    if path is None:
        raise Unreachable("the control socket is off (--control-socket off)")
    return path


def check_owner(path: str, uid: int | None = None) -> None:
    """Refuse a socket another user made (in a shared /tmp, anyone can create the default
    path first): only the server's user may talk to it, and only to its own server."""
    try:
        st = os.lstat(path)
    except OSError:
        return  # connect() says what is wrong
    me = os.getuid() if uid is None else uid
    if st.st_uid != me and me != 0:
        raise Unreachable(f"{path} belongs to another user (uid {st.st_uid}): not talking to it")


def ask(path: str, request: Mapping[str, Any], timeout: float = ANSWER_TIMEOUT) -> dict[str, Any]:
    """One request, one answer (Unreachable when nothing answers on ``path``)."""
    check_owner(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(CONNECT_TIMEOUT)
        try:
            sock.connect(path)
        except FileNotFoundError:
            raise Unreachable(f"no control socket at {path}: is the server running?") from None
        except ConnectionRefusedError:
            raise Unreachable(f"nothing listens on {path}: the server is not running") from None
        except PermissionError:
            raise Unreachable(f"permission denied on {path}: run ctl as the server's user") from None
        except OSError as exc:
            raise Unreachable(f"cannot connect to {path}: {exc.strerror or exc}") from None
        sock.settimeout(timeout)
        try:
            sock.sendall(json.dumps(dict(request)).encode() + b"\n")
            buf = b""
            while b"\n" not in buf:
                chunk = sock.recv(1 << 20)
                if not chunk:
                    raise Unreachable(f"the server closed {path} without answering (is it stopping?)")
                buf += chunk
        except TimeoutError:
            raise Unreachable(f"no answer on {path} within {timeout:g} s") from None
        except OSError as exc:
            raise Unreachable(f"lost the connection to {path}: {exc.strerror or exc}") from None
        try:
            doc = json.loads(buf.partition(b"\n")[0])
        except ValueError:
            raise Unreachable(f"{path} answered something that is not JSON") from None
        if not isinstance(doc, dict):
            raise Unreachable(f"{path} answered something that is not a JSON object")
        return doc
    finally:
        sock.close()


# -- waiting ---------------------------------------------------------------------------------------

_SERVING = ("ready", "retiring")


def reload_outcome(
    before: Sequence[int], boot_failed: int, status: Mapping[str, Any], helper: Sequence[int] = ()
) -> str | None:
    """ "done" once every worker slot has a ready worker that was not there before the HUP (and
    the helper, the proxy or dispatcher, a new ready process when there was one); "failed" once a
    new worker failed to boot; None while neither."""
    old = set(before) | set(helper)
    target = int(status["master"]["workers_target"])
    fresh = {w["slot"] for w in status["workers"] if w["pid"] not in old and w["state"] in _SERVING}
    helpers = [r for r in status.get("processes", []) if r["role"] == "helper"]
    helper_done = not helper or any(r["pid"] not in old and r["state"] in _SERVING for r in helpers)
    serving_old = any(w["pid"] in old and w["state"] in _SERVING for w in status["workers"])
    if helper_done and not serving_old and all(slot in fresh for slot in range(target)):
        return "done"
    if int(status["master"].get("boot_failed", 0)) > boot_failed:
        return "failed"
    return None


def scale_done(status: Mapping[str, Any], target: int) -> bool:
    """The target count is set, each slot below it has a ready worker and none above it lives."""
    if int(status["master"]["workers_target"]) != target:
        return False
    slots = {w["slot"] for w in status["workers"] if w["state"] in _SERVING}
    beyond = [w for w in status["workers"] if w["slot"] >= target]
    return all(s in slots for s in range(target)) and not beyond


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, exited and waiting for its parent to reap it, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rpartition(b")")[2].split()[0] != b"Z"
    except (OSError, IndexError):
        return True


def poll(path: str, timeout: float, check: Callable[[dict[str, Any]], Any]) -> Any:
    """Ask ``status`` until ``check`` returns something true, or None at the deadline. An
    admin process being replaced (reload) may drop a connection: that is asked again."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            got = check(ask(path, {"cmd": "status"}, timeout=max(1.0, deadline - time.monotonic())))
            if got:
                return got
        except Unreachable:
            pass
        if time.monotonic() >= deadline:
            return None
        time.sleep(POLL)


# -- human output ----------------------------------------------------------------------------------


def _size(n: Any) -> str:
    if not isinstance(n, int | float):
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return "-"


def _ms(v: Any) -> str:
    return "-" if v is None else f"{v:g} ms"


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    cells = [list(header)] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    return ["  " + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells]


def format_workers(workers: Sequence[Mapping[str, Any]]) -> list[str]:
    rows = []
    for w in workers:
        current = "-"
        if w.get("current_request"):
            current = f"{w['current_request']} ({w.get('current_for') or 0:.1f} s)"
        rows.append(
            [w["slot"], w["pid"], w["state"], w["in_flight"], w["served"], _size(w.get("rss")), current]
        )
    header = ["SLOT", "PID", "STATE", "IN FLIGHT", "SERVED", "RSS", "CURRENT REQUEST"]
    return table(*with_pool_column(header, rows, workers, 1))


def with_pool_column(
    header: list[str], rows: list[list[Any]], docs: Sequence[Mapping[str, Any]], at: int
) -> tuple[list[str], list[list[Any]]]:
    """--mount: a POOL column (each row's route) at ``at``, when a row has a pool."""
    if not any(d.get("pool") for d in docs):
        return header, rows
    header = [*header[:at], "POOL", *header[at:]]
    return header, [[*r[:at], d.get("pool") or "-", *r[at:]] for r, d in zip(rows, docs, strict=True)]


def format_backends(backends: Sequence[Mapping[str, Any]]) -> list[str]:
    rows: list[list[Any]] = [
        [
            b["name"],
            b["state"] + (f" ({b['reason']})" if b.get("reason") and b["state"] == "down" else ""),
            b.get("weight", 1),
            b.get("in_flight", 0),
            b.get("requests", 0),
            b.get("errors", 0),
            _ms(b.get("p50_ms")),
            _ms(b.get("p99_ms")),
        ]
        for b in backends
    ]
    header = ["BACKEND", "STATE", "WEIGHT", "IN FLIGHT", "REQUESTS", "ERRORS", "P50", "P99"]
    return table(*with_pool_column(header, rows, backends, 1))


def format_status(doc: Mapping[str, Any], workers_only: bool = False) -> str:
    m = doc["master"]
    workers = doc["workers"]
    lines = []
    if not workers_only:
        up = m.get("uptime")
        lines.append(
            f"master {m['pid']}, dispatch {doc['mode']}, health {doc['health']}, "
            f"up {'-' if up is None else f'{up:g} s'}, prefork_lb {m.get('version', '?')}"
        )
    if workers_only and not workers and not m["workers_target"]:
        lines.append("workers: none (the standalone proxy; its backends: prefork_lb ctl backend list)")
    elif workers or m["workers_target"] or workers_only:
        lines.append(
            f"workers: {len(workers)} (target {m['workers_target']}), in flight {doc['in_flight']}, "
            f"served {doc['served']}"
        )
    if workers:
        lines += format_workers(workers)
    if not workers_only and "backends" in doc:
        lines.append(f"backends: {len(doc['backends'])}" + (f" ({doc['proxy']})" if doc.get("proxy") else ""))
        if doc["backends"]:
            lines += format_backends(doc["backends"])
    return "\n".join(lines) + "\n"


def format_backend_change(req: Mapping[str, Any], doc: Mapping[str, Any]) -> str:
    b = doc.get("backend") or {}
    op = req["op"]
    if op == "remove":
        return f"backend {req['name']} removed\n"
    if op == "add":
        return f"backend {b.get('name', req['name'])} added (weight {b.get('weight', 1)})\n"
    return f"backend {b.get('name', req['name'])}: {b.get('state', '?')}, weight {b.get('weight', '?')}\n"


# -- main ------------------------------------------------------------------------------------------


def format_purge(doc: Mapping[str, Any]) -> str:
    n = int(doc.get("purged", 0))
    what = f" under {doc['prefix']}" if doc.get("prefix") else ""
    left = doc.get("cache") or {}
    return (
        f"purged {n} cached response{'' if n == 1 else 's'}{what}; "
        f"{left.get('entries', '?')} left ({_size(left.get('bytes'))}) in the proxy process (pid {doc.get('pid', '?')})\n"
    )


def fail(message: str, code: int = p.EXIT_USAGE) -> NoReturn:
    sys.stderr.write(f"prefork_lb ctl: {message}\n")
    sys.exit(code)


def main(argv: Sequence[str], environ: Mapping[str, str] | None = None) -> NoReturn:
    env = os.environ if environ is None else environ
    try:
        opts = parse_argv(argv)
    except UsageError as exc:
        if str(exc) == "help":
            sys.stdout.write(USAGE)
            sys.exit(0)
        fail(f"{exc} (see prefork_lb ctl --help)")
    try:
        path = find_socket(opts, env)
        doc = ask_once_more(path, opts.request)
        if not doc.get("ok"):
            fail(str(doc.get("error", "refused")), int(doc.get("exit", p.EXIT_USAGE)))
        code, text = run(path, opts, doc)
    except Unreachable as exc:
        fail(str(exc))
    sys.stdout.write(text)
    sys.exit(code)


def ask_once_more(path: str, request: dict[str, Any]) -> dict[str, Any]:
    """:func:`ask`, and for a question that changes nothing, once more after a dropped
    connection (an admin process being replaced by a reload closes the ones it holds)."""
    try:
        return ask(path, request)
    except Unreachable as exc:
        reading = request["cmd"] in ("status", "workers") or request.get("op") == "list"
        if not reading or "closed" not in str(exc):
            raise
    time.sleep(POLL)
    return ask(path, request)


def run(path: str, opts: Options, doc: dict[str, Any]) -> tuple[int, str]:
    """After the first answer: wait where the command waits; the exit code and what to print."""
    req = opts.request
    cmd = req["cmd"]
    show = (lambda d, line: json.dumps(d, indent=1) + "\n") if opts.json else (lambda d, line: line)
    if cmd in ("status", "workers"):
        return 0, show(doc, format_status(doc, workers_only=cmd == "workers"))
    if cmd == "reload":
        before, failed, helper = doc["before"], doc["boot_failed"], doc.get("before_helper", [])
        got = poll(path, opts.timeout, lambda s: reload_outcome(before, failed, s, helper))
        if got == "done":
            what = "every worker was replaced" if before else "the proxy process was replaced"
            return 0, show({**doc, "result": "done"}, f"reloaded: {what} and is ready\n")
        why = (
            "a new worker failed to boot (see the server's error log); the running workers keep serving"
            if got == "failed"
            else f"the new workers were not ready within {opts.timeout:g} s"
        )
        sys.stderr.write(f"prefork_lb ctl: reload failed: {why}\n")
        return p.EXIT_FAILED, show({**doc, "result": got or "timeout"}, "")
    if cmd == "scale":
        target = int(doc["workers"])
        if poll(path, opts.timeout, lambda s: scale_done(s, target)):
            return 0, show(
                doc, f"scaled: {target} worker{'' if target == 1 else 's'} ready (was {doc['from']})\n"
            )
        sys.stderr.write(
            f"prefork_lb ctl: scale: {target} workers were not ready within {opts.timeout:g} s\n"
        )
        return p.EXIT_FAILED, show(doc, "")
    if cmd == "reopen-logs":
        return 0, show(doc, f"asked the master (pid {doc['master_pid']}) to reopen its log files\n")
    if cmd == "stop":
        return stop_wait(doc, opts, show)
    if cmd == "cache":
        return 0, show(doc, format_purge(doc))
    if req["op"] == "list":
        return 0, show(
            doc, "\n".join(format_backends(doc["backends"])) + "\n" if doc["backends"] else "no backends\n"
        )
    return 0, show(doc, format_backend_change(req, doc))


def stop_wait(doc: dict[str, Any], opts: Options, show: Callable[[Any, str], str]) -> tuple[int, str]:
    pid = int(doc["master_pid"])
    took = float(doc.get("shutdown_delay", 0.0)) + float(doc["graceful_timeout"])
    deadline = time.monotonic() + max(opts.timeout, took + 10.0)
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(POLL)
    if alive(pid):
        sys.stderr.write(f"prefork_lb ctl: stop: the master (pid {pid}) is still running\n")
        return p.EXIT_FAILED, show(doc, "")
    return 0, show(doc, f"stopped: the master (pid {pid}) has exited\n")
