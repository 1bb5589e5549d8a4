"""Cookie affinity in front of another strategy.

The proxy sets a cookie naming the member a client was sent to, and passes the cookie's
value back as the hint of its next pick: ``pick(hint=cookie)`` answers that member while it is
eligible. Without a cookie, with one that names no member (forged, from another secret, or of a
member since removed), or when the member is down or draining, the pick falls through to the
inner strategy (default least_connections) and the caller should set a new cookie,
``cookie_for(key)``.

The cookie is ``HMAC-SHA256(secret, str(key))`` in hex, cut to ``cookie_length`` characters (20
by default: 80 bits), so it reveals nothing of the member's address, and cannot be made up
for a member by a client that does not know the secret. The secret defaults to random bytes
drawn when the strategy is made: processes that must agree (several proxy workers, restarts)
need to be given the same one.

:func:`sticky_class` combines :class:`Sticky` with the inner strategy's class into one class
(``StickyLeastConnections``...), so that both work on the same members with no forwarding.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from typing import Any

from prefork_lb.balance.base import K, Member, Strategy


class Sticky(Strategy[K]):
    """Mixin: affinity by cookie; combine with a strategy class with :func:`sticky_class`."""

    name = "sticky"

    def __init__(self, *, secret: bytes | None = None, cookie_length: int = 20, **options: Any) -> None:
        if secret is None:
            secret = secrets.token_bytes(32)
        if not isinstance(secret, bytes) or not secret:
            raise ValueError("the cookie secret must be non-empty bytes")
        if (
            isinstance(cookie_length, bool)
            or not isinstance(cookie_length, int)
            or not 16 <= cookie_length <= 64
        ):
            raise ValueError(f"cookie_length must be an integer from 16 to 64, not {cookie_length!r}")
        self._secret = secret
        self.cookie_length = cookie_length
        self._by_cookie: dict[str, K] = {}
        super().__init__(**options)

    def cookie_for(self, key: K) -> str:
        """The cookie value that names ``key``."""
        mac = hmac.new(self._secret, str(key).encode("utf-8", "surrogatepass"), hashlib.sha256)
        return mac.hexdigest()[: self.cookie_length]

    def key_for(self, cookie: str | bytes) -> K | None:
        """The member ``cookie`` names, or ``None`` when it names none."""
        if isinstance(cookie, bytes):
            cookie = cookie.decode("latin-1")
        return self._by_cookie.get(cookie)

    def pick(self, hint: Any = None) -> K | None:
        """The member the cookie ``hint`` names if it is eligible, else the inner strategy's pick."""
        if hint is not None:
            key = self.key_for(hint)
            if key is not None:
                m = self._members[key]
                if m.eligible:
                    m.picks += 1
                    return key
        return super().pick(None)

    def _added(self, m: Member[K]) -> None:
        super()._added(m)
        self._by_cookie[self.cookie_for(m.key)] = m.key

    def _removed(self, m: Member[K]) -> None:
        super()._removed(m)
        self._by_cookie.pop(self.cookie_for(m.key), None)


_CLASSES: dict[type[Strategy[Any]], type[Sticky[Any]]] = {}


def sticky_class(inner: type[Strategy[Any]]) -> type[Sticky[Any]]:
    """The class of ``inner`` with cookie affinity in front (made once per inner class)."""
    if issubclass(inner, Sticky):
        raise ValueError("sticky cannot wrap sticky")
    cls = _CLASSES.get(inner)
    if cls is None:
        cls = _CLASSES[inner] = type(f"Sticky{inner.__name__}", (Sticky, inner), {"__module__": __name__})
    return cls
