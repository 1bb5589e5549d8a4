"""The private channel between the admin process and the proxy (``--dispatch proxy``).

The proxy keeps its per-backend numbers in its own memory (prefork_lb.proxy.stats); the admin
process, which serves --stats-bind, asks for them at request time over one SOCK_SEQPACKET
socketpair that the master creates and keeps open (like a handoff channel), so either process
can be replaced and its successor inherits its end. Nothing listens: no other process on the
machine can reach the proxy's numbers without going through the admin listener (and its token).

A question is one datagram ``ID WHAT`` (WHAT: ``health``, ``stats``, ``metrics``, or
``backend JSON``: a change of the backend pool asked on the control socket, see
prefork_lb.proxy.operator); the answer is ``ID JSON``: the document the proxy's /lb-health or
/lb-stats served before this channel existed, or ``{"backend": ...}`` / ``{"error": LINE}``. Invariants: the proxy never blocks on the channel (a reply that does not fit is
dropped: the admin process times out and says the proxy is not answering); the admin process
asks one question at a time and discards answers to other IDs (a predecessor's questions).
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger("prefork_lb.error")

BUFFER = 1 << 22  # the largest answer read (the kernel's socket buffer limits it first)
QUESTION_MAX = 1024


def open_link() -> tuple[socket.socket, socket.socket]:
    """(the proxy's end, the admin process's end)."""
    proxy_end, admin_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    for s in (proxy_end, admin_end):
        try:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, BUFFER)
        except OSError:
            pass
    proxy_end.setblocking(False)
    return proxy_end, admin_end


class ProxyLink:
    """The admin process's end: :meth:`ask` returns the proxy's document, or None."""

    def __init__(self, sock: socket.socket, timeout: float = 2.0) -> None:
        self.sock = sock
        self.timeout = timeout
        self.lock = threading.Lock()
        self.ids = itertools.count(1)

    def ask(self, what: str) -> dict[str, Any] | None:
        with self.lock:
            rid = f"{os.getpid()}.{next(self.ids)}".encode()
            deadline = time.monotonic() + self.timeout
            try:
                self.sock.settimeout(self.timeout)
                self.sock.send(rid + b" " + what.encode())
                while True:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return None
                    self.sock.settimeout(left)
                    got, _, body = self.sock.recv(BUFFER).partition(b" ")
                    if got == rid:
                        doc = json.loads(body)
                        return doc if isinstance(doc, dict) else None
            except (OSError, ValueError):
                return None


def answer(sock: socket.socket, document: Callable[[str], dict[str, Any] | None]) -> None:
    """The proxy's end, called when it is readable: answer every question waiting."""
    while True:
        try:
            msg = sock.recv(QUESTION_MAX)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            return
        if not msg:
            return
        rid, _, what = msg.partition(b" ")
        doc = document(what.decode("ascii", "replace"))
        body = json.dumps(doc if doc is not None else {"error": f"unknown question {what!r}"}).encode()
        try:
            sock.send(rid + b" " + body)
        except BlockingIOError:
            pass  # the admin process is not reading: it will time out, never us
        except OSError as exc:
            log.warning("proxy: cannot answer the admin process (%s)", exc.strerror or exc)
