"""Finding the user's WSGI app from 'module:attribute' (or 'module:factory()'), and refusing
what cannot be one.

Invariants: every mistake a user can make in the app path, or an app object that cannot be a
WSGI app (not callable, an ASGI application, checked by :func:`load_app` and
prefork_lb.asgi.detect), ends in :class:`AppLoadError`, one line the
master prints before it exits 2. The checks only inspect the object: the app is never called
here.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import os
import sys
from typing import Any


class AppLoadError(Exception):
    """The app path is wrong: reported as one line, exit code 2."""


def load_app(uri: str, chdir: str | None = None) -> Any:
    """The WSGI app at ``uri`` (an ASGI one is refused: prefork_lb.asgi.detect tells both)."""
    return wsgi_app(load_object(uri, chdir), uri)


def load_object(uri: str, chdir: str | None = None) -> Any:
    """The object at ``uri`` (``module:attr``, ``module:factory()``), whatever it is."""
    if chdir:
        try:
            os.chdir(chdir)
        except OSError as exc:
            raise AppLoadError(f"cannot change to directory {chdir!r}: {exc.strerror}") from None
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    module_name, sep, attr = uri.partition(":")
    if not module_name:
        raise AppLoadError(f"invalid app path {uri!r}: expected MODULE:APP")
    attr = attr or "application"
    call = attr.endswith("()")
    if call:
        attr = attr[:-2]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and (exc.name == module_name or module_name.startswith(exc.name + ".")):
            raise AppLoadError(f"cannot import module {module_name!r} (from app path {uri!r})") from None
        raise  # the app's own import failed: that traceback is the useful message
    obj: Any = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise AppLoadError(f"module {module_name!r} has no attribute {attr!r}") from None
    if call:
        obj = obj()
    return obj


def wsgi_app(obj: Any, name: str | None) -> Any:
    """``obj`` if it can be a WSGI app, else :class:`AppLoadError` naming what it is instead.
    ``name`` is how the user gave it (the app path), for the message."""
    if not callable(obj):
        raise AppLoadError(f"app {name!r} is not callable (it is a {type(obj).__name__})")
    shape = asgi_shape(obj)
    if shape is not None:
        raise AppLoadError(
            f"app {name!r} is an ASGI application ({shape}), not a WSGI one: "
            "start it with --interface asgi (or auto)"
        )
    return obj


def _unwrapped(fn: Any) -> Any:
    while isinstance(fn, functools.partial):
        fn = fn.func
    return fn


def _is_coroutine_function(fn: Any) -> bool:
    return inspect.iscoroutinefunction(_unwrapped(fn))


def _async_def(fn: Any) -> str:
    """``async def name(a, b, c)`` for a coroutine function (parameter names only)."""
    name = getattr(_unwrapped(fn), "__name__", "app")
    try:
        params = ", ".join(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        params = "..."
    return f"async def {name}({params})"


def asgi_shape(obj: Any) -> str | None:
    """How ``obj`` shows that it is an ASGI (or other ``async``) application, in words; None
    for anything that may be a WSGI app. Pure: it inspects, never calls.

    A WSGI app returns an iterable when called; an ``async def`` (a coroutine function, or an
    object or class whose ``__call__`` is one) returns a coroutine, which no WSGI server can
    send. FastAPI, Starlette, Django's ASGIHandler and ``async def app(scope, receive, send)``
    are all caught here.
    """
    if not callable(obj):
        return None
    if inspect.isclass(obj):
        if _is_coroutine_function(obj.__call__):  # its own __call__, else type.__call__
            return f"class {obj.__name__} has an async def __call__ (ASGI 2: scope, then receive, send)"
        return None
    if _is_coroutine_function(obj):
        return _async_def(obj)
    if _is_coroutine_function(type(obj).__call__):
        return f"a {type(obj).__name__} object with async def __call__(scope, receive, send)"
    return None
