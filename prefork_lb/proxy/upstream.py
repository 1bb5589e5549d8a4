"""The upstream side of the proxy: the protocol of one connection to a backend, which parses
responses with httptools and hands them to the exchange it is answering.

Invariants: an :class:`Upstream` answers one exchange at a time (``ex``); others may wait
behind it in ``queue``, already sent (pipelined GETs, see Exchange.route), and get the responses
that follow in order. It sits in its backend's ``idle`` pool only when both are empty; a
connection that misbehaves (bytes while idle, a parse error) is closed, never reused, and the
exchanges queued on it are retried elsewhere. Requests for it in one pass of the event loop
collect in ``out`` and go in one write at the end of the pass. Responses whose raw head was seen
before are relayed from the proxy's response memo without parsing, several per read if they
came together (see prefork_lb.proxy.server for the whole picture).

What it needs of the others is declared here as protocols, so that this module imports none of
them: its backend (:class:`Pool`), the exchange it answers (:class:`Responder`) and the client
connection at the other end (:class:`Peer`); the response memo is handed in.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections import deque
from typing import Any, Protocol

import httptools

from prefork_lb.http.parser import MEMO_HEAD_MAX
from prefork_lb.proxy.memo import ResponseMemo, ResponseMemos
from prefork_lb.proxy.stats import BackendStats

__all__ = ["HIGH_WATER", "Peer", "Pool", "Responder", "Upstream"]

log = logging.getLogger("prefork_lb.error")

HIGH_WATER = 256 * 1024  # write buffer of a transport before its peer is paused
SALVAGE_MAX = HIGH_WATER  # bytes read off a failed connection for the answer it holds


class Pool(Protocol):
    """What a connection needs of its backend (prefork_lb.proxy.backend.Backend)."""

    idle: list[Upstream]  # the keep-alive pool; a closed connection leaves it
    batch: Upstream | None  # this pass's pipelining connection; cleared by its flush
    stats: BackendStats
    open: int  # connections made and not lost yet
    tunnels: int  # of which WebSocket tunnels (counted by the exchange's upgrade)


class Peer(Protocol):
    """The client connection an upstream's bytes go to (prefork_lb.proxy.server.ClientConn)."""

    transport: Any

    @property
    def wbuf(self) -> list[bytes]:
        """What is gathered for the client's next write."""
        ...

    def flush(self) -> None: ...
    def pause(self, why: str) -> None: ...
    def resume(self, why: str) -> None: ...
    def close(self) -> None: ...


class Responder(Protocol):
    """The exchange an upstream connection answers (prefork_lb.proxy.exchange.Exchange)."""

    @property
    def client(self) -> Peer: ...

    def fast_response(self, up: Upstream, memo: ResponseMemo, body: bytes) -> bool: ...
    def response_head(self, up: Upstream, status: int, headers: list[tuple[bytes, bytes]]) -> None: ...
    def response_body(self, body: bytes) -> None: ...
    def response_done(self, up: Upstream, reusable: bool) -> None: ...
    def upgraded(self, rest: bytes) -> None: ...
    def bad_response(self, why: str) -> None: ...
    def upstream_lost(self, up: Upstream, exc: Exception | None) -> None: ...


class Upstream(asyncio.Protocol):
    """A connection to a backend; parses responses with httptools."""

    __slots__ = (
        "memos",
        "backend",
        "transport",
        "parser",
        "ex",
        "headers",
        "last_used",
        "closed",
        "paused",
        "is_head",
        "got_bytes",
        "tunnel_to",
        "reason",
        "midmsg",
        "raw_head",
        "queue",
        "out",
        "tunneled",
    )

    def __init__(self, backend: Pool, memos: ResponseMemos) -> None:
        self.memos = memos  # the proxy's response memo, shared by all its connections
        self.backend = backend
        self.transport: Any = None
        self.parser = httptools.HttpResponseParser(self)
        self.ex: Responder | None = None
        self.headers: list[tuple[bytes, bytes]] = []
        self.last_used = 0.0
        self.closed = False
        self.paused = False
        self.is_head = False
        self.got_bytes = False
        self.tunnel_to: Peer | None = None
        self.reason = b""
        self.midmsg = False  # a response is partly parsed
        self.raw_head: bytes | None = None  # the head of the next response parsed, when whole
        self.queue: deque[Responder] = deque()  # sent after ``ex``, answered after it
        self.out: list[bytes] = []  # to write at the end of this pass of the loop
        self.tunneled = False  # upgraded to a tunnel (counted in backend.tunnels until lost)

    # -- asyncio callbacks ------------------------------------------------------------------------

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.backend.open += 1
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        transport.set_write_buffer_limits(HIGH_WATER)

    def data_received(self, data: bytes) -> None:
        tunnel = self.tunnel_to
        if tunnel is not None:
            tunnel.transport.write(data)
            return
        ex = self.ex
        if ex is None:
            # Bytes from an idle backend: it is confused; never reuse this connection.
            self.close()
            return
        self.got_bytes = True
        self.raw_head = None
        if not self.midmsg:
            # Whole responses whose head was seen before, one after another (pipelined): relay
            # each without parsing; parse from the first one that is not.
            memos = self.memos
            pos = 0
            size = len(data)
            while True:
                end = data.find(b"\r\n\r\n", pos)
                if not 0 < end - pos < MEMO_HEAD_MAX:
                    break
                raw = data[pos:end]
                memo = memos.get(raw)
                if memo is not None:
                    stop = end + 4 + memo.length
                    if stop <= size and ex.fast_response(self, memo, data[end + 4 : stop]):
                        if stop == size:
                            return
                        pos = stop
                        nxt = self.ex
                        if nxt is None:  # more than was asked for: never reuse this connection
                            self.close()
                            return
                        ex = nxt
                        self.got_bytes = True
                        continue
                self.raw_head = raw
                break
            if pos:
                data = data[pos:]
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            ex.upgraded(data[exc.args[0] :])
        except httptools.HttpParserError as exc:
            if self.ex is not None:
                self.ex.bad_response(str(exc))
            self.close()
        cl = ex.client
        if cl.wbuf:
            cl.flush()

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is not None and self.ex is not None and not self.closed:
            self.salvage()
        self.closed = True
        backend = self.backend
        if self.transport is not None:
            backend.open -= 1
        if self.tunneled:
            self.tunneled = False
            backend.tunnels -= 1
        idle = backend.idle
        if self in idle:
            idle.remove(self)
        if backend.batch is self:
            backend.batch = None
        tunnel = self.tunnel_to
        if tunnel is not None:
            self.tunnel_to = None
            tunnel.close()
            return
        ex = self.ex
        if ex is not None:
            self.ex = None
            ex.upstream_lost(self, exc)
        queue = self.queue
        while queue:
            # Pipelined behind it: not a byte of their responses came.
            self.got_bytes = False
            queue.popleft().upstream_lost(self, exc)

    def pause_writing(self) -> None:
        ex = self.ex
        if ex is not None:
            ex.client.pause("upstream")
        elif self.tunnel_to is not None:
            self.tunnel_to.pause("upstream")

    def resume_writing(self) -> None:
        ex = self.ex
        if ex is not None:
            ex.client.resume("upstream")
        elif self.tunnel_to is not None:
            self.tunnel_to.resume("upstream")

    # -- httptools callbacks (response) -----------------------------------------------------------

    def on_message_begin(self) -> None:
        self.headers = []
        self.reason = b""
        self.midmsg = True

    def on_status(self, reason: bytes) -> None:
        self.reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        ex = self.ex
        if ex is not None:
            ex.response_head(self, self.parser.get_status_code(), self.headers)
        # The raw head was this response's only: one parsed after it in the same read (pipelined,
        # or the final one after a 100) must not be kept in the memo under it.
        self.raw_head = None

    def on_body(self, body: bytes) -> None:
        ex = self.ex
        if ex is not None:
            ex.response_body(body)

    def on_message_complete(self) -> None:
        self.midmsg = False
        ex = self.ex
        if ex is not None:
            ex.response_done(self, self.parser.should_keep_alive())

    # -- helpers -----------------------------------------------------------------------------------

    def salvage(self) -> None:
        """The connection failed while a request was on it: most often a write error, because
        the backend answered an upload early (413, a redirect) and closed without reading the
        rest, which resets the connection. Its answer came before the reset and still waits in
        the socket, unread: the event loop stops reading at the error. Read it (the socket is
        still open while the transport reports the loss) and hand it on as any answer."""
        try:
            fd = self.transport.get_extra_info("socket").fileno()
        except (AttributeError, OSError, TypeError):
            return
        taken = 0
        while self.ex is not None and taken < SALVAGE_MAX:
            try:
                data = os.read(fd, 65536)
            except OSError:  # nothing more (EAGAIN), or the reset itself
                return
            if not data:
                return
            taken += len(data)
            self.data_received(data)

    def flush(self) -> None:
        """Write what collected in this pass of the loop; the batch is closed to newcomers."""
        out = self.out
        if out:
            if not self.closed:
                self.transport.write(b"".join(out) if len(out) > 1 else out[0])
            out.clear()
        if self.backend.batch is self:
            self.backend.batch = None

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            idle = self.backend.idle
            if self in idle:
                idle.remove(self)
            if self.transport is not None:
                self.transport.close()

    def reset_parser(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.midmsg = False
