"""Who the proxy believes, and how a peer is written in forwarding headers; pure, no I/O.

:class:`TrustedPeers` answers whether a peer's forwarding headers (X-Forwarded-*, Forwarded,
X-Real-IP) are kept (see prefork_lb.proxy.headers); :func:`peer_forms` gives the two ways a
peer address appears in them, :func:`forwarded_value` quotes a Forwarded parameter value.

Invariants: anything that is not an IP address (a unix socket peer, ``""``) is never trusted
and is written as ``unknown``; an IPv4-mapped IPv6 address is treated and written as the IPv4
one; the memo dicts here never hold more than :data:`_CACHE_MAX` entries.
"""

from __future__ import annotations

import ipaddress

__all__ = ["TrustedPeers", "forwarded_value", "peer_forms"]

_CACHE_MAX = 1024  # bound of the memo dicts below (per peer address)


# -- trusted peers ----------------------------------------------------------------------------


class TrustedPeers:
    """The peers whose forwarding headers are believed: IPs, CIDR networks, or ``*``.

    Membership is tested per request, so answers are memoised per peer address. Anything that
    is not an IP address (a unix socket peer, given as ``""``) is not trusted.
    """

    __slots__ = ("all", "networks", "_cache")

    def __init__(self, spec: str | list[str]) -> None:
        items = spec.split(",") if isinstance(spec, str) else [p for s in spec for p in s.split(",")]
        self.all = False
        nets: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        for item in items:
            item = item.strip()
            if not item:
                continue
            if item == "*":
                self.all = True
                continue
            try:
                nets.append(ipaddress.ip_network(item))
            except ValueError as exc:
                raise ValueError(
                    f"invalid trusted peer {item!r}: want an IP address, a CIDR network or * ({exc})"
                ) from None
        self.networks = tuple(nets)
        self._cache: dict[str, bool] = {}

    def __contains__(self, ip: object) -> bool:
        if not isinstance(ip, str):
            return False
        hit = self._cache.get(ip)
        if hit is None:
            hit = self._lookup(ip)
            if len(self._cache) >= _CACHE_MAX:
                self._cache.clear()  # a scan from many addresses must not grow this without bound
            self._cache[ip] = hit
        return hit

    def _lookup(self, ip: str) -> bool:
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            return False
        if self.all:
            return True
        # A dual-stack listener reports IPv4 clients as ::ffff:a.b.c.d; "127.0.0.1" must match.
        mapped = addr.ipv4_mapped if isinstance(addr, ipaddress.IPv6Address) else None
        return any(addr in net or (mapped is not None and mapped in net) for net in self.networks)

    def __repr__(self) -> str:
        inner = ["*"] if self.all else []
        return f"TrustedPeers({','.join(inner + [str(n) for n in self.networks])!r})"


# -- forwarding values ------------------------------------------------------------------------

_TCHAR = frozenset(b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")


def forwarded_value(value: bytes) -> bytes:
    """``value`` as a Forwarded parameter value: a token, or else a quoted-string (RFC 7239 4)."""
    if value and all(c in _TCHAR for c in value):
        return value
    return b'"' + value.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


def _peer_forms(peer_ip: str) -> tuple[bytes, bytes]:
    """(X-Forwarded-For entry, Forwarded ``for=`` value) for a peer address."""
    try:
        addr = ipaddress.ip_address(peer_ip)
    except ValueError:
        # Not an IP (a unix socket peer): RFC 7239 section 6.2 "unknown"; no XFF entry.
        return b"", b"unknown"
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.ipv4_mapped is not None:
            v4 = str(addr.ipv4_mapped).encode()
            return v4, v4
        text = peer_ip.encode("latin-1")
        return text, b'"[' + text + b']"'
    text = peer_ip.encode("latin-1")
    return text, text


_PEERS: dict[str, tuple[bytes, bytes]] = {}


def peer_forms(peer_ip: str) -> tuple[bytes, bytes]:
    """(X-Forwarded-For entry, Forwarded ``for=`` value) for a peer address, memoised."""
    forms = _PEERS.get(peer_ip)
    if forms is None:
        forms = _peer_forms(peer_ip)
        if len(_PEERS) >= _CACHE_MAX:
            _PEERS.clear()
        _PEERS[peer_ip] = forms
    return forms
