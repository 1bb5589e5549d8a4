"""Benchmark WSGI apps: the tiny hello-world apps every server under test serves.

``hello`` sends a fixed body with Content-Length (the keep-alive fast path);
``hello_nolen`` omits Content-Length, so HTTP/1.1 servers must fall back to
chunked transfer encoding (or close the connection); ``cacheable`` is ``hello`` that a shared
cache may store (``Cache-Control: public, max-age=3600``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

BODY = b"Hello, World!"
_HEADERS = [("Content-Type", "text/plain"), ("Content-Length", str(len(BODY)))]
_HEADERS_NOLEN = [("Content-Type", "text/plain")]


def hello(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    start_response("200 OK", list(_HEADERS))
    return [BODY]


def hello_nolen(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    start_response("200 OK", list(_HEADERS_NOLEN))
    return [BODY]


def _spin(seconds: float) -> None:
    """Burn CPU without yielding: a CPU-bound request holds its worker's event loop."""
    import time

    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def mixed(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    """/slow: about 50 ms of CPU; anything else: about 1 ms (the mixed-workload benchmark)."""
    _spin(0.050 if environ.get("PATH_INFO") == "/slow" else 0.001)
    start_response("200 OK", list(_HEADERS))
    return [BODY]


def _fib(n: int) -> int:
    return n if n < 2 else _fib(n - 1) + _fib(n - 2)


def compute_inline(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    """/compute: fib(27) in the request's own worker; anything else: trivial."""
    body = str(_fib(27)).encode() if environ.get("PATH_INFO") == "/compute" else BODY
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


def compute_offload(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    """/compute: fib(27) in the worker's offload pool; anything else: trivial."""
    if environ.get("PATH_INFO") == "/compute":
        from prefork_lb import offload

        body = str(offload(_fib, 27)).encode()
    else:
        body = BODY
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


_CACHEABLE_HEADERS = [*_HEADERS, ("Cache-Control", "public, max-age=3600")]


def cacheable(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    """``hello`` with ``Cache-Control: public, max-age=3600``: what a shared cache may keep an hour
    (the cache scenario of bench/proxy.py)."""
    start_response("200 OK", list(_CACHEABLE_HEADERS))
    return [BODY]
