"""prefork_lb.proxy in process: an answer that waits in a socket whose connection failed (read
and relayed). Fake transports as in test_exchange.py; where the socket itself is asked, a TCP
connection on 127.0.0.1."""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import Iterator
from typing import Any

import pytest

from prefork_lb.proxy.upstream import Upstream
from tests.unit.proxy.test_exchange import Rig, got
from tests.unit.proxy.test_fuzz import FakeTransport


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    lp = asyncio.new_event_loop()
    yield lp
    lp.close()


class SocketTransport(FakeTransport):
    """A fake transport that owns a real socket, for what asks the socket itself."""

    def __init__(self, sock: socket.socket) -> None:
        super().__init__()
        self.sock = sock

    def get_extra_info(self, name: str) -> Any:
        return self.sock if name == "socket" else super().get_extra_info(name)


def tcp_pair() -> tuple[socket.socket, socket.socket]:
    """Two ends of a TCP connection on 127.0.0.1 (ours non-blocking, as a transport's is)."""
    with socket.create_server(("127.0.0.1", 0)) as lst:
        theirs = socket.create_connection(lst.getsockname())
        mine, _ = lst.accept()
    mine.setblocking(False)
    return mine, theirs


def reset(sock: socket.socket) -> None:
    """Close with a reset (RST), as a server does that closes with unread bytes."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def test_an_answer_waiting_in_a_failed_connection_is_relayed(loop) -> None:
    """The backend answered an upload early and reset the connection: the write error comes
    first, the answer is still in the socket."""
    rig = Rig(loop)
    c, t = rig.client()
    c.data_received(b"POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n" + b"u" * 1000)
    mine, theirs = tcp_pair()
    with mine, theirs:
        b, ex = rig.connects.pop(0)
        up = Upstream(b, rig.proxy.response_memo)
        up.connection_made(SocketTransport(mine))
        ex.connected(b, up, None)
        theirs.sendall(
            b"HTTP/1.1 413 Content Too Large\r\nContent-Length: 9\r\nConnection: close\r\n\r\ntoo large"
        )
        reset(theirs)
        up.connection_lost(BrokenPipeError())
    out = got(t)
    assert out.startswith(b"HTTP/1.1 413") and out.endswith(b"too large"), out
    assert b"502" not in out and t.closed and rig.backends[0].stats.errors == 0
