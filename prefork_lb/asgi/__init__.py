"""The ASGI worker on asyncio/uvloop, sharing ``prefork_lb.http`` with the WSGI worker.

Invariant: nothing here imports gevent; the ASGI worker process is never monkey-patched.
"""
