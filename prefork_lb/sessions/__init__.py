"""Server-side sessions shared by every worker and host: WSGI and ASGI middleware over Redis or
Memcached, with a signed session-id cookie (docs/sessions.md).

``cookies`` is the pure part (ids, signing, attributes), ``session`` the session object and the
concurrent-write rule, ``stores`` the backends, ``wsgi`` and ``asgi`` the middleware. Nothing
here imports redis or pymemcache until a store that needs it is made.
"""

from __future__ import annotations

from prefork_lb.sessions.asgi import ASGISessionMiddleware
from prefork_lb.sessions.session import Session, SessionConflict, SessionLifecycle
from prefork_lb.sessions.stores import (
    MemcachedStore,
    MemoryStore,
    RedisStore,
    SessionStore,
    SessionStoreError,
    store_from_url,
)
from prefork_lb.sessions.wsgi import ENVIRON_KEY, SessionMiddleware

__all__ = [
    "ENVIRON_KEY",
    "ASGISessionMiddleware",
    "MemcachedStore",
    "MemoryStore",
    "RedisStore",
    "Session",
    "SessionConflict",
    "SessionLifecycle",
    "SessionMiddleware",
    "SessionStore",
    "SessionStoreError",
    "store_from_url",
]
