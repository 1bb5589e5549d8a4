"""The cycle of one request on an ASGI connection (prefork_lb.asgi.http.HttpConnection): the
app's task, its receive() and its send(), and the response they put on the wire.

Invariants:

* The response head goes out once, with the first body event (so a one-event body gets a
  Content-Length), and says how the body is framed (prefork_lb.http.framing): Content-Length,
  chunked (HTTP/1.1, length unknown, or trailers announced) or close-delimited (HTTP/1.0).
* Never more body bytes than the announced Content-Length leave; fewer mark the connection to
  close. A response to HEAD, or with a 1xx/204/304 status, carries no body bytes.
* An event the app may not send raises AppEventError from send() before anything of it goes
  out, and is remembered (``error``): an app that swallows it still gets its error line.
* receive() returns http.disconnect once the client went away or the response is complete;
  send() then raises ClientDisconnected (an OSError, as the spec asks), which ends the app's
  task without an error line. A request the server answered itself (a malformed body) drops
  the app's sends instead.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import TYPE_CHECKING, Any, Final

from prefork_lb.asgi.core import ServerCore
from prefork_lb.asgi.events import AppEventError, body_of, response_head, trailer_lines
from prefork_lb.http.errors import ClientDisconnected as ClientDisconnected  # re-exported: docs/asgi.md
from prefork_lb.http.framing import CHUNKED, LENGTH, response_framing
from prefork_lb.http.parser import Request
from prefork_lb.http.response import CONTINUE, simple_response

if TYPE_CHECKING:
    from prefork_lb.asgi.events import AsgiHead

log = logging.getLogger("prefork_lb.error")

FILE_CHUNK: Final = 1 << 16  # bytes of a file read at a time when the socket does not take sendfile
DISCONNECT: Final = {"type": "http.disconnect"}
# AsgiServer.admit's answers: no place (503), a place at once, a place after a wait in the queue.
REFUSED: Final = 0
ADMITTED: Final = 1
QUEUED: Final = 2
HEADS_MAX: Final = 256  # response heads a server memoises (see RequestCycle._head_bytes)
_KNOWN: Final = frozenset(
    {"http.response.start", "http.response.body", "http.response.trailers", "http.response.pathsend"}
)


class RequestCycle:
    """One request on a connection: the app's task and the events it exchanges with us."""

    __slots__ = (
        "conn",
        "server",
        "req",
        "scope",
        "task",
        "head",
        "started",
        "head_sent",
        "body_done",
        "complete",
        "chunked",
        "length",
        "sent",
        "keep",
        "trailers",
        "disconnected",
        "waiter",
        "consumed",
        "continue_sent",
        "request_sent",
        "error",
        "deadline",
        "late",
        "abandoned",
        "is_head",
        "trailer_block",
        "answered",
    )

    def __init__(self, conn: Any, req: Request, scope: dict[str, Any]) -> None:
        # conn: the HttpConnection (not imported: prefork_lb.asgi.http imports this module)
        self.conn = conn
        # Its server, typed (compiled: its attributes are read without a lookup by name).
        self.server: ServerCore = conn.server
        self.req = req
        self.scope = scope
        self.task: asyncio.Task[None] | None = None
        self.head: AsgiHead | None = None
        self.started = False  # http.response.start came
        self.head_sent = False
        self.body_done = False  # the last body event came
        self.complete = False  # the whole response went out
        self.chunked = False
        self.length: int | None = None  # the Content-Length announced
        self.sent = 0  # body bytes sent
        self.keep = False
        self.trailers = False
        self.disconnected = False
        self.waiter: asyncio.Future[None] | None = None
        self.consumed = 0  # body bytes handed to the app
        self.continue_sent = False
        self.request_sent = False  # the last http.request event went to the app
        self.error = ""  # the first event error, for the log if the app swallows it
        self.deadline = 0.0
        self.late = False  # cancelled past --request-timeout
        self.abandoned = False  # the server answered for it (a bad body): its sends are dropped
        self.is_head = req.method == "HEAD"
        self.trailer_block = b""  # trailer lines of http.response.trailers with more_trailers
        # The status of a response the server sent for the app (500, 504, a bad body's 4xx): 0, none.
        self.answered = 0

    # -- the app's task -----------------------------------------------------------------------

    async def run(self) -> None:
        conn = self.conn
        server = self.server
        scope = self.scope
        admitted = False
        if server.admission_limit:
            if await server.admit(conn) == REFUSED:
                conn.busy()
                conn.cycle_done(self, False)
                return
            admitted = True
        # The hooks without a helper call (this runs per request); the clock only for a hook
        # that reads the duration.
        t0 = time.monotonic() if server.hook_timed else 0.0
        started = server.hook_started
        if started is not None:
            try:
                started(conn, scope)
            except Exception:
                log.exception("the request_started hook failed")
        timeout = server.options.request_timeout
        if timeout:
            # From the clock, not the ticker's ``now`` (up to TICK old): the deadline must never
            # come before --request-timeout has passed; the ticker fires it within TICK after.
            self.deadline = (t0 or time.monotonic()) + timeout
        server.in_flight += 1
        try:
            await server.app(scope, self.receive, self.send)
        except asyncio.CancelledError:
            if not self.late:
                self.keep = False
                raise
            self._late()
        except ClientDisconnected:
            self.keep = False  # the client left: nothing to log, nothing to answer
        except Exception as exc:
            self.keep = False
            if self.gone:  # a framework's own exception for our OSError (Starlette's ClientDisconnect)
                log.debug("ASGI app %s: raised %r after the client left", server.app_name, exc)
            else:
                self._app_failed(exc)
        except BaseException as exc:  # noqa: BLE001 - the app's error is logged, the server goes on
            self.keep = False
            self._app_failed(exc)
        else:
            if not self.complete or self.error:
                self._returned()
        finally:
            server.in_flight -= 1
            if admitted:
                server.release()
            self._finish(server.hook_finished, t0)

    def _finish(self, finished: Any, t0: float) -> None:
        """The app is done: count it, call the finished hook, hand the connection back."""
        server = self.server
        self.deadline = 0.0
        if self.complete:
            server.served += 1
        if finished is not None:
            # The status the client got: the server's own answer, else the app's head once it
            # went out; 0: none (the client got no status line).
            code = self.answered or (self.head.code if self.head is not None and self.head_sent else 0)
            took = time.monotonic() - t0 if t0 else 0.0
            try:
                finished(self.conn, self.scope, code, self.sent, took)
            except Exception:
                log.exception("the request_finished hook failed")
        if self.waiter is not None:
            self.wake()
        self.conn.cycle_done(self, self.keep and not self.abandoned)

    def _returned(self) -> None:
        """The app returned: was its response whole, and were its events right?"""
        if self.gone and not self.error:
            self.keep = False  # it caught ClientDisconnected: nobody to answer
        elif not self.complete:
            self.keep = False
            if self.error:
                self._say(self.error)
            elif not self.started:
                self._say("returned without sending http.response.start")
            else:
                self._say("returned before the response body ended (more_body was still true)")
            self._answer_500()
        elif self.error:
            self.keep = False
            self._say(self.error)

    def _say(self, what: str) -> None:
        """The one error line of an app's mistake: the app, the request, what it did."""
        req = self.req
        log.error(
            "ASGI app %s, %s %s: %s", self.server.app_name, req.method, self.scope.get("path", ""), what
        )

    def _app_failed(self, exc: BaseException) -> None:
        if isinstance(exc, AppEventError):
            self._say(str(exc))
        else:
            req = self.req
            log.error(
                "ASGI app %s, %s %s: raised %s",
                self.server.app_name,
                req.method,
                self.scope.get("path", ""),
                type(exc).__name__,
                exc_info=exc,
            )
        self._answer_500()

    def _answer_500(self) -> None:
        if not self.head_sent and not self.abandoned:
            self.head_sent = True
            self.answered = 500
            self.conn.write(simple_response(500))

    def _late(self) -> None:
        self.keep = False
        req = self.req
        log.error(
            "ASGI app %s, %s %s: past --request-timeout (%gs), cancelled",
            self.server.app_name,
            req.method,
            self.scope.get("path", ""),
            self.server.options.request_timeout,
        )
        if not self.head_sent and not self.abandoned:
            self.head_sent = True
            self.answered = 504
            self.conn.write(simple_response(504, "the request took too long"))

    def cancel_late(self) -> None:
        """The server's ticker: the deadline passed."""
        self.deadline = 0.0
        task = self.task
        if task is not None and not task.done():
            self.late = True
            task.cancel()

    def abandon(self) -> None:
        """The request's body was malformed: the server answers; the app gets http.disconnect."""
        self.abandoned = True
        self.disconnected = True
        self.wake()

    # -- receive ------------------------------------------------------------------------------

    def buffered(self) -> int:
        return self.req.body_size - self.consumed

    def wake(self) -> None:
        waiter = self.waiter
        if waiter is not None:
            self.waiter = None
            if not waiter.done():
                waiter.set_result(None)

    async def receive(self) -> dict[str, Any]:
        conn = self.conn
        while True:
            if self.disconnected or self.complete or (self.request_sent and conn.eof):
                return DISCONNECT
            req = self.req
            if not self.request_sent and (req.chunks or req.complete):
                chunks = req.chunks
                body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
                chunks.clear()
                self.consumed += len(body)
                more = not req.complete
                self.request_sent = not more
                if more:
                    conn.resume()
                return {"type": "http.request", "body": body, "more_body": more}
            if not self.request_sent:
                if req.expect_continue and not self.continue_sent and not self.head_sent:
                    self.continue_sent = True
                    conn.write(CONTINUE)
                conn.wait_until = self.server.now + self.server.options.header_timeout
                if len(conn.parser.requests) <= 1:
                    conn.resume()
            waiter = self.waiter = self.server.loop.create_future()
            try:
                await waiter
            finally:
                if not self.request_sent:
                    conn.wait_until = 0.0

    # -- send ---------------------------------------------------------------------------------

    def _bad(self, what: str) -> AppEventError:
        if not self.error:
            self.error = what
        return AppEventError(what)

    @property
    def gone(self) -> bool:
        """The client went away (not a request the server answered itself)."""
        return self.disconnected and not self.abandoned

    async def send(self, message: Any) -> None:
        try:
            kind = message["type"]
        except (TypeError, KeyError):
            raise self._bad(f"sent {message!r}, not an event (a dict with a 'type')") from None
        if self.gone:
            raise ClientDisconnected(f"the client went away: {kind} not sent")
        if kind == "http.response.body" and self.started:
            if self.body_done:
                raise self._bad("sent http.response.body after the body ended")
            body = message.get("body", b"")
            if type(body) is bytes:  # the usual body: body_of's checks, without its call
                more = bool(message.get("more_body", False))
            else:
                try:
                    body, more = body_of(message)
                except AppEventError as exc:
                    raise self._bad(str(exc)) from None
            if self.abandoned or self.disconnected:
                if not more:
                    self._completed()  # nothing goes out: the client is gone, or answered
                return
            self._body(body, more)
            conn = self.conn
            if conn.write_paused:
                await conn.drain()
        elif not self.started:
            self._start(kind, message)
        elif kind == "http.response.trailers":
            self._trailers(message)
        elif kind == "http.response.pathsend":
            await self._pathsend(self._pathsend_path(message))
        elif kind == "http.response.start":
            raise self._bad("sent a second http.response.start")
        else:
            raise self._bad(f"sent an unknown event type {kind!r}")

    def _pathsend_path(self, message: Any) -> str:
        if self.head_sent or self.body_done:
            raise self._bad("sent http.response.pathsend after the body began")
        path = message.get("path")
        if not isinstance(path, str):
            raise self._bad(f"sent http.response.pathsend with path {path!r}, not a str")
        return path

    def _start(self, kind: Any, message: Any) -> None:
        if kind == "http.response.start":
            try:
                self.head = response_head(message.get("status"), message.get("headers", ()))
            except AppEventError as exc:
                raise self._bad(str(exc)) from None
            self.trailers = bool(message.get("trailers", False))
            self.started = True
            return
        if kind in _KNOWN:
            raise self._bad(f"sent {kind} before http.response.start")
        raise self._bad(f"sent an unknown event type {kind!r}")

    def _trailers(self, message: Any) -> None:
        if not self.trailers or not self.body_done or self.complete:
            raise self._bad("sent http.response.trailers it did not announce, or before the body ended")
        try:
            self.trailer_block += trailer_lines(message)
        except AppEventError as exc:
            raise self._bad(str(exc)) from None
        if not message.get("more_trailers", False):
            if self.chunked and not self.disconnected:
                self.conn.write(b"0\r\n" + self.trailer_block + b"\r\n")
            self._completed()

    def _head_bytes(self, known_length: int | None) -> bytes:
        """Serialise the response head; the framing of the body is response_framing's."""
        ah = self.head
        assert ah is not None
        server = self.server
        req = self.req
        # The usual response (a whole kept-alive HTTP/1.1 request, not HEAD, no trailers, not
        # draining) has the same head bytes for the same AsgiHead and body length until the
        # Date line changes: memoised on the server, which empties the memo at each new Date.
        usual = (
            req.complete
            and req.keep_alive
            and not self.trailers
            and not self.is_head
            and not server.draining
            and req.version == "HTTP/1.1"
        )
        if usual:
            hit = server.heads.get(ah)
            if hit is not None and hit[0] == known_length:
                self.length, self.chunked, self.keep = hit[2], hit[3], hit[4]
                self.head_sent = True
                head: bytes = hit[1]
                return head
        out = self._new_head(ah, known_length)
        if usual:
            heads = server.heads
            if len(heads) >= HEADS_MAX:
                heads.clear()
            heads[ah] = (known_length, out, self.length, self.chunked, self.keep)
        return out

    def _new_head(self, ah: AsgiHead, known_length: int | None) -> bytes:
        conn = self.conn
        server = self.server
        req = self.req
        length = ah.length
        out = ah.prefix
        if length is None and known_length is not None and not ah.bodiless and not self.trailers:
            length = known_length
            out += b"Content-Length: %d\r\n" % known_length
        framing, keep = response_framing(
            ah.code,
            self.is_head,
            req.version,
            length,
            self.trailers and length is None,
            req.keep_alive and (req.complete or conn.will_drain(req, self.continue_sent)),
            ah.close or server.draining or not server.options.keepalive,
        )
        self.length = length if framing is LENGTH else None
        if framing is CHUNKED:
            self.chunked = True
            out += b"Transfer-Encoding: chunked\r\n"
        if not ah.has_date:
            out += server.date
        if not ah.has_server and server.options.server_header:
            out += b"Server: prefork_lb\r\n"
        self.keep = keep
        self.head_sent = True
        if not keep:
            return out + b"Connection: close\r\n\r\n"
        if req.version == "HTTP/1.0":
            return out + b"Connection: keep-alive\r\n\r\n"
        return out + b"\r\n"

    def _clip(self, body: bytes) -> bytes:
        n = self.length
        if n is not None and self.sent + len(body) > n:
            self.keep = False
            return body[: max(0, n - self.sent)]
        return body

    def _body(self, body: bytes, more: bool) -> None:
        conn = self.conn
        if not self.head_sent:
            head = self._head_bytes(None if more else len(body))
            if self.is_head or self.head is not None and self.head.bodiless:
                out = head
            elif self.chunked:
                out = head + b"%x\r\n%b\r\n" % (len(body), body) if body else head
                self.sent += len(body)
            else:
                body = self._clip(body)
                out = head + body
                self.sent += len(body)
        elif not body or self.is_head or self.head is not None and self.head.bodiless:
            out = b""
        elif self.chunked:
            out = b"%x\r\n%b\r\n" % (len(body), body)
            self.sent += len(body)
        else:
            out = self._clip(body)
            self.sent += len(out)
        if not more:
            self.body_done = True
            if self.trailers:
                if out:
                    conn.write(out)
                return  # complete with http.response.trailers (the last chunk goes with them)
            if self.chunked:
                out += b"0\r\n\r\n"
            if out:
                conn.write(out)
            self._completed()
        elif out:
            conn.write(out)

    def _completed(self) -> None:
        self.body_done = True
        self.complete = True
        if self.length is not None and self.sent < self.length and not self.is_head:
            self.keep = False  # fewer bytes than announced: the framing is broken
        self.wake()

    async def _pathsend(self, path: str) -> None:
        """http.response.pathsend: the file at ``path`` as the whole body, with os.sendfile."""
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError as exc:
            raise self._bad(f"sent http.response.pathsend of {path!r}: {exc.strerror}") from None
        try:
            size = os.fstat(fd).st_size
            conn = self.conn
            if self.abandoned or self.disconnected:
                self._completed()
                return
            conn.write(self._head_bytes(size))
            if not self.is_head and self.head is not None and not self.head.bodiless:
                count = size if self.length is None else min(size, self.length)
                await self._send_file(fd, count)
            self.body_done = True
            if self.chunked:  # the app announced no length and asked for trailers: impossible here
                conn.write(b"0\r\n\r\n")
            self._completed()
        finally:
            os.close(fd)

    async def _send_file(self, fd: int, count: int) -> None:
        """os.sendfile straight to the socket while the transport has nothing buffered (the
        bytes must go in order); what the socket does not take goes through the transport."""
        conn = self.conn
        transport = conn.transport
        assert transport is not None
        sock = transport.get_extra_info("socket")
        out = sock.fileno() if sock is not None else -1
        offset = 0
        chunked = self.chunked
        while count > 0 and not conn.closed:
            if out >= 0 and not chunked and transport.get_write_buffer_size() == 0:
                try:
                    n = os.sendfile(out, fd, offset, min(count, 1 << 20))
                except BlockingIOError:
                    n = -1
                except OSError:
                    return
                if n == 0:
                    return  # the file shrank: fewer bytes than announced (the framing says close)
                if n > 0:
                    offset += n
                    count -= n
                    self.sent += n
                    continue
            data = os.pread(fd, min(count, FILE_CHUNK), offset)
            if not data:
                return
            offset += len(data)
            count -= len(data)
            self.sent += len(data)
            conn.write(b"%x\r\n%b\r\n" % (len(data), data) if chunked else data)
            if conn.write_paused:
                await conn.drain()
