"""``--dispatch handoff``: a dispatcher process accepts and passes each connection to a worker.

The mode (this module) is what the master holds: the shared listeners, and one SOCK_SEQPACKET
socketpair per worker slot (a *channel*). The dispatcher (prefork_lb.dispatch.dispatcher) writes
to the sending ends (SCM_RIGHTS, up to 64 descriptors a message); a slot's worker reads from the
receiving end. Because the master keeps both ends open, descriptors sent to a worker that dies
before reading them stay in the channel and are served by the worker that replaces it.

Channels are per master (USR2 does not hand them on) and never closed while it runs; a slot
added by TTIN gets a new channel, and the running dispatcher, which has no end of it, is replaced.
"""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING, Any, ClassVar

from prefork_lb.dispatch.base import DispatchMode

if TYPE_CHECKING:
    from prefork_lb.child import ChildContext, ChildProcess


def open_channel() -> tuple[socket.socket, socket.socket]:
    """(send end, receive end) of a slot's handoff channel."""
    send, recv = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    send.setblocking(False)
    return send, recv


class HandoffMode(DispatchMode):
    name: ClassVar[str] = "handoff"
    helper_role: ClassVar[str | None] = "dispatcher"

    def resize(self, num_workers: int) -> bool:
        """A channel per slot, created before any process that uses it is forked."""
        channels = self.sockets.channels
        opened = False
        for slot in range(num_workers):
            if slot not in channels:
                channels[slot] = open_channel()
                opened = True
        return opened

    def worker_sockets(self, slot: int) -> list[socket.socket]:
        return [self.sockets.channels[slot][1]]

    def helper_sockets(self) -> list[socket.socket]:
        return self.sockets.shared + [send for send, _ in self.sockets.channels.values()]

    def helper_process(self, ctx: ChildContext) -> ChildProcess:
        from prefork_lb.dispatch.dispatcher import DispatcherChild

        channels = {k: send for k, (send, _) in self.sockets.channels.items()}
        return DispatcherChild(ctx, self.sockets.shared, channels)

    def attach(self, server: Any, socks: list[socket.socket]) -> None:
        for sock in socks:
            server.add_handoff_channel(sock)
