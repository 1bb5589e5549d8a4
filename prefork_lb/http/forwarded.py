"""The scheme a request was made with, as a trusted proxy in front says it: pure, no I/O.

Behind a TLS-terminating proxy (ours with ``--certfile``, nginx, a cloud load balancer) the
worker only sees plain HTTP; the proxy says what the client used in ``X-Forwarded-Proto`` and
in ``Forwarded: ...;proto=`` (RFC 7239). :func:`forwarded_scheme` reads those two values. The
caller decides whether to believe them at all: only from a peer in ``--forwarded-allow-ips``
(prefork_lb.proxy.peers.TrustedPeers), anyone else could claim ``https``.

Invariants:

* The answer is ``"http"``, ``"https"`` or None (nothing usable: keep the connection's own
  scheme). Any other value, or a malformed one, is None, never passed through to an app.
* ``X-Forwarded-Proto`` wins over ``Forwarded``: a proxy that keeps a trusted client's
  ``X-Forwarded-Proto`` (ours does) still appends a ``Forwarded`` element for its own hop, so
  the former says what the client used when the two disagree.
* Of a list (several proxies, or several header lines joined with commas), the last entry is
  read: the one the trusted peer itself wrote.
"""

from __future__ import annotations

__all__ = ["forwarded_scheme"]

_SCHEMES = frozenset(("http", "https"))


def forwarded_scheme(x_forwarded_proto: str | None, forwarded: str | None) -> str | None:
    """``"http"`` or ``"https"`` from the two field values (None where absent), else None."""
    if x_forwarded_proto is not None:
        proto = x_forwarded_proto.rpartition(",")[2].strip().lower()
        if proto in _SCHEMES:
            return proto
    if forwarded is not None:
        fwd_proto = _forwarded_proto(forwarded)
        if fwd_proto is not None and fwd_proto.lower() in _SCHEMES:
            return fwd_proto.lower()
    return None


def _forwarded_proto(value: str) -> str | None:
    """The ``proto`` parameter of the last element of a Forwarded field value, or None."""
    elements = _split_outside_quotes(value, ",")
    if elements is None:
        return None
    pairs = _split_outside_quotes(elements[-1], ";")
    if pairs is None:
        return None
    for pair in pairs:
        name, eq, raw = pair.strip().partition("=")
        if eq and name.strip().lower() == "proto":
            return _unquote(raw.strip())
    return None


def _split_outside_quotes(value: str, sep: str) -> list[str] | None:
    """``value`` split at ``sep`` where it is not inside a quoted-string; None when a quote is
    left open (the value is malformed: believe none of it)."""
    parts: list[str] = []
    start = 0
    quoted = escaped = False
    for i, ch in enumerate(value):
        if escaped:
            escaped = False
        elif quoted:
            if ch == "\\":
                escaped = True
            elif ch == '"':
                quoted = False
        elif ch == '"':
            quoted = True
        elif ch == sep:
            parts.append(value[start:i])
            start = i + 1
    if quoted:
        return None
    parts.append(value[start:])
    return parts


def _unquote(value: str) -> str | None:
    """A token as it is, a quoted-string without its quotes and escapes; None if malformed."""
    if not value.startswith('"'):
        return value or None
    if len(value) < 2 or not value.endswith('"'):
        return None
    out: list[str] = []
    escaped = False
    for ch in value[1:-1]:
        if escaped:
            out.append(ch)
            escaped = False
        elif ch == "\\":
            escaped = True
        else:
            out.append(ch)
    return "".join(out)
