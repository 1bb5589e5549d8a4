"""How a stopping proxy stops accepting without losing a connection it accepted already.

Both event loops accept a connection in one callback and call the protocol's
``connection_made`` in a later one (``call_soon``): until then the connection is in no list of
ours. A stop that closed the listeners and then, in the same step, found no client
connection left would end the process under that connection, whose request may already have
been read: its client sees the connection closed without a response. After a USR2 or a
reload the listeners are shared with the next proxy, which would have served it.

:func:`stop_accepting` closes the servers and then gives the loop one pass, in which the
``connection_made`` calls queued before it run. asyncio's own loop does one step more before
accepting the connection: a task (``_accept_connection2``) makes its transport, which fails
an assertion, and drops the connection unseen, when its Server was closed in between. On that
loop the listeners' readers go first (no more accepts), one pass lets the tasks queued already
attach their connections, and then the servers close.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

__all__ = ["stop_accepting"]


async def stop_accepting(loop: asyncio.AbstractEventLoop, servers: Iterable[Any]) -> None:
    """Close ``servers`` (asyncio Servers of ``loop``); on return every connection they
    accepted has had its ``connection_made``."""
    servers = list(servers)
    if isinstance(loop, asyncio.selector_events.BaseSelectorEventLoop):
        for srv in servers:
            for sock in srv.sockets:
                loop.remove_reader(sock.fileno())
        await asyncio.sleep(0)
    for srv in servers:
        srv.close()
    await asyncio.sleep(0)
