"""The docs site covers what the code has: every setting, dispatch mode, signal and hook.

Fast checks of the Markdown and of mkdocs.yml as text; CI builds the site itself with
``mkdocs build --strict`` (.ci/run), which checks the links. These fail when a setting or a
dispatch mode is added without its docs, or a page is written but left out of the nav.
"""

from __future__ import annotations

import re
from pathlib import Path

from prefork_lb.config import HOOK_NAMES, SETTINGS
from prefork_lb.dispatch import DISPATCH
from prefork_lb.supervisor import SIGNALS

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs"
# A nav entry as mkdocs.yml writes it: ``- Title: page.md`` or ``- page.md``.
NAV_ENTRY = re.compile(r"^\s*-\s+(?:[^:\n]+:\s+)?(\S+\.md)\s*$", re.MULTILINE)


def nav_pages() -> list[str]:
    return NAV_ENTRY.findall((REPO / "mkdocs.yml").read_text())


def headings(text: str) -> list[str]:
    return [line.lstrip("#").strip() for line in text.splitlines() if re.match(r"#{1,6} ", line)]


def settings_sections() -> dict[str, str]:
    """docs/reference/settings.md's ``### `name``` sections, by setting name."""
    text = (DOCS / "reference" / "settings.md").read_text()
    parts = re.split(r"^### `([a-z0-9_]+)`\s*$", text, flags=re.MULTILINE)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def test_every_setting_and_its_flags_are_in_the_settings_reference() -> None:
    sections = settings_sections()
    missing = [s.name for s in SETTINGS if s.name not in sections]
    assert missing == [], f"settings without a section in docs/reference/settings.md: {missing}"
    for s in SETTINGS:
        body = sections[s.name]
        for flag in s.flags:
            assert re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", body), (
                f"flag {flag} of setting {s.name} is not in its section of docs/reference/settings.md"
            )
        assert f"`{s.env}`" in body, f"{s.env} is not in the section of {s.name}"


def test_every_dispatch_mode_has_its_own_section() -> None:
    titles = headings((DOCS / "dispatch.md").read_text())
    for mode in DISPATCH:
        assert any(f"`{mode}`" in t for t in titles), (
            f"dispatch mode {mode!r} has no section (a heading naming `{mode}`) in docs/dispatch.md"
        )


def test_every_signal_and_hook_is_in_the_migration_guide() -> None:
    text = (DOCS / "gunicorn.md").read_text()
    for name in SIGNALS:
        assert f"`{name}`" in text, f"signal {name} is not in docs/gunicorn.md"
    for hook in HOOK_NAMES:
        assert f"`{hook}" in text, f"hook {hook} is not in docs/gunicorn.md"


def test_every_page_is_in_the_nav_and_every_nav_entry_exists() -> None:
    nav = nav_pages()
    assert len(nav) == len(set(nav)), f"a page is twice in mkdocs.yml's nav: {nav}"
    pages = {p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md")}
    assert sorted(pages - set(nav)) == [], "pages under docs/ missing from mkdocs.yml's nav"
    assert sorted(set(nav) - pages) == [], "mkdocs.yml's nav names pages that do not exist"
