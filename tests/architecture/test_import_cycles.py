"""No module-level import cycles inside the project's packages (read from the source, not run).

A cycle makes a module's import order matter and hides which side owns what; the one this test
was written after (``jobs.store`` ↔ ``jobs.webhooks``) ended by moving the event log into
``jobs/events.py``. Imports inside functions (deliberately lazy) and under ``TYPE_CHECKING`` do
not count, nor do package ``__init__`` modules (they re-export their submodules).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("gif", "jobs", "workers", "service", "gif_client")


def _name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _module_level(tree: ast.Module):
    for node in tree.body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue
        yield from ast.walk(node) if isinstance(node, (ast.If, ast.Try)) else (node,)


def _imports(path: Path) -> set[str]:
    """Every project module (or module.attribute) the file imports at module level."""
    package = _name(path).split(".")[: None if path.name == "__init__.py" else -1]
    found: set[str] = set()
    for node in _module_level(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:
                module = ".".join(package[: len(package) - node.level + 1] + ([module] if module else []))
            found |= {module} | {f"{module}.{alias.name}" for alias in node.names}
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
    return {name for name in found if name.split(".")[0] in PACKAGES}


def _graph() -> dict[str, set[str]]:
    modules = {_name(p): p for package in PACKAGES for p in (ROOT / package).rglob("*.py")}
    plain = {m for m, p in modules.items() if p.name != "__init__.py"}
    return {m: (_imports(modules[m]) & plain) - {m} for m in plain}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    state: dict[str, int] = {}
    path: list[str] = []
    found: list[list[str]] = []

    def visit(module: str) -> None:
        state[module] = 1
        path.append(module)
        for other in sorted(graph[module]):
            if state.get(other) == 1:
                found.append([*path[path.index(other) :], other])
            elif other not in state:
                visit(other)
        path.pop()
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module)
    return found


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_module_imports_itself_back():
    graph = _graph()
    assert "jobs.store" in graph and "jobs.events" in graph["jobs.store"]  # the graph is read
    assert _cycles(graph) == []
