"""The response cache's memory: stored responses, LRU by bytes; pure, no I/O, no clock.

One :class:`CacheStore` per proxy process. Responses are found in two steps (RFC 9111 4.1):

* the **primary key** is the scheme, the host (lower-cased) and the request target; a HEAD is
  answered from a stored GET (the same head without the body) and otherwise from a stored HEAD,
  a GET only from a stored GET;
* within it, the **variants**: one per secondary key, the request's values of the fields the
  response's ``Vary`` nominates (:func:`~prefork_lb.proxy.cache_rules.secondary_key`). The
  newest matching variant wins.

Memory is bounded by ``capacity`` bytes: an entry is charged its body, its header bytes and
:data:`ENTRY_OVERHEAD`; storing past the bound evicts least-recently-used entries (a hit makes an
entry most recent). An entry larger than ``max_object`` is never stored. Times are passed in by
the caller, so the store needs no clock and the rules stay testable.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus

from prefork_lb.proxy.cache_directives import DELTA_MAX, Headers, cache_control_of
from prefork_lb.proxy.cache_rules import (
    current_age,
    freshness_lifetime,
    secondary_key,
    stored_headers,
    vary_names,
)

__all__ = [
    "ENTRY_OVERHEAD",
    "CacheCounts",
    "CacheStore",
    "Entry",
    "Lookup",
    "PLAIN_EXCEPT",
    "HitMemo",
    "PrimaryKey",
    "plain_request",
    "purge_prefix",
    "purge_subject",
]

ENTRY_OVERHEAD = 256
"""Bytes charged per entry on top of its body and headers (keys, object headers, bookkeeping)."""

PrimaryKey = tuple[str, str, str]
"""``(scheme, host, target)``."""

_VariantKey = tuple[PrimaryKey, str, tuple[str, ...], tuple[str | None, ...]]

PLAIN_EXCEPT = frozenset({"cache-control", "pragma", "if-none-match", "if-modified-since"})
"""Request fields that a fresh hit's answer depends on: a request with none of them is *plain*
(:func:`plain_request`), and a fresh stored response answers it as :meth:`Entry.fresh_hit` says."""


def plain_request(request_headers: Headers) -> bool:
    """No request directives (``Cache-Control``, ``Pragma``) and no preconditions: only the
    stored response's freshness decides whether it answers (RFC 9111 4.2, RFC 9110 13.2.2)."""
    for name, _ in request_headers:
        if name in PLAIN_EXCEPT:
            return False
    return True


@dataclass(frozen=True)
class HitMemo:
    """What every fresh hit of one entry shares, computed once per stored head (the hot path)."""

    headers: list[tuple[str, bytes]]  # the entry's headers it was made from (compared by identity)
    request_time: float
    response_time: float
    lifetime: float  # freshness lifetime (RFC 9111 4.2.1)
    initial_age: float  # corrected_initial_age (4.2.3): the age is this plus the time held
    no_cache: bool  # the response's no-cache: every use is revalidated (5.2.2.4)
    head: bytes  # status line and stored fields less Age, as sent
    # (connection line, head only) -> (Age, ttl, the whole response): Age and ttl are whole
    # seconds, so the bytes of a hit change at most twice a second
    sent: dict[tuple[bytes, bool], tuple[int, int, bytes]] = field(default_factory=dict)


@dataclass
class Entry:
    """One stored response (its head, its body, and when the cache asked for and got it)."""

    method: str
    status: int
    headers: list[tuple[str, bytes]]
    body: bytes
    request_time: float
    response_time: float
    vary: tuple[str, ...] = ()
    vary_key: tuple[str | None, ...] = ()
    size: int = 0

    _memo: HitMemo | None = field(default=None, repr=False, compare=False)

    @property
    def found(self) -> Lookup:
        """This entry as a lookup's result (made once: a lookup per hit)."""
        got = self.__dict__.get("_found")
        if got is None:
            got = self.__dict__["_found"] = Lookup(self)
        return got

    def charge(self) -> int:
        """The bytes this entry counts for against the store's capacity."""
        return ENTRY_OVERHEAD + len(self.body) + sum(len(n) + len(v) + 4 for n, v in self.headers)

    def memo(self) -> HitMemo:
        """The parts of a hit that depend on the stored head only; made again once the head or
        the times change (a 304's refresh gives the entry new headers and times)."""
        m = self._memo
        if (
            m is not None
            and m.headers is self.headers
            and m.request_time == self.request_time
            and m.response_time == self.response_time
        ):
            return m
        try:
            reason = HTTPStatus(self.status).phrase
        except ValueError:
            reason = ""
        lines = [f"HTTP/1.1 {self.status} {reason}\r\n".encode("latin-1")]
        lines.extend(n.encode("latin-1") + b": " + v + b"\r\n" for n, v in self.headers if n != "age")
        m = self._memo = HitMemo(
            headers=self.headers,
            request_time=self.request_time,
            response_time=self.response_time,
            lifetime=freshness_lifetime(self.headers, self.response_time),
            initial_age=current_age(self.headers, self.request_time, self.response_time, self.response_time),
            no_cache=cache_control_of(self.headers).has("no-cache"),
            head=b"".join(lines),
        )
        return m

    def fresh_hit(self, now: float, head_only: bool, connection: bytes, extra: bytes = b"") -> bytes | None:
        """The whole response to a *plain* request (:func:`plain_request`) when this entry is
        fresh at ``now``, else None (the caller's general path decides: stale, revalidate).

        The same bytes as prefork_lb.proxy.cache's general path: the stored head less ``Age``,
        then ``Age``, ``Cache-Status: prefork_lb; hit; ttl=N``, ``connection`` (a whole
        ``Connection`` line, or b""), ``extra`` (whole lines: a request id's), and the body
        unless ``head_only``. The bytes are memoised without ``extra`` only (an id differs per
        request).
        """
        m = self._memo
        if m is None or m.headers is not self.headers or m.response_time != self.response_time:
            m = self.memo()
        age = m.initial_age + (now - m.response_time)
        if m.no_cache or not m.lifetime > age:
            return None
        age_s, ttl = min(DELTA_MAX, max(0, int(age))), int(m.lifetime - age)
        if extra:
            return b"".join(
                (
                    m.head,
                    b"age: %d\r\ncache-status: prefork_lb; hit; ttl=%d\r\n" % (age_s, ttl),
                    connection,
                    extra,
                    b"\r\n",
                    b"" if head_only else self.body,
                )
            )
        got = m.sent.get((connection, head_only))
        if got is not None and got[0] == age_s and got[1] == ttl:
            return got[2]
        whole = b"".join(
            (
                m.head,
                b"age: %d\r\ncache-status: prefork_lb; hit; ttl=%d\r\n" % (age_s, ttl),
                connection,
                b"\r\n",
                b"" if head_only else self.body,
            )
        )
        if len(m.sent) < 8:
            m.sent[(connection, head_only)] = (age_s, ttl, whole)
        return whole


@dataclass
class CacheCounts:
    """What the cache did since the process started; shown in /lb-stats and /metrics."""

    hits: int = 0
    misses: int = 0
    stale: int = 0
    coalesced: int = 0
    stored: int = 0
    evicted: int = 0
    purged: int = 0
    too_big: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class Lookup:
    """What a lookup found: an entry, or why not (``uri-miss``/``vary-miss``, RFC 9211 2.2)."""

    entry: Entry | None
    miss: str | None = None


@dataclass
class CacheStore:
    """Stored responses under a byte bound; see the module docstring."""

    capacity: int
    max_object: int
    counts: CacheCounts = field(default_factory=CacheCounts)
    _lru: OrderedDict[_VariantKey, Entry] = field(default_factory=OrderedDict)
    _by_primary: dict[PrimaryKey, list[_VariantKey]] = field(default_factory=dict)
    _bytes: int = 0

    @staticmethod
    def primary_key(scheme: str, host: str, target: str) -> PrimaryKey:
        """The primary key of a request: scheme and host lower-cased, the target as sent."""
        return scheme.lower(), host.lower(), target

    @property
    def size_bytes(self) -> int:
        """Bytes charged by the entries held now."""
        return self._bytes

    def __len__(self) -> int:
        return len(self._lru)

    def keys(self) -> Iterator[PrimaryKey]:
        """The primary keys held now, oldest used first."""
        return iter(dict.fromkeys(k[0] for k in self._lru))

    def lookup(self, method: str, key: PrimaryKey, request_headers: Headers) -> Lookup:
        """The newest variant under ``key`` that this request selects (RFC 9111 4.1).

        Marks the entry most recently used. Does not count hits or misses: whether a found entry
        is a hit depends on its freshness, which the caller decides.
        """
        variants = self._by_primary.get(key)
        if not variants:
            return Lookup(None, "uri-miss")
        vkey = variants[0]
        if len(variants) == 1 and not vkey[2] and (vkey[1] == method or (method, vkey[1]) == ("HEAD", "GET")):
            self._lru.move_to_end(vkey)  # the common case: one stored response, without Vary
            return self._lru[vkey].found
        methods = ("GET", "HEAD") if method == "HEAD" else (method,)
        for wanted in methods:
            for vkey in reversed(variants):  # newest first
                if vkey[1] != wanted:
                    continue
                if secondary_key(vkey[2], request_headers) == vkey[3]:
                    self._lru.move_to_end(vkey)
                    return self._lru[vkey].found
        return Lookup(None, "vary-miss")

    def store(
        self,
        method: str,
        key: PrimaryKey,
        request_headers: Headers,
        status: int,
        response_headers: Headers,
        body: bytes,
        request_time: float,
        response_time: float,
    ) -> Entry | None:
        """Store a response the rules allow storing; None when it exceeds ``max_object`` or the
        response's ``Vary`` is ``*``. Replaces the variant with the same secondary key."""
        names = vary_names(response_headers)
        if names is None:
            return None
        entry = Entry(
            method=method,
            status=status,
            headers=stored_headers(response_headers),
            body=body,
            request_time=request_time,
            response_time=response_time,
            vary=names,
            vary_key=secondary_key(names, request_headers),
        )
        entry.size = entry.charge()
        if entry.size > self.max_object or entry.size > self.capacity:
            self.counts.too_big += 1
            return None
        vkey: _VariantKey = (key, method, names, entry.vary_key)
        self._drop(vkey)
        self._lru[vkey] = entry
        self._by_primary.setdefault(key, []).append(vkey)
        self._bytes += entry.size
        self.counts.stored += 1
        self._evict()
        return entry

    def refresh(
        self,
        entry: Entry,
        headers: Sequence[tuple[str, bytes]],
        request_time: float,
        response_time: float,
    ) -> None:
        """Replace a stored entry's headers and times after a 304 (RFC 9111 4.3.4)."""
        self._bytes -= entry.size
        entry.headers = stored_headers(headers)
        entry.request_time = request_time
        entry.response_time = response_time
        entry.size = entry.charge()
        self._bytes += entry.size
        self._evict()

    def invalidate(self, key: PrimaryKey) -> int:
        """Drop every variant under ``key`` (RFC 9111 4.4: after an unsafe method succeeds)."""
        removed = 0
        for vkey in list(self._by_primary.get(key, ())):
            removed += self._drop(vkey)
        return removed

    def purge(self, prefix: str | None = None) -> int:
        """Drop every entry whose URL starts with ``prefix``; everything for None or ``""``.
        Returns how many entries (variants) went, and counts them as purged.

        What ``prefix`` is matched against depends on how it starts (:func:`purge_subject`):
        ``/...``: the request target (path and query) on any host; ``SCHEME://HOST/...``: the
        whole URL; anything else: ``HOST`` + target on either scheme. ``HOST`` is the request's
        ``Host`` as sent (with its port, if it had one), matched case-insensitively.
        """
        removed = 0
        want = purge_prefix(prefix or "")
        for key in list(self._by_primary):
            if purge_subject(key, want).startswith(want):
                removed += self.invalidate(key)
        self.counts.purged += removed
        return removed

    def stats(self) -> dict[str, int]:
        """The counts and the memory in use: the ``cache`` section of /lb-stats."""
        return {
            **self.counts.as_dict(),
            "entries": len(self._lru),
            "bytes": self._bytes,
            "capacity_bytes": self.capacity,
            "max_object_bytes": self.max_object,
        }

    def _drop(self, vkey: _VariantKey) -> int:
        entry = self._lru.pop(vkey, None)
        if entry is None:
            return 0
        self._bytes -= entry.size
        variants = self._by_primary[vkey[0]]
        variants.remove(vkey)
        if not variants:
            del self._by_primary[vkey[0]]
        return 1

    def _evict(self) -> None:
        while self._bytes > self.capacity and self._lru:
            oldest = next(iter(self._lru))
            self._drop(oldest)
            self.counts.evicted += 1

    def holds(self, key: PrimaryKey, entry: Entry) -> bool:
        """Whether ``entry`` (found under ``key`` earlier) is still stored, not replaced,
        evicted or purged since (a revalidation refreshes only an entry still held)."""
        return self._lru.get((key, entry.method, entry.vary, entry.vary_key)) is entry


def purge_prefix(prefix: str) -> str:
    """A purge prefix with its host part lower-cased, as the primary keys hold it."""
    if prefix.startswith("/"):
        return prefix
    scheme, sep, rest = prefix.partition("://")
    if not sep:
        scheme, rest = "", prefix
    host, slash, target = rest.partition("/")
    return (scheme.lower() + sep if sep else "") + host.lower() + slash + target


def purge_subject(key: PrimaryKey, prefix: str) -> str:
    """What of ``key`` a purge ``prefix`` is compared with (see :meth:`CacheStore.purge`)."""
    scheme, host, target = key
    if prefix.startswith("/"):
        return target
    if "://" in prefix:
        return f"{scheme}://{host}{target}"
    return host + target
