"""A tiny asyncio HTTP/1.1 server for the websocket tests: it parses the request head with
``prefork_lb.http.parser`` and hands websocket upgrades to ``prefork_lb.asgi.websocket.upgrade``,
as the ASGI worker's server does. Anything else gets 404 and is closed.

Usage: ``python -m tests.ws_server PORT_FILE [max_size ping_interval ping_timeout]``: listens on
127.0.0.1, a free port, and writes the port to PORT_FILE once it accepts. Hooks are logged on
stderr as ``finished STATUS``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

from prefork_lb.asgi.websocket import upgrade
from prefork_lb.http.errors import HTTPError
from prefork_lb.http.parser import RequestParser
from tests.apps_ws import app


@dataclass
class Options:
    ws_max_size: int = 16 * 1024 * 1024
    ws_ping_interval: float = 20.0
    ws_ping_timeout: float = 20.0
    ws_close_timeout: float = 2.0
    server_header: bool = True


class Hooks:
    def request_started(self, conn: Any, scope: dict[str, Any]) -> None:
        pass

    def request_finished(
        self, conn: Any, scope: dict[str, Any], status: int, sent: int, seconds: float
    ) -> None:
        print(f"finished {scope['path']} {status}", file=sys.stderr, flush=True)


class Head(asyncio.Protocol):
    def __init__(self, options: Options) -> None:
        self.options = options
        self.parser = RequestParser()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed(data)
        except HTTPError as exc:
            self.transport.write(
                b"HTTP/1.1 %d X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n" % exc.status
            )
            self.transport.close()
            return
        if not self.parser.requests:
            return
        req = self.parser.requests.popleft()
        wants = any(n == "upgrade" and b"websocket" in v.lower() for n, _, v in req.headers)
        if not wants:
            self.transport.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            self.transport.close()
            return
        path, query = req.split_target()
        sock = self.transport.get_extra_info("sockname")
        peer = self.transport.get_extra_info("peername")
        base = {
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "scheme": "http",
            "server": (sock[0], sock[1]),
            "client": (peer[0], peer[1]),
            "root_path": "",
            "state": {},
            "path": unquote(path.decode("latin-1")),
            "raw_path": path,
            "query_string": query,
            "headers": [(lname.encode("latin-1"), value) for lname, _, value in req.headers],
        }
        proto = upgrade(self.transport, app, req, self.parser.tail, base, self.options, Hooks())
        self.transport.set_protocol(proto)
        proto.connection_made(self.transport)


async def main(port_file: str, options: Options) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Head(options), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    with open(port_file + ".tmp", "w") as f:
        f.write(str(port))
    os.replace(port_file + ".tmp", port_file)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="[%(levelname)s] %(message)s")
    args = sys.argv[1:]
    opts = Options()
    if len(args) > 1:
        opts.ws_max_size = int(args[1])
    if len(args) > 2:
        opts.ws_ping_interval = float(args[2])
    if len(args) > 3:
        opts.ws_ping_timeout = float(args[3])
    asyncio.run(main(args[0], opts))
