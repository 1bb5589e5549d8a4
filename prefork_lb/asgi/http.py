"""One HTTP/1.1 connection of the ASGI server (an asyncio.Protocol), and the cycle of one request
on it: the app's task, its receive() and send(). The server that owns them is
prefork_lb.asgi.server; the pure parts (scope, event checks, heads) are prefork_lb.asgi.events.

Invariants:

* Requests are parsed by prefork_lb.http.parser, exactly as the WSGI engine parses them: a
  malformed request is answered with the same status and body (simple_response) and closes the
  connection, and never reaches the app.
* One request's app runs at a time per connection; pipelined requests wait parsed in
  ``parser.requests`` (reading pauses while one waits, so a client is held back by TCP), and
  responses go out in request order.
* Reading pauses while the body bytes the app has not taken pass BODY_HIGH; receive() resumes
  it. Writing waits for the transport to drain when its buffer passed the high-water mark.
* The connection keeps no timers: it sets ``wait_until`` (and the cycle ``deadline``), and the
  server's ticker calls :meth:`HttpConnection.timed_out` / :meth:`RequestCycle.cancel_late`.
* An app's mistake (an event it may not send, an exception, returning without a response) is
  one error line naming the app and the event; the client gets 500 if nothing was sent, else
  the connection closes. Other connections never notice.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Final

from prefork_lb.admission import BUSY_DETAIL, RETRY_AFTER
from prefork_lb.asgi.core import ServerCore
from prefork_lb.asgi.cycle import RequestCycle
from prefork_lb.asgi.events import (
    connection_scope,
    merged_scope,
    request_scope,
    scope_memo_key,
    scope_of,
    scope_part,
)
from prefork_lb.http.errors import HTTPError, RequestTimeout, ServiceUnavailable
from prefork_lb.http.parser import Request, RequestParser
from prefork_lb.http.response import simple_response

log = logging.getLogger("prefork_lb.error")

BODY_HIGH: Final = 1 << 18  # request body bytes buffered for the app before reading pauses
MAX_DRAIN: Final = 1 << 20  # unread request body we read and drop to keep a connection alive


def _addr(value: Any) -> tuple[str, int] | None:
    if isinstance(value, tuple) and len(value) >= 2:
        return (str(value[0]), int(value[1]))
    return None


class HttpConnection(asyncio.Protocol):
    """One client connection: parses requests, runs one cycle at a time, keeps it alive."""

    def __init__(self, server: ServerCore, accepted_at: float = 0.0, handed: bool = False) -> None:
        # (Typed: compiled, its attributes are read without a lookup by name.)
        self.server: ServerCore = server
        self.accepted_at = accepted_at or time.monotonic()
        # Passed over a handoff channel: counted as received once it counts as open (below).
        self.handed = handed
        self.parser = RequestParser(server.options.limits, server.request_memo)
        self.transport: asyncio.Transport | None = None
        self.cycle: RequestCycle | None = None
        self.wait_until = 0.0
        self.partial = False  # a request head has begun
        self.reading = True
        self.write_paused = False
        self.drain_waiter: asyncio.Future[None] | None = None
        self.closed = False
        self.skipping: Request | None = None  # a body the app left unread, being dropped
        self.eof = False  # the client shut its side of the connection
        self.had_request = False
        self.client: tuple[str, int] | None = None
        self.local: tuple[str, int] | None = None
        self.forwarded = False
        self.base: dict[str, Any] = {}
        self.scope_key: tuple[str, str, bool] | None = None
        # The scope template of the latest request's memoised part (events.merged_scope): the
        # next request with the same head copies it instead of merging again.
        self.last_part: dict[str, Any] | None = None
        self.last_merged: dict[str, Any] = {}
        # A cycle started eagerly may end within _start: cycle_done then leaves the next
        # request to _after's loop (``again``) instead of nesting one call per request.
        self.starting = False
        self.again = False
        # prefork_lb.asgi.accounting's marks (a connection that has sent no request yet; when a
        # request began to wait for a place), set here so that its reads never miss: a missing
        # attribute costs an AttributeError per request.
        self.lb_fresh = False
        self.lb_waited = 0.0

    # -- asyncio callbacks --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # a uvloop TCPTransport: not a subclass
        server = self.server
        opts = server.options
        self.client = _addr(transport.get_extra_info("peername"))
        self.local = _addr(transport.get_extra_info("sockname"))
        peers = opts.trusted_peers
        self.forwarded = peers is not None and self.client is not None and self.client[0] in peers
        self.base = connection_scope(self.client, self.local, opts.root_path, opts.url_scheme)
        self.scope_key = scope_memo_key(opts.root_path, self.forwarded)
        server.connections.add(self)
        if server.hook_opened is not None:
            server.hook_opened(self)
        if self.handed:
            # Only now, after it counts as open: until then the handoff dispatcher counts it
            # as sent and not received, so its load never misses it in between.
            self.handed = False
            if server.hook_received is not None:
                server.hook_received(1)
        self.wait_until = server.now + opts.header_timeout

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.server.connection_closed(self)
        cycle = self.cycle
        if cycle is not None:
            cycle.disconnected = True
            cycle.wake()
        self._wake_writer()

    def eof_received(self) -> bool:
        """The client shut its side: what it sent is still answered, then the connection closes."""
        self.eof = True
        cycle = self.cycle
        if cycle is not None:
            # receive() now says http.disconnect (at once if the body will never end), but
            # the response still goes out: the client may only have shut its sending side.
            if not cycle.req.complete:
                cycle.disconnected = True
            cycle.wake()
            return True
        self._after()
        return True

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        self._wake_writer()

    def _wake_writer(self) -> None:
        waiter = self.drain_waiter
        if waiter is not None:
            self.drain_waiter = None
            if not waiter.done():
                waiter.set_result(None)

    async def drain(self) -> None:
        if self.write_paused and not self.closed:
            waiter = self.drain_waiter = self.server.loop.create_future()
            await waiter

    def data_received(self, data: bytes) -> None:
        parser = self.parser
        cycle = self.cycle
        if cycle is None and not self.partial and self.skipping is None:
            self.partial = True
            self.wait_until = self.server.now + self.server.options.header_timeout
        try:
            parser.feed(data)
        except HTTPError as exc:
            self._refuse(exc)
            return
        if cycle is not None:
            if len(parser.requests) > 1 or cycle.buffered() > BODY_HIGH:
                self.pause()
            cycle.wake()
            return
        skipping = self.skipping
        if skipping is not None:
            if not skipping.complete:
                return
            self.skipping = None
        self._after()

    # -- the flow of requests -----------------------------------------------------------------

    def pause(self) -> None:
        if self.reading and self.transport is not None:
            self.reading = False
            self.transport.pause_reading()

    def resume(self) -> None:
        if not self.reading and self.transport is not None and not self.closed:
            self.reading = True
            self.transport.resume_reading()

    def _after(self) -> None:
        """Between requests: start the next one parsed, or wait for one (keep-alive)."""
        parser = self.parser
        while parser.requests:
            self.starting = True
            try:
                self._start(parser.requests[0])
            finally:
                self.starting = False
            if not self.again:
                return
            self.again = False  # that request's app finished within _start: on to the next
        if parser.stopped and parser.error is not None:
            self._refuse(parser.error)
            return
        if parser.stopped or self.eof:
            self.close()
            return
        server = self.server
        if not self.partial and not parser.between_requests:
            # The next head began while the app ran: its header timeout runs from now.
            self.partial = True
            self.wait_until = server.now + server.options.header_timeout
        if self.partial:
            self.resume()
            return
        if self.had_request:
            if server.draining:
                self.close()
                return
            self.wait_until = server.now + server.idle_timeout
        if not self.reading:  # (per request: no call when reading goes on)
            self.resume()

    def _start(self, req: Request) -> None:
        self.partial = False
        self.wait_until = 0.0
        self.had_request = True
        server = self.server
        opts = server.options
        if req.upgrade and req.method == "GET" and server.websocket is not None and _is_websocket(req):
            self._upgrade(req)
            return
        part = scope_part(req, opts.root_path, self.forwarded, self.scope_key)
        if part is not self.last_part:
            self.last_part = part
            self.last_merged = merged_scope(self.base, part)
        scope = scope_of(self.last_merged, part, server.state)
        cycle = self.cycle = RequestCycle(self, req, scope)
        if len(self.parser.requests) > 1:
            self.pause()
        cycle.task = server.spawn(cycle.run(), server.context.copy())

    def _upgrade(self, req: Request) -> None:
        server = self.server
        transport = self.transport
        assert transport is not None and server.websocket is not None
        base = request_scope(self.base, req, server.options.root_path, self.forwarded, server.state)
        del base["type"]
        self.closed = True  # the websocket protocol owns the transport from now on
        proto = server.websocket(
            transport, server.app, req, self.parser.tail, base, server.options, server.hooks
        )
        server.upgraded(self, proto)
        transport.set_protocol(proto)
        # (Its app's task is made there: in a fresh context, as a request's; see AsgiServer.)
        server.context.copy().run(proto.connection_made, transport)

    def cycle_done(self, cycle: RequestCycle, keep: bool) -> None:
        """The cycle's app returned (or was given up on); ``keep``: the connection may serve
        another request."""
        self.cycle = None
        parser = self.parser
        if parser.requests and parser.requests[0] is cycle.req:
            parser.requests.popleft()
        if self.closed:
            return
        if not keep:
            self.close()
            return
        req = cycle.req
        if not req.complete:
            if self.eof:
                self.close()  # the rest of the body will never come
                return
            # The app left body bytes unread that framing decided to skip (see _keep_alive).
            req.discard = True
            req.chunks.clear()
            self.skipping = req
            self.wait_until = self.server.now + self.server.options.header_timeout
            self.resume()
            return
        if self.starting:
            self.again = True
        else:
            self._after()

    def will_drain(self, req: Request, continue_sent: bool) -> bool:
        """Will the rest of an unread body be read and dropped (True), or the connection closed?"""
        if req.expect_continue and not continue_sent:
            return False  # the client may or may not send it: the stream is ambiguous
        if req.content_length is None:
            return False
        return req.content_length - req.body_size <= MAX_DRAIN

    def _refuse(self, exc: HTTPError, extra: str = "") -> None:
        """A malformed request (or body): answer it if nothing of a response went out, and close."""
        cycle = self.cycle
        if cycle is not None:
            cycle.abandon()
            if cycle.head_sent:
                self.close()
                return
            cycle.answered = exc.status
        self.write(simple_response(exc.status, exc.detail, extra=extra))
        self.close()

    def timed_out(self) -> None:
        """The server's ticker: ``wait_until`` passed."""
        self.wait_until = 0.0
        cycle = self.cycle
        if cycle is None and self.partial and self.skipping is None:
            self.write(simple_response(RequestTimeout.status, RequestTimeout().detail))
        self.close()  # idle, or waiting for body bytes the client does not send

    def busy(self) -> None:
        """Refused by admission (the queue is full): 503, then close."""
        self._refuse(ServiceUnavailable(BUSY_DETAIL), extra=f"Retry-After: {RETRY_AFTER}\r\n")

    def write(self, data: bytes) -> None:
        transport = self.transport
        if transport is not None and not self.closed:
            transport.write(data)

    def close(self) -> None:
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.close()

    @property
    def idle(self) -> bool:
        """Between requests on a kept-alive connection, no byte of the next one here yet."""
        return self.cycle is None and not self.partial and self.skipping is None and self.had_request


def _is_websocket(req: Request) -> bool:
    for lname, _raw, value in req.headers:
        if lname == "upgrade" and b"websocket" in value.lower():
            return True
    return False
