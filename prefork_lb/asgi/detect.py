"""Which interface an app object speaks, WSGI or ASGI, told from its shape (--interface).

Pure: the object is inspected (``inspect.signature``, the ``async def`` flag), never called.

:func:`detect` (``--interface auto``):

* ``async def (scope, receive, send)``, a bound method or a ``functools.partial`` of one, or an
  object whose ``__call__`` is one (Starlette, FastAPI, Django's ASGIHandler, Quart): ASGI 3;
* a class whose ``__call__`` is ``async def (receive, send)`` and whose constructor takes the
  scope: ASGI 2 (the worker makes one instance per connection scope);
* any other callable that accepts two positional arguments (a function, a Flask or Django
  WSGIHandler object, a class PEP 3333 allows as an app): WSGI;
* a callable whose signature Python cannot read (written in C): WSGI, as before ASGI existed;
* anything else (not callable, an async generator, ``async def`` with the wrong arguments, a
  plain function of three): :class:`prefork_lb.app.AppLoadError`, one line naming the object.

:func:`resolve` applies --interface: ``auto`` is :func:`detect`; an explicit ``wsgi`` or
``asgi`` trusts the user on anything that may be of that kind, and refuses only what cannot.

Where detection runs (the master never imports the app): in the worker that imports it anyway.
The master starts the worker class it last learned (WSGI until told otherwise); under ``auto``,
a WSGI worker (already gevent-patched, as it must be before any WSGI app import) that finds an
ASGI app, or an ASGI worker (never patched) that finds a WSGI app, exits with
:data:`prefork_lb.child.EXIT_WRONG_INTERFACE` before serving; the master switches its class
and starts the slot again at once (prefork_lb.interface). So a WSGI app is always imported
patched and an ASGI app always served unpatched, a WSGI app costs nothing, and an ASGI app
costs one extra import per slot at start (not per reload: the class learned is kept, and a
reload that changed the app's interface flips it the same way). A probe child importing the
app in the master's place was the other choice: one extra import on every start and every
reload, for WSGI apps too.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
from typing import Any, NamedTuple

from prefork_lb.app import AppLoadError

WSGI = "wsgi"
ASGI = "asgi"
INTERFACES = ("auto", WSGI, ASGI)

_UNKNOWN = -1  # the signature cannot be read


class Detected(NamedTuple):
    interface: str  # WSGI or ASGI
    asgi_version: str  # "3.0" or "2.0" for ASGI, "" for WSGI
    shape: str  # how the object showed it, in words (for messages)


def _unwrapped(fn: Any) -> Any:
    while isinstance(fn, functools.partial):
        fn = fn.func
    return fn


def _is_async(fn: Any) -> bool:
    """``async def`` (through partials and bound methods), or marked as one the way asgiref's
    sync_to_async and asyncio's old decorator mark their wrappers."""
    if inspect.iscoroutinefunction(fn):
        return True
    marker = getattr(asyncio.coroutines, "_is_coroutine", None)
    return marker is not None and getattr(_unwrapped(fn), "_is_coroutine", None) is marker


def _is_async_gen(fn: Any) -> bool:
    return inspect.isasyncgenfunction(_unwrapped(fn))


def positional_range(fn: Any) -> tuple[int, int]:
    """(fewest, most) positional arguments ``fn`` accepts; most is a large number with *args;
    (_UNKNOWN, _UNKNOWN) when the signature cannot be read."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return _UNKNOWN, _UNKNOWN
    low = high = 0
    for p in sig.parameters.values():
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
            high += 1
            if p.default is p.empty:
                low += 1
        elif p.kind is p.VAR_POSITIONAL:
            high = 1 << 16
        elif p.kind is p.KEYWORD_ONLY and p.default is p.empty:
            return low, -2  # a required keyword: no positional call can work
    return low, high


def _accepts(fn: Any, n: int) -> bool | None:
    """Whether ``fn`` can be called with ``n`` positional arguments (None: cannot tell)."""
    low, high = positional_range(fn)
    if low == _UNKNOWN:
        return None
    return low <= n <= high


def _describe(obj: Any) -> str:
    """What the object is, for a message: ``async def app(scope)``, ``a Foo object``..."""
    fn = _unwrapped(obj)
    if inspect.isclass(obj):
        return f"class {obj.__name__}"
    if inspect.isfunction(fn) or inspect.ismethod(fn):
        try:
            params = ", ".join(inspect.signature(obj).parameters)
        except (TypeError, ValueError):
            params = "..."
        kind = "async def" if _is_async(obj) else "def"
        if _is_async_gen(obj):
            kind = "async def (with yield)"
        return f"{kind} {getattr(fn, '__name__', '?')}({params})"
    return f"a {type(obj).__name__} object"


def _neither(name: str | None, obj: Any, why: str) -> AppLoadError:
    return AppLoadError(
        f"app {name!r} is neither a WSGI nor an ASGI application ({_describe(obj)}: {why}); "
        "a WSGI app is called as app(environ, start_response), an ASGI one is "
        "async def app(scope, receive, send)"
    )


def detect(obj: Any, name: str | None) -> Detected:
    """The interface ``obj`` speaks (see the module docstring), or AppLoadError naming it.
    ``name`` is how the user gave it (the app path), for the message."""
    if not callable(obj):
        raise AppLoadError(f"app {name!r} is not callable (it is a {type(obj).__name__})")
    if inspect.isclass(obj):
        call = obj.__call__  # the instances' __call__ (type.__call__ when the class has none)
        if _is_async(call):
            # ASGI 2: cls(scope) -> instance; await instance(receive, send).
            if _accepts(obj, 1) is not False and _accepts(call, 3) is not False:
                return Detected(ASGI, "2.0", f"class {obj.__name__} with async def __call__(receive, send)")
            raise _neither(
                name, obj, "an ASGI 2 class is made with the scope, then awaited with (receive, send)"
            )
        if _is_async_gen(call):
            raise _neither(name, obj, "its __call__ is an async generator")
        return _sync(obj, name)
    target = obj if (inspect.isroutine(_unwrapped(obj)) or isinstance(obj, functools.partial)) else None
    if target is None:
        own = getattr(type(obj), "__call__", None)  # noqa: B004 - the type's, not an attribute
        if _is_async(own) or _is_async_gen(own):
            target = obj.__call__  # bound: the arguments counted without self
        else:
            return _sync(obj, name)
    if _is_async_gen(target):
        raise _neither(name, obj, "an async generator function, which yields instead of being awaited")
    if _is_async(target):
        if _accepts(target, 3) is False:
            low, high = positional_range(target)
            raise _neither(
                name, obj, f"async def taking {_count(low, high)} instead of (scope, receive, send)"
            )
        return Detected(
            ASGI,
            "3.0",
            _describe(obj) if target is obj else f"a {type(obj).__name__} object with async def __call__",
        )
    return _sync(obj, name)


def _count(low: int, high: int) -> str:
    if low == -2 or high == -2:
        return "a required keyword argument"
    if high >= 1 << 16:
        return f"at least {low} argument{'' if low == 1 else 's'}"
    if low == high:
        return f"{low} argument{'' if low == 1 else 's'}"
    return f"{low} to {high} arguments"


def _sync(obj: Any, name: str | None) -> Detected:
    """A callable that is not ``async def``: WSGI when it takes (environ, start_response)."""
    accepts = _accepts(obj, 2)
    if accepts is None or accepts:
        return Detected(WSGI, "", _describe(obj))
    low, high = positional_range(obj)
    if _accepts(obj, 3):
        raise _neither(
            name,
            obj,
            "it takes 3 arguments but is not async def; if it returns the coroutine of an ASGI app, "
            "start with --interface asgi",
        )
    raise _neither(name, obj, f"it takes {_count(low, high)}")


def resolve(obj: Any, name: str | None, wanted: str) -> Detected:
    """--interface ``wanted`` (auto, wsgi, asgi) for ``obj``: what to serve it as, or
    AppLoadError. An explicit choice is trusted for anything callable that may be of that
    kind; refused: an ASGI shape under wsgi, a two-argument plain callable under asgi."""
    if wanted == "auto":
        return detect(obj, name)
    if not callable(obj):
        raise AppLoadError(f"app {name!r} is not callable (it is a {type(obj).__name__})")
    try:
        found: Detected | None = detect(obj, name)
    except AppLoadError:
        found = None  # not clearly either: the user's word decides
    if wanted == WSGI:
        if found is not None and found.interface == ASGI:
            raise AppLoadError(
                f"app {name!r} is an ASGI application ({found.shape}), not a WSGI one: "
                "start it with --interface asgi (or auto)"
            )
        return found or Detected(WSGI, "", _describe(obj))
    if found is not None and found.interface == WSGI and _accepts(obj, 2):
        raise AppLoadError(
            f"app {name!r} is a WSGI application ({found.shape}), not an ASGI one: "
            "start it with --interface wsgi (or auto)"
        )
    if found is not None and found.interface == ASGI:
        return found
    return Detected(ASGI, "3.0", _describe(obj))


def asgi2_adapter(cls: Any) -> Any:
    """An ASGI 3 app for an ASGI 2 class: one instance per scope, awaited with (receive, send)."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await cls(scope)(receive, send)

    return app
