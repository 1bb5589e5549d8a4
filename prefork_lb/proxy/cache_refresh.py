"""Background revalidation for the response cache (RFC 5861 ``stale-while-revalidate``).

A stale response within its ``stale-while-revalidate`` window is served at once
(:meth:`~prefork_lb.proxy.cache.ProxyCache.answer`); the cache then asks for ONE revalidation
per key through :func:`start_refresh`: an :class:`~prefork_lb.proxy.exchange.Exchange` whose
client is a :class:`BackgroundClient`, which writes nowhere. The exchange runs the ordinary
way (pick, connect, a conditional GET, retries, timeouts), and what comes back goes to the
cache (a 304 refreshes the entry, a storable 200 replaces it); the key's lock is held until
then, so a key is revalidated once however many requests see it stale.

Its only deadline is the upstream one (``--upstream-timeout``), checked by the cache's sweep.
"""

from __future__ import annotations

from collections.abc import Callable
from time import monotonic as _now
from typing import Any

from prefork_lb.http.parser import Request
from prefork_lb.proxy.cache_plan import Plan
from prefork_lb.proxy.client_side import D_NONE, D_UPSTREAM
from prefork_lb.proxy.exchange import Exchange
from prefork_lb.proxy.state import ProxyState
from prefork_lb.proxy.upstream import Upstream

__all__ = ["BackgroundClient", "start_refresh"]


def _discard(data: bytes) -> None:
    """Nobody reads a background revalidation's answer."""


class BackgroundClient:
    """The client side (:class:`~prefork_lb.proxy.client_side.ClientSide`) of a revalidation
    nobody waits for."""

    def __init__(self, proxy: ProxyState, peer_ip: str, scheme: str) -> None:
        self._proxy = proxy
        self.peer_ip = peer_ip
        self.scheme = scheme
        self.write: Callable[[bytes], None] = _discard
        self.wbuf: list[bytes] = []
        self.transport: Any = None
        self.keep_alive = True
        self.deadline = 0.0
        self.deadline_kind = D_NONE
        self.closed = False
        self.ex: Exchange | None = None

    @property
    def proxy(self) -> ProxyState:
        return self._proxy

    def local_authority(self) -> bytes:
        return b"localhost"

    def sending(self) -> None:
        if self.deadline_kind == D_NONE:
            self.deadline_kind, self.deadline = D_UPSTREAM, _now() + self._proxy.upstream_timeout

    def body_sent(self) -> None:
        self.sending()

    def responding(self, keep_alive: bool) -> None:
        self.deadline_kind, self.deadline = D_UPSTREAM, _now() + self._proxy.upstream_timeout

    def retrying(self) -> None:
        self.deadline_kind = D_NONE

    def mark(self) -> tuple[int, int]:
        return 0, 0

    def take_back(self, mark: tuple[int, int]) -> bool:
        return True

    def exchange_done(self, ex: Any) -> None:
        self.close()

    def end_with(self, response: bytes) -> None:
        self.close()

    def start_tunnel(self, up: Upstream) -> None:  # pragma: no cover - a GET is never upgraded
        up.close()
        self.close()

    def flush(self) -> None:
        """Nothing is written."""

    def pause(self, why: str) -> None:
        """Nothing to pause: what comes is dropped."""

    def resume(self, why: str) -> None:
        """See :meth:`pause`."""

    def close(self) -> None:
        self.closed = True
        self.deadline_kind = D_NONE
        cache = self._proxy.cache
        assert cache is not None and self.ex is not None
        cache.background.discard(self)
        cache.release(self.ex)

    def expire(self, now: float) -> None:
        """The cache's sweep found the deadline passed: the exchange times out."""
        ex = self.ex
        self.deadline_kind = D_NONE
        if ex is not None and not ex.done:
            ex.timed_out()
        else:
            self.close()


def start_refresh(proxy: ProxyState, client: Any, req: Request, plan: Plan) -> None:
    """Revalidate ``plan``'s entry in the background, as ``client``'s request would have."""
    bg = BackgroundClient(proxy, client.peer_ip, client.scheme)
    ex = Exchange(bg, req)
    ex.cache_plan = plan
    bg.ex = ex
    assert proxy.cache is not None
    proxy.cache.background.add(bg)
    ex.start()
