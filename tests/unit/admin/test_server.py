"""The admin listener's HTTP side: its own paths only, GET/HEAD only, the bearer token."""

from __future__ import annotations

import http.client
import socket
import threading
from collections.abc import Iterator

import pytest

from prefork_lb.admin.server import AdminServer, Reply, authorized, json_reply

TOKEN = "s3cr3t-token-0123456789"


def test_authorized_compares_the_bearer_token() -> None:
    assert authorized(None, None) and authorized("Bearer x", None)
    assert authorized(f"Bearer {TOKEN}", TOKEN) and authorized(f"bearer {TOKEN}", TOKEN)
    assert not authorized(None, TOKEN)
    assert not authorized(f"Basic {TOKEN}", TOKEN)
    assert not authorized(f"Bearer {TOKEN}x", TOKEN)
    assert not authorized("Bearer ", TOKEN)


@pytest.fixture(params=[None, TOKEN])
def admin(request: pytest.FixtureRequest) -> Iterator[tuple[int, str | None]]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    server = AdminServer(sock, request.param)
    server.routes["/lb-health"] = lambda req: json_reply({"status": "ok"})
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    yield sock.getsockname()[1], request.param
    server.shutdown()
    t.join(5)
    sock.close()


def ask(port: int, method: str, path: str, token: str | None) -> tuple[int, bytes]:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        c.request(method, path, headers={"Authorization": f"Bearer {token}"} if token else {})
        r = c.getresponse()
        return r.status, r.read()
    finally:
        c.close()


def test_own_paths_only_and_get_only(admin: tuple[int, str | None]) -> None:
    port, token = admin
    assert ask(port, "GET", "/lb-health", token) == (200, b'{\n "status": "ok"\n}\n')
    assert ask(port, "GET", "/lb-health?verbose=1", token)[0] == 200
    assert ask(port, "HEAD", "/lb-health", token) == (200, b"")
    assert ask(port, "GET", "/", token)[0] == 404
    assert ask(port, "GET", "/etc/passwd", token)[0] == 404
    assert ask(port, "POST", "/lb-health", token)[0] == 405


def test_the_token_is_required_when_set(admin: tuple[int, str | None]) -> None:
    port, token = admin
    if token is None:
        assert ask(port, "GET", "/lb-health", None)[0] == 200
        return
    assert ask(port, "GET", "/lb-health", None)[0] == 401
    assert ask(port, "GET", "/nowhere", None)[0] == 401  # paths are not revealed either
    assert ask(port, "GET", "/lb-health", "wrong-token-0123456789")[0] == 401
    assert ask(port, "GET", "/lb-health", token)[0] == 200


def test_a_public_path_needs_no_token_and_the_others_still_do() -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    server = AdminServer(sock, "a-token-0123456789abcdef")
    server.routes["/"] = lambda req: Reply(200, b"<html></html>", "text/html")
    server.routes["/data"] = lambda req: json_reply({"secret": 1})
    server.public.add("/")
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    try:
        port = sock.getsockname()[1]
        assert ask(port, "GET", "/", None) == (200, b"<html></html>")
        assert ask(port, "GET", "/data", None)[0] == 401
        assert ask(port, "GET", "/data", "a-token-0123456789abcdef")[0] == 200
    finally:
        server.shutdown()
        t.join(5)
        sock.close()
