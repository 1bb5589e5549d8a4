"""The package keeps the shape docs/design.md ("Architecture") describes."""

from __future__ import annotations

import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "prefork_lb"
MAX_LINES = 600  # a module past this is usually two modules


def test_no_module_is_over_600_lines() -> None:
    sizes = {
        p.relative_to(PACKAGE).as_posix(): len(p.read_text().splitlines()) for p in PACKAGE.rglob("*.py")
    }
    assert len(sizes) > 40, sizes
    assert {m: n for m, n in sizes.items() if n > MAX_LINES} == {}


def test_the_master_asks_the_dispatch_mode_and_never_branches_on_it() -> None:
    for name in ("arbiter.py", "supervisor.py"):
        text = (PACKAGE / name).read_text()
        assert not re.search(r"\.dispatch\s*(==|!=|in\b)", text), name
        assert "cfg.dispatch" not in text, name
