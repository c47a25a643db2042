"""The package's shape: no import cycles, and no module imports another module's private names.

Read from the source (no server needed). The two context classes share one
sans-IO core (``_plans``) and reach watches only through the interface of
``watch``; these checks keep it that way.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "priv" / "python" / "snakepit_bridge"


def _modules() -> dict[str, ast.Module]:
    return {path.stem: ast.parse(path.read_text()) for path in sorted(PACKAGE.glob("*.py"))}


def _relative_imports(tree: ast.Module) -> list[ast.ImportFrom]:
    return [node for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.level == 1]


def test_no_import_cycles() -> None:
    graph = {
        name: {(node.module or "").split(".")[0] for node in _relative_imports(tree)} - {"", "_proto"}
        for name, tree in _modules().items()
    }

    def reaches(start: str, target: str, seen: set[str]) -> bool:
        for dep in graph.get(start, set()):
            if dep == target or (dep not in seen and reaches(dep, target, seen | {dep})):
                return True
        return False

    assert [name for name in graph if reaches(name, name, {name})] == []


def test_no_private_name_is_imported_across_modules() -> None:
    imported = [
        (name, node.module, alias.name)
        for name, tree in _modules().items()
        for node in _relative_imports(tree)
        for alias in node.names
        if alias.name.startswith("_") and not alias.name.startswith("__")
    ]
    assert imported == []


def test_context_and_watch_do_not_reach_into_each_other() -> None:
    """context.py knows watch.py by its public interface only; watch.py never imports context.py."""
    modules = _modules()
    assert "context" not in {node.module for node in _relative_imports(modules["watch"])}
    assert "context" not in {node.module for node in _relative_imports(modules["_watchplan"])}
    for name in ("context", "watch", "_watchplan"):
        reached = {
            node.attr
            for node in ast.walk(modules[name])
            if isinstance(node, ast.Attribute)
            and node.attr.startswith("_")
            and not node.attr.startswith("__")
            and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"))
        }
        assert reached == set(), (name, reached)
