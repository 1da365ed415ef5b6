"""Module boundaries of the project's packages, read from the source (nothing imported): no module imports
another's private (``_name``) names, and no two modules import each other, even inside a function (a cycle
dodged at function level is still a cycle: ``pipeline.frames`` <-> ``pipeline.decode_pyav`` and
``model.loading`` <-> ``model.tiny`` were)."""

from __future__ import annotations

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGES = ("pipeline", "model", "training", "jobs")
# Cycles that predate this test, to be removed; a new one fails it.
KNOWN_CYCLES: set[frozenset[str]] = set()


def project_modules() -> dict[str, pathlib.Path]:
    modules = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            modules[name.removesuffix(".__init__")] = path
    return modules


def imported_names(name: str, path: pathlib.Path, modules: dict[str, pathlib.Path]) -> list[tuple[str, str | None]]:
    """``(module, name)`` for every import anywhere in the file (``name`` None for a whole module), resolved to
    the project module that holds it; imports from outside the project are left out."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(alias.name, None) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            for alias in node.names:
                whole = f"{base}.{alias.name}"
                found.append((whole, None) if whole in modules else (base, alias.name))
    resolved = []
    for target, attr in found:
        while target and target not in modules:
            target = target.rpartition(".")[0]
        if target and target != name:
            resolved.append((target, attr))
    return resolved


def import_graph() -> tuple[dict[str, set[str]], list[str]]:
    modules = project_modules()
    graph, private = {}, []
    for name, path in modules.items():
        edges = imported_names(name, path, modules)
        graph[name] = {target for target, _ in edges}
        private += [f"{name} imports {attr} from {target}" for target, attr in edges
                    if attr and attr.startswith("_") and not attr.startswith("__")]
    return graph, private


def cycles(graph: dict[str, set[str]]) -> set[frozenset[str]]:
    """The strongly connected components of more than one module (Tarjan, iterative)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), set()
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
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
                component = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.add(frozenset(component))
    return found


def test_no_module_imports_another_modules_private_names():
    _, private = import_graph()
    assert not private, private


def test_no_new_import_cycles():
    graph, _ = import_graph()
    assert {"pipeline.frames", "pipeline.decode_pyav", "pipeline.sampling", "model.loading", "model.tiny"} <= set(graph)
    new = cycles(graph) - KNOWN_CYCLES
    assert not new, [sorted(cycle) for cycle in new]


def test_the_cycle_finder_finds_cycles():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == {frozenset("abc")}
    assert cycles({"a": {"b"}, "b": set()}) == set()
