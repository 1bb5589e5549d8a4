"""How a request's task starts (ServerCore.spawn): eager on Python 3.12+, where the app runs in
the read callback up to its first wait. Whatever the Python, pipelined requests that the app
answers without waiting are all answered in order (no call nesting per request), each request
runs in a task of its own with its own context, and an app that waits mid-request still
answers in order."""

from __future__ import annotations

import asyncio
import contextvars
import socket
import sys
from typing import Any

from prefork_lb.asgi.core import TASK_NAME
from prefork_lb.asgi.options import AsgiOptions
from prefork_lb.asgi.server import AsgiServer
from tests.server import parse_responses
from tests.unit.asgi.test_server_inprocess import responses, talk

SEEN: contextvars.ContextVar[str] = contextvars.ContextVar("seen", default="fresh")


def run(app: Any, data: bytes) -> tuple[bytes, AsgiServer]:
    async def go() -> tuple[bytes, AsgiServer]:
        server = AsgiServer(app, AsgiOptions(), asyncio.get_running_loop())
        try:
            return await talk(server, data), server
        finally:
            server.close()

    return asyncio.run(go())


async def echo_path(scope: dict[str, Any], receive: Any, send: Any) -> None:
    body = scope["path"].encode()
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"%d" % len(body))]}
    )
    await send({"type": "http.response.body", "body": body})


def test_thousands_of_pipelined_requests_answered_in_order_without_nesting() -> None:
    n = 3000  # far past the recursion limit if each request's end started the next one inside it
    data = b"".join(b"GET /%d HTTP/1.1\r\nHost: x\r\n\r\n" % i for i in range(n))
    out, server = run(echo_path, data)
    got: list[Any] = []
    while out:  # (parse_responses reads 1000 at a time)
        more, out = parse_responses(out)
        assert more, out[:200]
        got += more
    assert [r.status for r in got] == [200] * n
    assert [r.body for r in got] == [b"/%d" % i for i in range(n)]
    assert server.served == n


def test_each_request_has_its_own_task_and_context() -> None:
    # /b's task starts when /a's ends (pipelined): it must not start in /a's context.
    tasks: list[asyncio.Task[Any] | None] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        before = SEEN.get()
        SEEN.set(scope["path"])  # must not reach the next request on this connection
        tasks.append(asyncio.current_task())
        body = before.encode()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": body})

    data = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\n\r\n"
    out, _server = run(app, data)
    assert [r.body for r in responses(out)] == [b"fresh", b"fresh"]
    assert len(tasks) == 2 and None not in tasks and tasks[0] is not tasks[1]
    # Named by the server (a task without a name formats one for itself per request).
    assert [t.get_name() for t in tasks if t is not None] == [TASK_NAME] * 2 == ["prefork_lb request"] * 2


def test_an_app_that_waits_mid_request_still_answers_in_order() -> None:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["path"].endswith("1"):
            await asyncio.sleep(0.01)  # a real wait: the task goes on from the loop
        await echo_path(scope, receive, send)

    data = b"".join(b"GET /%d HTTP/1.1\r\nHost: x\r\n\r\n" % i for i in range(30))
    out, _server = run(app, data)
    assert [r.body for r in responses(out)] == [b"/%d" % i for i in range(30)]


def test_eager_only_where_asyncio_has_it() -> None:
    async def go() -> bool:
        server = AsgiServer(echo_path, AsgiOptions(), asyncio.get_running_loop())
        ran = False

        async def probe() -> None:
            nonlocal ran
            ran = True

        task = server.spawn(probe(), server.context.copy())
        eager = ran  # True only if the coroutine ran inside spawn()
        await task
        server.close()
        return eager

    assert asyncio.run(go()) is (sys.version_info >= (3, 12))


def test_a_scope_the_app_changes_does_not_reach_the_next_request_with_the_same_head() -> None:
    # The same head twice on one connection: the second scope is copied from the connection's
    # template (prefork_lb.asgi.events.merged_scope), never from the first request's scope.
    seen: list[tuple[str, int, bool]] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        seen.append((scope["path"], len(scope["headers"]), "mine" in scope))
        scope["path"] = "/changed"
        scope["headers"].append((b"x-added", b"1"))
        scope["mine"] = True
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    async def go() -> list[bytes]:
        loop = asyncio.get_running_loop()
        server = AsgiServer(app, AsgiOptions(), loop)
        a, b = socket.socketpair()
        b.setblocking(False)
        got = []
        try:
            with b:
                server.add_connection(a)
                for _ in range(3):  # one request per read, each after the last answer
                    await loop.sock_sendall(b, b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n")
                    got.append(await asyncio.wait_for(loop.sock_recv(b, 65536), 5))
        finally:
            server.close()
        return got

    answers = asyncio.run(go())
    assert [r.split(b"\r\n", 1)[0] for r in answers] == [b"HTTP/1.1 200 OK"] * 3
    assert seen == [("/a", 1, False)] * 3
