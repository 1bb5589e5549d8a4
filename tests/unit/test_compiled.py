"""The modules mypyc compiles (prefork_lb/compiled.py, setup.py): built fresh, loaded compiled
where they were built, and switched back to their source by PREFORK_LB_PURE_PYTHON=1."""

from __future__ import annotations

import importlib.machinery
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from prefork_lb import compiled

SUFFIX = importlib.machinery.EXTENSION_SUFFIXES[0]  # this interpreter's: .cpython-311-x86_64-linux-gnu.so
PROBE = (
    "import json, importlib, prefork_lb.compiled as c\n"
    "for name in c.MODULES: importlib.import_module(name)\n"
    "print(json.dumps({'compiled': c.compiled_modules(),"
    " 'files': [importlib.import_module(n).__file__ for n in c.MODULES]}))\n"
)


def built() -> list[str]:
    """The MODULES that have an extension module for this interpreter next to their source."""
    return [m for m in compiled.MODULES if Path(compiled.source_path(m)[: -len(".py")] + SUFFIX).exists()]


def probe(**env: str) -> dict[str, list[str]]:
    out = subprocess.run(
        [sys.executable, "-c", PROBE], env={**os.environ, **env}, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    result: dict[str, list[str]] = json.loads(out.stdout)
    return result


def test_every_listed_module_exists_and_the_list_is_sorted() -> None:
    for name in compiled.MODULES:
        assert Path(compiled.source_path(name)).is_file(), name
    assert list(compiled.MODULES) == sorted(set(compiled.MODULES))


def test_no_extension_module_is_older_than_its_source() -> None:
    """An editable install builds them in place: an edit after it would not run."""
    stale = []
    for name in built():
        source = Path(compiled.source_path(name))
        ext = Path(str(source)[: -len(".py")] + SUFFIX)
        if ext.stat().st_mtime < source.stat().st_mtime:
            stale.append(f"{ext.name} is older than {source.name}")
    assert not stale, f"{stale}: install again (pip install -e .) or set PREFORK_LB_PURE_PYTHON=1"


def test_built_modules_load_compiled() -> None:
    names = built()
    if os.environ.get("PREFORK_LB_EXPECT_COMPILED"):  # set by .ci/run: the build must not fall back
        assert names == list(compiled.MODULES)
    if not names:
        pytest.skip("installed without extension modules (pure Python)")
    assert probe(PREFORK_LB_PURE_PYTHON="")["compiled"] == names


def test_pure_python_switch_loads_every_module_from_source() -> None:
    result = probe(PREFORK_LB_PURE_PYTHON="1")
    assert result["compiled"] == []
    assert result["files"] == [compiled.source_path(m) for m in compiled.MODULES]


def test_the_switch_reads_only_a_set_value() -> None:
    saved = list(sys.meta_path)
    # (Under PREFORK_LB_PURE_PYTHON=1 the package's import already put the finder there.)
    sys.meta_path[:] = [f for f in saved if not isinstance(f, compiled._SourceFinder)]
    before = list(sys.meta_path)
    try:
        compiled.apply_environment({"PREFORK_LB_PURE_PYTHON": "0"})
        compiled.apply_environment({})
        assert sys.meta_path == before
        compiled.apply_environment({"PREFORK_LB_PURE_PYTHON": "1"})
        compiled.apply_environment({"PREFORK_LB_PURE_PYTHON": "1"})  # once only
        assert len(sys.meta_path) == len(before) + 1
        finder = sys.meta_path[0]
        assert finder.find_spec("prefork_lb.cli") is None  # type: ignore[attr-defined]
        spec = finder.find_spec("prefork_lb.http.parser")  # type: ignore[attr-defined]
        assert spec is not None and spec.origin == compiled.source_path("prefork_lb.http.parser")
    finally:
        sys.meta_path[:] = saved
