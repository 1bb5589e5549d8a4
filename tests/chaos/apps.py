"""The WSGI app the chaos suite serves: ``python -m prefork_lb tests.chaos.apps:app``.

Routes (any method):

* ``/work?ms=N``: waits N ms cooperatively (gevent has patched ``time.sleep`` in the worker),
  then answers ``ok``; a quick request of a few ms.
* ``/leak?mb=N``: keeps N more MiB for the life of the worker (touched, so resident), then ``ok``.
* ``/hang?s=N``: blocks the worker's event loop for N seconds (at most 60) with the *unpatched*
  ``time.sleep``: no greenlet runs, no heartbeat is written, and no CPU is burnt meanwhile.
* ``/pid``: the worker's pid.

The ledger: if ``CHAOS_LEDGER`` names a file, every request that carries an ``X-Request-Id``
header appends ``ID PID\\n`` to it when the app starts executing it, with one ``write`` on an
``O_APPEND`` descriptor (atomic for a line this short, whatever process writes). The suite
reads it to prove that no id was executed twice and that every acknowledged id was executed.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import parse_qs

Environ = dict[str, Any]
StartResponse = Callable[..., Any]

_HOARD: list[bytes] = []
_ledger_fd: int | None = None


def _record(rid: str) -> None:
    global _ledger_fd
    path = os.environ.get("CHAOS_LEDGER")
    if not path:
        return
    if _ledger_fd is None:  # opened lazily: after fork, once per worker
        _ledger_fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.write(_ledger_fd, f"{rid} {os.getpid()}\n".encode("ascii", "replace"))


def _blocking_sleep(seconds: float) -> None:
    """time.sleep as it was before gevent patched it: blocks the whole process."""
    try:
        from gevent import monkey

        sleep = monkey.get_original("time", "sleep")
    except ImportError:  # not under gevent: the plain sleep blocks anyway
        sleep = time.sleep
    sleep(seconds)


def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    path = environ.get("PATH_INFO", "")
    q = {k: v[0] for k, v in parse_qs(environ.get("QUERY_STRING", "")).items()}
    environ["wsgi.input"].read()
    rid = environ.get("HTTP_X_REQUEST_ID")
    if rid:
        _record(rid)
    body = b"ok"
    if path == "/work":
        time.sleep(min(float(q.get("ms", "2")), 5000.0) / 1000.0)
    elif path == "/leak":
        _HOARD.append(b"\x01" * (min(int(q.get("mb", "1")), 512) << 20))
    elif path == "/hang":
        _blocking_sleep(min(float(q.get("s", "30")), 60.0))
    elif path == "/pid":
        body = str(os.getpid()).encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
