"""The house rule "no import circle in bot/ or janus_engine/ except type-only ones", as a test.

Every import counts (module level and inside functions), except those under ``if TYPE_CHECKING:``, which
never run. A circle found here means two modules can no longer be read, tested or reloaded apart.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _module_names(root: Path, packages: tuple[str, ...]) -> dict[str, Path]:
    names: dict[str, Path] = {}
    for package in packages:
        for path in (root / package).rglob("*.py"):
            parts = path.relative_to(root).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            names[".".join(parts)] = path
    return names


def _runtime_imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """Modules of ``known`` that ``name`` imports when it runs (TYPE_CHECKING blocks skipped)."""

    def owner(target: str) -> str | None:
        while target and target not in known:
            target = target.rpartition(".")[0]
        return target or None

    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                for stmt in child.orelse:
                    visit(stmt)
                continue
            targets: list[str] = []
            if isinstance(child, ast.Import):
                targets = [alias.name for alias in child.names]
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    parts = package.split(".")[: len(package.split(".")) - (child.level - 1)]
                    base = ".".join([*parts, base] if base else parts)
                targets = [base, *(f"{base}.{alias.name}" for alias in child.names)]
            for target in targets:
                module = owner(target)
                if module is not None and module != name:
                    found.add(module)
            visit(child)

    visit(ast.parse(path.read_text(encoding="utf-8")))
    return found


def import_circles(root: Path, packages: tuple[str, ...]) -> list[list[str]]:
    """Strongly connected groups of two or more modules in the runtime import graph (Tarjan)."""
    known = _module_names(root, packages)
    edges: dict[str, set[str]] = defaultdict(set)
    for name, path in known.items():
        edges[name] = _runtime_imports(name, path, known)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                connect(w)
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
                circles.append(sorted(group))

    for name in sorted(known):
        if name not in index:
            connect(name)
    return circles


def test_bot_and_engine_have_no_runtime_import_circle() -> None:
    assert import_circles(ROOT, ("bot", "janus_engine")) == []


def test_the_check_finds_a_circle_and_ignores_type_only_imports(tmp_path: Path) -> None:
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from pkg import b\n")
    (pkg / "b.py").write_text("def f():\n    from pkg.a import x\n")
    (pkg / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg import a\n")
    (pkg / "d.py").write_text("from . import c\n")
    assert import_circles(tmp_path, ("pkg",)) == [["pkg.a", "pkg.b"]]
    (pkg / "a.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg import b\n")
    assert import_circles(tmp_path, ("pkg",)) == []
