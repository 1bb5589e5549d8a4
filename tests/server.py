"""Helpers for tests that run the real server: start it, talk raw HTTP/1.1 to it, stop it.

Process groups, ports and polling come from :mod:`tests.helpers`.

* :class:`ServerProcess` runs ``python -m prefork_lb APP -b 127.0.0.1:PORT -w 1 FLAGS`` in its
  own process group, waits until a worker answers, and always stops the whole group (TERM, then
  KILL after a deadline).
* :func:`exchange` sends raw bytes (whole, or one byte per send) and reads until the server
  closes or a deadline passes.
* :class:`HTTPStream` reads HTTP/1.1 responses one by one off a keep-alive connection;
  :func:`parse_responses` does the same on bytes already received.

Everything talks to 127.0.0.1 only, and every wait has a deadline.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from tests.helpers import HOST, server_env, spawn, start_on_free_port, stop_process, wait_for


class ServerProcess:
    """One server (master and its worker) started for a test."""

    def __init__(
        self, app: str, flags: Iterable[str] = (), *, workdir: Path, env: dict[str, str] | None = None
    ) -> None:
        self.app = app
        self.flags = list(flags)
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.err_path = self.workdir / "stderr.log"
        self.out_path = self.workdir / "stdout.log"
        self.calls_path = self.workdir / "calls.txt"
        self.extra_env = dict(env or {})
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self, ready_timeout: float = 15.0) -> ServerProcess:
        def launch(port: int) -> bool:
            self.port = port
            self._spawn()
            return self._wait_ready(ready_timeout)

        start_on_free_port(launch, self.log_text, self.stop, f"server {self.app} {self.flags}")
        return self

    def _spawn(self) -> None:
        cmd = [
            sys.executable,
            "-m",
            "prefork_lb",
            self.app,
            "-b",
            f"{HOST}:{self.port}",
            "-w",
            "1",
            *self.flags,
        ]
        env = server_env({"PREFORK_LB_TEST_CALLS": str(self.calls_path), **self.extra_env})
        self.calls_path.write_text("")
        with open(self.out_path, "wb") as out, open(self.err_path, "wb") as err:
            self.proc = spawn(cmd, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=err)

    def _wait_ready(self, timeout: float) -> bool:
        """Ready when a worker answers: a connection we half-close gets closed by the server.
        (Before a worker accepts, the connection just waits in the listen backlog.)"""
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        sock: socket.socket | None = None
        try:
            for _ in range(int(timeout / 0.02) + 2):
                if self.proc.poll() is not None or time.monotonic() >= deadline:
                    return False
                if sock is None:
                    try:
                        sock = socket.create_connection((HOST, self.port), timeout=0.5)
                        sock.shutdown(socket.SHUT_WR)
                    except OSError:
                        if sock is not None:
                            sock.close()
                            sock = None
                        time.sleep(0.02)
                        continue
                sock.settimeout(0.1)
                try:
                    data = sock.recv(1)
                except TimeoutError:
                    continue
                except OSError:
                    data = b""
                sock.close()
                sock = None
                if data == b"":
                    return True
            return False
        finally:
            if sock is not None:
                sock.close()

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM the process group, wait, then SIGKILL. Returns the master's exit code."""
        return None if self.proc is None else stop_process(self.proc, timeout)

    def discard(self) -> None:
        """The fixtures' stop after a test, when nothing watches the stop any more: QUIT to the
        master (a fast stop: no drain, which for --dispatch proxy takes ~1.5 s even idle), then
        KILL of whatever is left in the group. Tests of the graceful stop send TERM themselves."""
        if self.proc is not None:
            stop_process(self.proc, 10.0, group=False, sig=signal.SIGQUIT)

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- what it said ---------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def log_text(self) -> str:
        """The server's stderr (the error log)."""
        try:
            return self.err_path.read_text("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def out_text(self) -> str:
        """The server's stdout (where --access-logfile - writes)."""
        try:
            return self.out_path.read_text("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def calls(self) -> list[str]:
        """One line per request the app got in full (see tests/apps.py)."""
        try:
            return self.calls_path.read_text("latin-1").splitlines()
        except FileNotFoundError:
            return []

    def wait_log(self, text: str, timeout: float = 5.0, stdout: bool = False) -> str:
        read = self.out_text if stdout else self.log_text
        return wait_for(
            lambda: read() if text in read() else "",
            timeout,
            f"{text!r} in the server's " + ("stdout" if stdout else "stderr"),
        )

    def worker_pids(self) -> list[int]:
        """The processes that serve: the master's children, or the master itself without any."""
        try:
            kids = [c.pid for c in psutil.Process(self.pid).children() if c.status() != psutil.STATUS_ZOMBIE]
        except psutil.NoSuchProcess:
            return []
        return kids or [self.pid]

    def children_titled(self, role: str) -> list[int]:
        """The master's live children whose process title says ``prefork_lb: ROLE`` (worker,
        admin, proxy, dispatcher), sorted."""
        out = []
        try:
            kids = psutil.Process(self.pid).children()
        except psutil.NoSuchProcess:
            return []
        for c in kids:
            try:
                if c.status() != psutil.STATUS_ZOMBIE and f"prefork_lb: {role}" in " ".join(c.cmdline()):
                    out.append(c.pid)
            except psutil.NoSuchProcess:
                pass
        return sorted(out)


# -- raw HTTP ------------------------------------------------------------------------------------


def connect(port: int, timeout: float = 5.0) -> socket.socket:
    """A TCP connection to the server with TCP_NODELAY (use it as a context manager)."""
    sock = socket.create_connection((HOST, port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def build_request(
    method: str = "GET",
    target: str = "/",
    headers: Iterable[tuple[str, str]] = (),
    body: bytes = b"",
    version: str = "HTTP/1.1",
    host: str | None = "127.0.0.1",
    content_length: bool = True,
) -> bytes:
    hdrs = list(headers)
    names = {n.lower() for n, _ in hdrs}
    if host is not None and "host" not in names:
        hdrs.insert(0, ("Host", host))
    if body and content_length and "content-length" not in names and "transfer-encoding" not in names:
        hdrs.append(("Content-Length", str(len(body))))
    head = f"{method} {target} {version}\r\n" + "".join(f"{n}: {v}\r\n" for n, v in hdrs) + "\r\n"
    return head.encode("latin-1") + body


def chunked(*parts: bytes) -> bytes:
    """A chunked body made of ``parts`` (empty parts are skipped), with its last chunk."""
    return b"".join(b"%x\r\n%b\r\n" % (len(p), p) for p in parts if p) + b"0\r\n\r\n"


class Received(bytes):
    """Bytes from :func:`exchange`, plus how the exchange ended."""

    closed: bool  # the server closed (EOF or reset) before the deadline
    reset: bool  # ... with a reset
    elapsed: float  # seconds from the first byte sent to the end
    send_error: str  # why sending stopped early ("" when everything went out)

    def __new__(cls, data: bytes, closed: bool, reset: bool, elapsed: float, send_error: str) -> Received:
        self = super().__new__(cls, data)
        self.closed, self.reset, self.elapsed, self.send_error = closed, reset, elapsed, send_error
        return self


def exchange(
    port: int, data: bytes, timeout: float = 5.0, *, bytewise: bool = False, half_close: bool = True
) -> Received:
    """Send ``data`` on a new connection, then read until the server closes or ``timeout``.

    ``bytewise``: one byte per send (TCP_NODELAY), so the server sees the bytes trickle in.
    ``half_close``: shut our side down after sending, so a server waiting for more bytes sees
    EOF instead of waiting for its timeout. A send that fails because the server already
    answered and closed stops the sending; what the server sent is still read.
    """
    deadline = time.monotonic() + timeout
    out = bytearray()
    closed = reset = False
    send_error = ""
    t0 = time.monotonic()
    with connect(port, timeout) as sock:
        try:
            if bytewise:
                view = memoryview(data)
                for i in range(len(data)):
                    sock.sendall(view[i : i + 1])
                    if time.monotonic() >= deadline:
                        send_error = "deadline"
                        break
            else:
                sock.sendall(data)
            if half_close:
                sock.shutdown(socket.SHUT_WR)
        except OSError as exc:
            send_error = f"{type(exc).__name__}: {exc}"
        for _ in range(100000):
            left = deadline - time.monotonic()
            if left <= 0:
                break
            sock.settimeout(left)
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                break
            except ConnectionResetError:
                closed = reset = True
                break
            if not chunk:
                closed = True
                break
            out += chunk
    return Received(bytes(out), closed, reset, time.monotonic() - t0, send_error)


# -- responses -----------------------------------------------------------------------------------


class HeaderLookup:
    """Case-insensitive reads of a ``headers`` list of (name, value) pairs."""

    headers: list[tuple[str, str]]

    def header(self, name: str) -> str | None:
        """The value of header ``name`` (several: joined with ', '), or None."""
        values = self.header_list(name)
        return ", ".join(values) if values else None

    def header_list(self, name: str) -> list[str]:
        lname = name.lower()
        return [v for n, v in self.headers if n.lower() == lname]


@dataclass
class Response(HeaderLookup):
    version: str
    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes = b""
    framing: str = "none"  # none | length | chunked | close
    complete: bool = True  # False: the stream ended inside the body
    raw_head: bytes = b""
    trailers: list[tuple[str, str]] = field(default_factory=list)

    def json(self) -> Any:
        return json.loads(self.body)

    def __repr__(self) -> str:
        body = self.body if len(self.body) <= 300 else self.body[:300] + b"..."
        return (
            f"<Response {self.status} {self.reason!r} {self.framing} complete={self.complete} "
            f"headers={self.headers!r} body={body!r}>"
        )


class Incomplete(Exception):
    """Not enough bytes for a whole response yet."""


def parse_response(buf: bytes, pos: int = 0, *, head: bool = False, eof: bool = True) -> tuple[Response, int]:
    """Parse one response at ``buf[pos:]``; returns it and the position after it.

    ``head``: the response to a HEAD request (no body whatever the headers say). ``eof``: no
    more bytes will come, so a close-delimited body ends at the end of ``buf`` and a truncated
    body gives ``complete=False``. Raises Incomplete when more bytes are needed (or, at EOF,
    when not even a head is there) and ValueError for bytes that are not a response.
    """
    end = buf.find(b"\r\n\r\n", pos)
    if end < 0:
        raise Incomplete("no complete response head")
    raw_head = buf[pos : end + 4]
    lines = raw_head[:-4].decode("latin-1").split("\r\n")
    version, _, rest = lines[0].partition(" ")
    code, _, reason = rest.partition(" ")
    if not version.startswith("HTTP/") or not code.isdigit():
        raise ValueError(f"not an HTTP response: {lines[0]!r}")
    headers = []
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep:
            raise ValueError(f"bad header line {line!r}")
        headers.append((name, value.strip(" \t")))
    r = Response(version, int(code), reason, headers, raw_head=raw_head)
    i = end + 4
    if head or r.status < 200 or r.status in (204, 304):
        return r, i
    te = r.header("transfer-encoding")
    if te is not None and te.lower().split(",")[-1].strip() == "chunked":
        r.framing = "chunked"
        body = bytearray()
        for _ in range(len(buf)):
            j = buf.find(b"\r\n", i)
            if j < 0:
                break
            size_text = buf[i:j].split(b";", 1)[0].strip()
            try:
                size = int(size_text, 16)
            except ValueError:
                raise ValueError(f"bad chunk size {buf[i:j]!r}") from None
            if size == 0:
                trailers = []
                p = j + 2
                k = buf.find(b"\r\n", p)
                for _ in range(1000):  # trailer lines until the empty one
                    if k < 0 or k == p:
                        break
                    n, _, v = buf[p:k].decode("latin-1").partition(":")
                    trailers.append((n, v.strip()))
                    p = k + 2
                    k = buf.find(b"\r\n", p)
                if k != p:
                    break
                r.body, r.trailers = bytes(body), trailers
                return r, k + 2
            start = j + 2
            if len(buf) < start + size + 2:
                if eof:
                    body += buf[start : start + size]
                break
            if buf[start + size : start + size + 2] != b"\r\n":
                raise ValueError("chunk data not followed by CRLF")
            body += buf[start : start + size]
            i = start + size + 2
        if not eof:
            raise Incomplete("chunked body not complete")
        r.body, r.complete = bytes(body), False
        return r, len(buf)
    cl = r.header("content-length")
    if cl is not None:
        r.framing = "length"
        n = int(cl)
        if len(buf) - i < n:
            if not eof:
                raise Incomplete("body shorter than Content-Length")
            r.body, r.complete = buf[i:], False
            return r, len(buf)
        r.body = buf[i : i + n]
        return r, i + n
    r.framing = "close"
    if not eof:
        raise Incomplete("close-delimited body: read to EOF")
    r.body = buf[i:]
    return r, len(buf)


def parse_responses(data: bytes, heads: Iterable[bool] = ()) -> tuple[list[Response], bytes]:
    """Every response in ``data`` (all the bytes a connection gave). ``heads``: per response,
    whether it answers a HEAD. Returns the responses and any bytes left that are not one."""
    flags = list(heads)
    out: list[Response] = []
    pos = 0
    for n in range(1000):
        if pos >= len(data):
            break
        try:
            r, pos2 = parse_response(data, pos, head=flags[n] if n < len(flags) else False, eof=True)
        except Incomplete:
            break
        out.append(r)
        pos = pos2
    return out, data[pos:]


class HTTPStream:
    """Responses one at a time off a (keep-alive) connection, each read with a deadline."""

    def __init__(self, sock: socket.socket, timeout: float = 5.0) -> None:
        self.sock = sock
        self.timeout = timeout
        self.buf = b""
        self.eof = False
        self.reset = False

    def _recv(self, deadline: float) -> None:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("deadline passed waiting for the server")
        self.sock.settimeout(left)
        try:
            data = self.sock.recv(65536)
        except ConnectionResetError:
            data = b""
            self.reset = True
        if not data:
            self.eof = True
        self.buf += data

    def wait_bytes(self, marker: bytes, timeout: float | None = None) -> bool:
        """Read until ``marker`` is in the buffer (True), or the server closes or ``timeout``
        passes (False). The bytes stay in the buffer for read_response."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        for _ in range(100000):
            if marker in self.buf:
                return True
            if self.eof:
                return False
            try:
                self._recv(deadline)
            except TimeoutError:
                return False
        return False

    def read_response(self, head: bool = False, timeout: float | None = None) -> Response:
        """The next response (1xx included). AssertionError if the connection ends first."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        for _ in range(100000):
            try:
                r, pos = parse_response(self.buf, head=head, eof=self.eof)
            except Incomplete:
                if self.eof:
                    raise AssertionError(
                        f"connection closed before a whole response; got {self.buf!r}"
                    ) from None
                self._recv(deadline)
                continue
            self.buf = self.buf[pos:]
            return r
        raise AssertionError("too many reads for one response")

    def read_final(self, head: bool = False, timeout: float | None = None) -> tuple[list[Response], Response]:
        """Skip 1xx responses: (the interim ones, the final one)."""
        interim = []
        for _ in range(10):
            r = self.read_response(head, timeout)
            if r.status >= 200:
                return interim, r
            interim.append(r)
        raise AssertionError(f"too many interim responses: {interim}")

    def closed_by_server(self, timeout: float = 3.0) -> bool:
        """True when the server closes the connection within ``timeout`` with nothing more
        sent; AssertionError if it sends bytes instead."""
        deadline = time.monotonic() + timeout
        for _ in range(1000):
            if self.buf:
                raise AssertionError(f"unexpected bytes from the server: {self.buf[:200]!r}")
            if self.eof:
                return True
            try:
                self._recv(deadline)
            except TimeoutError:
                return False
        return False

    def read_to_close(self, timeout: float | None = None) -> bytes:
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        for _ in range(100000):
            if self.eof:
                break
            self._recv(deadline)
        data, self.buf = self.buf, b""
        return data


def request(
    port: int,
    method: str = "GET",
    target: str = "/",
    headers: Iterable[tuple[str, str]] = (),
    body: bytes = b"",
    version: str = "HTTP/1.1",
    timeout: float = 5.0,
    **kw: Any,
) -> Response:
    """One request on a new connection; the final response to it."""
    with connect(port, timeout) as sock:
        sock.sendall(build_request(method, target, headers, body, version, **kw))
        _, r = HTTPStream(sock, timeout).read_final(head=method == "HEAD")
        return r
