"""The package has no import cycles (tools/check_imports.py), and the checker can find one."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CHECKER = ROOT / "tools" / "check_imports.py"


def run(package: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(CHECKER), str(package)], capture_output=True, text=True, timeout=60
    )


def test_the_package_has_no_import_cycle() -> None:
    done = run(ROOT / "prefork_lb")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "no import cycles" in done.stdout


def test_a_cycle_is_found_even_typing_only_relative_or_inside_a_function(tmp_path: Path) -> None:
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("from pkg.a import A\n")
    (pkg / "a.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .b import B\nA = 1\n"
    )
    (pkg / "b.py").write_text("def f():\n    from pkg.sub import c\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "c.py").write_text("from .. import a\n")
    (pkg / "leaf.py").write_text("import pkg.a\n")
    done = run(pkg)
    assert done.returncode == 1
    assert "import cycle: pkg.a -> pkg.b -> pkg.sub.c -> pkg.a" in done.stdout
    assert "leaf" not in done.stdout
    # Breaking one edge of the loop clears it.
    (pkg / "sub" / "c.py").write_text("X = 1\n")
    done = run(pkg)
    assert done.returncode == 0, done.stdout
