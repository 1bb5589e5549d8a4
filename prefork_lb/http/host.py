"""The rule for a request's ``Host`` field value: one pure function, used by the request parser
and so by the workers and the proxy alike.

``Host = uri-host [ ":" port ]`` (RFC 9110 section 7.2), with ``uri-host`` as RFC 3986
section 3.2.2 defines it: an IP-literal in brackets (IPv6, or the IPvFuture form), or a
reg-name (unreserved characters, percent-encodings and sub-delims; an IPv4 address is a
reg-name as far as syntax goes). On top of the grammar:

* the host is never empty: an ``http`` URI has a non-empty host (RFC 9110 section 4.2.1), and
  the value is what the app routes on;
* no comma: ``Host`` is a singleton field, so a comma is taken as a list of hosts (RFC 9110
  section 5.3), although the reg-name grammar lets one through;
* the port, when there is one, is a number of at most 65535 (an empty port, ``host:``, is
  what RFC 3986 allows).

Anything else (a path, userinfo, whitespace, a second host, bad brackets) is refused.
Invariant: :func:`valid_host` has no side effects and reads nothing but its argument.
"""

from __future__ import annotations

import ipaddress
import re

__all__ = ["valid_host"]

# reg-name without "," (see the module docstring) / IPv6 candidate / IPvFuture, then a port.
_HOST = re.compile(
    rb"(?:(?:[A-Za-z0-9\-._~!$&'()*+;=]|%[0-9A-Fa-f]{2})+"
    rb"|\[([0-9A-Fa-f:.]+)\]"
    rb"|\[[vV][0-9A-Fa-f]+\.[A-Za-z0-9\-._~!$&'()*+,;=:]+\])"
    rb"(?::([0-9]*))?"
)


def valid_host(value: bytes) -> bool:
    """True if ``value`` (a Host field value, surrounding whitespace already stripped) names
    exactly one host with an optional port."""
    m = _HOST.fullmatch(value)
    if m is None:
        return False
    v6, port = m.groups()
    if port is not None and (len(port) > 5 or (port and int(port) > 65535)):
        return False
    if v6 is not None:
        try:
            ipaddress.IPv6Address(v6.decode("ascii"))
        except ValueError:
            return False
    return True
