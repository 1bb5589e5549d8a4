"""The WSGI response writer: start_response, the write() callable, the response head and its
framing, and file_wrapper bodies sent with os.sendfile.

``ResponseWriter`` is a mixin of ``Connection`` (prefork_lb.worker.connection), not an object of
its own: the per-request path reads and sets these fields on the connection itself, so the split
costs no extra attribute lookup or call per request. The connection provides the socket side
(``_send``, ``_will_drain``, ``sock``, ``req``, ``server``) and resets the fields per request.

Invariants:

* The head goes out once, before any body byte (``headers_sent``), and says how the body is
  framed: Content-Length, chunked (HTTP/1.1, length unknown) or close-delimited (HTTP/1.0).
* Never more body bytes than the announced Content-Length leave (``_clip``); fewer, or more
  offered by the app, mark the connection to close (``close_after``): the framing is broken.
* A response to HEAD, or with a 1xx/204/304 status, carries no body bytes.
* A body chunk that is not bytes (a ``str``, most often) raises :class:`BodyNotBytes` before
  anything of it is sent; when it came with the first bytes of the response, the head is marked
  unsent again, so the app's error is still answered 500. Nothing checks the type on the way:
  the mistake shows as the TypeError of joining the chunk to bytes, which costs nothing until
  it happens.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import gevent.socket

from prefork_lb.http import response as _resp
from prefork_lb.http.framing import CHUNKED, LENGTH, response_framing
from prefork_lb.http.response import SERVER_LINE, app_head, refresh_date
from prefork_lb.worker.wsgi import FileWrapper

if TYPE_CHECKING:
    from prefork_lb.http.parser import Request
    from prefork_lb.worker.options import ServerView

# Where a body chunk that is not bytes came from, for BodyNotBytes's message.
WRITTEN = "passed a {} to write()"
LISTED = "returned a {} in its response list"
YIELDED = "yielded a {} from its response iterable"


class BodyNotBytes(TypeError):
    """The app gave a response body chunk that is not bytes (PEP 3333: bodies are bytes)."""

    def __init__(self, data: object, where: str) -> None:
        self.data = data
        hint = ": encode it (e.g. text.encode('utf-8'))" if isinstance(data, str) else ""
        super().__init__(f"the app {where.format(type(data).__name__)}, not bytes{hint}")

    @staticmethod
    def in_list(result: list[Any] | tuple[Any, ...]) -> Exception:
        """The error for a response list that b"".join refused: which item is not bytes."""
        for item in result:
            if not is_bytes(item):
                return BodyNotBytes(item, LISTED)
        return TypeError("the app's response list could not be joined")  # pragma: no cover


def is_bytes(data: object) -> bool:
    """What may be sent as a body chunk: bytes, or another buffer of bytes."""
    return isinstance(data, (bytes, bytearray, memoryview))


# Framings a memoised request keeps, one per app head it was answered with (an app whose heads
# never repeat, e.g. a fresh cookie each time, must not grow the memo without bound).
FRAMINGS_MAX = 8


class ResponseWriter:
    """The response side of a connection (a mixin: see the module docstring)."""

    __slots__ = (
        "status",
        "out_headers",
        "headers_sent",
        "chunked",
        "close_after",
        "bytes_sent",
        "is_head",
        "resp_length",
        "rid_line",
    )

    # Provided by the connection.
    server: ServerView
    sock: gevent.socket.socket
    req: Request | None
    status: str | None
    out_headers: list[tuple[str, str]] | None
    headers_sent: bool
    chunked: bool
    close_after: bool
    bytes_sent: int
    is_head: bool
    resp_length: int | None
    rid_line: str  # the request id header line the response carries, or ""
    cork: list[bytes]  # whole responses held back (the connection's _reply)

    def _send(self, data: bytes) -> None:  # pragma: no cover - the connection's
        raise NotImplementedError

    def _will_drain(self, req: Request) -> bool:  # pragma: no cover - the connection's
        raise NotImplementedError

    def start_response(
        self, status: str, headers: list[tuple[str, str]], exc_info: Any = None
    ) -> Callable[[bytes], None]:
        if exc_info:
            try:
                if self.headers_sent:
                    raise exc_info[1].with_traceback(exc_info[2])
            finally:
                exc_info = None
        elif self.status is not None:
            raise AssertionError("start_response called twice without exc_info")
        if type(headers) is not list:
            raise TypeError("headers must be a list")
        self.status = status
        self.out_headers = headers
        return self.write

    def _head(self, known_length: int | None) -> bytes:
        """Serialise the response head; the framing of the body is response_framing's."""
        status = self.status
        if status is None:
            raise AssertionError("the app returned without calling start_response")
        ah = app_head(status, self.out_headers or [])
        req = self.req
        assert req is not None
        length = ah.length
        out = ah.prefix
        if length is None and known_length is not None and not ah.bodiless:
            length = known_length  # a HEAD gets it too: the length a GET would have
            out += f"Content-Length: {known_length}\r\n"
        server = self.server
        opts = server.options
        memo = req.memo
        if memo is None or length is None or server.draining:
            memo = None
            fk = None
        else:
            # The memo path: a request seen before (whole, bodiless, keep-alive) with an app head
            # seen before frames the same way every time (the options do not change), so the
            # framing is worked out once per pair and kept in the request's memo: a dict lookup
            # instead of a Python call on the fastest path.
            fk = memo.get(ah)
        if fk is None:
            fk = response_framing(
                ah.code,
                self.is_head,
                req.version,
                length,
                False,  # an app's Transfer-Encoding is hop-by-hop: app_head dropped it
                # A body the app left unread that we will not skip: a client must not reuse
                # this connection, so say so now.
                req.keep_alive and (req.complete or self._will_drain(req)),
                ah.close or server.draining or not opts.keepalive,
            )
            if memo is not None and len(memo) < FRAMINGS_MAX:
                memo[ah] = fk
        framing, keep = fk
        self.resp_length = length if framing is LENGTH else None
        if framing is CHUNKED:
            self.chunked = True
            out += "Transfer-Encoding: chunked\r\n"
        if not ah.has_date:
            out += _resp.current_date_line or refresh_date()
        if not ah.has_server and opts.server_header:
            out += SERVER_LINE
        out += self.rid_line
        if not keep:
            self.close_after = True
        if self.close_after:  # already set if this is a second head (a file_wrapper after write())
            out += "Connection: close\r\n\r\n"
        elif req.version == "HTTP/1.0":
            out += "Connection: keep-alive\r\n\r\n"
        else:
            out += "\r\n"
        self.headers_sent = True
        return out.encode("latin-1")

    def write(self, data: bytes) -> None:
        """The write() callable of start_response, and the path for iterated bodies."""
        if not self.headers_sent:
            head = self._head(None)
            if self.is_head:
                self._send(head)
                return
            try:
                if self.chunked:
                    out = head + b"%x\r\n" % len(data) + data + b"\r\n" if data else head
                else:
                    out = head + self._clip(data)
            except TypeError:
                if is_bytes(data):
                    raise
                self.headers_sent = False  # nothing went out: the app's error is still a 500
                raise BodyNotBytes(data, WRITTEN) from None
            self._send(out)
            self.bytes_sent += len(data)
            return
        if not data or self.is_head:
            return
        try:
            if self.chunked:
                self._send(b"%x\r\n%b\r\n" % (len(data), data))
            else:
                self._send(self._clip(data))
        except TypeError:
            if is_bytes(data):
                raise
            cork = self.cork
            if cork and cork[-1] is data:
                cork.pop()  # _send joined it to the responses held back: those still go out
            raise BodyNotBytes(data, WRITTEN) from None
        self.bytes_sent += len(data)

    def _clip(self, data: bytes) -> bytes:
        """Never send more than the announced Content-Length."""
        n = self.resp_length
        if n is not None and self.bytes_sent + len(data) > n:
            self.close_after = True
            return data[: max(0, n - self.bytes_sent)]
        return data

    def _finish(self) -> None:
        if not self.headers_sent:
            self._send(self._head(0))
        elif self.chunked:
            self._send(b"0\r\n\r\n")
        if self.resp_length is not None and self.bytes_sent < self.resp_length:
            self.close_after = True  # the app sent less than it announced: framing is broken

    def _sendfile(self, wrapper: FileWrapper) -> bool:
        """Serve a file_wrapper of a regular file with os.sendfile. False: not possible."""
        f = wrapper.filelike
        try:
            fd = f.fileno()
            st = os.fstat(fd)
        except (AttributeError, OSError, ValueError):
            return False
        if not stat.S_ISREG(st.st_mode) or self.chunked:
            return False
        try:
            offset = f.tell()
        except (AttributeError, OSError):
            offset = 0
        size = max(0, st.st_size - offset)
        head = self._head(size if not self.headers_sent else None)
        self._send(head)
        if self.is_head:
            return True
        count = size if self.resp_length is None else min(size, self.resp_length - self.bytes_sent)
        sock = self.sock
        out = sock.fileno()
        while count > 0:
            try:
                sent = os.sendfile(out, fd, offset, min(count, 1 << 20))
            except BlockingIOError:
                gevent.socket.wait_write(out)
                continue
            if sent == 0:
                break
            offset += sent
            count -= sent
            self.bytes_sent += sent
        return True

    def _finish_sendfile(self) -> None:
        if self.resp_length is not None and self.bytes_sent < self.resp_length and not self.is_head:
            self.close_after = True
