"""Error log set-up and the access log: gunicorn's format atoms, or JSON (``--access-logformat
json``).

Invariants of the JSON format: one object per line, always; every value a header, the target or
the client chose goes through ``json.dumps`` with ``ensure_ascii``, so quotes, backslashes,
newlines, control characters, U+2028 and bytes that are not UTF-8 are escaped and never end or
split a line (a value that is not UTF-8 keeps its bytes readable as ``\\xNN``). Field names are
the OpenTelemetry HTTP semantic conventions' where they have one (see :func:`json_record`).
Nothing here runs unless the access log is on: the servers call :meth:`AccessLog.log` only then.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from typing import IO, Any

from prefork_lb.request_id import ENVIRON_KEY

JSON_FORMAT = "json"  # the --access-logformat value that selects JSON lines

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


def _text(value: str) -> str:
    """A header or target value as text: the WSGI strings hold the raw bytes as latin-1; read
    them as UTF-8, and bytes that are not UTF-8 as ``\\xNN``."""
    if value.isascii():
        return value
    try:
        return value.encode("latin-1").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # not a latin-1 (byte) string: already text
        return value


def _host_port(host: str) -> tuple[str, int | None]:
    """``example.org:8080`` -> (``example.org``, 8080); ``[::1]:80`` -> (``::1``, 80)."""
    name, sep, port = host.rpartition(":")
    if sep and port.isdigit() and (not name.startswith("[") or name.endswith("]")):
        host = name
        number: int | None = int(port)
    else:
        number = None
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, number


def json_record(
    env: dict[str, Any],
    status: str | None,
    body_bytes: int | None,
    duration: float,
    pid: int,
    now: float,
    backend: str | None = None,
) -> dict[str, Any]:
    """One request's access log record, with OpenTelemetry's names (HTTP semantic conventions)
    where they have one, ECS's ``http.request.id`` for the request id, and ``prefork_lb.*`` for
    ours. Fields with nothing to say (no query, no User-Agent, no backend) are left out."""
    rec: dict[str, Any] = {
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1000):03d}Z",
        "http.request.method": env.get("REQUEST_METHOD", "-"),
        "url.path": _text(env.get("PATH_INFO", "")),
    }
    query = env.get("QUERY_STRING")
    if query:
        rec["url.query"] = _text(query)
    scheme = env.get("wsgi.url_scheme")
    if scheme:
        rec["url.scheme"] = scheme
    code = (status or "").split(" ", 1)[0]
    if code.isdigit():
        rec["http.response.status_code"] = int(code)
    rec["http.server.request.duration"] = round(duration, 6)
    if body_bytes is not None:
        rec["http.response.body.size"] = body_bytes
    protocol = env.get("SERVER_PROTOCOL", "")
    if protocol.startswith("HTTP/"):
        rec["network.protocol.version"] = protocol[5:]
    client = env.get("REMOTE_ADDR")
    if client:
        rec["client.address"] = client
    host = env.get("HTTP_HOST") or env.get("SERVER_NAME")
    if host:
        address, port = _host_port(_text(host))
        rec["server.address"] = address
        if port is not None:
            rec["server.port"] = port
    agent = env.get("HTTP_USER_AGENT")
    if agent is not None:
        rec["user_agent.original"] = _text(agent)
    referer = env.get("HTTP_REFERER")
    if referer is not None:
        rec["http.request.header.referer"] = _text(referer)
    rid = env.get(ENVIRON_KEY)
    if rid is not None:
        rec["http.request.id"] = rid
    rec["process.pid"] = pid
    if backend is not None:
        rec["prefork_lb.backend"] = backend
    return rec


def json_line(record: dict[str, Any]) -> str:
    """A record as one line: ASCII only, every control character and separator escaped."""
    return json.dumps(record, ensure_ascii=True, separators=(",", ":"))


class _Atoms(dict[str, Any]):
    """Resolves %({name}i)s-style atoms lazily; unknown ones read as '-'. ``%({X-Request-ID}o)s``
    (the request id header, ``rid_lname``) reads the id the request got (the server adds that
    header itself, after the app's)."""

    def __init__(
        self,
        base: dict[str, Any],
        env: dict[str, Any],
        resp_headers: list[tuple[str, str]],
        rid_lname: str | None = None,
    ):
        super().__init__(base)
        self.env = env
        self.resp_headers = resp_headers
        self.rid_lname = rid_lname

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
                if lname == self.rid_lname:
                    return str(self.env.get(ENVIRON_KEY) or "-")
                return "-"
            if kind == "e":
                return str(os.environ.get(name, "-"))
        return "-"


class AccessLog:
    """One line per request, written with gunicorn's atoms (see the access_log_format setting),
    or a JSON object when the format is ``json``. ``request_id_header`` names the header whose
    ``o`` atom reads the request id (None: request ids are off)."""

    def __init__(self, fmt: str, path: str | None, request_id_header: str | None = None) -> None:
        self.fmt = fmt
        self.path = path
        self.json = fmt.strip() == JSON_FORMAT
        self.rid_lname = request_id_header.lower() if request_id_header else None
        self.pid = os.getpid()
        self.stream: IO[str] = sys.stdout
        self.reopen()

    def reopen(self) -> None:
        self.pid = os.getpid()  # (made in the process that writes: a worker, the proxy)
        if self.path in ("-", None):
            self.stream = sys.stdout
        else:
            old = self.stream
            self.stream = open(self.path, "a", buffering=1)  # noqa: SIM115 - kept open
            if old not in (sys.stdout, sys.stderr):
                old.close()

    def log(self, env: dict[str, Any], conn: Any, duration: float, backend: str | None = None) -> None:
        """Write the line of one request: ``conn`` has ``status``, ``out_headers`` and
        ``bytes_sent`` (a worker's connection); ``backend`` is the proxy's."""
        if self.json:
            sent = conn.bytes_sent
            rec = json_record(env, conn.status, sent, duration, self.pid, time.time(), backend)
            self._write(json_line(rec))
            return
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
            line = self.fmt % _Atoms(base, env, headers, self.rid_lname)
        except (ValueError, TypeError) as exc:
            line = f"access log format error: {exc}"
        self._write(line)

    def _write(self, line: str) -> None:
        self.stream.write(line + "\n")
        if self.stream is sys.stdout:
            self.stream.flush()  # a pipe or file (systemd, docker) would hold lines back
