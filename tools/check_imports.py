"""Report import cycles inside a Python package (stdlib only).

Usage: ``python tools/check_imports.py [PACKAGE_DIR]`` (default: ``prefork_lb`` next to this
folder). Exit status 0 when the package's import graph has no cycle, 1 when it has one (each
cycle is printed as ``a -> b -> ... -> a``), 2 on a usage error.

Every import counts, wherever it is written: at module level, inside functions, and under
``if TYPE_CHECKING:`` - a typing-only cycle is still two modules that cannot be read, tested or
moved apart. ``from pkg import name`` counts as an import of ``pkg.name`` when that is a module
of the package, else of ``pkg``; relative imports are resolved against the importing module.
Importing ``a.b.c`` also runs ``a/__init__`` and ``a/b/__init__``, but those edges are left out:
a package's ``__init__`` re-exporting its submodules is not a cycle with each of them.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path


def module_names(root: Path) -> dict[str, Path]:
    """Dotted name -> file, for every module under the package directory ``root``."""
    names: dict[str, Path] = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        names[".".join(parts)] = path
    return names


def _base(module: str, is_package: bool, level: int, target: str | None) -> str:
    """The absolute name a relative ``from`` import of ``level`` dots refers to."""
    parts = module.split(".")
    if not is_package:
        parts.pop()
    if level > 1:
        parts = parts[: len(parts) - (level - 1)]
    if target:
        parts.append(target)
    return ".".join(parts)


def imports_of(module: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The package's modules that ``module`` (at ``path``) imports, anywhere in its source."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                found.add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = _base(module, is_package, node.level, node.module)
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.add(sub if sub in known else base)
    edges = set()
    for name in found:
        # ``import a.b.c`` where only ``a.b`` is a module of ours (c a name in it): keep a.b.
        while name and name not in known:
            name = name.rpartition(".")[0]
        if name and name != module:
            edges.add(name)
    return edges


def graph(root: Path) -> dict[str, set[str]]:
    known = module_names(root)
    return {name: imports_of(name, path, known) for name, path in known.items()}


def groups(edges: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected group of two or more modules (each sorted): the modules that
    import each other, directly or round a longer loop."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's algorithm; the package is small enough to recurse
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return sorted(found)


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per group (see :func:`groups`): the shortest from its first module back."""
    return [_path_through(group, edges) for group in groups(edges)]


def _path_through(group: list[str], edges: dict[str, set[str]]) -> list[str]:
    """A shortest cycle from the group's first module back to it, inside the group."""
    members = set(group)
    start = group[0]
    prev: dict[str, str] = {}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(edges[v] & members):
                if w == start:
                    path = [v]
                    while path[-1] != start:
                        path.append(prev[path[-1]])
                    return [start, *reversed(path[:-1]), start]
                if w not in prev:
                    prev[w] = v
                    nxt.append(w)
        frontier = nxt
    return [*group, group[0]]


def report(root: Path) -> Iterator[str]:
    """One line per group of modules that import each other: a cycle, and the whole group
    when it holds more modules than that cycle."""
    edges = graph(root)
    for group in groups(edges):
        cycle = _path_through(group, edges)
        line = " -> ".join(cycle)
        if len(group) > len(cycle) - 1:
            line += f" (the group: {', '.join(group)})"
        yield line


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        print("usage: check_imports.py [PACKAGE_DIR]", file=sys.stderr)
        return 2
    root = Path(argv[0]) if argv else Path(__file__).resolve().parent.parent / "prefork_lb"
    if not (root / "__init__.py").is_file():
        print(f"check_imports: {root} is not a package directory", file=sys.stderr)
        return 2
    found = list(report(root))
    for line in found:
        print(f"import cycle: {line}")
    if found:
        print(f"{len(found)} import cycle(s) in {root.name}", file=sys.stderr)
        return 1
    print(f"no import cycles in {root.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
