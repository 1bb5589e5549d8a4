"""The session cookie, pure: ids, signing and verification, attributes, parsing. No I/O.

* :func:`new_session_id`: 256 random bits (``secrets``), URL-safe; the only way an id is made,
  so a client can never choose its own (session fixation).
* :class:`CookieSigner`: the cookie's value is ``SID.ISSUED.SIG``, ``SIG`` an HMAC-SHA256 over
  the id and the time it was issued, keyed with the app's secret. :meth:`CookieSigner.verify`
  gives the id back only for a value signed with one of the secrets (the first signs, the
  others are old ones still accepted while they are rotated out) and not older than
  ``max_age`` seconds; anything else, tampered, expired or malformed, is None: the request
  gets a new, empty session.
* :func:`set_cookie_header` builds the ``Set-Cookie`` value: always ``HttpOnly`` and ``Path``,
  ``Secure`` when asked, ``SameSite``, ``Max-Age`` (0 deletes the cookie).
* :func:`cookie_value` reads one cookie from a request's ``Cookie`` header.

The clock is a parameter (``now``) everywhere, so the tests control expiry.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from collections.abc import Sequence

__all__ = ["SAMESITE", "CookieSigner", "cookie_value", "new_session_id", "set_cookie_header"]

SAMESITE = ("Lax", "Strict", "None")
# What the HMAC covers besides the value: a key reused elsewhere in the app cannot sign cookies.
_CONTEXT = b"prefork_lb.sessions.v1:"
_MIN_SECRET = 16
# A cookie issued a little in the future (another host's clock is ahead) is still good.
_CLOCK_SKEW = 60


def new_session_id() -> str:
    """A fresh session id: 32 random bytes from ``secrets``, base64url (43 characters)."""
    return secrets.token_urlsafe(32)


def _as_key(secret: str | bytes) -> bytes:
    key = secret.encode() if isinstance(secret, str) else bytes(secret)
    if len(key) < _MIN_SECRET:
        raise ValueError(f"a session secret must be at least {_MIN_SECRET} bytes long")
    return key


class CookieSigner:
    """Signs session ids into cookie values and verifies them (HMAC-SHA256)."""

    def __init__(self, secret: str | bytes | Sequence[str | bytes], max_age: int) -> None:
        secrets_ = [secret] if isinstance(secret, str | bytes) else list(secret)
        if not secrets_:
            raise ValueError("a session secret is required")
        self._keys = [_as_key(s) for s in secrets_]
        self.max_age = max_age

    def _sig(self, key: bytes, payload: str) -> str:
        mac = hmac.new(key, _CONTEXT + payload.encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac).rstrip(b"=").decode()

    def sign(self, sid: str, now: float) -> str:
        payload = f"{sid}.{int(now)}"
        return f"{payload}.{self._sig(self._keys[0], payload)}"

    def verify(self, value: str, now: float) -> str | None:
        """The session id ``value`` carries, or None (bad signature, expired, malformed)."""
        sid, dot, rest = value.partition(".")
        issued, dot2, sig = rest.partition(".")
        if not (sid and dot and dot2 and issued.isdigit() and sig):
            return None
        payload = f"{sid}.{issued}"
        if not any(hmac.compare_digest(self._sig(k, payload), sig) for k in self._keys):
            return None
        age = now - int(issued)
        if age > self.max_age or age < -_CLOCK_SKEW:
            return None
        return sid


def set_cookie_header(
    name: str,
    value: str,
    *,
    max_age: int,
    secure: bool,
    samesite: str,
    path: str = "/",
    domain: str | None = None,
) -> str:
    """A ``Set-Cookie`` field value; ``max_age=0`` (with an empty value) deletes the cookie."""
    if samesite not in SAMESITE:
        raise ValueError(f"samesite must be one of {', '.join(SAMESITE)}, not {samesite!r}")
    parts = [f"{name}={value}", f"Path={path}", f"Max-Age={max_age}"]
    if domain:
        parts.append(f"Domain={domain}")
    parts.append("HttpOnly")
    if secure:
        parts.append("Secure")
    parts.append(f"SameSite={samesite}")
    return "; ".join(parts)


def cookie_value(header: str | None, name: str) -> str | None:
    """The value of the first cookie called ``name`` in a ``Cookie`` field value, or None."""
    if not header:
        return None
    for pair in header.split(";"):
        key, eq, value = pair.partition("=")
        if eq and key.strip() == name:
            value = value.strip()
            if len(value) >= 2 and value[0] == value[-1] == '"':
                value = value[1:-1]
            return value
    return None
