"""The package's import graph has no cycle: module-level and function-local imports alike (read with ast)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "inbedder"


def modules() -> dict[str, tuple[Path, bool]]:
    """Dotted module name -> (file, is a package)."""
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        out[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    return out


def import_graph() -> dict[str, set[str]]:
    """Module -> the package modules it imports. `from a.b import c` is an edge to a.b (the names come from
    its namespace, even when a.b is the importer's own package) and to a.b.c when that is a module."""
    known = modules()

    def owner(name: str) -> str | None:
        parts = name.split(".")
        while parts and ".".join(parts) not in known:
            parts.pop()
        return ".".join(parts) or None

    graph: dict[str, set[str]] = {m: set() for m in known}
    for module, (path, is_package) in known.items():
        here = module.split(".") if is_package else module.split(".")[:-1]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = ".".join(here[: len(here) - node.level + 1] + [node.module or ""]).strip(".") \
                    if node.level else (node.module or "")
                names = [base] + [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in known]
            for name in names:
                target = owner(name) if name.partition(".")[0] == PACKAGE.name else None
                if target and target != module:
                    graph[module].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_package_has_no_import_cycle():
    graph = import_graph()
    assert "inbedder.report.render" in graph["inbedder.report"]  # the package imports its submodules
    assert "inbedder.datasets" in graph["inbedder.tasks"]  # a function-local import counts too
    assert cycles(graph) == []


def test_the_checker_sees_a_cycle_through_a_package_init():
    graph = {"p": {"p.a"}, "p.a": {"p"}, "q": set()}
    assert cycles(graph) == [["p", "p.a"]]


def test_every_rule_takes_its_params_from_inbedder_rule_params():
    """The config -> params functions live in one module; rule files import them from there."""
    root = Path(__file__).resolve().parents[1]
    for rules in (root / "workflow" / "rules").glob("*.smk"):
        text = rules.read_text(encoding="utf-8")
        for line in text.splitlines():
            if "_params" in line and line.startswith("from inbedder."):
                assert line.startswith("from inbedder.rule_params import"), f"{rules.name}: {line}"
