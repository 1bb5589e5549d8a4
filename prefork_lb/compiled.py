"""The modules that setup.py compiles to C with mypyc, and the switch back to their source.

The per-request path of the HTTP engine (the parser, the response framing, the ASGI connection,
its request cycle and server, and the scoreboard entry every request writes) is compiled at
install time when mypyc is in the build environment (pyproject.toml asks for it): one
extension module per source file, next to it, and one shared library,
``prefork_lb/_native__mypyc.*.so``. The source files stay installed and are the same program:
a build without a C compiler, or with ``PREFORK_LB_PURE_PYTHON=1`` set at install, has no
extension modules and runs them as Python.

``PREFORK_LB_PURE_PYTHON=1`` in the environment of a running server makes it import the
source of these modules even where the extension modules exist (for a debugger, a profiler
that reads Python frames, or coverage); the package's ``__init__`` reads it before any of them
is imported, so it holds in the master and every process it starts.

No I/O here but the finder's stat of a file: setup.py execs this file without importing the
package.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import sys
from collections.abc import Sequence
from types import ModuleType
from typing import Any

MODULES = (
    "prefork_lb.asgi.accounting",
    "prefork_lb.asgi.core",
    "prefork_lb.asgi.cycle",
    "prefork_lb.asgi.events",
    "prefork_lb.asgi.http",
    "prefork_lb.asgi.server",
    "prefork_lb.http.chunked",
    "prefork_lb.http.forwarded",
    "prefork_lb.http.framing",
    "prefork_lb.http.host",
    "prefork_lb.http.parser",
    "prefork_lb.http.request",
    "prefork_lb.http.response",
    "prefork_lb.scoreboard",
)
GROUP = "prefork_lb._native"  # the shared library's module: prefork_lb/_native__mypyc
PURE_ENV = "PREFORK_LB_PURE_PYTHON"
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def source_path(module: str) -> str:
    return os.path.join(_ROOT, *module.split(".")) + ".py"


def is_compiled(module: ModuleType) -> bool:
    """Is this module running from an extension module (mypyc's C), not its source?"""
    path = getattr(module, "__file__", None) or ""
    return path.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES))


def compiled_modules() -> list[str]:
    """The names of MODULES that are loaded from their extension module in this process."""
    return [name for name in MODULES if name in sys.modules and is_compiled(sys.modules[name])]


class _SourceFinder:
    """A meta path finder ahead of the usual ones: MODULES from their .py files."""

    @staticmethod
    def find_spec(name: str, path: Sequence[str] | None = None, target: Any = None) -> Any:
        if name not in MODULES:
            return None
        source = source_path(name)
        if not os.path.exists(source):
            return None
        return importlib.util.spec_from_file_location(name, source)


def use_source() -> None:
    """From now on, MODULES are imported from source (call before any of them is imported)."""
    if not any(isinstance(f, _SourceFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _SourceFinder())


def pure_requested(environ: Any = os.environ) -> bool:
    """PREFORK_LB_PURE_PYTHON set to anything but "" or "0" (read at install and when running)."""
    return environ.get(PURE_ENV, "") not in ("", "0")


def apply_environment(environ: Any = os.environ) -> None:
    if pure_requested(environ):
        use_source()
