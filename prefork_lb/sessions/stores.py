"""Where sessions live: Redis (redis-py) or Memcached (pymemcache), or memory for tests.

A store keeps opaque bytes per session id with a TTL, and a version to compare-and-set against
(the concurrent-write rule, prefork_lb.sessions.session):

* ``load(sid)`` -> ``(payload, token)`` or None when the store has no such session;
* ``save(sid, payload, token, ttl)`` -> True when saved, False when the stored version is not
  ``token`` any more (``token`` None: only if nothing is stored under ``sid``);
* ``delete(sid)``.

Every failure of the store itself (refused, reset, timed out) is :class:`SessionStoreError`,
whose message names the store (``redis://127.0.0.1:6379``). Both network stores bound every
connect and every reply by ``timeout`` seconds (default 1) and never retry, so a store that is
gone or stopped costs a request at most about that long, never a hang.

The client libraries are imported when a store is made, so prefork_lb.sessions imports without
them; their clients connect on first use and are safe to make before the workers fork (redis-py
opens new connections in a new process; pymemcache's pool is empty until the first command).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any, Protocol
from urllib.parse import urlsplit

__all__ = [
    "MemcachedStore",
    "MemoryStore",
    "RedisStore",
    "SessionStore",
    "SessionStoreError",
    "store_from_url",
]


class SessionStoreError(Exception):
    """The session store could not be reached or did not answer in time."""


class SessionStore(Protocol):
    def load(self, sid: str) -> tuple[bytes, object] | None: ...

    def save(self, sid: str, payload: bytes, token: object, ttl: int) -> bool: ...

    def delete(self, sid: str) -> None: ...

    def close(self) -> None: ...


class MemoryStore:
    """Sessions in this process's memory, versioned like the others: for tests and a single
    process only (it is not shared across workers or hosts). ``clock`` measures the TTL."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._items: dict[str, tuple[bytes, int, float]] = {}
        self._lock = threading.Lock()

    def load(self, sid: str) -> tuple[bytes, object] | None:
        with self._lock:
            item = self._items.get(sid)
            if item is None or item[2] <= self._clock():
                return None
            return item[0], item[1]

    def save(self, sid: str, payload: bytes, token: object, ttl: int) -> bool:
        with self._lock:
            item = self._items.get(sid)
            current = item[1] if item is not None and item[2] > self._clock() else None
            if current != token:
                return False
            self._items[sid] = (payload, (current or 0) + 1, self._clock() + ttl)
            return True

    def delete(self, sid: str) -> None:
        with self._lock:
            self._items.pop(sid, None)

    def close(self) -> None:
        pass


# Compare-and-set in one step on the server: the stored value is b"VERSION:PAYLOAD".
_REDIS_CAS = """
local cur = redis.call('GET', KEYS[1])
local version = 0
if cur then version = tonumber(string.match(cur, '^(%d+):')) or 0 end
if version ~= tonumber(ARGV[1]) then return 0 end
redis.call('SET', KEYS[1], (version + 1) .. ':' .. ARGV[2], 'EX', ARGV[3])
return version + 1
"""


class RedisStore:
    """Sessions in Redis, one string key per session (``prefix + sid``) with ``EX ttl``; saves
    are a Lua compare-and-set on the version stored with the data."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 6379,
        db: int = 0,
        *,
        password: str | None = None,
        timeout: float = 1.0,
        prefix: str = "prefork_lb:session:",
        client: Any = None,
    ) -> None:
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        self.name = f"redis://{host}:{port}/{db}"
        self.prefix = prefix
        self._errors: tuple[type[BaseException], ...] = (redis.RedisError, OSError)
        self._client = client or redis.Redis(
            host=host,
            port=port,
            db=db,
            password=password,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0),
        )
        self._cas = self._client.register_script(_REDIS_CAS)

    def _fail(self, exc: BaseException) -> SessionStoreError:
        return SessionStoreError(f"session store {self.name}: {type(exc).__name__}: {exc}")

    def load(self, sid: str) -> tuple[bytes, object] | None:
        try:
            raw = self._client.get(self.prefix + sid)
        except self._errors as exc:
            raise self._fail(exc) from exc
        if raw is None:
            return None
        stored = raw if isinstance(raw, bytes) else str(raw).encode()
        version, sep, payload = stored.partition(b":")
        if not sep or not version.isdigit():
            return None
        return payload, int(version)

    def save(self, sid: str, payload: bytes, token: object, ttl: int) -> bool:
        expected = token if isinstance(token, int) else 0
        try:
            done = self._cas(keys=[self.prefix + sid], args=[expected, payload, ttl])
        except self._errors as exc:
            raise self._fail(exc) from exc
        return bool(done)

    def delete(self, sid: str) -> None:
        try:
            self._client.delete(self.prefix + sid)
        except self._errors as exc:
            raise self._fail(exc) from exc

    def close(self) -> None:
        """Close this process's connections (a later call opens new ones)."""
        self._client.close()


# Memcached reads an expiry above 30 days as a Unix time.
_MEMCACHED_MAX_TTL = 30 * 24 * 3600


class MemcachedStore:
    """Sessions in Memcached, one key per session (``prefix + sid``); new sessions are saved with
    ``add`` (only if absent), changed ones with ``cas`` against the token ``gets`` returned."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 11211,
        *,
        timeout: float = 1.0,
        prefix: str = "prefork_lb_session:",
        client: Any = None,
    ) -> None:
        from pymemcache.client.base import PooledClient
        from pymemcache.exceptions import MemcacheError

        self.name = f"memcached://{host}:{port}"
        self.prefix = prefix
        self._errors: tuple[type[BaseException], ...] = (MemcacheError, OSError)
        self._client = client or PooledClient(
            (host, port), connect_timeout=timeout, timeout=timeout, no_delay=True, default_noreply=False
        )

    def _fail(self, exc: BaseException) -> SessionStoreError:
        return SessionStoreError(f"session store {self.name}: {type(exc).__name__}: {exc}")

    def load(self, sid: str) -> tuple[bytes, object] | None:
        try:
            value, cas = self._client.gets(self.prefix + sid)
        except self._errors as exc:
            raise self._fail(exc) from exc
        return None if value is None else (bytes(value), cas)

    def save(self, sid: str, payload: bytes, token: object, ttl: int) -> bool:
        if ttl > _MEMCACHED_MAX_TTL:
            raise ValueError("Memcached keeps a session at most 30 days (ttl <= 2592000)")
        key = self.prefix + sid
        try:
            if token is None:
                done = self._client.add(key, payload, expire=ttl, noreply=False)
            else:
                done = self._client.cas(key, payload, token, expire=ttl, noreply=False)
        except self._errors as exc:
            raise self._fail(exc) from exc
        return bool(done)

    def delete(self, sid: str) -> None:
        try:
            self._client.delete(self.prefix + sid, noreply=False)
        except self._errors as exc:
            raise self._fail(exc) from exc

    def close(self) -> None:
        """Close this process's connections (a later call opens new ones)."""
        self._client.close()


def store_from_url(url: str, *, timeout: float = 1.0) -> SessionStore:
    """``redis://[:PASSWORD@]HOST[:PORT][/DB]``, ``memcached://HOST[:PORT]`` or ``memory://``."""
    parts = urlsplit(url)
    if parts.scheme == "redis":
        db = int(parts.path.strip("/") or 0)
        return RedisStore(
            parts.hostname or "127.0.0.1", parts.port or 6379, db, password=parts.password, timeout=timeout
        )
    if parts.scheme == "memcached":
        return MemcachedStore(parts.hostname or "127.0.0.1", parts.port or 11211, timeout=timeout)
    if parts.scheme == "memory":
        return MemoryStore()
    raise ValueError(f"unknown session store {url!r}: use redis://, memcached:// or memory://")
