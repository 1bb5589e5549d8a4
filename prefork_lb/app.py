"""Finding the user's WSGI app from 'module:attribute' (or 'module:factory()')."""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any


class AppLoadError(Exception):
    """The app path is wrong: reported as one line, exit code 2."""


def load_app(uri: str, chdir: str | None = None) -> Any:
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
    if not callable(obj):
        raise AppLoadError(f"app {uri!r} is not callable (it is a {type(obj).__name__})")
    return obj
