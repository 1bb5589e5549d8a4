"""The upstream side of the proxy: a backend (address, pool, health, stats) and the protocol of
one connection to it, which parses responses with httptools and hands them to its exchange.

Invariants: an :class:`Upstream` serves at most one exchange at a time and sits in its backend's
``idle`` pool only between exchanges; a connection that misbehaves (bytes while idle, a parse
error) is closed, never reused. Responses whose raw head was seen before are relayed from a
:class:`ResponseMemo` without parsing (see prefork_lb.proxy.server for the whole picture).
"""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import TYPE_CHECKING, Any

import httptools

from prefork_lb.http.parser import MEMO_HEAD_MAX
from prefork_lb.proxy.health import PassiveEjector
from prefork_lb.proxy.stats import BackendStats

if TYPE_CHECKING:
    from prefork_lb.proxy.exchange import Exchange
    from prefork_lb.proxy.server import ClientConn, Proxy

log = logging.getLogger("prefork_lb.error")

HIGH_WATER = 256 * 1024     # write buffer of a transport before its peer is paused


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

    __slots__ = ("key", "host", "port", "name", "weight", "idle", "stats", "health", "ejector",
                 "slot", "ejected_until", "checking", "connecting", "down_reason")

    def __init__(self, host: str, port: int, weight: int = 1, slot: int | None = None) -> None:
        self.host = host
        self.port = port
        self.key = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self.name = self.key.encode("latin-1")
        self.weight = weight
        self.idle: list[Upstream] = []
        self.stats = BackendStats()
        self.health: Any = None          # HealthState for remote backends with active checks
        self.ejector = PassiveEjector()
        self.slot = slot                 # a local worker slot, or None for a remote backend
        self.ejected_until = 0.0
        self.checking = False
        self.connecting = 0
        self.down_reason = ""


class Upstream(asyncio.Protocol):
    """A connection to a backend; parses responses with httptools."""

    __slots__ = ("proxy", "backend", "transport", "parser", "ex", "headers", "last_used", "closed",
                 "paused", "is_head", "got_bytes", "tunnel_to", "reason", "midmsg", "raw_head")

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
        self.midmsg = False          # a response is partly parsed
        self.raw_head: bytes | None = None   # the head of the response being parsed, when whole

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
            end = data.find(b"\r\n\r\n")
            if 0 < end < MEMO_HEAD_MAX:
                raw = data[:end]
                memo = self.proxy.response_memo.get(raw)
                if memo is not None and len(data) == end + 4 + memo.length and ex.fast_response(self, memo, data, end):
                    return
                self.raw_head = raw
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            ex.upgraded(data[exc.args[0]:])
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
        idle = self.backend.idle
        if self in idle:
            idle.remove(self)
        tunnel = self.tunnel_to
        if tunnel is not None:
            self.tunnel_to = None
            tunnel.close()
            return
        ex = self.ex
        if ex is not None:
            self.ex = None
            ex.upstream_lost(self, exc)

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
