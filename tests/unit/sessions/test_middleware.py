"""The session's life over requests, through the WSGI and the ASGI middleware, on the in-memory
store (versioned like Redis and Memcached) with an injected clock: saving only what changed,
cookie attributes, tampering and expiry, the concurrent-write rule, a failing store."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterable
from typing import Any

import pytest

from prefork_lb.sessions import (
    ASGISessionMiddleware,
    MemoryStore,
    Session,
    SessionConflict,
    SessionMiddleware,
    SessionStoreError,
)
from tests.asgi_client import asgi_get

SECRET = "a unit test secret, long enough"


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


class FailingStore(MemoryStore):
    """A store whose server is gone."""

    def load(self, sid: str) -> tuple[bytes, object] | None:
        raise SessionStoreError("session store redis://127.0.0.1:1/0: ConnectionError: refused")

    def save(self, sid: str, payload: bytes, token: object, ttl: int) -> bool:
        raise SessionStoreError("session store redis://127.0.0.1:1/0: ConnectionError: refused")


def counter(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    session: Session = environ["prefork_lb.session"]
    if environ.get("PATH_INFO") == "/peek":
        body = json.dumps(dict(session)).encode()
    elif environ.get("PATH_INFO") == "/logout":
        session.invalidate()
        body = b"bye"
    elif environ.get("PATH_INFO") == "/untouched":
        body = b"-"
    else:
        session["count"] = session.get("count", 0) + 1
        body = str(session["count"]).encode()
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [body]


class Client:
    """Calls a WSGI app the way a server would, keeping the session cookie like a browser."""

    def __init__(self, app: Any, scheme: str = "http") -> None:
        self.app = app
        self.scheme = scheme
        self.cookie: str | None = None
        self.set_cookies: list[str] = []

    def get(self, path: str = "/") -> tuple[str, bytes]:
        environ: dict[str, Any] = {"PATH_INFO": path, "wsgi.url_scheme": self.scheme}
        if self.cookie:
            environ["HTTP_COOKIE"] = f"other=1; session={self.cookie}"
        got: dict[str, Any] = {}

        def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> None:
            got["status"], got["headers"] = status, headers

        body = b"".join(self.app(environ, start_response))
        self.set_cookies = [v for k, v in got["headers"] if k == "Set-Cookie"]
        for value in self.set_cookies:
            self.cookie = value.split(";")[0].partition("=")[2] or None
        return got["status"], body


def middleware(app: Any = counter, store: Any = None, **options: Any) -> SessionMiddleware:
    options.setdefault("clock", Clock())
    return SessionMiddleware(app, store if store is not None else MemoryStore(), SECRET, **options)


def test_a_counter_across_requests_sets_the_cookie_only_when_the_session_changes() -> None:
    client = Client(middleware())
    assert client.get("/untouched") == ("200 OK", b"-")
    assert client.set_cookies == [] and client.cookie is None
    for n in range(1, 4):
        assert client.get() == ("200 OK", str(n).encode())
        assert len(client.set_cookies) == 1
    assert client.get("/peek") == ("200 OK", b'{"count": 3}')
    assert client.set_cookies == []


def test_cookie_attributes_follow_the_scheme_and_the_options() -> None:
    client = Client(middleware())
    client.get()
    assert client.set_cookies[0].endswith("; Path=/; Max-Age=1209600; HttpOnly; SameSite=Lax")
    tls = Client(middleware(), scheme="https")
    tls.get()
    assert tls.set_cookies[0].endswith("; HttpOnly; Secure; SameSite=Lax")
    forced = Client(middleware(secure=True, samesite="Strict", ttl=60, cookie_name="sid"))
    forced.get()
    assert forced.set_cookies[0].startswith("sid=")
    assert forced.set_cookies[0].endswith("; Max-Age=60; HttpOnly; Secure; SameSite=Strict")
    never = Client(middleware(secure=False), scheme="https")
    never.get()
    assert "Secure" not in never.set_cookies[0]
    lax_none = Client(middleware(samesite="None"))
    lax_none.get()
    assert lax_none.set_cookies[0].endswith("; Secure; SameSite=None")


def test_bad_options_are_refused_at_construction() -> None:
    with pytest.raises(ValueError, match="on_error"):
        middleware(on_error="ignore")
    with pytest.raises(ValueError, match="SameSite=None needs a Secure"):
        middleware(samesite="None", secure=False)
    with pytest.raises(ValueError, match="samesite"):
        middleware(samesite="strict")
    with pytest.raises(ValueError, match="ttl"):
        middleware(ttl=0)


def test_a_tampered_cookie_gets_a_new_empty_session_with_a_new_id() -> None:
    client = Client(middleware())
    client.get()
    client.get()
    assert client.cookie is not None
    old_sid = client.cookie.split(".")[0]
    client.cookie = "X" + client.cookie[1:]
    assert client.get() == ("200 OK", b"1")
    assert client.cookie.split(".")[0] != old_sid


def test_a_session_expires_ttl_seconds_after_its_last_save() -> None:
    clock = Clock()
    app = middleware(store=MemoryStore(clock=clock), clock=clock, ttl=100)
    client = Client(app)
    client.get()
    clock.now += 99
    assert client.get() == ("200 OK", b"2")  # saved again: the ttl starts over
    clock.now += 60
    assert client.get("/peek") == ("200 OK", b'{"count": 2}')  # reading does not extend it
    clock.now += 41
    assert client.get() == ("200 OK", b"1")


def test_the_store_forgetting_a_session_gives_a_new_id() -> None:
    store = MemoryStore()
    client = Client(middleware(store=store))
    client.get()
    assert client.cookie is not None
    sid = client.cookie.split(".")[0]
    store.delete(sid)
    assert client.get() == ("200 OK", b"1")
    assert client.cookie.split(".")[0] != sid


def test_invalidate_deletes_the_session_and_the_cookie() -> None:
    store = MemoryStore()
    client = Client(middleware(store=store))
    client.get()
    assert client.cookie is not None
    sid = client.cookie.split(".")[0]
    assert client.get("/logout") == ("200 OK", b"bye")
    assert client.set_cookies[0].startswith("session=; Path=/; Max-Age=0;")
    assert store.load(sid) is None


def test_a_response_started_with_exc_info_saves_nothing() -> None:
    def failing(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        environ["prefork_lb.session"]["count"] = 99
        try:
            raise RuntimeError("boom")
        except RuntimeError:
            import sys

            start_response("500 Internal Server Error", [], sys.exc_info())
        return [b"error"]

    store = MemoryStore()
    client = Client(middleware(failing, store=store))
    assert client.get() == ("500 Internal Server Error", b"error")
    assert client.set_cookies == []


def concurrent_app(other: Client, catch: bool) -> Any:
    """Reads the session, lets ``other`` (the same browser, another request) change it, then
    changes it too: the second save loses."""

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        session = environ["prefork_lb.session"]
        session["count"] = session.get("count", 0) + 10
        other.get()  # finished meanwhile, saved first
        try:
            start_response("200 OK", [])
        except SessionConflict:
            if not catch:
                raise
            start_response("200 OK", [])
            return [b"caught"]
        return [b"saved"]

    return app


@pytest.mark.parametrize("catch", [False, True])
def test_concurrent_writes_the_later_save_loses_and_is_told(catch: bool) -> None:
    store = MemoryStore()
    first = Client(middleware(store=store))
    first.get()  # count 1
    other = Client(middleware(store=store))
    other.cookie = first.cookie
    slow = Client(middleware(concurrent_app(other, catch), store=store))
    slow.cookie = first.cookie
    status, body = slow.get()
    if catch:
        assert (status, body) == ("200 OK", b"caught")
    else:
        assert (status, body) == ("409 Conflict", b"the session was changed by another request\n")
    assert slow.set_cookies == []
    assert first.get("/peek") == ("200 OK", b'{"count": 2}')  # the first save is kept, whole


def test_a_failing_store_raises_to_the_app_then_answers_503() -> None:
    client = Client(middleware(store=FailingStore()))
    assert client.get("/untouched") == ("200 OK", b"-")  # a session not touched is not read
    seen: list[str] = []

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        try:
            environ["prefork_lb.session"]["x"] = 1
            start_response("200 OK", [])
        except SessionStoreError as exc:
            seen.append(str(exc))
            raise
        return [b"no"]

    assert Client(middleware(app, store=FailingStore())).get() == (
        "503 Service Unavailable",
        b"session store unavailable\n",
    )
    assert seen == ["session store redis://127.0.0.1:1/0: ConnectionError: refused"]


def test_a_failing_store_with_on_error_empty_serves_an_empty_session_and_keeps_the_cookie() -> None:
    store = MemoryStore()
    good = Client(middleware(store=store))
    good.get()
    good.get()
    degraded = Client(middleware(store=FailingStore(), on_error="empty"))
    degraded.cookie = good.cookie
    assert degraded.get() == ("200 OK", b"1")
    assert degraded.set_cookies == []  # nothing saved, and the client keeps its session's cookie
    assert degraded.cookie == good.cookie
    assert good.get() == ("200 OK", b"3")
    fresh = Client(middleware(store=FailingStore(), on_error="empty"))
    assert fresh.get() == ("200 OK", b"1")  # a new session cannot be saved either
    assert fresh.set_cookies == []


# -- ASGI ----------------------------------------------------------------------------------------


async def asgi_counter(scope: Any, receive: Any, send: Any) -> None:
    session = scope["session"]
    session["count"] = session.get("count", 0) + 1
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": str(session["count"]).encode()})


def test_asgi_counter_keeps_its_session_in_the_store() -> None:
    store = MemoryStore()
    app = ASGISessionMiddleware(asgi_counter, store, SECRET)
    cookie = None
    for n in range(1, 4):
        status, headers, body = asgi_get(app, cookie)
        assert (status, body) == (200, str(n).encode())
        set_cookie = headers[b"set-cookie"].decode()
        assert set_cookie.endswith("; HttpOnly; SameSite=Lax")
        cookie = set_cookie.split(";")[0]
    _, headers, _ = asgi_get(app, cookie, scheme="https")
    assert headers[b"set-cookie"].endswith(b"; HttpOnly; Secure; SameSite=Lax")
    # Another middleware over the same store (another worker or host) sees the same session.
    assert asgi_get(ASGISessionMiddleware(asgi_counter, store, SECRET), cookie)[2] == b"5"


def test_asgi_store_failure_is_raised_to_the_app_or_answered_503() -> None:
    app = ASGISessionMiddleware(asgi_counter, FailingStore(), SECRET)
    good = ASGISessionMiddleware(asgi_counter, MemoryStore(), SECRET)
    cookie = asgi_get(good, None)[1][b"set-cookie"].decode().split(";")[0]
    status, _, body = asgi_get(app, cookie)
    assert (status, body) == (503, b"session store unavailable\n")
    empty = ASGISessionMiddleware(asgi_counter, FailingStore(), SECRET, on_error="empty")
    status, headers, body = asgi_get(empty, cookie)
    assert (status, body) == (200, b"1") and b"set-cookie" not in headers


def test_asgi_lifespan_and_other_scopes_pass_through() -> None:
    seen: list[Any] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope.get("session", "none"))

    asyncio.run(ASGISessionMiddleware(app, MemoryStore(), SECRET)({"type": "lifespan"}, None, None))  # type: ignore[arg-type]
    assert seen == ["none"]


def test_the_package_imports_no_store_client_until_a_store_is_made() -> None:
    import subprocess
    import sys

    code = "import sys, prefork_lb.sessions; print(sorted({'redis', 'pymemcache'} & set(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "[]", done.stdout + done.stderr
