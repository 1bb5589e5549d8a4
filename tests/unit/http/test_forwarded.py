"""forwarded_scheme: the scheme a trusted proxy says the client used (X-Forwarded-Proto, then
Forwarded proto=), and everything it must not believe."""

from __future__ import annotations

import pytest

from prefork_lb.http.forwarded import forwarded_scheme


@pytest.mark.parametrize(
    ("xfp", "fwd", "scheme"),
    [
        # X-Forwarded-Proto
        ("https", None, "https"),
        ("http", None, "http"),
        ("HTTPS", None, "https"),
        (" https ", None, "https"),
        ("http, https", None, "https"),  # a list: the last entry, the trusted peer's own
        ("https,http", None, "http"),
        ("ftp", None, None),
        ("", None, None),
        ("https;x", None, None),
        # Forwarded (RFC 7239)
        (None, "proto=https", "https"),
        (None, "for=192.0.2.1;proto=https;host=example.com", "https"),
        (None, "For=192.0.2.1; Proto=HTTPS", "https"),
        (None, 'for="[2001:db8::1]:80";proto="https"', "https"),
        (None, "for=192.0.2.1;proto=http, for=10.0.0.1;proto=https", "https"),  # last element
        (None, "for=192.0.2.1;proto=https, for=10.0.0.1;proto=http", "http"),
        (None, "for=192.0.2.1;proto=https, for=10.0.0.1", None),  # the last one says nothing
        (None, 'for="a,b;proto=https";proto=http', "http"),  # separators in quotes are text
        (None, 'for="unterminated;proto=https', None),  # malformed: none of it is believed
        (None, 'proto="htt\\ps"', "https"),  # a quoted-pair
        (None, "proto=", None),
        (None, "proto=gopher", None),
        (None, "for=192.0.2.1", None),
        (None, "", None),
        # both: X-Forwarded-Proto wins when it is usable
        ("https", "for=10.0.0.1;proto=http", "https"),
        ("http", "for=10.0.0.1;proto=https", "http"),
        ("bogus", "for=10.0.0.1;proto=https", "https"),
        (None, None, None),
    ],
)
def test_forwarded_scheme(xfp: str | None, fwd: str | None, scheme: str | None) -> None:
    assert forwarded_scheme(xfp, fwd) == scheme
