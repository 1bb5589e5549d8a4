"""``--dispatch reuseport``: each worker slot has its own SO_REUSEPORT listener per TCP address.

The master creates and keeps every slot's listener, so when a worker dies the connections the
kernel queued on its slot wait for its replacement instead of being reset. New connections are
steered onto the slots below the worker count (sockets.steer_reuseport), so a slot being
removed drains its queue and gets nothing new. Unix and fd addresses cannot be reuseport
groups: they are shared by every worker. No helper process.

Invariant: a group's sockets are indexed in the order they joined and only the last slot is
ever added or removed, so group index == slot (what the steering program relies on).
"""

from __future__ import annotations

import logging
import socket
from typing import ClassVar

from prefork_lb.dispatch.base import DispatchMode
from prefork_lb.dispatch.shared import SharedMode
from prefork_lb.settings.base import flag_and_default
from prefork_lb.sockets import Address, listen, naming, refuse_taken, steer_reuseport

log = logging.getLogger("prefork_lb.error")


class ReuseportMode(DispatchMode):
    name: ClassVar[str] = "reuseport"

    def shares(self, addr: Address) -> bool:
        return addr.kind != "tcp"

    def adopt_systemd(self, fds: list[int], num_workers: int) -> DispatchMode:
        log.info("systemd socket activation: the inherited sockets are shared by all workers")
        self.cfg.set("dispatch", "shared", "systemd socket activation")
        shared = SharedMode(self.cfg)
        shared.requested = self.requested  # a reload that still asks for reuseport changes nothing
        return shared.adopt_systemd(fds, num_workers)

    def resize(self, num_workers: int) -> bool:
        for slot in range(num_workers):
            self.slot_listeners(slot)
        self.steer(num_workers)
        return False

    def steer(self, num_workers: int) -> None:
        """Keep new connections on the slots below the worker count."""
        for sock in self.sockets.slots.get(0, []):  # one program per address group
            if not steer_reuseport(sock, num_workers):
                log.warning(
                    "Cannot steer SO_REUSEPORT (no classic BPF); connections queued on a "
                    "removed worker slot may be reset unless net.ipv4.tcp_migrate_req=1"
                )
                return

    def slot_listeners(self, slot: int) -> list[socket.socket]:
        addresses = self.sockets.addresses
        if not any(a.kind == "tcp" for a in addresses):
            return []
        socks = self.sockets.slots.get(slot)
        if socks is None:
            socks = []
            creating_group = not self.sockets.slots
            for i, a in enumerate(addresses):
                if a.kind != "tcp":
                    continue
                with naming(flag_and_default(self.cfg, "bind")):
                    if creating_group:
                        refuse_taken(a)  # never join (and re-steer) another server's group
                    sock = listen(a, self.cfg.backlog, reuseport=True)
                if a.port == 0:
                    # Port 0: every slot must join the group on the port the first one got.
                    addresses[i] = Address("tcp", host=a.host, port=sock.getsockname()[1])
                socks.append(sock)
            self.sockets.slots[slot] = socks
        return socks
