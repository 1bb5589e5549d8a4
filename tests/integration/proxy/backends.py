"""Backends for the proxy's integration tests: small HTTP/1.1 servers on 127.0.0.1.

:class:`Backend` runs in the test process (an accept thread and one thread per connection) and
records every request that reaches it, so a test can assert on what the proxy sent and on what it
did *not* send. Its ``mode`` says how it answers:

* ``ok``        keep-alive HTTP/1.1; the body is the backend's ``name``, headers say the name,
                the target and a sequence number. ``/health`` answers ``health_status``.
                ``POST /early`` answers 403 before reading the body, and closes;
                ``/const`` answers the same head every time; ``/big?bytes=N`` streams N bytes; ``/sha`` answers the sha256 of the body;
                ``/close`` answers with ``Connection: close`` and closes; ``/eof-body`` has no
                Content-Length (the body ends at the close); ``/chunked`` is chunked with a
                trailer; ``/status/N`` answers status N with no body; ``/hop`` carries
                hop-by-hop response headers; ``/with-headers?h=NAME:VALUE&h=...`` adds each
                ``h`` to an ordinary answer (cache tests); ``/validated?h=...&n=...`` is the same
                but answers 304 with the ``n`` headers when the request's If-None-Match or
                If-Modified-Since matches the ``ETag`` or ``Last-Modified`` among the ``h`` ones.
                With ``fail_status`` set, every answer but /health is that status. ``delay`` seconds are added before each answer
                (not to /health); an idle connection is closed after ``idle_timeout``, and
                after ``answers_per_connection`` answers (if set) without answering the rest.
                With ``close_reused``, a connection that has answered closes as soon as its next
                request arrives, without reading or recording it: a backend closing an idle
                keep-alive connection just as the proxy sends on it, every time.
* ``drop``      reads the whole request, records it, and closes without answering;
* ``malformed`` reads the whole request and answers bytes that are not HTTP;
* ``hang``      accepts, reads, and never answers (records nothing: no request is parsed).

A request with ``Upgrade: websocket`` to a backend with ``websocket=True`` gets the RFC 6455
handshake (``101`` with the Sec-WebSocket-Accept computed from the key) and then every frame
is echoed back unmasked, until a close frame. With ``websocket=False`` it gets a plain 200.

:func:`refused_port` gives a port where nothing listens (connections are refused).

Run as ``python -m tests.integration.proxy.backends NAME`` it is a backend in its own process
(mode ``ok``) that prints its port on the first line of stdout: for tests that kill a backend
with SIGKILL.

Every socket has a timeout or is closed by :meth:`Backend.stop`; nothing outlives a test.
"""

from __future__ import annotations

import base64
import hashlib
import socket
import struct
import sys
import threading
import time
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlsplit

from tests.server import HeaderLookup

HOST = "127.0.0.1"
WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
MAX_HEAD = 64 * 1024


# Responses with ambiguous or broken framing, sent as they are (then the backend closes).
RAW_RESPONSES = {
    "/dup-cl": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 12\r\n\r\nokHTTP/1.1 20",
    "/cl-te": b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
    "/bad-chunk": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nok\r\n0\r\n\r\n",
    "/short": b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly a part",
    "/lf-only": b"HTTP/1.1 200 OK\nContent-Length: 2\n\nok",
    "/space-name": b"HTTP/1.1 200 OK\r\nContent-Length : 2\r\n\r\nok",
}


@dataclass
class Recorded(HeaderLookup):
    """One request as the backend received it (after the proxy rewrote it)."""

    method: str
    target: str
    version: str
    headers: list[tuple[str, str]]
    body: bytes
    peer: str
    chunked: bool = False

    def has(self, name: str) -> bool:
        return bool(self.header_list(name))


class ClosedEarly(Exception):
    """The peer closed before a whole request was read."""


class _Reader:
    """Buffered reads off a blocking socket."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""

    def _more(self) -> None:
        data = self.sock.recv(262144)
        if not data:
            raise ClosedEarly()
        self.buf += data

    def until(self, marker: bytes, limit: int = MAX_HEAD) -> bytes:
        for _ in range(1_000_000):
            i = self.buf.find(marker)
            if i >= 0:
                out, self.buf = self.buf[: i + len(marker)], self.buf[i + len(marker) :]
                return out
            if len(self.buf) > limit:
                raise ClosedEarly()
            self._more()
        raise ClosedEarly()

    def exactly(self, n: int) -> bytes:
        parts = []
        have = 0
        if self.buf:
            take = self.buf[:n]
            self.buf = self.buf[n:]
            parts.append(take)
            have = len(take)
        while have < n:
            data = self.sock.recv(min(262144, n - have))
            if not data:
                raise ClosedEarly()
            parts.append(data)
            have += len(data)
        return b"".join(parts)


def read_request(reader: _Reader, peer: str, body: bool = True) -> Recorded:
    """One HTTP/1.1 request (Content-Length or chunked body; with ``body=False`` only its
    head); ClosedEarly at EOF."""
    head = reader.until(b"\r\n\r\n")
    lines = head[:-4].decode("latin-1").split("\r\n")
    method, target, version = lines[0].split(" ", 2)
    headers = []
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers.append((name, value.strip(" \t")))
    rec = Recorded(method, target, version, headers, b"", peer)
    if body:
        read_body(reader, rec)
    return rec


def read_body(reader: _Reader, rec: Recorded) -> None:
    """The body of ``rec`` (whose head was read), into ``rec.body``."""
    te = rec.header("transfer-encoding")
    if te is not None and te.lower().strip().endswith("chunked"):
        rec.chunked = True
        parts = []
        for _ in range(10_000_000):
            size_line = reader.until(b"\r\n")
            size = int(size_line.split(b";", 1)[0].strip(), 16)
            if size == 0:
                while reader.until(b"\r\n") != b"\r\n":  # trailers
                    pass
                break
            parts.append(reader.exactly(size))
            reader.exactly(2)
        rec.body = b"".join(parts)
    elif rec.header("content-length") is not None:
        rec.body = reader.exactly(int(rec.header("content-length") or 0))


def ws_accept(key: str) -> str:
    return base64.b64encode(hashlib.sha1(key.encode("latin-1") + WS_GUID).digest()).decode()


def ws_frame(payload: bytes, opcode: int = 1, mask: bytes | None = None) -> bytes:
    """One final frame; masked when ``mask`` (4 bytes) is given, as a client must send."""
    n = len(payload)
    first = bytes([0x80 | opcode])
    mbit = 0x80 if mask else 0
    if n < 126:
        length = bytes([mbit | n])
    elif n < 65536:
        length = bytes([mbit | 126]) + struct.pack("!H", n)
    else:
        length = bytes([mbit | 127]) + struct.pack("!Q", n)
    if mask:
        payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        return first + length + mask + payload
    return first + length + payload


def ws_read_frame(read_exactly) -> tuple[int, bool, bytes]:
    """(opcode, was masked, unmasked payload) of the next frame; ``read_exactly(n)`` gives bytes."""
    b1, b2 = read_exactly(2)
    opcode = b1 & 0x0F
    masked = bool(b2 & 0x80)
    n = b2 & 0x7F
    if n == 126:
        (n,) = struct.unpack("!H", read_exactly(2))
    elif n == 127:
        (n,) = struct.unpack("!Q", read_exactly(8))
    mask = read_exactly(4) if masked else b""
    payload = read_exactly(n)
    if masked:
        payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return opcode, masked, payload


@dataclass
class Backend:
    """An in-process backend on 127.0.0.1 (kernel-chosen port), started by :meth:`start`."""

    name: str = "b"
    mode: str = "ok"
    delay: float = 0.0
    websocket: bool = False
    health_status: int = 200
    idle_timeout: float = 30.0
    answers_per_connection: int = 0  # then the connection closes with what follows unanswered (0: no limit)
    close_reused: bool = False  # a connection that has answered closes when the next request comes
    fail_status: int = 0  # every answer (not /health) is this status, with no body (0: off)
    host: str = HOST
    requests: list[Recorded] = field(default_factory=list)
    health_checks: int = 0
    accepted: int = 0
    in_flight: int = 0

    def __post_init__(self) -> None:
        self.lock = threading.Lock()
        self.listener: socket.socket | None = None
        self.port = 0
        self.conns: set[socket.socket] = set()
        self.threads: list[threading.Thread] = []
        self.stopped = threading.Event()

    # -- lifecycle --------------------------------------------------------------------------------

    def start(self, port: int = 0) -> Backend:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        lst = socket.socket(family, socket.SOCK_STREAM)
        lst.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        lst.bind((self.host, port))
        lst.listen(128)
        self.listener = lst
        self.port = lst.getsockname()[1]
        self.stopped.clear()
        t = threading.Thread(target=self._accept_loop, args=(lst,), name=f"backend-{self.name}", daemon=True)
        t.start()
        self.threads.append(t)
        return self

    def stop(self) -> None:
        """Close the listener and every connection (the port then refuses connections)."""
        self.stopped.set()
        lst, self.listener = self.listener, None
        if lst is not None:
            try:
                lst.shutdown(socket.SHUT_RDWR)  # wakes the accept() of the accept thread
            except OSError:
                pass
            lst.close()
        with self.lock:
            conns = list(self.conns)
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for t in self.threads:
            t.join(timeout=5)
        self.threads = [t for t in self.threads if t.is_alive()]

    def restart(self) -> Backend:
        """Listen again on the same port (a backend that comes back)."""
        return self.start(self.port)

    @property
    def addr(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def __enter__(self) -> Backend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- what it saw ------------------------------------------------------------------------------

    def seen(self, path_prefix: str = "") -> list[Recorded]:
        """Requests received, /health checks left out (unless asked for by prefix)."""
        with self.lock:
            reqs = list(self.requests)
        if path_prefix:
            return [r for r in reqs if r.target.startswith(path_prefix)]
        return [r for r in reqs if not r.target.startswith("/health")]

    def clear(self) -> None:
        with self.lock:
            self.requests.clear()

    # -- serving ----------------------------------------------------------------------------------

    def _accept_loop(self, lst: socket.socket) -> None:
        for _ in range(10_000_000):
            if self.stopped.is_set():
                return
            try:
                conn, peer = lst.accept()
            except OSError:
                return
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self.lock:
                self.accepted += 1
                self.conns.add(conn)
            t = threading.Thread(target=self._serve, args=(conn, f"{peer[0]}:{peer[1]}"), daemon=True)
            t.start()
            self.threads.append(t)

    def _serve(self, conn: socket.socket, peer: str) -> None:
        conn.settimeout(self.idle_timeout)
        reader = _Reader(conn)
        answered = 0
        try:
            if self.mode == "hang":
                for _ in range(1_000_000):
                    if not conn.recv(65536):
                        return
                return
            for _ in range(1_000_000):
                if self.stopped.is_set():
                    return
                if answered and self.close_reused:
                    conn.recv(1, socket.MSG_PEEK)  # the next request is here: close under it
                    return
                rec = read_request(reader, peer, body=False)
                if rec.target != "/early":
                    read_body(reader, rec)
                else:
                    # answers before reading the body, then closes (an upload refused early)
                    with self.lock:
                        self.requests.append(rec)
                    conn.sendall(
                        b"HTTP/1.1 403 Forbidden\r\nContent-Length: 4\r\nConnection: close\r\n\r\nnope"
                    )
                    # A lingering close, as real servers do: closing with unread bytes would
                    # send a reset, which may destroy the response before the proxy reads it.
                    conn.shutdown(socket.SHUT_WR)
                    conn.settimeout(2)
                    while conn.recv(262144):
                        pass
                    return
                is_health = rec.target.split("?")[0] == "/health"
                with self.lock:
                    self.requests.append(rec)
                    if is_health:
                        self.health_checks += 1
                if self.mode == "drop":
                    return
                if self.mode == "malformed":
                    conn.sendall(b"HTTP/1.1 2x0 Garbage\r\nContent-Length: banana\r\n\r\nnonsense")
                    return
                if is_health:
                    body = b"healthy\n" if self.health_status < 400 else b"sick\n"
                    conn.sendall(self._head(self.health_status, len(body), rec) + body)
                    continue
                if self._is_ws(rec):
                    if self.websocket:
                        self._websocket(conn, reader, rec)
                        return
                with self.lock:
                    self.in_flight += 1
                try:
                    if self.delay:
                        time.sleep(self.delay)
                    keep = self._answer(conn, rec)
                finally:
                    with self.lock:
                        self.in_flight -= 1
                if not keep:
                    return
                answered += 1
                if answered == self.answers_per_connection:
                    # A lingering close (see /early): the requests already sent get no answer.
                    conn.shutdown(socket.SHUT_WR)
                    conn.settimeout(2)
                    while conn.recv(262144):
                        pass
                    return
        except (ClosedEarly, OSError, ValueError):
            return
        finally:
            with self.lock:
                self.conns.discard(conn)
            try:
                conn.close()
            except OSError:
                pass

    @staticmethod
    def _is_ws(rec: Recorded) -> bool:
        return "websocket" in (rec.header("upgrade") or "").lower()

    def _head(
        self, status: int, length: int, rec: Recorded, extra: list[tuple[str, str]] | None = None
    ) -> bytes:
        reason = {
            200: "OK",
            204: "No Content",
            304: "Not Modified",
            500: "Internal Server Error",
            503: "Service Unavailable",
        }.get(status, "Status")
        hdrs = [
            ("Content-Length", str(length)),
            ("Content-Type", "text/plain"),
            ("X-Backend-Name", self.name),
            ("X-Request-Target", rec.target),
            ("X-Request-Seq", str(len(self.requests))),
        ]
        hdrs += extra or []
        head = f"HTTP/1.1 {status} {reason}\r\n" + "".join(f"{n}: {v}\r\n" for n, v in hdrs) + "\r\n"
        return head.encode("latin-1")

    def _answer(self, conn: socket.socket, rec: Recorded) -> bool:
        url = urlsplit(rec.target)
        query = parse_qs(url.query)
        keep = (rec.header("connection") or "").lower() != "close"
        if url.path == "/big":
            n = int(query.get("bytes", ["0"])[0])
            conn.sendall(self._head(200, n, rec))
            block = b"x" * 65536
            sent = 0
            while sent < n:
                k = min(len(block), n - sent)
                conn.sendall(block[:k])
                sent += k
            return keep
        if url.path == "/sha":
            body = hashlib.sha256(rec.body).hexdigest().encode()
            conn.sendall(self._head(200, len(body), rec) + body)
            return keep
        if url.path == "/const":  # the same response head every time (no sequence number)
            body = self.name.encode()
            conn.sendall(
                b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nX-Backend-Name: %s\r\n\r\n%s"
                % (len(body), body, body)
            )
            return keep
        if url.path in RAW_RESPONSES:  # framing a proxy must not pass on as it is
            conn.sendall(RAW_RESPONSES[url.path])
            return False
        if url.path == "/close":  # the backend ends the connection after this response
            body = self.name.encode()
            conn.sendall(self._head(200, len(body), rec, [("Connection", "close")]) + body)
            return False
        if url.path == "/eof-body":  # no Content-Length: the body ends when we close
            body = (self.name + ":" + "y" * 5000).encode()
            head = self._head(200, 0, rec, [("Connection", "close")]).replace(b"Content-Length: 0\r\n", b"")
            conn.sendall(head + body)
            return False
        if url.path == "/chunked":
            head = self._head(200, 0, rec, [("Transfer-Encoding", "chunked"), ("Trailer", "X-Sum")])
            head = head.replace(b"Content-Length: 0\r\n", b"")
            conn.sendall(head + b"5\r\nhello\r\n6\r\n world\r\n0\r\nX-Sum: 11\r\n\r\n")
            return keep
        if url.path.startswith("/status/") or self.fail_status:
            status = self.fail_status or int(url.path.rsplit("/", 1)[1])
            head = self._head(status, 0, rec)
            if status in (204, 304):
                head = head.replace(b"Content-Length: 0\r\n", b"")
            conn.sendall(head)
            return keep
        extra = [("Connection", "close")] if not keep else []
        if url.path == "/hop":
            # hop-by-hop headers in the response that the proxy must not pass on
            extra += [
                ("Keep-Alive", "timeout=5"),
                ("X-Private", "secret"),
                ("Connection", "X-Private"),
                ("Upgrade", "h2c"),
            ]
        if url.path in ("/with-headers", "/validated"):
            extra += [(n.strip(), v.strip()) for n, _, v in (h.partition(":") for h in query.get("h", []))]
        if url.path == "/validated" and self._not_modified(rec, extra):
            not_modified = [
                (n.strip(), v.strip()) for n, _, v in (h.partition(":") for h in query.get("n", []))
            ]
            head = self._head(304, 0, rec, not_modified).replace(b"Content-Length: 0\r\n", b"")
            conn.sendall(head)
            return keep
        body = self.name.encode()
        conn.sendall(self._head(200, len(body), rec, extra) + (b"" if rec.method == "HEAD" else body))
        return keep

    @staticmethod
    def _not_modified(rec: Recorded, fields: list[tuple[str, str]]) -> bool:
        """The request's condition matches the validators in ``fields`` (exact comparison)."""
        have = {n.lower(): v for n, v in fields}
        inm, ims = rec.header("if-none-match"), rec.header("if-modified-since")
        if inm is not None:
            return "etag" in have and have["etag"] in [t.strip() for t in inm.split(",")]
        return ims is not None and have.get("last-modified") == ims

    def _websocket(self, conn: socket.socket, reader: _Reader, rec: Recorded) -> None:
        key = rec.header("sec-websocket-key") or ""
        conn.sendall(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            + f"Sec-WebSocket-Accept: {ws_accept(key)}\r\nX-Backend-Name: {self.name}\r\n\r\n".encode()
        )
        for _ in range(100_000):
            opcode, _masked, payload = ws_read_frame(reader.exactly)
            if opcode == 8:
                conn.sendall(ws_frame(payload, 8))
                return
            conn.sendall(ws_frame(payload, opcode))


def refused_port() -> int:
    """A port nobody listens on (bound for a moment, then closed)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def main(argv: list[str]) -> None:
    name = argv[0] if argv else "p"
    b = Backend(name=name).start()
    print(b.port, flush=True)
    try:
        # The parent kills us; stdin closing (parent gone) also ends us.
        sys.stdin.read()
    finally:
        b.stop()


if __name__ == "__main__":
    main(sys.argv[1:])
