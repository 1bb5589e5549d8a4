"""The vocabulary of the response cache: header lookups, HTTP-dates, Cache-Control; pure, no I/O.

Headers are handled as a sequence of ``(lower-case name, raw value)`` pairs, the shape the proxy
already keeps (the parser's ``(name, raw name, value)`` triples reduce to it). Everything here
follows RFC 9111 (HTTP Caching) and RFC 9110 (HTTP Semantics); the rules that use it are in
:mod:`prefork_lb.proxy.cache_rules`.

Parsing choices (RFC 9111 section 5.2 leaves them to the cache; ours are conservative):

* directive names are case-insensitive; arguments may be a token or a quoted-string, and
  recipients accept both forms (section 5.2), so ``max-age="5"`` is 5;
* a directive that appears more than once with different arguments, or a delta-seconds argument
  that is not ``1*DIGIT``, is *invalid*: :meth:`CacheControl.seconds` reports it as such and the
  rules treat the response as stale (section 5.2: "caches are encouraged to consider responses
  that have invalid freshness information to be stale");
* delta-seconds beyond 2**31 are capped at 2**31 (section 1.2.2).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from email.utils import formatdate, mktime_tz, parsedate_tz

__all__ = [
    "DELTA_MAX",
    "INVALID",
    "CacheControl",
    "Headers",
    "cache_control_of",
    "field_list",
    "first_value",
    "format_http_date",
    "header_values",
    "parse_cache_control",
    "parse_delta_seconds",
    "parse_http_date",
]

Headers = Sequence[tuple[str, bytes]]
"""A header list: ``(lower-case name, raw value)`` pairs, in the order they were received."""

DELTA_MAX = 2**31
"""The largest delta-seconds a cache keeps (RFC 9111 section 1.2.2)."""

INVALID = -1
"""What :meth:`CacheControl.seconds` returns for a directive present with an unusable argument."""

_DIGITS = re.compile(rb"[0-9]+")
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


def header_values(headers: Headers, name: str) -> list[bytes]:
    """Every value of the field ``name`` (lower-case), one per field line, in order."""
    return [v for n, v in headers if n == name]


def first_value(headers: Headers, name: str) -> bytes | None:
    """The first field line's value of ``name``, or None when the field is absent."""
    for n, v in headers:
        if n == name:
            return v
    return None


def field_list(headers: Headers, name: str) -> list[str]:
    """The comma-separated members of every line of ``name``, stripped, lower-cased, no empties."""
    out: list[str] = []
    for value in header_values(headers, name):
        for part in value.split(b","):
            member = part.strip(b" \t").decode("latin-1").lower()
            if member:
                out.append(member)
    return out


def parse_http_date(value: bytes | None) -> float | None:
    """Seconds since the epoch for an HTTP-date in any of its three forms (RFC 9110 5.6.7).

    Returns None for an absent or invalid date; callers decide what invalid means (for
    ``Expires`` it is "in the past", RFC 9111 section 5.3).
    """
    if value is None:
        return None
    parsed = parsedate_tz(value.decode("latin-1").strip())
    if parsed is None or not (1 <= parsed[2] <= 31 and parsed[3] < 24 and parsed[4] < 60 and parsed[5] <= 60):
        return None
    try:  # no zone (None on some Pythons) means GMT: HTTP-dates are GMT, asctime has none
        return float(mktime_tz((*parsed[:9], parsed[9] or 0)))
    except (OverflowError, ValueError):
        return None


def format_http_date(when: float) -> bytes:
    """``when`` (seconds since the epoch) as an IMF-fixdate (RFC 9110 section 5.6.7)."""
    return formatdate(when, usegmt=True).encode("ascii")


def parse_delta_seconds(value: bytes | str | None) -> int | None:
    """A delta-seconds value (RFC 9111 1.2.2), capped at 2**31; None when it is not 1*DIGIT."""
    if value is None:
        return None
    raw = value.encode("latin-1") if isinstance(value, str) else value.strip(b" \t")
    if not _DIGITS.fullmatch(raw):
        return None
    return min(int(raw), DELTA_MAX)


@dataclass(frozen=True)
class CacheControl:
    """The directives of every ``Cache-Control`` line of one message (RFC 9111 section 5.2).

    ``directives`` maps each lower-case name to its argument (None when it had none) as first
    seen; ``conflicting`` names the directives repeated with a different argument.
    """

    directives: Mapping[str, str | None] = field(default_factory=dict)
    conflicting: frozenset[str] = frozenset()

    def has(self, name: str) -> bool:
        """Whether the directive ``name`` is present, with or without an argument."""
        return name in self.directives

    def seconds(self, name: str) -> int | None:
        """The delta-seconds argument of ``name``: None if absent, :data:`INVALID` if unusable.

        Unusable: no argument, not ``1*DIGIT``, or repeated with another value (section 5.2).
        """
        if name not in self.directives:
            return None
        if name in self.conflicting:
            return INVALID
        value = parse_delta_seconds(self.directives[name])
        return INVALID if value is None else value

    def field_names(self, name: str) -> frozenset[str] | None:
        """The field names a qualified ``no-cache``/``private`` lists; None when unqualified.

        An empty or unusable list also gives None, the stricter (unqualified) reading.
        """
        arg = self.directives.get(name)
        if arg is None:
            return None
        names = frozenset(p.strip().lower() for p in arg.split(",") if p.strip())
        return names or None


_EMPTY = CacheControl()


def _split_members(value: bytes) -> list[bytes]:
    """Split a list on commas that are outside quoted-strings (RFC 9110 section 5.6.1)."""
    members: list[bytes] = []
    start = 0
    quoted = escaped = False
    for i, ch in enumerate(value):
        if escaped:
            escaped = False
        elif quoted and ch == 0x5C:  # backslash
            escaped = True
        elif ch == 0x22:  # double quote
            quoted = not quoted
        elif ch == 0x2C and not quoted:  # comma
            members.append(value[start:i])
            start = i + 1
    members.append(value[start:])
    return members


def _unquote(raw: bytes) -> bytes | None:
    """The content of a quoted-string with its quoted-pairs undone; None if it is malformed."""
    if len(raw) < 2 or not raw.endswith(b'"'):
        return None
    out = bytearray()
    body = raw[1:-1]
    i = 0
    while i < len(body):
        ch = body[i]
        if ch == 0x5C:
            if i + 1 >= len(body):
                return None
            out.append(body[i + 1])
            i += 2
            continue
        if ch == 0x22:
            return None
        out.append(ch)
        i += 1
    return bytes(out)


def _directive(member: bytes) -> tuple[str, str | None] | None:
    """One ``token [ "=" ( token / quoted-string ) ]`` member, or None when it is not one."""
    name, eq, arg = member.partition(b"=")
    name = name.strip(b" \t")
    if not _TOKEN.fullmatch(name):
        return None
    if not eq:
        return name.decode("ascii").lower(), None
    arg = arg.strip(b" \t")
    if arg.startswith(b'"'):
        unquoted = _unquote(arg)
        if unquoted is None:
            return name.decode("ascii").lower(), "\x00invalid"
        return name.decode("ascii").lower(), unquoted.decode("latin-1")
    if not _TOKEN.fullmatch(arg):
        return name.decode("ascii").lower(), "\x00invalid"
    return name.decode("ascii").lower(), arg.decode("latin-1")


def parse_cache_control(values: Iterable[bytes]) -> CacheControl:
    """Parse every ``Cache-Control`` field line of a message into one :class:`CacheControl`.

    Members that are not directives (stray tokens such as ``=5``) are skipped; a directive with a
    malformed argument is kept with an argument no rule accepts, so ``max-age=5x`` is invalid
    rather than absent.
    """
    found: dict[str, str | None] = {}
    conflicting: set[str] = set()
    any_value = False
    for value in values:
        any_value = True
        for member in _split_members(value):
            if not member.strip(b" \t"):
                continue
            parsed = _directive(member)
            if parsed is None:
                continue
            name, arg = parsed
            if name in found:
                if found[name] != arg:
                    conflicting.add(name)
                continue
            found[name] = arg
    if not any_value:
        return _EMPTY
    return CacheControl(found, frozenset(conflicting))


def cache_control_of(headers: Headers) -> CacheControl:
    """The :class:`CacheControl` of a header list."""
    return parse_cache_control(header_values(headers, "cache-control"))
