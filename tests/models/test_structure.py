"""The shape of ``models/`` itself (issue 24): constructors of at most 12 arguments, imports without a circle,
no global statement."""

from __future__ import annotations

import ast
from pathlib import Path

MODELS = Path(__file__).resolve().parents[2] / "models"


def _modules() -> dict[str, ast.Module]:
    """Every module of the package by dotted name (``models.pairs`` for ``models/pairs/__init__.py``)."""
    trees = {}
    for path in sorted(MODELS.rglob("*.py")):
        parts = path.relative_to(MODELS.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        trees[name] = ast.parse(path.read_text(), filename=str(path))
    return trees


def test_every_constructor_takes_at_most_12_arguments() -> None:
    too_many = []
    for name, tree in _modules().items():
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef) and node.name == "__init__":
                args = node.args
                count = len(args.posonlyargs) + len(args.args) + len(args.kwonlyargs) - 1  # without self
                count += (args.vararg is not None) + (args.kwarg is not None)
                if count > 12:
                    too_many.append(f"{name}:{node.lineno} ({count})")
    assert not too_many


def test_the_import_graph_has_no_circle() -> None:
    """Every import between modules of ``models`` (those inside functions too) points one way."""
    trees = _modules()
    graph: dict[str, set[str]] = {}
    for name, tree in trees.items():
        targets = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                targets |= {node.module, *(f"{node.module}.{a.name}" for a in node.names)}
            elif isinstance(node, ast.Import):
                targets |= {a.name for a in node.names}
        graph[name] = {t for t in targets if t in trees and t != name}
    done: set[str] = set()

    def visit(name: str, path: tuple[str, ...]) -> None:
        assert name not in path, " -> ".join((*path, name))
        if name not in done:
            for target in sorted(graph[name]):
                visit(target, (*path, name))
            done.add(name)

    for name in graph:
        visit(name, ())
    assert graph["models.pairs.triton"] <= {"models.ops", "models.pairs.layout"}  # the leaf side of the old circle


#: Methods that change a list, dict or set in place.
_MUTATORS = {"append", "extend", "insert", "pop", "remove", "clear", "update", "add", "discard", "setdefault"}


def test_no_module_keeps_a_global_switch() -> None:
    """No ``global`` statement, and no module-level list, dict or set that code changes (the old FLOP counters and
    sparse-kernel switch were such stacks, pushed and popped by context managers)."""
    found = []
    for name, tree in _modules().items():
        found += [f"{name}:{n.lineno} global" for n in ast.walk(tree) if isinstance(n, ast.Global)]
        containers = {
            ast.unparse(node.targets[0] if isinstance(node, ast.Assign) else node.target)
            for node in tree.body
            if isinstance(node, (ast.Assign, ast.AnnAssign)) and isinstance(node.value, (ast.List, ast.Dict, ast.Set))
        }
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in _MUTATORS:
                changed = ast.unparse(node.func.value)
            elif isinstance(node, (ast.Assign, ast.AugAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                changed = next((ast.unparse(t.value) for t in targets if isinstance(t, ast.Subscript)), "")
            else:
                continue
            if changed in containers:
                found.append(f"{name}:{node.lineno} {changed}")
    assert not found
