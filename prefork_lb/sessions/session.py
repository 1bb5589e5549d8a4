"""The session object and its life over one request, shared by the WSGI and ASGI middleware.

A request's :class:`Session` is a dict of JSON values. It reads the store lazily, on the first
access, so a request that never touches it costs nothing; it records whether it was changed.
:class:`SessionLifecycle` opens one from the request's ``Cookie`` header and, when the response
starts, saves it if it was changed and gives the ``Set-Cookie`` header to add.

The rule for concurrent writes (docs/sessions.md): optimistic versioning. Each stored session
has a version (Redis: a counter kept with the data; Memcached: its CAS token). A save is a
compare-and-set against the version the request read: when another request saved the same
session in between, the save does not happen and raises :class:`SessionConflict` (the
middleware answers 409 unless the app catches it). A change is never lost silently, and a
session deleted meanwhile (a logout elsewhere, or its TTL) is not brought back by a late save.

Invariants:

* The session is saved at most once per request, when the response starts, and only if it
  was changed (a key set or deleted, :meth:`Session.clear`, or ``session.modified = True``
  after changing a nested value in place) or invalidated. Changes after that are not saved.
* A cookie whose signature or age is wrong, or whose id the store no longer has, gives a new
  empty session with a new id: a client never chooses the id it gets.
* The store failing is :class:`SessionStoreError` naming the store's address, raised where the
  app touches the session (``on_error="raise"``), or an empty session that is never saved and
  keeps the client's cookie, so that the session is there again once the store is back
  (``on_error="empty"``).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator, MutableMapping, Sequence
from typing import Any

from prefork_lb.sessions.cookies import CookieSigner, cookie_value, new_session_id, set_cookie_header
from prefork_lb.sessions.stores import SessionStore, SessionStoreError

__all__ = ["ON_ERROR", "Session", "SessionConflict", "SessionLifecycle", "fallback_answer"]

log = logging.getLogger("prefork_lb.sessions")
ON_ERROR = ("raise", "empty")


class SessionConflict(Exception):
    """Another request saved this session after this one read it; this one's changes are not
    saved (the concurrent-write rule, docs/sessions.md)."""


class Session(MutableMapping[str, Any]):
    """One request's session: a mutable mapping that loads on first access."""

    def __init__(
        self, sid: str, load: Callable[[], tuple[bytes, object] | None] | None, on_error: str = "raise"
    ) -> None:
        self.sid = sid
        self.new = load is None
        self.modified = False
        self.invalidated = False
        self.committed = False  # the response started: saved (or not) once, never again
        # on_error="empty" and the store failed: served empty, never saved.
        self.unavailable = False
        self.token: object = None  # the store's version of what was read (None: nothing stored)
        self._load = load
        self._on_error = on_error
        self._data: dict[str, Any] | None = {} if load is None else None
        self._error: SessionStoreError | None = None

    @property
    def loaded(self) -> bool:
        return self._data is not None

    def ensure_loaded(self) -> dict[str, Any]:
        """Read the store now, if not done yet; raises SessionStoreError (on_error="raise")."""
        if self._data is not None:
            return self._data
        if self._error is not None:
            raise self._error
        assert self._load is not None
        try:
            found = self._load()
        except SessionStoreError as exc:
            if self._on_error == "raise":
                self._error = exc
                raise
            log.warning("session store failed, serving an empty session: %s", exc)
            self.unavailable = True
            self._data = {}
            return self._data
        data = _decode(found[0]) if found is not None else None
        if found is None or data is None:
            self.sid, self.new, data = new_session_id(), True, {}
        else:
            self.token = found[1]
        self._data = data
        return data

    def invalidate(self) -> None:
        """Delete the session from the store and the client's cookie when the response starts."""
        self.ensure_loaded().clear()
        self.invalidated = True

    # -- the mapping ------------------------------------------------------------------------------

    def __getitem__(self, key: str) -> Any:
        return self.ensure_loaded()[key]

    def __setitem__(self, key: str, value: Any) -> None:
        self.ensure_loaded()[key] = value
        self.modified = True

    def __delitem__(self, key: str) -> None:
        del self.ensure_loaded()[key]
        self.modified = True

    def __iter__(self) -> Iterator[str]:
        return iter(self.ensure_loaded())

    def __len__(self) -> int:
        return len(self.ensure_loaded())

    def clear(self) -> None:
        self.ensure_loaded().clear()
        self.modified = True

    def __repr__(self) -> str:
        state = "not loaded" if self._data is None else repr(self._data)
        return f"<Session {self.sid[:8]}... {state}>"


def fallback_answer(exc: Exception) -> tuple[int, str, bytes]:
    """What the middleware answers when the app lets ``exc`` through before its response
    started: 409 for a lost concurrent write, 503 for the store (its address is only logged)."""
    if isinstance(exc, SessionConflict):
        return 409, "Conflict", b"the session was changed by another request\n"
    return 503, "Service Unavailable", b"session store unavailable\n"


def _decode(payload: bytes) -> dict[str, Any] | None:
    try:
        data = json.loads(payload)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


class SessionLifecycle:
    """Opens a request's session from its cookie and saves it when the response starts."""

    def __init__(
        self,
        store: SessionStore,
        secret: str | bytes | Sequence[str | bytes],
        *,
        cookie_name: str = "session",
        ttl: int = 14 * 24 * 3600,
        secure: bool | None = None,
        samesite: str = "Lax",
        path: str = "/",
        domain: str | None = None,
        on_error: str = "raise",
        clock: Callable[[], float] = time.time,
    ) -> None:
        if on_error not in ON_ERROR:
            raise ValueError(f"on_error must be one of {', '.join(ON_ERROR)}, not {on_error!r}")
        if ttl <= 0:
            raise ValueError("the session ttl must be a positive number of seconds")
        if samesite == "None" and secure is False:
            raise ValueError("SameSite=None needs a Secure cookie: browsers refuse it otherwise")
        set_cookie_header("x", "", max_age=0, secure=False, samesite=samesite)  # validates samesite
        self.store = store
        self.signer = CookieSigner(secret, ttl)
        self.cookie_name = cookie_name
        self.ttl = ttl
        self.secure = secure
        self.samesite = samesite
        self.path = path
        self.domain = domain
        self.on_error = on_error
        self.clock = clock

    def open(self, cookie_header: str | None) -> Session:
        """The session the request's ``Cookie`` header names (not read yet), or a new one."""
        value = cookie_value(cookie_header, self.cookie_name)
        sid = self.signer.verify(value, self.clock()) if value else None
        if sid is None:
            return Session(new_session_id(), None, self.on_error)
        return Session(sid, lambda: self.store.load(sid), self.on_error)

    def commit(self, session: Session, https: bool) -> list[tuple[str, str]]:
        """Save ``session`` if it changed; the headers to add to the response. Raises
        SessionConflict, or SessionStoreError when the store fails and on_error="raise"."""
        if session.committed or not session.loaded or session.unavailable:
            return []
        session.committed = True
        if session.invalidated:
            if not session.new:
                self._guard(lambda: self.store.delete(session.sid))
            return [("Set-Cookie", self._cookie("", 0, https))]
        if not session.modified:
            return []
        payload = json.dumps(session.ensure_loaded(), separators=(",", ":")).encode()
        saved = self._guard(lambda: self.store.save(session.sid, payload, session.token, self.ttl))
        if saved is None:  # the store failed and on_error="empty": logged, not saved
            return []
        if not saved:
            raise SessionConflict(f"session {session.sid[:8]}... was saved by another request meanwhile")
        session.modified = False
        value = self.signer.sign(session.sid, self.clock())
        return [("Set-Cookie", self._cookie(value, self.ttl, https))]

    def _guard(self, call: Callable[[], bool | None]) -> bool | None:
        try:
            return call()
        except SessionStoreError as exc:
            if self.on_error == "raise":
                raise
            log.warning("session store failed, the session is not saved: %s", exc)
            return None

    def _cookie(self, value: str, max_age: int, https: bool) -> str:
        secure = https if self.secure is None else self.secure
        return set_cookie_header(
            self.cookie_name,
            value,
            max_age=max_age,
            secure=secure or self.samesite == "None",
            samesite=self.samesite,
            path=self.path,
            domain=self.domain,
        )
