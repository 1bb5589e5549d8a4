"""What an exchange needs of its client connection: the :class:`ClientSide` protocol, which
``prefork_lb.proxy.server.ClientConn`` implements, and the kinds of a client's deadline.

It lets ``exchange`` drive a client without importing ``server`` (which imports ``exchange``).
Invariants of the contract: ``write`` only gathers, ``flush`` sends what was gathered in one
``transport.write``; the client owns its deadline: the exchange says what happened
(``sending``, ``body_sent``, ``responding``, ``retrying``) and only pushes ``deadline`` on while
a response flows; ``exchange_done`` is said once per exchange and the client then goes on with
its next request, flushing at the end of the event loop's pass.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from prefork_lb.proxy.state import ProxyState
from prefork_lb.proxy.upstream import Peer, Upstream

__all__ = ["D_BODY", "D_HEAD", "D_IDLE", "D_NONE", "D_QUEUE", "D_UPSTREAM", "ClientSide"]

# deadline kinds of a client connection
D_NONE, D_HEAD, D_BODY, D_IDLE, D_QUEUE, D_UPSTREAM = range(6)


class ClientSide(Peer, Protocol):
    """What an exchange needs of its client connection (prefork_lb.proxy.server.ClientConn).

    ``write`` gathers bytes for the next ``flush`` (a bound ``list.append``: no Python frame on
    the hot path); ``keep_alive`` says whether the connection stays open after this response;
    ``deadline`` is pushed on while the response flows.
    """

    write: Callable[[bytes], None]
    keep_alive: bool
    deadline: float
    peer_ip: str
    scheme: str
    closed: bool

    @property
    def proxy(self) -> ProxyState: ...

    def local_authority(self) -> bytes:
        """``host:port`` of the address the client connected to (the Host for a request
        that named none)."""
        ...

    def sending(self) -> None:
        """The request went on a backend connection (the upstream deadline starts)."""

    def body_sent(self) -> None:
        """The whole request body went to the backend."""

    def responding(self, keep_alive: bool) -> None:
        """A response head is on its way; whether the connection stays open after it."""

    def retrying(self) -> None:
        """The exchange tries another backend: no deadline until it is sent again."""

    def mark(self) -> tuple[int, int]:
        """Where the output stands, for :meth:`take_back`."""
        ...

    def take_back(self, mark: tuple[int, int]) -> bool:
        """Drop what was written since ``mark`` if none of it was sent; False if some was."""
        ...

    # ``ex`` is the exchange (Any here: the exchange module imports this one).
    def exchange_done(self, ex: Any) -> None:
        """The exchange ``ex`` is over: the client goes on with its next request, or closes."""

    def end_with(self, response: bytes) -> None:
        """The exchange is given up with ``response`` of the proxy's own; the client closes."""

    def start_tunnel(self, up: Upstream) -> None:
        """From now on the client and ``up`` are one byte tunnel (a WebSocket)."""
