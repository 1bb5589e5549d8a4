"""The proxy's response cache (``--cache-size``): the glue between requests, responses and the
pure parts (:mod:`~prefork_lb.proxy.cache_rules`, :mod:`~prefork_lb.proxy.cache_store`,
:mod:`~prefork_lb.proxy.cache_plan`).

The flow of a GET or HEAD that may use the cache:

* **fresh** (or within the request's ``max-stale``): answered here, with ``Age`` and
  ``Cache-Status: prefork_lb; hit; ttl=N`` (a 304 when the client's own condition matches);
* **stale within** ``stale-while-revalidate``: answered here at once (``hit; ttl=-N``) and, when
  no request for the key is in flight, ONE background request revalidates it
  (``start_refresh``, set by the proxy process);
* otherwise it is forwarded with a :class:`~prefork_lb.proxy.cache_plan.Plan`: a stale entry (or
  one the request's directives refuse) with validators is revalidated (a conditional request with
  the stored ``ETag``/``Last-Modified``): a 304 refreshes the stored fields and the client is
  answered from the entry (``fwd=stale; fwd-status=304``); any other answer replaces it when
  storable. A HEAD (answered from the stored GET response, RFC 9111 4.3.5) revalidates with a
  conditional HEAD, not a GET: a 304 refreshes the stored GET response all the same (it
  validates the same representation, 4.3.4), and when the representation changed the backend
  sends the new head without a body the HEAD client could not be given (the new response is
  stored by the next GET). A backend that fails (no connection, a timeout, 500/502/503/504)
  within the entry's ``stale-if-error`` window gets the stale entry served instead (``detail="stale-if-error"``).
* **coalescing**: the first GET to miss on a key holds its lock; the next ones wait (at most
  ``--cache-lock-timeout``), then are answered from the new entry (counted as ``coalesced``),
  or go to the backend themselves when the response was not stored or the wait ran out.

Every response forwarded while the cache is on says why in ``Cache-Status`` (RFC 9211), and a
non-error answer to an unsafe method invalidates the target URI (and same-host ``Location``/
``Content-Location``, RFC 9111 4.4). The exchange (``ex``, typed ``Any`` here: the exchange
module imports this one through the proxy's state) calls :meth:`ProxyCache.intercepts`,
:meth:`ProxyCache.finish`, :meth:`ProxyCache.failed` and :meth:`ProxyCache.release`.
"""

from __future__ import annotations

from collections.abc import Callable
from http import HTTPStatus
from time import monotonic as _now
from time import time as _wall
from typing import Any

from prefork_lb.proxy.cache_directives import Headers
from prefork_lb.proxy.cache_plan import SAFE_METHODS, CacheLock, Plan, forwarded_status, invalidated_keys
from prefork_lb.proxy.cache_rules import (
    ERROR_STATUSES,
    Use,
    age_header,
    bypass_reason,
    cache_status,
    current_age,
    freshness_lifetime,
    not_modified_headers,
    should_answer_not_modified,
    stale_if_error_allows,
    storable,
    update_from_not_modified,
    usability,
    validates,
)
from prefork_lb.proxy.cache_store import CacheStore, Entry, PrimaryKey, plain_request

__all__ = ["ProxyCache"]

MIB = 1024 * 1024
SEEN = "cache"  # key in Request.memo (a head seen before): (scheme, primary key, fields, plain)


def request_fields(req: Any) -> list[tuple[str, bytes]]:
    """A parsed request's headers as ``(lower-case name, value)`` pairs."""
    return [(n, v) for n, _, v in req.headers]


class ProxyCache:
    """One proxy process's response cache."""

    def __init__(self, size_mib: int, max_object_kib: int, lock_timeout: float = 5.0) -> None:
        self.store = CacheStore(capacity=size_mib * MIB, max_object=max_object_kib * 1024)
        self.lock_timeout = lock_timeout
        self.locks: dict[PrimaryKey, CacheLock] = {}
        self.background: set[Any] = set()  # the clients of background revalidations (swept)
        # (client, request, plan) -> None: starts a revalidation nobody waits for.
        self.start_refresh: Callable[[Any, Any, Plan], None] | None = None

    def key(self, req: Any, scheme: str) -> PrimaryKey | None:
        """The primary key of a request that may use the cache, None for one that bypasses it."""
        if req.host is None or bypass_reason(req.method, request_fields(req)) is not None:
            return None
        return self.store.primary_key(scheme, req.host.decode("latin-1"), req.target.decode("latin-1"))

    def answer(
        self, req: Any, scheme: str, close: bool = False, client: Any = None, extra: bytes = b""
    ) -> bytes | Plan:
        """The whole response to ``req`` from the cache, or the :class:`Plan` it goes to a
        backend with. ``close``: the proxy closes the connection after it (it is draining);
        ``client``: the client connection (for a background revalidation); ``extra``: header
        lines for the answer (the request id's)."""
        hit = self.fresh_answer(req, scheme, close, extra)
        if hit is not None:
            return hit
        fields = request_fields(req)
        if req.host is None:
            return Plan(None, "bypass", fields)
        reason = bypass_reason(req.method, fields)
        if reason is not None:
            return Plan(None, "method" if reason == "method" else "bypass", fields)
        key = self.store.primary_key(scheme, req.host.decode("latin-1"), req.target.decode("latin-1"))
        lookup = self.store.lookup(req.method, key, fields)
        found = lookup.entry
        counts = self.store.counts
        if found is None:
            counts.misses += 1
            return self._coalesce(req.method, Plan(key, lookup.miss or "miss", fields))
        now = _wall()
        lifetime = freshness_lifetime(found.headers, found.response_time)
        age = current_age(found.headers, found.request_time, found.response_time, now)
        use = usability(fields, found.headers, lifetime, age)
        if use is Use.FRESH:
            counts.hits += 1
        elif use is Use.STALE_OK:
            counts.stale += 1
        elif use is Use.STALE_WHILE_REVALIDATE:
            counts.stale += 1
            if key not in self.locks and self.start_refresh is not None and client is not None:
                plan = Plan(key, "stale", fields, found, lifetime, conditional=_has_validator(found))
                plan.lock = self.locks[key] = CacheLock(_now() + self.lock_timeout)
                self.start_refresh(client, req, plan)
            return _from_entry(
                req, fields, found, age, cache_status(hit=True, ttl=lifetime - age), close, extra
            )
        else:
            counts.misses += 1
            fresh = usability([], found.headers, lifetime, age) is Use.FRESH
            plan = Plan(key, "request" if fresh else "stale", fields, found, lifetime)
            # A HEAD revalidates with a conditional HEAD (see the module docstring).
            plan.conditional = req.method in ("GET", "HEAD") and _has_validator(found)
            return self._coalesce(req.method, plan)
        return _from_entry(req, fields, found, age, cache_status(hit=True, ttl=lifetime - age), close, extra)

    def _coalesce(self, method: str, plan: Plan) -> Plan:
        """A GET takes the key's lock, or waits on it when another request holds it."""
        if method != "GET" or plan.key is None or self.lock_timeout <= 0:
            return plan
        if plan.key in self.locks:
            plan.wait = True
        else:
            plan.lock = self.locks[plan.key] = CacheLock(_now() + self.lock_timeout)
        return plan

    # -- coalescing ------------------------------------------------------------------------------

    def park(self, ex: Any) -> None:
        """``ex`` waits for the response of the request holding its key's lock."""
        plan: Plan = ex.cache_plan
        assert plan.key is not None
        lock = self.locks.get(plan.key)
        if lock is None:  # (released meanwhile)
            self._resume(ex)
        else:
            lock.waiters.append(ex)

    def release(self, ex: Any) -> None:
        """``ex`` is over, one way or another: the requests waiting on its lock go on."""
        plan: Plan = ex.cache_plan
        lock, plan.lock = plan.lock, None
        if lock is None or plan.key is None:
            return
        if self.locks.get(plan.key) is lock:
            del self.locks[plan.key]
        for waiter in lock.waiters:
            if not waiter.done:
                self._resume(waiter)

    def _resume(self, ex: Any) -> None:
        """A waiter whose lock was released or ran out: answered from a usable entry now in the
        store, or sent to the backend itself."""
        req = ex.req
        plan: Plan = ex.cache_plan
        plan.wait = False
        plan.collapsed = True
        client = ex.client
        key = plan.key
        found = None if key is None else self.store.lookup(req.method, key, plan.fields).entry
        if found is not None:
            lifetime = freshness_lifetime(found.headers, found.response_time)
            age = current_age(found.headers, found.request_time, found.response_time, _wall())
            if usability(plan.fields, found.headers, lifetime, age) in (Use.FRESH, Use.STALE_OK):
                self.store.counts.coalesced += 1
                plan.fwd_status = found.status
                ex.done = True
                self._serve(ex, found, age)
                client.exchange_done(ex)
                return
        ex.route()

    def sweep(self, now: float) -> None:
        """Locks past ``--cache-lock-timeout``: their waiters go to the backend themselves;
        background revalidations past their deadline time out."""
        expired = [k for k, lock in self.locks.items() if now >= lock.deadline]
        for key in expired:
            lock = self.locks.pop(key)
            for waiter in lock.waiters:
                if not waiter.done:
                    self._resume(waiter)
                    if waiter.client.wbuf:
                        waiter.client.flush()
        for bg in list(self.background):
            if bg.deadline_kind and now >= bg.deadline:
                bg.expire(now)

    # -- the response side -----------------------------------------------------------------------

    def fresh_answer(self, req: Any, scheme: str, close: bool = False, extra: bytes = b"") -> bytes | None:
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
        hit = found.fresh_hit(_wall(), req.method == "HEAD", _connection(req, close), extra)
        if hit is not None:
            self.store.counts.hits += 1
        return hit

    def wants(self, req: Any, scheme: str, status: int, headers: list[tuple[bytes, bytes]]) -> bool:
        """Whether the response to ``req`` with this head is to be stored once its body is in."""
        if req.method != "GET" or self.key(req, scheme) is None:
            return False
        return storable(req.method, request_fields(req), status, response_fields(headers))

    def on_head(self, ex: Any, status: int, headers: list[tuple[bytes, bytes]]) -> bool:
        """The cache's part in a response head from a backend: True when the response is for
        the cache (see :meth:`intercepts`); else the URIs an unsafe method changed are
        invalidated, and a storable response's body is to be kept (``ex.cache_body``)."""
        if self.intercepts(ex, status, headers):
            ex.framing = "length"
            return True
        req = ex.req
        scheme = ex.client.scheme
        if req.method not in SAFE_METHODS and status < 400:
            self.invalidate_after(req, scheme, headers)
        length = ex.length
        if (
            length is not None
            and length <= self.store.max_object
            and self.wants(req, scheme, status, headers)
        ):
            ex.cache_body = (status, headers, [])
            ex.cache_plan.stored = True
        return False

    def intercepts(self, ex: Any, status: int, headers: list[tuple[bytes, bytes]]) -> bool:
        """Whether this response head from the backend is for the cache, not the client: a 304
        to our revalidation (the stored entry is refreshed), or an error the stale entry's
        ``stale-if-error`` covers. The client is then answered from the entry by :meth:`finish`."""
        plan: Plan = ex.cache_plan
        entry = plan.entry
        if entry is None:
            return False
        if status == 304 and plan.conditional:
            fields = response_fields(headers)
            assert plan.key is not None
            if validates(entry.headers, fields):
                response_time = _wall()
                request_time = response_time - (_now() - ex.started)
                updated = update_from_not_modified(entry.headers, fields)
                plan.entry = self._refreshed(ex.req, plan, entry, updated, request_time, response_time)
            else:
                self.store.invalidate(plan.key)  # it answers for some other response
            plan.fwd_status = 304
            return True
        if status in ERROR_STATUSES and self._stale_if_error(plan, entry):
            plan.fwd_status = status
            return True
        return False

    def _refreshed(
        self, req: Any, plan: Plan, entry: Entry, headers: Headers, request_time: float, response_time: float
    ) -> Entry:
        assert plan.key is not None
        if self.store.holds(plan.key, entry):
            self.store.refresh(entry, headers, request_time, response_time)
            return entry
        again = self.store.store(  # (entries are GET responses, a HEAD's revalidation included)
            "GET", plan.key, plan.fields, entry.status, headers, entry.body, request_time, response_time
        )
        return entry if again is None else again

    def _stale_if_error(self, plan: Plan, entry: Entry) -> bool:
        age = current_age(entry.headers, entry.request_time, entry.response_time, _wall())
        if not stale_if_error_allows(plan.fields, entry.headers, plan.lifetime, age):
            return False
        plan.detail = "stale-if-error"
        self.store.counts.stale += 1
        return True

    def finish(self, ex: Any, scheme: str) -> None:
        """The backend's response is in: kept when wanted, the client answered from the entry
        when :meth:`intercepts` took the response, and the waiters let go."""
        plan: Plan = ex.cache_plan
        kept = ex.cache_body
        if kept is not None:
            body = b"".join(kept[2])
            if len(body) == ex.length:
                self.keep(ex.req, scheme, kept[0], kept[1], body, _wall() - (_now() - ex.started))
        if plan.fwd_status is not None and plan.entry is not None:
            entry = plan.entry
            self._serve(
                ex, entry, current_age(entry.headers, entry.request_time, entry.response_time, _wall())
            )
        self.release(ex)

    def failed(self, ex: Any, status: int) -> bytes | None:
        """The exchange ends with ``status`` of the proxy's own (no backend, no connection, a
        timeout): the stale entry's answer when its ``stale-if-error`` covers it, else None."""
        plan: Plan = ex.cache_plan
        entry = plan.entry
        self.release(ex)
        if entry is None or status not in ERROR_STATUSES or not self._stale_if_error(plan, entry):
            return None
        plan.fwd_status = status
        age = current_age(entry.headers, entry.request_time, entry.response_time, _wall())
        return self._answer(ex, entry, age)

    def _serve(self, ex: Any, entry: Entry, age: float) -> None:
        ex.client.write(self._answer(ex, entry, age))

    def _answer(self, ex: Any, entry: Entry, age: float) -> bytes:
        """The client's answer from ``entry`` after the exchange went to a backend."""
        req = ex.req
        plan: Plan = ex.cache_plan
        stopping = ex.proxy.stopping
        ex.client.keep_alive = req.keep_alive and not stopping
        ex.framing = "length"
        status = (
            304 if should_answer_not_modified(req.method, plan.fields, entry.status, entry.headers) else 0
        )
        ex.status = status or entry.status
        plan.stored = False
        value = forwarded_status(plan, ex.status)
        rid = ex.request_id
        extra = b"" if rid is None else ex.proxy.rid_line(rid)
        if status:
            return _response(req, 304, not_modified_headers(entry.headers), b"", age, value, stopping, extra)
        body = b"" if req.method == "HEAD" else entry.body
        return _response(req, entry.status, entry.headers, body, age, value, stopping, extra)

    def invalidate_after(self, req: Any, scheme: str, headers: list[tuple[bytes, bytes]]) -> None:
        """A non-error response to an unsafe method: the URIs it may have changed are dropped."""
        if req.host is None or req.method in SAFE_METHODS:
            return
        host = req.host.decode("latin-1")
        for key in invalidated_keys(scheme, host, req.target.decode("latin-1"), response_fields(headers)):
            self.store.invalidate(key)

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


def _has_validator(entry: Entry) -> bool:
    return any(n in ("etag", "last-modified") for n, _ in entry.headers)


def response_fields(headers: list[tuple[bytes, bytes]]) -> Headers:
    """A backend response's raw headers as ``(lower-case name, value)`` pairs."""
    return [(n.decode("latin-1").lower(), v) for n, v in headers]


def _from_entry(
    req: Any, fields: Headers, found: Entry, age: float, status_value: bytes, close: bool, extra: bytes
) -> bytes:
    """A hit's bytes: the stored response, or a 304 when the client's condition matches it."""
    if should_answer_not_modified(req.method, fields, found.status, found.headers):
        return _response(req, 304, not_modified_headers(found.headers), b"", age, status_value, close, extra)
    body = b"" if req.method == "HEAD" else found.body
    return _response(req, found.status, found.headers, body, age, status_value, close, extra)


def _response(
    req: Any,
    status: int,
    headers: Headers,
    body: bytes,
    age: float,
    status_value: bytes,
    close: bool,
    extra: bytes = b"",
) -> bytes:
    """The bytes of a response from the cache: stored fields less ``Age`` (sent anew), then
    ``extra`` (whole header lines: the request id's)."""
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
    if extra:
        lines.append(extra)
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
