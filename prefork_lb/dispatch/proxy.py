"""``--dispatch proxy``: the L7 proxy process accepts; each worker slot listens on its own loopback port.

The master binds the public listeners (shared by nobody but the proxy) and for each slot a listener on 127.0.0.1 (--worker-base-port + slot, or a port the
kernel picks). It keeps them all: connections the proxy makes to a worker being replaced wait
in that slot's backlog. A slot's port goes on the scoreboard, where the proxy process
(prefork_lb.proxy.process) finds its backends. With no workers (``prefork_lb proxy``) the proxy
serves --backends only. The admin process (--stats-bind) asks the proxy for its /lb-health and
/lb-stats over a private channel the master keeps (prefork_lb.admin.link).

Invariants: one sticky-cookie secret per master (from --sticky-secret, else drawn once), so a
replaced proxy honours the cookies its predecessor set; one journal of the backend changes made
on the control socket per master, so a replaced proxy keeps them (prefork_lb.proxy.operator).
"""

from __future__ import annotations

import mmap
import os
import socket
from typing import TYPE_CHECKING, Any, ClassVar

from prefork_lb.dispatch.base import DispatchMode, log
from prefork_lb.proxy.peers import TrustedPeers
from prefork_lb.sockets import Address, listen, naming

if TYPE_CHECKING:
    from prefork_lb.child import ChildContext, ChildProcess

JOURNAL_SIZE = 1 << 16  # bytes of control socket changes kept for the next proxy process
WORKER_IDLE_GRACE = 1.0  # seconds a draining worker keeps idle keep-alive connections (see Server)


def layout(mounts: Any) -> list[tuple[str, int]] | None:
    """What a reload cannot change of --mount: each pool's route and worker count, in order."""
    return None if mounts is None else [(m.route, m.workers) for m in mounts.mounts]


class ProxyMode(DispatchMode):
    name: ClassVar[str] = "proxy"
    helper_role: ClassVar[str | None] = "proxy"
    admin_public: ClassVar[bool] = True

    def __init__(self, cfg: Any) -> None:
        super().__init__(cfg)
        secret = getattr(cfg, "sticky_secret", None)
        self.sticky_secret = secret.encode("utf-8") if secret else os.urandom(32)
        # What `prefork_lb ctl backend ...` changed, for the next proxy process (see
        # prefork_lb.proxy.operator.Journal): shared, made before the first fork, per master.
        self.journal = mmap.mmap(-1, JOURNAL_SIZE, flags=mmap.MAP_SHARED)

    def resize(self, num_workers: int) -> bool:
        for slot in range(num_workers):
            self.slot_listeners(slot)
        return False

    def slot_listeners(self, slot: int) -> list[socket.socket]:
        socks = self.sockets.slots.get(slot)
        if socks is None:
            base = self.cfg.worker_base_port
            addr = Address("tcp", host="127.0.0.1", port=base + slot if base else 0)
            with naming(f"--worker-base-port {base} + slot {slot}"):
                socks = self.sockets.slots[slot] = [listen(addr, self.cfg.backlog)]
        return socks

    def worker_sockets(self, slot: int) -> list[socket.socket]:
        return self.slot_listeners(slot)

    def slot_port(self, slot: int) -> int:
        return int(self.slot_listeners(slot)[0].getsockname()[1])

    def helper_sockets(self) -> list[socket.socket]:
        return self.sockets.shared + self.links()[:1]

    def helper_process(self, ctx: ChildContext) -> ChildProcess:
        from prefork_lb.proxy.process import ProxyChild

        link = self.links()
        return ProxyChild(
            ctx,
            self.sockets.shared,
            [],
            self.sticky_secret,
            stats_link=link[0] if link else None,
            journal=self.journal,
        )

    def links(self) -> list[socket.socket]:
        """The proxy's and the admin process's ends of their channel (prefork_lb.admin.link),
        made before the first of them is forked; per master, like the handoff channels. None
        without an admin process."""
        if not self.sockets.link and self.has_admin():
            from prefork_lb.admin.link import open_link

            self.sockets.link = list(open_link())
        return self.sockets.link

    def admin_link(self) -> socket.socket | None:
        return self.links()[1] if self.has_admin() else None

    def configure_worker(self, options: Any) -> None:
        # Requests keep coming to a draining worker until the proxy reads on the scoreboard
        # that it drains: it keeps idle connections open this long instead of closing them.
        options.idle_grace = WORKER_IDLE_GRACE
        # A worker's only peer is its proxy (on loopback), which already applied
        # --forwarded-allow-ips to its own clients: the worker believes what the proxy says of
        # the scheme (X-Forwarded-Proto), whatever that setting lists.
        options.trusted_peers = TrustedPeers("127.0.0.1")
        # The proxy gives each request its id (generating one when it has to) and puts it in the
        # response: a worker behind it takes the proxy's and does not repeat it in a head that
        # would then differ on every response (the proxy's response memo keys on head bytes).
        options.request_id_echo = False

    def reconfigure(self, cfg: Any) -> None:
        """A reload's settings. The pools' layout (--mount routes, their order and worker counts)
        stays: a worker slot's pool is its position (prefork_lb.mounts), which the running
        workers and proxy were started with. A pool's app and other keys may change."""
        old = self.cfg
        if layout(cfg.mounts) != layout(old.mounts):
            log.warning(
                "SIGHUP: a change of the --mount routes or their workers needs a restart or USR2; "
                "keeping the running mounts"
            )
            cfg.set("mount", old.mount, "SIGHUP reload")
            cfg.set("workers", old.workers, "SIGHUP reload (--mount kept)")
            cfg.mounts = old.mounts
        super().reconfigure(cfg)

    def ready_message(self, num_workers: int, interfaces: dict[str, str] | None = None) -> str:
        if not num_workers:
            return "Ready: proxy to " + ", ".join(self.cfg.backends or [])
        if self.cfg.mounts is not None:
            served = interfaces or {}
            pools = (
                f"{m.route} -> {m.app} ({m.workers} {served.get(m.route, m.interface)})"
                for m in self.cfg.mounts.mounts
            )
            return "Ready: pools " + ", ".join(pools)
        return super().ready_message(num_workers)
