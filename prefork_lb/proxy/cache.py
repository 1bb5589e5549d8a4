"""The proxy's response cache: answers fresh hits, keeps storable misses (``--cache-size``).

The glue between the proxy's requests and responses and the pure parts
(:mod:`~prefork_lb.proxy.cache_rules`, :mod:`~prefork_lb.proxy.cache_store`). What it does now:
a GET or HEAD whose stored response is fresh (or within the request's ``max-stale``) is
answered here with ``Age`` and ``Cache-Status: prefork_lb; hit; ttl=N`` (or a 304 when the
client's ``If-None-Match``/``If-Modified-Since`` matches it), never reaching a backend; a miss
goes to a backend as before, and its response is stored when the rules allow it and its body
has a ``Content-Length`` of at most ``--cache-max-object``. A stale entry is not revalidated:
the request goes to the backend as a miss and the new response replaces it.
"""

from __future__ import annotations

from http import HTTPStatus
from time import time as _wall
from typing import Any

from prefork_lb.proxy.cache_directives import Headers
from prefork_lb.proxy.cache_rules import (
    Use,
    age_header,
    bypass_reason,
    cache_status,
    current_age,
    freshness_lifetime,
    not_modified_headers,
    should_answer_not_modified,
    storable,
    usability,
)
from prefork_lb.proxy.cache_store import CacheStore, PrimaryKey, plain_request

__all__ = ["ProxyCache"]

MIB = 1024 * 1024
SEEN = "cache"  # key in Request.memo (a head seen before): (scheme, primary key, fields, plain)


def request_fields(req: Any) -> list[tuple[str, bytes]]:
    """A parsed request's headers as ``(lower-case name, value)`` pairs."""
    return [(n, v) for n, _, v in req.headers]


class ProxyCache:
    """One proxy process's response cache."""

    def __init__(self, size_mib: int, max_object_kib: int) -> None:
        self.store = CacheStore(capacity=size_mib * MIB, max_object=max_object_kib * 1024)

    def key(self, req: Any, scheme: str) -> PrimaryKey | None:
        """The primary key of a request that may use the cache, None for one that bypasses it."""
        if req.host is None or bypass_reason(req.method, request_fields(req)) is not None:
            return None
        return self.store.primary_key(scheme, req.host.decode("latin-1"), req.target.decode("latin-1"))

    def answer(self, req: Any, scheme: str, close: bool = False) -> bytes | None:
        """The whole response to ``req`` from the cache, or None when it must go to a backend.

        ``close``: the proxy closes the connection after it (it is draining), so it says so.
        """
        hit = self.fresh_answer(req, scheme, close)
        if hit is not None:
            return hit
        key = self.key(req, scheme)
        if key is None:
            return None
        fields = request_fields(req)
        found = self.store.lookup(req.method, key, fields).entry
        counts = self.store.counts
        if found is None:
            counts.misses += 1
            return None
        now = _wall()
        lifetime = freshness_lifetime(found.headers, found.response_time)
        age = current_age(found.headers, found.request_time, found.response_time, now)
        use = usability(fields, found.headers, lifetime, age)
        if use is Use.FRESH:
            counts.hits += 1
        elif use is Use.STALE_OK:
            counts.stale += 1
        else:
            counts.misses += 1
            return None
        status_value = cache_status(hit=True, ttl=lifetime - age)
        if should_answer_not_modified(req.method, fields, found.status, found.headers):
            return _response(req, 304, not_modified_headers(found.headers), b"", age, status_value, close)
        body = b"" if req.method == "HEAD" else found.body
        return _response(req, found.status, found.headers, body, age, status_value, close)

    def fresh_answer(self, req: Any, scheme: str, close: bool = False) -> bytes | None:
        """The hot path of :meth:`answer`: a *plain* request (no directives, no preconditions,
        cache_store.plain_request) whose stored response is fresh, answered from what the entry
        memoises (cache_store.Entry.fresh_hit), and counted as a hit; None for anything else,
        which :meth:`answer` then decides. What the request's head gives (its key, its fields)
        is kept in ``req.memo`` when the parser keeps the request (the same head comes back)."""
        memo = getattr(req, "memo", None)
        seen = memo.get(SEEN) if memo is not None else None
        if seen is None or seen[0] != scheme:
            key = self.key(req, scheme)
            fields = request_fields(req)
            seen = (scheme, key, fields, key is not None and plain_request(fields))
            if memo is not None and len(memo) < 64:
                memo[SEEN] = seen
        _, key, fields, plain = seen
        if not plain or key is None:
            return None
        found = self.store.lookup(req.method, key, fields).entry
        if found is None:
            return None
        hit = found.fresh_hit(_wall(), req.method == "HEAD", _connection(req, close))
        if hit is not None:
            self.store.counts.hits += 1
        return hit

    def wants(self, req: Any, scheme: str, status: int, headers: list[tuple[bytes, bytes]]) -> bool:
        """Whether the response to ``req`` with this head is to be stored once its body is in."""
        if req.method != "GET" or self.key(req, scheme) is None:
            return False
        return storable(req.method, request_fields(req), status, response_fields(headers))

    def keep(
        self,
        req: Any,
        scheme: str,
        status: int,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
        request_time: float,
    ) -> None:
        """Store a whole response that :meth:`wants` accepted."""
        key = self.key(req, scheme)
        assert key is not None
        self.store.store(
            req.method,
            key,
            request_fields(req),
            status,
            response_fields(headers),
            body,
            request_time,
            _wall(),
        )


def response_fields(headers: list[tuple[bytes, bytes]]) -> Headers:
    """A backend response's raw headers as ``(lower-case name, value)`` pairs."""
    return [(n.decode("latin-1").lower(), v) for n, v in headers]


def _response(
    req: Any, status: int, headers: Headers, body: bytes, age: float, status_value: bytes, close: bool
) -> bytes:
    """The bytes of a response from the cache: stored fields less ``Age`` (sent anew)."""
    try:
        reason = HTTPStatus(status).phrase
    except ValueError:
        reason = ""
    lines = [f"HTTP/1.1 {status} {reason}\r\n".encode("latin-1")]
    lines.extend(n.encode("latin-1") + b": " + v + b"\r\n" for n, v in headers if n != "age")
    lines.append(b"age: " + age_header(age) + b"\r\n")
    lines.append(b"cache-status: " + status_value + b"\r\n")
    if close or not req.keep_alive:
        lines.append(b"connection: close\r\n")
    elif req.version == "1.0":
        lines.append(b"connection: keep-alive\r\n")
    lines.append(b"\r\n")
    if body:
        lines.append(body)
    return b"".join(lines)


def _connection(req: Any, close: bool) -> bytes:
    """The ``Connection`` line of a response from the cache (as :func:`_response` writes it),
    b"" for a persistent HTTP/1.1 one."""
    if close or not req.keep_alive:
        return b"connection: close\r\n"
    if req.version == "1.0":
        return b"connection: keep-alive\r\n"
    return b""
