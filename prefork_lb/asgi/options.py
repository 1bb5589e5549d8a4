"""The ASGI server's options: the WSGI engine's (prefork_lb.worker.options.ServerOptions) that
apply to an ASGI app, in a leaf module with no gevent, so the ASGI worker never imports it.

Invariant: nothing here imports from prefork_lb.worker or prefork_lb.asgi.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from prefork_lb.http.parser import Limits
from prefork_lb.proxy.peers import TrustedPeers


@dataclass
class AsgiOptions:
    limits: Limits = field(default_factory=Limits)
    keepalive: float = 5.0  # seconds an idle kept-alive connection waits; 0: no keep-alive
    header_timeout: float = 10.0  # for a whole request head, and for each wait on body bytes
    root_path: str = ""  # scope["root_path"], without a trailing "/"
    worker_connections: int = 1000  # open connections at most; past it accepts wait
    server_header: bool = True
    url_scheme: str = "http"
    # Peers (--forwarded-allow-ips) whose X-Forwarded-Proto / Forwarded proto= set
    # scope["scheme"] (prefork_lb.http.forwarded); None: nobody's.
    trusted_peers: TrustedPeers | None = None
    max_concurrency: int = 0  # requests in the app at once; 0: unlimited
    queue_size: int = 100  # requests waiting for a place when max_concurrency is reached
    request_timeout: float = 0.0  # 0: none
    # Seconds a drain first goes on serving as usual (see ServerOptions.idle_grace).
    idle_grace: float = 0.0
    # Websockets (prefork_lb.asgi.ws_handshake.WsSettings reads these).
    ws_max_size: int = 16 * 1024 * 1024
    ws_ping_interval: float = 20.0
    ws_ping_timeout: float = 20.0
    ws_per_message_deflate: bool = True
    # How error lines name the app: the MODULE:APP the user gave (cfg.app_uri, a mount's app);
    # "": asgi.server.app_name(app), the object's module:qualname (in-process use).
    app_name: str = ""

    @classmethod
    def from_config(cls, cfg: Any) -> AsgiOptions:
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
            ws_max_size=cfg.ws_max_size,
            ws_ping_interval=cfg.ws_ping_interval,
            ws_ping_timeout=cfg.ws_ping_timeout,
            ws_per_message_deflate=cfg.ws_per_message_deflate,
            app_name=getattr(cfg, "app_uri", None) or "",
        )
