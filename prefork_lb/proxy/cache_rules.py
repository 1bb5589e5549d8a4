"""The rules of a shared HTTP cache (RFC 9111, RFC 5861, RFC 9211); pure, no I/O.

Each function is one rule of the RFCs, named after it, taking header lists
(:data:`~prefork_lb.proxy.cache_directives.Headers`) and times in seconds; the store
(:mod:`prefork_lb.proxy.cache_store`) and the proxy call them. The choices the RFCs leave open,
all on the conservative side:

* **No heuristic freshness** (RFC 9111 4.2.2 is not implemented): a response is stored only when
  it has explicit freshness (``s-maxage``, ``max-age``, ``Expires``) or says ``public``, or says
  ``no-cache`` and carries a validator (then it is stored to be revalidated every time).
* **Set-Cookie**: a response carrying ``Set-Cookie`` is never stored (we do not strip the field
  and store the rest: a response that sets a cookie is usually about that one client).
* **Qualified** ``private="..."`` and ``no-cache="..."`` are read as their unqualified forms
  (the RFC allows storing the rest without the named fields; we do not).
* **Statuses**: only those in :data:`UNDERSTOOD` are stored; never 206 (no range support) or 304.
* **Invalid** freshness information (non-numeric or conflicting ``max-age``/``s-maxage``, an
  invalid ``Expires``, duplicate ``Expires`` lines) makes the response stale (RFC 9111 5.2, 5.3).
* ``stale-if-error`` and ``stale-while-revalidate`` never override ``must-revalidate``,
  ``proxy-revalidate`` or ``s-maxage`` (which implies ``proxy-revalidate``, 5.2.2.10).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from enum import Enum

from prefork_lb.proxy.cache_directives import (
    DELTA_MAX,
    INVALID,
    CacheControl,
    Headers,
    cache_control_of,
    field_list,
    first_value,
    header_values,
    parse_delta_seconds,
    parse_http_date,
)
from prefork_lb.proxy.headers import HOP_BY_HOP

__all__ = [
    "ERROR_STATUSES",
    "UNDERSTOOD",
    "Use",
    "age_header",
    "bypass_reason",
    "cache_status",
    "current_age",
    "freshness_lifetime",
    "not_modified_headers",
    "not_storable_reason",
    "revalidation_headers",
    "secondary_key",
    "should_answer_not_modified",
    "stale_if_error_allows",
    "storable",
    "stored_headers",
    "update_from_not_modified",
    "usability",
    "validates",
    "vary_names",
]

UNDERSTOOD: frozenset[int] = frozenset({200, 203, 204, 300, 301, 302, 307, 308, 404, 405, 410, 414, 501})
"""Statuses whose caching rules we implement (RFC 9110 15.1's heuristically cacheable ones less
206, plus 302 and 307, which are stored only with explicit freshness like all the others)."""

ERROR_STATUSES: frozenset[int] = frozenset({500, 502, 503, 504})
"""What RFC 5861 section 4 counts as an error for ``stale-if-error``."""

CACHEABLE_METHODS: frozenset[str] = frozenset({"GET", "HEAD"})

# Fields never stored (RFC 9111 3.1: hop-by-hop and proxy-specific) and, with Content-Length,
# never updated from a 304 (3.2).
_NOT_STORED: frozenset[str] = HOP_BY_HOP | {
    "proxy-authenticate",
    "proxy-authentication-info",
    "proxy-authorization",
}
_NOT_UPDATED: frozenset[str] = _NOT_STORED | {"content-length"}

# What a 304 carries from the stored 200 (RFC 9110 15.4.5), plus Last-Modified.
_NOT_MODIFIED_FIELDS: frozenset[str] = frozenset(
    {"cache-control", "content-location", "date", "etag", "expires", "vary", "last-modified"}
)

_CONDITIONALS: frozenset[str] = frozenset(
    {"if-none-match", "if-modified-since", "if-match", "if-unmodified-since", "if-range"}
)

_ETAG = re.compile(rb'[ \t]*(W/)?("[\x21\x23-\x7e\x80-\xff]*")[ \t]*(?:,|$)')
_ONE_ETAG = re.compile(rb'[ \t]*(W/)?("[\x21\x23-\x7e\x80-\xff]*")[ \t]*')


# -- Requests the cache does not take part in ---------------------------------------------------


def bypass_reason(method: str, headers: Headers) -> str | None:
    """Why a request goes straight to the backend, untouched by the cache; None if it may use it.

    A method other than GET/HEAD (RFC 9111 section 3: the method must be cacheable), a request
    with content (``Content-Length`` other than 0, or ``Transfer-Encoding``), an ``Upgrade``, or a
    ``Range`` (we serve no partial content, RFC 9111 3.3/3.4).
    """
    if method not in CACHEABLE_METHODS:
        return "method"
    length = first_value(headers, "content-length")
    if first_value(headers, "transfer-encoding") is not None or (
        length is not None and length.strip() != b"0"
    ):
        return "body"
    if first_value(headers, "upgrade") is not None:
        return "upgrade"
    if first_value(headers, "range") is not None:
        return "range"
    return None


# -- Storing (RFC 9111 section 3) ---------------------------------------------------------------


def not_storable_reason(
    method: str, request_headers: Headers, status: int, response_headers: Headers
) -> str | None:
    """Why a shared cache must not store this response (RFC 9111 section 3); None if it may."""
    req_cc = cache_control_of(request_headers)
    res_cc = cache_control_of(response_headers)
    if method not in CACHEABLE_METHODS:
        return "method"
    if status not in UNDERSTOOD:
        return "status"  # also 206, 304 and 1xx; must-understand then forbids storing too
    if req_cc.has("no-store"):
        return "request no-store"  # 5.2.1.5
    if res_cc.has("no-store") and not res_cc.has("must-understand"):
        return "no-store"  # 5.2.2.5; must-understand with an understood status overrides, 5.2.2.3
    if res_cc.has("private"):
        return "private"  # 5.2.2.7, qualified or not
    if first_value(request_headers, "authorization") is not None and not (
        res_cc.has("public") or res_cc.has("s-maxage") or res_cc.has("must-revalidate")
    ):
        return "authorization"  # 3.5
    if first_value(response_headers, "set-cookie") is not None:
        return "set-cookie"
    if "*" in field_list(response_headers, "vary"):
        return "vary *"  # 4.1: it can never be selected
    explicit = (
        res_cc.has("s-maxage")
        or res_cc.has("max-age")
        or first_value(response_headers, "expires") is not None
        or res_cc.has("public")
    )
    has_validator = _etag(response_headers) is not None or (
        first_value(response_headers, "last-modified") is not None
    )
    if not explicit and not (res_cc.has("no-cache") and has_validator):
        return "no explicit freshness"  # no heuristic freshness (4.2.2 not implemented)
    return None


def storable(method: str, request_headers: Headers, status: int, response_headers: Headers) -> bool:
    """Whether a shared cache may store this response; see :func:`not_storable_reason`."""
    return not_storable_reason(method, request_headers, status, response_headers) is None


def stored_headers(response_headers: Headers) -> list[tuple[str, bytes]]:
    """The header fields a cache keeps: all but hop-by-hop, proxy-specific and Connection-named
    ones (RFC 9111 section 3.1)."""
    named = set(field_list(response_headers, "connection"))
    return [(n, v) for n, v in response_headers if n not in _NOT_STORED and n not in named]


# -- Freshness (RFC 9111 section 4.2) -----------------------------------------------------------


def freshness_lifetime(response_headers: Headers, response_time: float) -> float:
    """The freshness lifetime in seconds (RFC 9111 4.2.1), 0 when there is none or it is invalid.

    ``s-maxage`` (shared caches), else ``max-age``, else ``Expires`` minus ``Date`` (the time the
    response was received when there is no valid ``Date``). No heuristic (4.2.2).
    """
    cc = cache_control_of(response_headers)
    for name in ("s-maxage", "max-age"):
        seconds = cc.seconds(name)
        if seconds is not None:
            return 0.0 if seconds == INVALID else float(seconds)
    expires_lines = header_values(response_headers, "expires")
    if not expires_lines:
        return 0.0
    if len(set(expires_lines)) > 1:
        return 0.0  # 5.2: duplicates may be treated as stale
    expires = parse_http_date(expires_lines[0])
    if expires is None:
        return 0.0  # 5.3: an invalid date, "0" especially, is in the past
    date = parse_http_date(first_value(response_headers, "date"))
    return max(0.0, expires - (response_time if date is None else date))


def current_age(response_headers: Headers, request_time: float, response_time: float, now: float) -> float:
    """The current age of a stored response in seconds (RFC 9111 section 4.2.3).

    ``request_time``/``response_time`` are when the cache sent the request and got the response;
    an invalid ``Age`` counts as the largest age (stale, the conservative reading of 5.1).
    """
    age_raw = first_value(response_headers, "age")
    age_value = 0
    if age_raw is not None:
        parsed = parse_delta_seconds(age_raw)
        age_value = DELTA_MAX if parsed is None else parsed
    date = parse_http_date(first_value(response_headers, "date"))
    date_value = response_time if date is None else date
    apparent_age = max(0.0, response_time - date_value)
    response_delay = response_time - request_time
    corrected_age_value = age_value + response_delay
    corrected_initial_age = max(apparent_age, corrected_age_value)
    resident_time = now - response_time
    return corrected_initial_age + resident_time


def age_header(age: float) -> bytes:
    """The ``Age`` value to send: whole seconds, at most 2**31 (RFC 9111 5.1, 1.2.2)."""
    return str(min(DELTA_MAX, max(0, int(age)))).encode("ascii")


class Use(Enum):
    """What a cache may do with a stored response for one request (RFC 9111 4.2, RFC 5861)."""

    FRESH = "fresh"
    """Serve it: it is fresh, and fresh enough for the request's ``max-age``/``min-fresh``."""
    STALE_OK = "stale-ok"
    """Serve it stale: the request's ``max-stale`` allows it (5.2.1.2)."""
    STALE_WHILE_REVALIDATE = "stale-while-revalidate"
    """Serve it stale and revalidate it in the background (RFC 5861 section 3)."""
    REVALIDATE = "revalidate"
    """Ask the backend first, with the stored validators (RFC 9111 4.3)."""


def _request_cc(request_headers: Headers) -> CacheControl:
    return cache_control_of(request_headers)


def _demands_revalidation(res_cc: CacheControl) -> bool:
    """must-revalidate, proxy-revalidate, or s-maxage (which implies it): never serve stale."""
    return res_cc.has("must-revalidate") or res_cc.has("proxy-revalidate") or res_cc.has("s-maxage")


def _request_no_cache(request_headers: Headers, req_cc: CacheControl) -> bool:
    """The request's no-cache; ``Pragma: no-cache`` counts when there is no Cache-Control (5.4)."""
    if req_cc.has("no-cache"):
        return True
    if not header_values(request_headers, "cache-control"):
        return "no-cache" in field_list(request_headers, "pragma")
    return False


def usability(request_headers: Headers, response_headers: Headers, lifetime: float, age: float) -> Use:
    """Whether a stored response can answer this request, and how (RFC 9111 4.2, 4.2.4, 5.2).

    Order: ``no-cache`` on either side forces revalidation (5.2.2.4, 5.2.1.4); the request's
    ``max-age`` bounds the age (an invalid one is read as 0) and ``min-fresh`` the remaining
    freshness (invalid: ignored); a fresh response is served; a stale one is revalidated when
    the response demands it (4.2.4), else served if the request's ``max-stale`` allows it (an
    invalid argument allows nothing) or within the response's ``stale-while-revalidate``.
    """
    req_cc = _request_cc(request_headers)
    res_cc = cache_control_of(response_headers)
    if res_cc.has("no-cache") or _request_no_cache(request_headers, req_cc):
        return Use.REVALIDATE
    max_age = req_cc.seconds("max-age")
    if max_age is not None and age > (0 if max_age == INVALID else max_age):
        return Use.REVALIDATE
    min_fresh = req_cc.seconds("min-fresh")
    need = 0 if min_fresh in (None, INVALID) else min_fresh
    if lifetime > age and lifetime - age >= need:
        return Use.FRESH
    if _demands_revalidation(res_cc):
        return Use.REVALIDATE
    staleness = age - lifetime
    if req_cc.has("max-stale"):
        arg = req_cc.directives["max-stale"]
        allowed = req_cc.seconds("max-stale") if arg is not None else DELTA_MAX
        if allowed is not None and allowed != INVALID and staleness <= allowed:
            return Use.STALE_OK
    swr = res_cc.seconds("stale-while-revalidate")
    if swr is not None and swr != INVALID and 0 < staleness <= swr:
        return Use.STALE_WHILE_REVALIDATE
    return Use.REVALIDATE


def stale_if_error_allows(
    request_headers: Headers, response_headers: Headers, lifetime: float, age: float
) -> bool:
    """Whether a stale response may answer when the backend failed (RFC 5861 section 4).

    The window is the response's ``stale-if-error``, or the request's when it has one (a client
    may ask for less, or more); never when the response demands revalidation (see module doc).
    """
    res_cc = cache_control_of(response_headers)
    if _demands_revalidation(res_cc) or res_cc.has("no-cache"):
        return False
    req_window = _request_cc(request_headers).seconds("stale-if-error")
    window = req_window if req_window is not None else res_cc.seconds("stale-if-error")
    if window is None or window == INVALID:
        return False
    return age - lifetime <= window


# -- Vary (RFC 9111 section 4.1) ----------------------------------------------------------------


def vary_names(response_headers: Headers) -> tuple[str, ...] | None:
    """The request fields a stored response varies on, sorted, deduplicated; None for ``*``."""
    names = field_list(response_headers, "vary")
    if "*" in names:
        return None
    return tuple(sorted(set(names)))


_CASELESS_VALUES = frozenset({"accept-encoding"})


def _normalised(request_headers: Headers, name: str) -> str | None:
    """One nominated field's value, normalised (4.1 allows it): lines combined, list members
    stripped of whitespace, lower-cased for fields whose values are case-insensitive; None when
    the field is absent (absent matches only absent)."""
    lines = header_values(request_headers, name)
    if not lines:
        return None
    members = [m.strip(b" \t").decode("latin-1") for line in lines for m in line.split(b",")]
    value = ",".join(" ".join(m.split()) for m in members)
    return value.lower() if name in _CASELESS_VALUES else value


def secondary_key(names: Sequence[str], request_headers: Headers) -> tuple[str | None, ...]:
    """The secondary cache key: each nominated field's normalised value, in ``names``' order."""
    return tuple(_normalised(request_headers, name) for name in names)


# -- Validators and conditional requests --------------------------------------------------------


def _etag(headers: Headers) -> tuple[bool, bytes] | None:
    """``(weak, opaque-tag)`` of the ETag field, or None when it is absent or malformed."""
    raw = first_value(headers, "etag")
    if raw is None:
        return None
    m = _ONE_ETAG.fullmatch(raw)
    if m is None:
        return None
    return m.group(1) is not None, m.group(2)


def _etag_list(value: bytes) -> list[bytes] | None:
    """The opaque tags of an If-None-Match list (weakness dropped: weak comparison); None for a
    malformed list, which is then ignored."""
    tags: list[bytes] = []
    pos = 0
    while pos < len(value):
        m = _ETAG.match(value, pos)
        if m is None:
            return None if value[pos:].strip(b" \t") else tags
        tags.append(m.group(2))
        pos = m.end()
    return tags


def should_answer_not_modified(method: str, request_headers: Headers, status: int, stored: Headers) -> bool:
    """Whether the cache answers a conditional GET/HEAD with 304 from a stored response.

    RFC 9110 13.2.2's order: ``If-None-Match`` first, weak comparison (13.1.2), ``*`` matching
    any stored representation; only when it is absent, ``If-Modified-Since`` against the stored
    ``Last-Modified`` (13.1.3; without one we answer 200, never guessing from ``Date``). Only for
    a stored 2xx (13.2.1: preconditions apply to 2xx answers).
    """
    if method not in CACHEABLE_METHODS or not 200 <= status < 300:
        return False
    inm_lines = header_values(request_headers, "if-none-match")
    if inm_lines:
        inm = b", ".join(inm_lines)
        if inm.strip(b" \t") == b"*":
            return True
        tags = _etag_list(inm)
        etag = _etag(stored)
        return bool(tags) and etag is not None and tags is not None and etag[1] in tags
    ims = parse_http_date(first_value(request_headers, "if-modified-since"))
    last_modified = parse_http_date(first_value(stored, "last-modified"))
    if ims is None or last_modified is None:
        return False
    return last_modified <= ims


def not_modified_headers(stored: Headers) -> list[tuple[str, bytes]]:
    """The fields a 304 made from a stored response carries (RFC 9110 section 15.4.5)."""
    return [(n, v) for n, v in stored if n in _NOT_MODIFIED_FIELDS]


def revalidation_headers(request_headers: Headers, stored: Headers) -> list[tuple[str, bytes]]:
    """The request's fields for revalidating a stored response (RFC 9111 4.3.1).

    The client's own preconditions are dropped and the stored validators sent instead:
    ``If-None-Match`` with the stored ``ETag``, ``If-Modified-Since`` with the stored
    ``Last-Modified`` (never ``Date``).
    """
    out = [(n, v) for n, v in request_headers if n not in _CONDITIONALS]
    etag = first_value(stored, "etag")
    if etag is not None:
        out.append(("if-none-match", etag.strip(b" \t")))
    last_modified = first_value(stored, "last-modified")
    if last_modified is not None:
        out.append(("if-modified-since", last_modified.strip(b" \t")))
    return out


def validates(stored: Headers, not_modified: Headers) -> bool:
    """Whether a 304 selects this stored response for update (RFC 9111 4.3.4).

    A strong ETag in the 304 selects a stored response with the same strong ETag; a weak one, the
    same tag (weak comparison); otherwise a ``Last-Modified`` selects one with the same date;
    with no validator at all the 304 answers the conditional we sent for this very response.
    """
    new_tag = _etag(not_modified)
    if new_tag is not None:
        old_tag = _etag(stored)
        if old_tag is None or old_tag[1] != new_tag[1]:
            return False
        return new_tag[0] or not old_tag[0]
    new_lm = first_value(not_modified, "last-modified")
    if new_lm is not None:
        return parse_http_date(new_lm) == parse_http_date(first_value(stored, "last-modified"))
    return True


def update_from_not_modified(stored: Headers, not_modified: Headers) -> list[tuple[str, bytes]]:
    """The stored fields after a 304 (RFC 9111 3.2, 4.3.4): each field the 304 carries replaces
    the stored lines of that name, except Content-Length and the never-stored ones."""
    replaced = {n for n, _ in not_modified if n not in _NOT_UPDATED}
    kept = [(n, v) for n, v in stored if n not in replaced]
    return kept + [(n, v) for n, v in not_modified if n in replaced]


# -- Cache-Status (RFC 9211) --------------------------------------------------------------------

_FWD_REASONS = frozenset({"bypass", "method", "uri-miss", "vary-miss", "miss", "request", "stale", "partial"})


def cache_status(
    *,
    hit: bool = False,
    fwd: str | None = None,
    fwd_status: int | None = None,
    ttl: float | None = None,
    stored: bool = False,
    collapsed: bool = False,
    detail: str | None = None,
    cache: str = "prefork_lb",
) -> bytes:
    """One ``Cache-Status`` member (RFC 9211 section 2): ``prefork_lb; hit; ttl=12``, ...

    ``hit`` and ``fwd`` are exclusive (2.1, 2.2); ``ttl`` is the remaining freshness in whole
    seconds, negative when stale (2.4); ``detail`` goes out as a structured-field string (2.8).
    """
    if hit == (fwd is not None):
        raise ValueError("exactly one of hit and fwd")
    if fwd is not None and fwd not in _FWD_REASONS:
        raise ValueError(f"unknown fwd reason {fwd!r}")
    params = ["hit"] if hit else [f"fwd={fwd}"]
    if fwd_status is not None:
        params.append(f"fwd-status={fwd_status}")
    if ttl is not None:
        params.append(f"ttl={int(ttl)}")
    if stored:
        params.append("stored")
    if collapsed:
        params.append("collapsed")
    if detail is not None:
        escaped = detail.replace("\\", "\\\\").replace('"', '\\"')
        params.append(f'detail="{escaped}"')
    return "; ".join([cache, *params]).encode("ascii")
