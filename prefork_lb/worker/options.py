"""What the worker's server and its connections share, in a leaf module so that neither imports
the other's module for it: the server's options, the WSGI app's type, and ``ServerView``, the
part of the server a connection reads and updates.

Invariant: nothing here imports from prefork_lb.worker (server.py imports connection.py, which
imports response.py; all three import this).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

import gevent.lock

from prefork_lb.http.parser import Limits, Request, RequestMemo
from prefork_lb.proxy.peers import TrustedPeers

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


@dataclass
class ServerOptions:
    limits: Limits = field(default_factory=Limits)
    keepalive: float = 5.0
    header_timeout: float = 10.0
    root_path: str = ""
    worker_connections: int = 1000
    server_header: bool = True
    url_scheme: str = "http"
    # Peers (--forwarded-allow-ips) whose X-Forwarded-Proto / Forwarded proto= set
    # wsgi.url_scheme (prefork_lb.http.forwarded); None: nobody's.
    trusted_peers: TrustedPeers | None = None
    extra_environ: dict[str, Any] = field(default_factory=dict)  # added to every request's environ
    max_concurrency: int = 0  # 0: unlimited
    queue_size: int = 100
    request_timeout: float = 0.0  # 0: none
    # Seconds a drain first goes on serving as usual, accepting included. Behind our own proxy
    # (--dispatch proxy; ProxyMode.configure_worker sets it) requests keep coming until the proxy
    # reads on the scoreboard that we drain (every 0.1 s): they must find a worker, not a closed
    # connection or a dead backlog.
    idle_grace: float = 0.0
    # Request ids (prefork_lb.request_id): the header carrying one (None: ids off), whether a
    # request without a valid one gets a generated one, and whether the response carries the
    # id (behind our own proxy it does not: the proxy answers the client with it, and a head
    # that differs on every response would defeat the proxy's response memo).
    request_id_header: str | None = None
    request_id_generate: bool = False
    request_id_echo: bool = True

    @classmethod
    def from_config(cls, cfg: Any) -> ServerOptions:
        return cls(
            limits=Limits.from_config(cfg),
            keepalive=cfg.keepalive,
            header_timeout=cfg.header_timeout,
            root_path=cfg.root_path.rstrip("/"),
            worker_connections=cfg.worker_connections,
            server_header=cfg.server_header,
            max_concurrency=cfg.max_concurrency,
            queue_size=cfg.queue_size,
            request_timeout=cfg.request_timeout,
            trusted_peers=TrustedPeers(cfg.forwarded_allow_ips),
            request_id_header=cfg.request_id_header,
            request_id_generate=cfg.request_id,
        )


class ServerView(Protocol):
    """What a connection uses of the server that owns it (prefork_lb.worker.server.Server)."""

    app: WSGIApp
    options: ServerOptions
    request_memo: RequestMemo  # shared by the connections' parsers
    now: float  # the watchdog's clock, refreshed four times a second
    draining: bool
    board: Any  # the worker's scoreboard entry, or None
    before_request: Callable[[dict[str, Any], Request], None] | None
    access_log: Any
    # Request ids, from the options: the environ key of the id header (None: ids off), the
    # generator (None: generation off), the response line's start ("" : no echo).
    rid_key: str | None
    rid_generate: Callable[[], str] | None
    rid_prefix: str
    admission: gevent.lock.BoundedSemaphore | None
    waiting: int  # requests queued for admission
    requests_served: int
