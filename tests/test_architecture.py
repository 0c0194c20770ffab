"""The house's shape, held by a test: imports run one way and nothing grows past the size limits.

* No import circle among ``llava``'s modules, counting every import (module level, inside functions and under
  ``TYPE_CHECKING`` alike: a lazy import is still a dependency).
* No upward import: each top-level room of ``llava`` sits on a floor (:data:`FLOORS`) and imports only rooms on
  lower floors (or itself). ``serve`` sits below ``eval``: the serving code imports nothing from evaluation.
* No function over :data:`MAX_FUNCTION_LINES` lines and no file over :data:`MAX_FILE_LINES` lines in ``llava/``.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "llava"
MAX_FUNCTION_LINES = 80
MAX_FILE_LINES = 500
# bottom-up; a room imports only rooms on a lower floor (or itself)
FLOORS = {
    "": 0, "constants": 0, "utils": 1,
    "conversation": 2, "mm_utils": 2,
    "model": 3,
    "data": 4, "testing": 4, "diagnostics": 4, "probe": 4, "embedding_alignment": 4, "contrastive": 4,
    "train": 5,
    "serve": 6,
    "eval": 7,
    "workflows": 8,
}


def module_name(path: Path, root: Path = ROOT) -> str:
    """Dotted module name of a file under ``root`` (``llava/x/__init__.py`` -> ``llava.x``)."""
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported(node: ast.AST, module: str, is_package: bool) -> Iterator[str]:
    if isinstance(node, ast.Import):
        yield from (a.name for a in node.names)
    elif isinstance(node, ast.ImportFrom):
        if node.level:
            base = module.split(".")
            base = base if is_package else base[:-1]
            base = base[: len(base) - (node.level - 1)]
            target = ".".join(base + ([node.module] if node.module else []))
        else:
            target = node.module or ""
        yield target
        yield from (f"{target}.{a.name}" for a in node.names)


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    """``{module: modules of this package it imports}`` over every ``.py`` file under ``root``."""
    files = {module_name(p, root): p for p in root.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for mod, path in files.items():
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            for name in _imported(node, mod, path.name == "__init__.py"):
                if name in files and name != mod:
                    deps.add(name)
        graph[mod] = deps
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)

    for start in sorted(graph):
        if start in index:
            continue
        visit(start)
        work = [(start, iter(sorted(graph[start])))]
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    visit(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def room(module: str) -> str:
    """The top-level room of a module: ``llava.train.trainer`` -> ``train``; ``llava`` itself -> ``""``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    """``a -> b`` for every import of a room on the same or a higher floor (and of rooms missing from FLOORS)."""
    bad = []
    for mod, deps in sorted(graph.items()):
        for dep in sorted(deps):
            src, dst = room(mod), room(dep)
            if src == dst:
                continue
            if src not in FLOORS or dst not in FLOORS:
                bad.append(f"{mod} -> {dep} (a room without a floor in FLOORS)")
            elif FLOORS[dst] >= FLOORS[src]:
                bad.append(f"{mod} -> {dep} (floor {FLOORS[src]} imports floor {FLOORS[dst]})")
    return bad


def oversized(root: Path = ROOT) -> list[str]:
    """Files over MAX_FILE_LINES lines and functions over MAX_FUNCTION_LINES lines."""
    bad = []
    for path in sorted(root.rglob("*.py")):
        text = path.read_text()
        n_lines = len(text.splitlines())
        rel = path.relative_to(root.parent)
        if n_lines > MAX_FILE_LINES:
            bad.append(f"{rel}: {n_lines} lines")
        for node in ast.walk(ast.parse(text, str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    bad.append(f"{rel}:{node.lineno} {node.name}: {length} lines")
    return bad


def test_no_import_circles() -> None:
    assert cycles(import_graph()) == []


def test_no_upward_imports() -> None:
    assert upward_imports(import_graph()) == []


def test_no_oversized_files_or_functions() -> None:
    assert oversized() == []


def _write(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / "llava" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root / "llava"


def test_the_checks_find_lazy_circles_relative_imports_and_upward_imports(tmp_path: Path) -> None:
    """The checks on a made-up tree: a circle through a function-level import and a relative import, and an
    upward import, are found; once removed, the tree passes."""
    pkg = _write(tmp_path, {
        "__init__.py": "",
        "data/__init__.py": "",
        "data/a.py": "def f():\n    from llava.data import b\n    return b\n",
        "data/b.py": "from . import a\n",
        "train/__init__.py": "",
        "train/t.py": "import llava.data.a\n",
        "model/__init__.py": "",
        "model/m.py": "from llava.train.t import x\n",
    })
    graph = import_graph(pkg)
    assert cycles(graph) == [["llava.data.a", "llava.data.b"]]
    assert upward_imports(graph) == ["llava.model.m -> llava.train.t (floor 3 imports floor 5)"]
    (pkg / "data" / "b.py").write_text("X = 1\n")
    (pkg / "model" / "m.py").write_text("X = 2\n")
    assert cycles(import_graph(pkg)) == []
    assert upward_imports(import_graph(pkg)) == []


def test_the_size_check_counts_lines(tmp_path: Path) -> None:
    body = "".join(f"    x{i} = {i}\n" for i in range(MAX_FUNCTION_LINES))
    pkg = _write(tmp_path, {"__init__.py": "", "big.py": "def long():\n" + body})
    assert oversized(pkg) == [f"llava/big.py:1 long: {MAX_FUNCTION_LINES + 1} lines"]


@pytest.mark.parametrize(("module", "expected"), [("llava", ""), ("llava.train.trainer", "train")])
def test_room(module: str, expected: str) -> None:
    assert room(module) == expected
