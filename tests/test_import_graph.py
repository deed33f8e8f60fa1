"""The package's modules import one way: no circle, not even through a lazy or a type-checking import.

A lazy import inside a function, or one under ``TYPE_CHECKING``, still says "this module needs that
one"; two modules that need each other are one module split in two, so every import counts here.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "airflow_provider_cfai"


def module_name(path: Path, package: Path) -> str:
    parts = list(path.relative_to(package.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(package: Path) -> dict[str, set[str]]:
    """Each module of ``package`` and the package's modules it imports anywhere in its text."""
    modules = {module_name(path, package): path for path in sorted(package.rglob("*.py"))}
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                targets = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
            else:
                continue
            for target in targets:
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                # Importing a module runs its parent packages first: that edge is Python's, not ours.
                if target and target != name and not name.startswith(target + "."):
                    graph[name].add(target)
    return graph


def circles(graph: dict[str, set[str]]) -> list[set[str]]:
    """The strongly connected groups of more than one module (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[set[str]] = []
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                group = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    group.add(member)
                    if member == node:
                        break
                if len(group) > 1:
                    found.append(group)
    return found


def test_circles_finds_a_circle_through_a_type_checking_import(tmp_path: Path) -> None:
    package = tmp_path / "airflow_provider_cfai"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from airflow_provider_cfai.b import B\n")
    (package / "b.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from airflow_provider_cfai import c\n"
    )
    (package / "c.py").write_text("def f():\n    import airflow_provider_cfai.a\n")

    assert circles(import_graph(package)) == [
        {"airflow_provider_cfai.a", "airflow_provider_cfai.b", "airflow_provider_cfai.c"}
    ]


def test_the_package_has_no_import_circle() -> None:
    graph = import_graph(PACKAGE)

    assert "airflow_provider_cfai.emulator.state" in graph  # the walk really read the package
    assert circles(graph) == []
