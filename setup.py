"""Build: the metadata is setup.cfg's; this adds the extension modules mypyc compiles from the
per-request path (the list and why: prefork_lb/compiled.py).

No extension modules, the same program as Python, when PREFORK_LB_PURE_PYTHON=1 is set at build
time, when mypyc is not in the build environment, or when the C compiler fails (the build log
says why: pip install -v). An editable install (pip install -e .) builds them in place, next to their sources: after
editing one of those sources, install again (or set PREFORK_LB_PURE_PYTHON=1 when running);
tests/unit/test_compiled.py fails while an extension module is older than its source.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from setuptools import setup
from setuptools.command.build_ext import build_ext

HERE = os.path.dirname(os.path.abspath(__file__))


def _compiled_list() -> dict[str, Any]:
    path = os.path.join(HERE, "prefork_lb", "compiled.py")
    names: dict[str, Any] = {"__name__": "prefork_lb_compiled_list", "__file__": path}
    with open(path, encoding="utf-8") as f:
        exec(compile(f.read(), "prefork_lb/compiled.py", "exec"), names)
    return names


class OptionalBuildExt(build_ext):
    """A compiler failure leaves the package pure Python instead of failing the install."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:  # noqa: BLE001 - whatever the compiler did: fall back to the source
            for path in self.get_outputs():
                if os.path.exists(path):
                    os.remove(path)
            print(
                f"prefork_lb: the mypyc extension modules did not build ({exc}); installing pure Python",
                file=sys.stderr,
            )


def ext_modules() -> list[Any]:
    listed = _compiled_list()
    if listed["pure_requested"](os.environ):
        return []
    try:
        from mypyc.build import mypycify
    except ImportError:
        print("prefork_lb: mypyc is not in the build environment; installing pure Python", file=sys.stderr)
        return []
    paths = [os.path.join(*name.split(".")) + ".py" for name in listed["MODULES"]]
    # The build environment has mypy but not prefork_lb's dependencies (uvloop, gevent, ...):
    # what they would type is Any here, so only the compiled modules' own errors count.
    return mypycify([*paths, "--follow-imports=silent"], group_name=listed["GROUP"], opt_level="3")


setup(ext_modules=ext_modules(), cmdclass={"build_ext": OptionalBuildExt})
