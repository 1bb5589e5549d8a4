"""The upstream side of the proxy: a backend (address, pool, health, stats) and the protocol of
one connection to it, which parses responses with httptools and hands them to its exchange.

Invariants: an :class:`Upstream` answers one exchange at a time (``ex``); others may wait
behind it in ``queue``, already sent (pipelined GETs, see Exchange.route), and get the responses
that follow in order. It sits in its backend's ``idle`` pool only when both are empty; a
connection that misbehaves (bytes while idle, a parse error) is closed, never reused, and the
exchanges queued on it are retried elsewhere. Requests for it in one pass of the event loop
collect in ``out`` and go in one write at the end of the pass. Responses whose raw head was seen
before are relayed from a :class:`ResponseMemo` without parsing, several per read if they came
together (see prefork_lb.proxy.server for the whole picture).
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections import deque
from typing import TYPE_CHECKING, Any

import httptools

from prefork_lb.http.parser import MEMO_HEAD_MAX
from prefork_lb.proxy.health import PassiveEjector
from prefork_lb.proxy.stats import BackendStats

if TYPE_CHECKING:
    from prefork_lb.proxy.exchange import Exchange
    from prefork_lb.proxy.server import ClientConn, Proxy

log = logging.getLogger("prefork_lb.error")

HIGH_WATER = 256 * 1024  # write buffer of a transport before its peer is paused


class ResponseMemo:
    """What a response head seen before turned into: status, length, whether the backend keeps
    the connection, and the rewritten head per (client version, keep-alive, backend).

    Keyed on the raw head bytes, which fully determine the rewrite; the Date header changes
    once a second, so a backend answering the same way hits the memo for all but one response
    a second. Only simple responses are remembered: a final status, Content-Length framing."""

    __slots__ = ("status", "length", "upstream_keep", "heads")

    def __init__(self, status: int, length: int, upstream_keep: bool) -> None:
        self.status = status
        self.length = length
        self.upstream_keep = upstream_keep
        self.heads: dict[tuple[str, bool, bytes], bytes] = {}


class Backend:
    """One upstream address: its pool of idle connections, health and statistics."""

    __slots__ = (
        "key",
        "host",
        "port",
        "name",
        "weight",
        "idle",
        "stats",
        "health",
        "ejector",
        "slot",
        "ejected_until",
        "checking",
        "connecting",
        "down_reason",
        "batch",
    )

    def __init__(self, host: str, port: int, weight: int = 1, slot: int | None = None) -> None:
        self.host = host
        self.port = port
        self.key = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self.name = self.key.encode("latin-1")
        self.weight = weight
        self.idle: list[Upstream] = []
        self.stats = BackendStats()
        self.health: Any = None  # HealthState for remote backends with active checks
        self.ejector = PassiveEjector()
        self.slot = slot  # a local worker slot, or None for a remote backend
        self.ejected_until = 0.0
        self.checking = False
        self.connecting = 0
        self.down_reason = ""
        self.batch: Upstream | None = None  # a connection whose pipelined GETs go out at the end of this pass


class Upstream(asyncio.Protocol):
    """A connection to a backend; parses responses with httptools."""

    __slots__ = (
        "proxy",
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
    )

    def __init__(self, proxy: Proxy, backend: Backend) -> None:
        self.proxy = proxy
        self.backend = backend
        self.transport: Any = None
        self.parser = httptools.HttpResponseParser(self)
        self.ex: Exchange | None = None
        self.headers: list[tuple[bytes, bytes]] = []
        self.last_used = 0.0
        self.closed = False
        self.paused = False
        self.is_head = False
        self.got_bytes = False
        self.tunnel_to: ClientConn | None = None
        self.reason = b""
        self.midmsg = False  # a response is partly parsed
        self.raw_head: bytes | None = None  # the head of the response being parsed, when whole
        self.queue: deque[Exchange] = deque()  # sent after ``ex``, answered after it
        self.out: list[bytes] = []  # to write at the end of this pass of the loop

    # -- asyncio callbacks ------------------------------------------------------------------------

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
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
            memos = self.proxy.response_memo
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
        self.closed = True
        backend = self.backend
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
