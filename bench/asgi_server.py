"""A minimal asyncio ASGI server for the benchmarks: ``python -m bench.asgi_server APP -b HOST:PORT -w N``.

Not prefork_lb's ASGI worker: a floor to compare it with, and a way to run the ASGI variant of
bench/mixed.py (``--interface asgi``) on offload alone. N forked processes each accept on their
own SO_REUSEPORT socket and run one asyncio loop (no gevent); each sets offload up as a worker
child does (``prefork_lb.offload.lifecycle.WorkerOffload``: ``--offload-processes``, default
auto; ``--offload-executor``), so ``prefork_lb.offload_async`` runs on that worker's pool. HTTP is
the least the load generator needs: one GET per connection (bench/openloop.py sends
``Connection: close``), the response written with ``Connection: close``; lifespan is not run.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

MAX_HEAD = 16384


async def handle(app: Any, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
        writer.close()
        return
    method, target, _ = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ", 2)
    path, _, query = target.partition("?")
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query.encode(),
        "headers": [],
        "server": writer.get_extra_info("sockname"),
        "client": writer.get_extra_info("peername"),
    }
    start: dict[str, Any] = {}
    body: list[bytes] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            start.update(message)
        else:
            body.append(message.get("body", b""))

    try:
        await app(scope, receive, send)
        status = start.get("status", 500)
    except Exception:
        status, body = 500, [b"error"]
    data = b"".join(body)
    writer.write(
        f"HTTP/1.1 {status} X\r\nContent-Length: {len(data)}\r\nConnection: close\r\n\r\n".encode() + data
    )
    try:
        await writer.drain()
    except ConnectionError:
        pass
    writer.close()


async def serve(app: Any, host: str, port: int) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    server = await asyncio.start_server(lambda r, w: handle(app, r, w), sock=sock, backlog=1024)
    stop = asyncio.get_running_loop().create_future()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set_result, None)
    async with server:
        await stop


def worker(args: argparse.Namespace) -> None:
    import importlib

    from prefork_lb.offload.lifecycle import WorkerOffload
    from prefork_lb.settings.base import offload_executor

    cfg = SimpleNamespace(
        offload_processes=args.offload_processes,
        workers=args.workers,
        offload_executor=offload_executor(args.offload_executor),
    )
    setup = WorkerOffload.from_config(cfg)  # before the app import, as a worker child does
    module, _, name = args.app.partition(":")
    app = getattr(importlib.import_module(module), name)
    error = setup.start_executor()
    if error is not None:
        print(error, file=sys.stderr)
        os._exit(2)
    host, _, port = args.bind.rpartition(":")
    try:
        asyncio.run(serve(app, host, int(port)))
    finally:
        setup.close()
    os._exit(0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("app", help="MODULE:NAME of an ASGI app")
    ap.add_argument("-b", "--bind", default="127.0.0.1:8000")
    ap.add_argument("-w", "--workers", type=int, default=1)
    ap.add_argument("--offload-processes", type=int, default=-1, help="per worker (-1: auto)")
    ap.add_argument("--offload-executor", default=None)
    args = ap.parse_args()
    pids = []
    for _ in range(args.workers):
        pid = os.fork()
        if pid == 0:
            worker(args)
        pids.append(pid)
    signal.signal(signal.SIGTERM, lambda *_: [os.kill(p, signal.SIGTERM) for p in pids])
    for pid in pids:
        while True:
            try:
                os.waitpid(pid, 0)
                break
            except InterruptedError:
                continue


if __name__ == "__main__":
    main()
