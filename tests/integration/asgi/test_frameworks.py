"""Real frameworks (FastAPI, Starlette, Django) on prefork_lb's ASGI worker, against uvicorn.

Every case sends the same request to uvicorn (``--http httptools --loop uvloop --ws wsproto``,
the reference) and, for the ``prefork_lb`` parameter, to ``prefork_lb APP --interface asgi -w 1``,
and asserts that the user sees the same answer: status, body, and headers except those in
:data:`IGNORED_HEADERS`. The ``uvicorn`` parameter checks each case's expectations on uvicorn
alone, so the cases themselves are tested (and fail when an app or a framework changes).

IGNORED_HEADERS: ``date`` (the clock), ``server`` (each server names itself), ``connection``
and ``keep-alive`` (hop-by-hop connection management, the server's own choice, not the app's).
Headers are compared as a list sorted by name, keeping the order of repeated fields (two
Set-Cookie fields stay in order). Bodies are compared whole, after chunked decoding. Both
servers run with PYTHONHASHSEED=0, so what an app writes from a set (Starlette's Allow) is in
the same order. Framing: where uvicorn chunks a body the app gave without a Content-Length, a
Content-Length that counts the body is as good (:func:`framed_as`).

WebSocket cases compare the handshake (status, subprotocol) and the transcript: every message
received and the close code and reason, with the ``websockets`` client library.

The apps live in tests/apps/asgi/ (see its README), the servers' fixture in tests/frameworks.py. Until prefork_lb has an ASGI worker, every
``prefork_lb`` case fails with the server's command and log tail.
"""

from __future__ import annotations

import hashlib
import random
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from tests.frameworks import FrameworkServer, StartFramework, framework_servers
from tests.helpers import wait_for

SERVERS = ["uvicorn", "prefork_lb"]
IGNORED_HEADERS = frozenset({"date", "server", "connection", "keep-alive"})
TIMEOUT = 10.0
UPLOAD = random.Random(15).randbytes(5 * 1024 * 1024)  # 5 MB, the same bytes every run


@pytest.fixture(scope="session")
def framework_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StartFramework]:
    yield from framework_servers(tmp_path_factory)


@dataclass(frozen=True)
class Answer:
    """What a user sees of one HTTP response."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k == name), None)

    def json(self) -> Any:
        return httpx.Response(self.status, content=self.body).json()


@dataclass(frozen=True)
class Case:
    app: str
    name: str
    method: str
    path: str
    status: int
    expect: Callable[[Answer], object] = lambda a: True
    request: dict[str, Any] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return f"{self.app}-{self.name}"


def answer(srv: FrameworkServer, case: Case) -> Answer:
    request = {k: v() if callable(v) else v for k, v in case.request.items()}  # a fresh iterator each time
    with httpx.Client(base_url=srv.url, timeout=TIMEOUT, follow_redirects=False, trust_env=False) as client:
        resp = client.request(case.method, case.path, **request)
    headers = sorted(((k.lower(), v) for k, v in resp.headers.multi_items()), key=lambda kv: kv[0])
    return Answer(resp.status_code, [(k, v) for k, v in headers if k not in IGNORED_HEADERS], resp.content)


def framed_as(got: Answer, reference: Answer) -> Answer:
    """``got``, with a Content-Length that counts its body read as chunked where the reference
    is chunked: framing a body the app gave without a length is the server's choice (uvicorn
    always chunks; a server that has the whole body at the first body event may count it)."""
    te, cl = ("transfer-encoding", "chunked"), ("content-length", str(len(got.body)))
    if te in reference.headers and te not in got.headers and cl in got.headers:
        headers = sorted([te if h == cl else h for h in got.headers], key=lambda kv: kv[0])
        return Answer(got.status, headers, got.body)
    return got


def is_json(value: Any) -> Callable[[Answer], bool]:
    return lambda a: a.json() == value


UPLOAD_DIGEST = hashlib.sha256(UPLOAD).hexdigest()
CASES = [
    # FastAPI
    Case("fastapi", "root", "GET", "/", 200, is_json({"hello": "world"})),
    Case(
        "fastapi",
        "path-and-query",
        "GET",
        "/items/42?q=caf%C3%A9&limit=3",
        200,
        is_json({"item_id": 42, "q": "café", "limit": 3}),
    ),
    Case(
        "fastapi",
        "bad-path-param",
        "GET",
        "/items/forty-two",
        422,
        lambda a: "int_parsing" in a.body.decode(),
    ),
    Case("fastapi", "http-exception", "GET", "/items/404", 404, lambda a: a.header("x-item") == "missing"),
    Case(
        "fastapi",
        "post-json",
        "POST",
        "/items",
        201,
        is_json({"created": {"name": "pen", "price": 1.5, "tags": ["a", "b"]}, "total": 3.0}),
        {"json": {"name": "pen", "price": 1.5, "tags": ["a", "b"]}},
    ),
    Case(
        "fastapi",
        "bad-json",
        "POST",
        "/items",
        422,
        lambda a: a.json()["detail"][0]["type"] == "json_invalid",
        {"content": b'{"name": ', "headers": {"content-type": "application/json"}},
    ),
    Case(
        "fastapi",
        "upload-5mb",
        "POST",
        "/upload",
        200,
        is_json(
            {
                "filename": "data.bin",
                "content_type": "application/octet-stream",
                "size": len(UPLOAD),
                "sha256": UPLOAD_DIGEST,
            }
        ),
        {
            "files": {"file": ("data.bin", UPLOAD, "application/octet-stream")},
            "headers": {"x-boundary-fixed": "1"},
        },
    ),
    Case(
        "fastapi",
        "streaming",
        "GET",
        "/stream?n=50",
        200,
        lambda a: a.body == b"".join(b"chunk %d\n" % i for i in range(50)) and a.header("x-chunks") == "50",
    ),
    Case(
        "fastapi",
        "server-sent-events",
        "GET",
        "/events?n=3",
        200,
        lambda a: (
            a.header("content-type") == "text/event-stream; charset=utf-8"
            and a.body.decode().count("event: tick\n") == 3
        ),
    ),
    Case("fastapi", "lifespan-state", "GET", "/state", 200, is_json({"greeting": "hello from lifespan"})),
    Case("fastapi", "plain-text", "GET", "/text", 200, lambda a: a.body == "plain text, café".encode()),
    Case("fastapi", "head", "HEAD", "/", 405, lambda a: a.body == b""),
    Case("fastapi", "not-found", "GET", "/nowhere", 404, is_json({"detail": "Not Found"})),
    Case("fastapi", "method-not-allowed", "DELETE", "/items/1", 405, lambda a: a.header("allow") == "GET"),
    # Starlette
    Case("starlette", "root", "GET", "/", 200, lambda a: a.body == b"Hello, Starlette"),
    Case(
        "starlette",
        "path-query-state",
        "GET",
        "/users/ann?x=1&x=2&y=%20",
        200,
        is_json({"user": "ann", "query": {"x": "2", "y": " "}, "state": "connected"}),
    ),
    Case(
        "starlette",
        "echo-100k",
        "POST",
        "/echo",
        200,
        lambda a: a.body == bytes(range(256)) * 400,
        {"content": bytes(range(256)) * 400, "headers": {"content-type": "application/x-test"}},
    ),
    Case(
        "starlette",
        "echo-chunked-request",
        "PUT",
        "/echo",
        200,
        lambda a: a.body == b"abcdef" * 3,
        {"content": lambda: iter([b"abcdef"] * 3)},
    ),
    Case(
        "starlette",
        "two-set-cookies",
        "GET",
        "/cookies",
        200,
        lambda a: [v.split(";")[0] for k, v in a.headers if k == "set-cookie"] == ["visit=1", "theme=dark"],
        {"headers": {"cookie": "visit=0"}},
    ),
    Case("starlette", "streaming", "GET", "/numbers", 200, lambda a: a.body.splitlines()[-1] == b"99"),
    Case("starlette", "redirect", "GET", "/old", 301, lambda a: a.header("location") == "/"),
    Case(
        "starlette",
        "method-not-allowed",
        "GET",
        "/echo",
        405,
        lambda a: sorted((a.header("allow") or "").split(", ")) == ["POST", "PUT"],
    ),
    # Django
    Case("django", "root", "GET", "/", 200, lambda a: a.body == b"Hello from Django"),
    Case(
        "django",
        "async-view",
        "GET",
        "/hello/bob/?q=1",
        200,
        is_json({"hello": "bob", "q": "1", "path": "/hello/bob/"}),
    ),
    Case(
        "django",
        "append-slash",
        "GET",
        "/hello/bob?q=1",
        301,
        lambda a: a.header("location") == "/hello/bob/?q=1",
    ),
    Case(
        "django",
        "post-json",
        "POST",
        "/submit/",
        201,
        is_json({"received": {"a": [1, 2]}, "content_type": "application/json"}),
        {"json": {"a": [1, 2]}},
    ),
    Case("django", "streaming", "GET", "/countdown/", 200, lambda a: a.body == b"5\n4\n3\n2\n1\n"),
    Case("django", "not-found", "GET", "/nope/", 404, lambda a: b"Not Found" in a.body),
    Case("django", "wrong-method", "GET", "/submit/", 405, lambda a: a.header("allow") == "POST"),
    Case(
        "django",
        "disallowed-host",
        "GET",
        "/",
        400,
        lambda a: b"Bad Request" in a.body,
        {"headers": {"host": "evil.example"}},
    ),
]


@pytest.mark.parametrize("server", SERVERS)
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_http_answer_matches_uvicorn(framework_server: StartFramework, case: Case, server: str) -> None:
    reference = answer(framework_server("uvicorn", case.app), case)
    assert reference.status == case.status, reference
    assert case.expect(reference), reference
    if server == "prefork_lb":
        got = answer(framework_server("prefork_lb", case.app), case)
        assert framed_as(got, reference) == reference


@pytest.mark.parametrize("server", SERVERS)
def test_fastapi_background_task_runs_after_the_response(
    framework_server: StartFramework, server: str
) -> None:
    srv = framework_server(server, "fastapi")
    name = uuid.uuid4().hex
    with httpx.Client(base_url=srv.url, timeout=TIMEOUT, trust_env=False) as client:
        queued = client.post(f"/tasks/{name}")
        assert (queued.status_code, queued.json()) == (202, {"queued": name})
        wait_for(lambda: client.get(f"/tasks/{name}").json() == {"ran": True}, 5.0, "the background task")


@dataclass(frozen=True)
class WsCase:
    app: str
    name: str
    path: str
    send: list[str | bytes]
    subprotocols: list[str] | None = None

    @property
    def id(self) -> str:
        return f"{self.app}-{self.name}"


def transcript(srv: FrameworkServer, case: WsCase) -> dict[str, Any]:
    """The handshake's outcome, every message received, and how the connection closed."""
    try:
        ws = connect(
            srv.ws_url + case.path,
            subprotocols=case.subprotocols,
            open_timeout=TIMEOUT,
            close_timeout=5,
            proxy=None,
        )  # type: ignore[arg-type]
    except InvalidStatus as exc:
        return {"rejected": exc.response.status_code, "body": exc.response.body}
    got: dict[str, Any] = {"status": ws.response.status_code, "subprotocol": ws.subprotocol, "received": []}
    with ws:
        try:
            for message in case.send:
                ws.send(message)
                got["received"].append(ws.recv(timeout=TIMEOUT))
            got["received"].append(ws.recv(timeout=TIMEOUT))  # the server closes after the last message
        except ConnectionClosed as exc:
            got["close"] = (exc.rcvd.code, exc.rcvd.reason) if exc.rcvd else None
    return got


WS_CASES = [
    WsCase("fastapi", "echo", "/ws", ["hello", b"\x00\x01\xff", "x" * 70000, "close"], ["other", "echo"]),
    WsCase("fastapi", "no-subprotocol", "/ws", ["a", "close"]),
    WsCase("fastapi", "unknown-route", "/nowhere", []),
    WsCase("starlette", "echo", "/ws", ["shout", "bye"]),
    WsCase("django", "not-supported", "/", []),
]
WS_EXPECT: dict[str, Callable[[dict[str, Any]], bool]] = {
    "fastapi-echo": lambda t: (
        t["subprotocol"] == "echo"
        and t["received"] == ["echo: hello", b"\x00\x01\xff", "echo: " + "x" * 70000]
        and t["close"] == (4001, "asked to close")
    ),
    "fastapi-no-subprotocol": lambda t: t["subprotocol"] is None and t["received"] == ["echo: a"],
    "fastapi-unknown-route": lambda t: t["rejected"] == 403,
    "starlette-echo": lambda t: t["received"] == ["SHOUT"] and t["close"] == (1000, ""),
    "django-not-supported": lambda t: t["rejected"] == 500,
}


@pytest.mark.parametrize("server", SERVERS)
@pytest.mark.parametrize("case", WS_CASES, ids=[c.id for c in WS_CASES])
def test_websocket_transcript_matches_uvicorn(
    framework_server: StartFramework, case: WsCase, server: str
) -> None:
    reference = transcript(framework_server("uvicorn", case.app), case)
    assert WS_EXPECT[case.id](reference), reference
    if server == "prefork_lb":
        assert transcript(framework_server("prefork_lb", case.app), case) == reference
