"""A proxy told to stop in the pass of its event loop that accepts a connection serves that
connection (prefork_lb.proxy.listening): the stop used to find no client connection yet (its
``connection_made`` was still to come), end at once, and leave the client with its
connection closed and no response, a request lost during a USR2 or a reload."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import http.server
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from prefork_lb import cli
from prefork_lb.proxy import process
from prefork_lb.proxy.process import ProxyProcess, new_loop


class Ok(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def backend() -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Ok)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def get(port: int, got: list[Any]) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", "/json")
        resp = conn.getresponse()
        got.append((resp.status, resp.read()))
    except OSError as exc:  # RemoteDisconnected when the connection was dropped
        got.append(repr(exc))
    finally:
        conn.close()


def serve_one(
    kind: str, backend: int, hook: Callable[[ProxyProcess, asyncio.AbstractEventLoop], None]
) -> list[Any]:
    """A proxy on ``kind``'s loop serving one client that connected before it started, with
    ``hook`` arranging for the stop; what the client got."""
    cfg = cli.parse(["proxy", "--backends", f"127.0.0.1:{backend}", "--proxy-loop", kind], environ={})
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    loop = new_loop(kind)
    got: list[Any] = []
    client = threading.Thread(target=get, args=(listener.getsockname()[1], got))
    try:
        proc = ProxyProcess(cfg, [listener], [], None, None, None, loop)
        hook(proc, loop)
        client.start()  # (its connection waits in the listener's backlog until the proxy accepts)
        loop.run_until_complete(within(proc.serve()))
    finally:
        # (uvloop refuses, EBUSY, while it holds a connection it never handed over: a dropped
        # client then waits for its own timeout)
        with contextlib.suppress(OSError):
            loop.close()
        listener.close()
        if client.is_alive():
            client.join(10)
    return got


async def within(aw: Any) -> None:
    await asyncio.wait_for(aw, 10)


def stop_at_accept(
    proc: ProxyProcess, loop: asyncio.AbstractEventLoop, monkeypatch: pytest.MonkeyPatch
) -> None:
    """TERM heard in the callback that accepts: the stop resumes before ``connection_made``."""

    class Stopping(process.ClientConn):
        def __init__(self, *args: Any) -> None:
            super().__init__(*args)
            proc.stop(True)

    monkeypatch.setattr(process, "ClientConn", Stopping)


@pytest.mark.parametrize("kind", ["uvloop", "asyncio"])
def test_a_connection_accepted_as_the_stop_comes_is_served(
    kind: str, backend: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip(kind)
    got = serve_one(kind, backend, lambda proc, loop: stop_at_accept(proc, loop, monkeypatch))
    assert got == [(200, b"ok")]


def test_asyncio_a_connection_accepted_just_after_the_stop_is_served(backend: int) -> None:
    """asyncio's loop accepts, then makes the transport in a task of its own, which the stop
    resumes ahead of: the Server must not be closed under that task (it drops the connection)."""

    def hook(proc: ProxyProcess, loop: asyncio.AbstractEventLoop) -> None:
        accept = loop._accept_connection  # type: ignore[attr-defined]

        def stop_then_accept(*args: Any, **kwargs: Any) -> Any:
            proc.stop(True)
            return accept(*args, **kwargs)

        loop._accept_connection = stop_then_accept  # type: ignore[attr-defined]

    assert serve_one("asyncio", backend, hook) == [(200, b"ok")]
