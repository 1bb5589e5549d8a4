"""What the response cache does about a request it does not answer at once; pure, no I/O.

A request the cache cannot answer from a fresh entry goes to a backend with a :class:`Plan`:
why it was forwarded (RFC 9211's ``fwd`` reason), the stored entry it may revalidate or fall
back on (stale-if-error), whether it holds the key's lock (the others wait for its response:
request coalescing) or waits on it. The functions here are the pure steps of that flow:

* :func:`conditional_head`: the request head sent to revalidate a stored response (RFC 9111
  4.3.1): the client's own preconditions out, the stored validators in;
* :func:`invalidated_keys`: what a non-error answer to an unsafe method invalidates (4.4): the
  target URI, and ``Location``/``Content-Location`` when they name the same host;
* :func:`forwarded_status`: the ``Cache-Status`` of a response from a backend.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urljoin, urlsplit

from prefork_lb.proxy.cache_directives import Headers, first_value
from prefork_lb.proxy.cache_rules import cache_status, revalidation_headers
from prefork_lb.proxy.cache_store import Entry, PrimaryKey

__all__ = [
    "SAFE_METHODS",
    "CacheLock",
    "Plan",
    "conditional_head",
    "forwarded_status",
    "invalidated_keys",
]

SAFE_METHODS: frozenset[str] = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})
"""RFC 9110 9.2.1; a non-error response to any other method invalidates (RFC 9111 4.4)."""

_CONDITIONALS = (b"if-none-match", b"if-modified-since", b"if-match", b"if-unmodified-since", b"if-range")


@dataclass
class CacheLock:
    """One key's response being fetched: who waits for it, and until when (monotonic)."""

    deadline: float
    waiters: list[Any] = field(default_factory=list)


@dataclass
class Plan:
    """The cache's part in one forwarded request (see the module docstring)."""

    key: PrimaryKey | None
    """None: the request bypasses the cache (nothing is looked up, stored or coalesced)."""
    fwd: str
    """Why it was forwarded: ``uri-miss``, ``vary-miss``, ``stale``, ``request`` (a fresh
    entry the request's own directives refused), ``method``, ``bypass``."""
    fields: Headers
    entry: Entry | None = None
    """The stored response found (stale, or refused by the request): revalidated when
    ``conditional``, served when the backend fails within its stale-if-error window."""
    lifetime: float = 0.0
    conditional: bool = False
    lock: CacheLock | None = None
    """Held: requests for the same key wait for this one's response."""
    wait: bool = False
    """Waits for another request's response under the key's lock."""
    stored: bool = False
    fwd_status: int | None = None
    """Set when the backend's answer is not what the client gets (a 304, an error)."""
    detail: str | None = None
    collapsed: bool = False


def conditional_head(head: bytes, stored: Headers) -> bytes:
    """``head`` (a whole request head, ending in an empty line) with its preconditions replaced
    by ``stored``'s validators (RFC 9111 4.3.1): see
    :func:`~prefork_lb.proxy.cache_rules.revalidation_headers`."""
    lines = head[:-4].split(b"\r\n")
    kept = [lines[0]]
    for line in lines[1:]:
        if line.split(b":", 1)[0].strip().lower() not in _CONDITIONALS:
            kept.append(line)
    for name, value in revalidation_headers([], stored):
        kept.append(name.encode("latin-1") + b": " + value)
    return b"\r\n".join(kept) + b"\r\n\r\n"


def _same_host_key(scheme: str, host: str, target: str, reference: bytes) -> PrimaryKey | None:
    """The primary key ``reference`` (a Location value) names, resolved against the request's
    URI; None for another host (RFC 9111 4.4: only the same host's are invalidated)."""
    base = f"{scheme}://{host}{target}"
    try:
        url = urlsplit(urljoin(base, reference.decode("latin-1").strip()))
        if url.scheme != scheme or url.netloc.lower() != host.lower():
            return None
    except ValueError:
        return None
    path = url.path or "/"
    return scheme, host.lower(), path + ("?" + url.query if url.query else "")


def invalidated_keys(scheme: str, host: str, target: str, response_headers: Headers) -> list[PrimaryKey]:
    """The primary keys a non-error response to an unsafe method invalidates (RFC 9111 4.4)."""
    keys: list[PrimaryKey] = [(scheme.lower(), host.lower(), target)]
    for name in ("location", "content-location"):
        value = first_value(response_headers, name)
        if value is None:
            continue
        key = _same_host_key(scheme.lower(), host, target, value)
        if key is not None and key not in keys:
            keys.append(key)
    return keys


def forwarded_status(plan: Plan, status: int) -> bytes:
    """The ``Cache-Status`` value of an answer to a forwarded request whose client gets
    ``status``: the ``fwd`` reason, ``fwd-status`` when the backend said something else,
    ``stored`` when it is kept, ``collapsed`` and ``detail`` when they apply."""
    fwd_status = plan.fwd_status if plan.fwd_status != status else None
    return cache_status(
        fwd=plan.fwd,
        fwd_status=fwd_status,
        stored=plan.stored,
        collapsed=plan.collapsed,
        detail=plan.detail,
    )
