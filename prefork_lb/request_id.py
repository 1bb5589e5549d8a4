"""Request ids: validating one a client (or a proxy in front) sent, and generating one.

Pure: no I/O. The worker (prefork_lb.worker.connection) and the proxy (prefork_lb.proxy.exchange)
call these per request when request ids are on (``--request-id-header``), so they are cheap: a
precompiled regular expression, and a counter appended to a random per-process prefix.

Invariants:

* :func:`valid_request_id` accepts 1 to :data:`MAX_LENGTH` characters of :data:`ALPHABET` and
  nothing else, so an accepted id can go into a response header, a log line or a shell command
  unquoted, and never carries a separator, a quote or a control character;
* ids from one :class:`RequestIds` never repeat in its process; two processes' ids differ by
  their random prefix (48 bits from ``os.urandom``, drawn after the fork, since a generator is
  made in the process that uses it), so ids are unique across workers, restarts and machines
  in practice;
* a generated id passes :func:`valid_request_id`, so a worker behind our proxy accepts the
  proxy's id rather than making a second one.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable
from itertools import count

__all__ = [
    "ALPHABET",
    "ENVIRON_KEY",
    "MAX_LENGTH",
    "RequestIds",
    "environ_name",
    "incoming_id",
    "valid_request_id",
]

MAX_LENGTH = 200
ALPHABET = "A-Z a-z 0-9 . _ : / + = -"  # as the docs say it
# The key of the canonical id in a WSGI environ (the incoming one when valid, else generated).
ENVIRON_KEY = "prefork_lb.request_id"

_VALID = re.compile(rf"[A-Za-z0-9._:/+=\-]{{1,{MAX_LENGTH}}}").fullmatch


def valid_request_id(value: str | None) -> bool:
    """May ``value`` be used as a request id as it is?"""
    return value is not None and _VALID(value) is not None


def environ_name(header: str) -> str:
    """The WSGI environ key of a request header: ``X-Request-ID`` -> ``HTTP_X_REQUEST_ID``."""
    return "HTTP_" + header.upper().replace("-", "_")


def incoming_id(headers: Iterable[tuple[str, bytes, bytes]], lname: str) -> str | None:
    """The valid id among parsed request headers ``(lower-case name, raw name, value)`` named
    ``lname``, or None: absent, repeated (ambiguous: which one would the backend see?), or
    not valid."""
    found: bytes | None = None
    for name, _raw, value in headers:
        if name == lname:
            if found is not None:
                return None
            found = value
    if found is None:
        return None
    text = found.decode("latin-1")
    return text if _VALID(text) is not None else None


class RequestIds:
    """Generates this process's ids: a random 12-hex-digit prefix, a dash, a counter
    (``3f9c2a81d0e4-1``, ``3f9c2a81d0e4-2``, ...). Make one per process, after the fork.
    ``new`` is the generator itself (a closure: no attribute lookups and no method dispatch
    per id, the cheapest call Python has)."""

    __slots__ = ("prefix", "new")

    def __init__(self, prefix: str | None = None) -> None:
        self.prefix = (prefix if prefix is not None else os.urandom(6).hex()) + "-"
        self.new = _generator(self.prefix)

    def __call__(self) -> str:
        return self.new()


def _generator(prefix: str) -> Callable[[], str]:
    counter = count(1).__next__

    def new(_next: Callable[[], int] = counter, _prefix: str = prefix) -> str:
        # (defaults, not closure cells: the fastest reads a function has)
        return _prefix + str(_next())

    return new
