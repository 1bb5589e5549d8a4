"""Name resolution of the proxy's remote backends: said at start, retried until it works.

A backend given by a name that does not resolve (``--backends nosuchhost.invalid:8000``) is
reported when the proxy starts, in one error line naming the backend and the resolver's
error, and counts as down (``/lb-health`` gives the reason); the proxy starts all the same and
looks the name up again every ``every`` seconds until it resolves. From then on the backend is
like any other that was down: its health checks bring it up (``--health-check-rise`` passes),
or, without health checks, it is up at once.

Invariants:

- An IP address is never looked up; a name is looked up with the loop's ``getaddrinfo`` (a
  thread of the loop's executor), so the event loop never blocks on DNS, each lookup bounded
  by ``timeout`` (``--upstream-connect-timeout``).
- The start waits for the first lookups of all names together, so the error line comes
  before the proxy says it is ready and no request goes to a backend known not to resolve.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from prefork_lb.proxy.deadline import within

log = logging.getLogger("prefork_lb.error")

RETRY = 2.0  # seconds between lookups of a name that does not resolve, without health checks

Lookup = Callable[[str, int], Awaitable[str | None]]


def is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def resolver(loop: asyncio.AbstractEventLoop, timeout: float) -> Lookup:
    """``lookup(host, port)``: None when ``host`` resolves, else the error as text."""

    async def lookup(host: str, port: int) -> str | None:
        if is_address(host):
            return None
        try:
            await within(timeout or None, loop.getaddrinfo(host, port, type=socket.SOCK_STREAM))
        except socket.gaierror as exc:
            return exc.strerror or str(exc)
        except TimeoutError:
            return f"no answer within {timeout:g} s"
        except OSError as exc:
            return str(exc)
        return None

    return lookup


class Resolution:
    """The first lookup of each remote backend's name, and the retries of those that failed.

    ``proxy`` is the proxy state (``backends``, ``strategy``, ``set_up``); a backend is one of
    its :class:`~prefork_lb.proxy.backend.Backend` (host, port, key, health, down_reason).
    """

    def __init__(self, proxy: Any, lookup: Lookup, every: float) -> None:
        self.proxy = proxy
        self.lookup = lookup
        self.every = every or RETRY

    async def start(self, backends: Iterable[Any]) -> list[Any]:
        """Look every name up; report and mark down those that fail. Returns them."""
        named = [b for b in backends if b.slot is None and not is_address(b.host)]
        errors = await asyncio.gather(*(self.lookup(b.host, b.port) for b in named))
        failed = []
        for b, error in zip(named, errors, strict=True):
            if error is None:
                continue
            log.error(
                "proxy: backend %s: cannot resolve %s: %s; it counts as down and the name is "
                "looked up again every %g s",
                b.key,
                b.host,
                error,
                self.every,
            )
            b.down_reason = f"DNS: {error}"
            if b.health is not None:
                b.health.healthy = False  # up only after --health-check-rise passes
                b.health.streak = 0
            self.proxy.strategy.mark_down(b.key)
            failed.append(b)
        return failed

    async def retry(self, b: Any) -> None:
        """Look ``b``'s name up every ``every`` seconds until it resolves (or ``b`` is gone)."""
        while b.key in self.proxy.backends:
            await asyncio.sleep(self.every)
            error = await self.lookup(b.host, b.port)
            if error is None:
                log.info("proxy: backend %s: %s resolves now", b.key, b.host)
                if b.health is None:
                    self.proxy.set_up(b)
                else:
                    b.down_reason = "health check"  # until its checks pass
                return
            b.down_reason = f"DNS: {error}"
