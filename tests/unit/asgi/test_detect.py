"""--interface: which interface an app object speaks, told from its shape (prefork_lb.asgi.detect)."""

from __future__ import annotations

import asyncio
import functools
from typing import Any

import pytest

from prefork_lb import demo
from prefork_lb.app import AppLoadError
from prefork_lb.asgi.detect import ASGI, WSGI, asgi2_adapter, detect, positional_range, resolve

# -- the shapes ---------------------------------------------------------------------------------


async def asgi_fn(scope: Any, receive: Any, send: Any) -> None:
    pass


async def asgi_two(scope: Any, receive: Any) -> None:
    pass


async def asgi_gen(scope: Any, receive: Any, send: Any) -> Any:
    yield b""


def wsgi_fn(environ: Any, start_response: Any) -> list[bytes]:
    return [b""]


def three_sync(scope: Any, receive: Any, send: Any) -> Any:
    return asgi_fn(scope, receive, send)


def one_arg(environ: Any) -> None:
    pass


def star_args(*args: Any) -> None:
    pass


def wsgi_with_default(environ: Any, start_response: Any, extra: Any = None) -> None:
    pass


def needs_keyword(environ: Any, start_response: Any, *, key: Any) -> None:
    pass


class StarletteLike:  # Starlette, FastAPI, Quart: an object with async def __call__
    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        pass


class DjangoAsgiHandlerLike(StarletteLike):  # a subclass inherits the async __call__
    pass


class FlaskLike:
    def __call__(self, environ: Any, start_response: Any) -> list[bytes]:
        return [b""]


class WsgiClass:  # PEP 3333: a class whose instances are the response iterable
    def __init__(self, environ: Any, start_response: Any) -> None:
        pass


class Asgi2:  # ASGI 2: made with the scope, awaited with (receive, send)
    def __init__(self, scope: Any) -> None:
        self.scope = scope

    async def __call__(self, receive: Any, send: Any) -> None:
        await send({"type": "seen", "scope": self.scope})


class Asgi2WrongInit:
    def __init__(self, a: Any, b: Any) -> None:
        pass

    async def __call__(self, receive: Any, send: Any) -> None:
        pass


class AsyncGenCall:
    async def __call__(self, scope: Any, receive: Any, send: Any) -> Any:
        yield b""


class AsyncGenClass:
    async def __call__(self, receive: Any, send: Any) -> Any:
        yield b""


class Methods:
    async def asgi(self, scope: Any, receive: Any, send: Any) -> None:
        pass

    def wsgi(self, environ: Any, start_response: Any) -> None:
        pass


class AsyncCallTwoArgs:
    async def __call__(self, scope: Any, receive: Any) -> None:
        pass


@pytest.mark.parametrize(
    ("obj", "version"),
    [
        (asgi_fn, "3.0"),
        (StarletteLike(), "3.0"),
        (DjangoAsgiHandlerLike(), "3.0"),
        (functools.partial(asgi_fn), "3.0"),
        (functools.partial(asgi_two, {"type": "http"}), "3.0"),  # no: see below
        (Methods().asgi, "3.0"),
        (Asgi2, "2.0"),
    ],
    ids=["async-def", "starlette-like", "subclass", "partial", "partial-bound", "method", "asgi2-class"],
)
def test_asgi_shapes(obj: Any, version: str) -> None:
    if isinstance(obj, functools.partial) and obj.args:
        # async def (scope, receive) with the scope bound takes (receive) only: not ASGI 3.
        with pytest.raises(AppLoadError, match="async def taking 1 argument instead of"):
            detect(obj, "m:app")
        return
    found = detect(obj, "m:app")
    assert (found.interface, found.asgi_version) == (ASGI, version)


@pytest.mark.parametrize(
    "obj",
    [
        wsgi_fn,
        FlaskLike(),
        WsgiClass,
        functools.partial(wsgi_with_default),
        functools.partial(three_sync, {}),  # (receive, send) left: two arguments, not async
        star_args,
        wsgi_with_default,
        Methods().wsgi,
        demo.app,
        getattr,  # a C callable: its signature cannot be read
    ],
    ids=[
        "def",
        "flask-like",
        "wsgi-class",
        "partial",
        "partial-bound",
        "star-args",
        "default",
        "method",
        "demo",
        "builtin",
    ],
)
def test_wsgi_shapes(obj: Any) -> None:
    found = detect(obj, "m:app")
    assert (found.interface, found.asgi_version) == (WSGI, "")


@pytest.mark.parametrize(
    ("obj", "why"),
    [
        (42, "app 'm:app' is not callable (it is a int)"),
        ("text", "app 'm:app' is not callable (it is a str)"),
        (asgi_gen, "(async def (with yield) asgi_gen(scope, receive, send): an async generator function"),
        (AsyncGenCall(), "(a AsyncGenCall object: an async generator function"),
        (AsyncGenClass, "(class AsyncGenClass: its __call__ is an async generator)"),
        (asgi_two, "(async def asgi_two(scope, receive): async def taking 2 arguments instead of"),
        (AsyncCallTwoArgs(), "async def taking 2 arguments instead of (scope, receive, send)"),
        (Asgi2WrongInit, "an ASGI 2 class is made with the scope"),
        (three_sync, "it takes 3 arguments but is not async def; if it returns the coroutine"),
        (one_arg, "(def one_arg(environ): it takes 1 argument)"),
        (needs_keyword, "it takes a required keyword argument"),
        (lambda: None, "it takes 0 arguments"),
    ],
    ids=[
        "int",
        "str",
        "async-gen",
        "async-gen-call",
        "async-gen-class",
        "async-two",
        "async-call-two",
        "asgi2-bad-init",
        "three-sync",
        "one-arg",
        "keyword",
        "no-args",
    ],
)
def test_neither_is_one_line_naming_the_object(obj: Any, why: str) -> None:
    with pytest.raises(AppLoadError) as info:
        detect(obj, "m:app")
    message = str(info.value)
    assert "\n" not in message
    assert why in message
    if callable(obj):
        assert message.startswith("app 'm:app' is neither a WSGI nor an ASGI application (")
        assert message.endswith("an ASGI one is async def app(scope, receive, send)")


def test_positional_range() -> None:
    assert positional_range(wsgi_fn) == (2, 2)
    assert positional_range(wsgi_with_default) == (2, 3)
    assert positional_range(star_args)[0] == 0 and positional_range(star_args)[1] > 1000
    assert positional_range(getattr) == (-1, -1)


def test_asyncio_marked_wrappers_count_as_async() -> None:
    """asgiref's sync_to_async and asyncio's old decorator mark a plain function as async."""

    def wrapper(scope: Any, receive: Any, send: Any) -> Any:
        return asgi_fn(scope, receive, send)

    marker = getattr(asyncio.coroutines, "_is_coroutine", None)
    if marker is None:
        pytest.skip("this Python has no asyncio coroutine marker")
    wrapper._is_coroutine = marker  # type: ignore[attr-defined]
    assert detect(wrapper, "m:app").interface == ASGI


# -- --interface wsgi / asgi --------------------------------------------------------------------


def test_auto_is_detect() -> None:
    assert resolve(asgi_fn, "m:app", "auto").interface == ASGI
    assert resolve(wsgi_fn, "m:app", "auto").interface == WSGI


def test_explicit_wsgi_refuses_an_asgi_app_and_trusts_the_unclear() -> None:
    with pytest.raises(AppLoadError, match=r"^app 'm:app' is an ASGI application \(async def asgi_fn"):
        resolve(asgi_fn, "m:app", "wsgi")
    with pytest.raises(AppLoadError, match="start it with --interface asgi"):
        resolve(StarletteLike(), "m:app", "wsgi")
    assert resolve(one_arg, "m:app", "wsgi").interface == WSGI  # the user's word
    assert resolve(wsgi_fn, "m:app", "wsgi").interface == WSGI
    with pytest.raises(AppLoadError, match="is not callable"):
        resolve(None, "m:app", "wsgi")


def test_explicit_asgi_refuses_a_wsgi_app_and_trusts_the_unclear() -> None:
    with pytest.raises(AppLoadError, match=r"^app 'm:app' is a WSGI application \(def wsgi_fn"):
        resolve(wsgi_fn, "m:app", "asgi")
    found = resolve(three_sync, "m:app", "asgi")  # a sync function returning the coroutine
    assert (found.interface, found.asgi_version) == (ASGI, "3.0")
    assert resolve(getattr, "m:app", "asgi").interface == ASGI  # cannot tell: the user's word
    assert resolve(Asgi2, "m:app", "asgi").asgi_version == "2.0"
    with pytest.raises(AppLoadError, match="is not callable"):
        resolve(3, "m:app", "asgi")


def test_asgi2_adapter_makes_one_instance_per_scope() -> None:
    app = asgi2_adapter(Asgi2)
    sent: list[Any] = []

    async def receive() -> dict[str, Any]:
        return {}

    async def send(message: Any) -> None:
        sent.append(message)

    asyncio.run(app({"type": "http", "n": 1}, receive, send))
    asyncio.run(app({"type": "http", "n": 2}, receive, send))
    assert [m["scope"]["n"] for m in sent] == [1, 2]
    assert detect(app, "m:app").interface == ASGI
