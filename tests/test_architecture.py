"""The dependency rule, read from the source: the core never imports the toy world, and no ip2p modules import
each other in a cycle. Every import counts, at module level or inside a function."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "ip2p"
TOP_LAYER = {
    "ip2p.cli",
    "ip2p.app",
    "ip2p.demo",
}  # the command line, the web app and the demo: may import the toy world


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(SRC.rglob("*.py"))}


def _imported(name: str, path: Path) -> set[str]:
    """The ip2p modules ``name`` imports (``from ip2p.x import y`` counts as ``ip2p.x.y`` where that is one)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
    modules = set()
    for target in found:
        while target and target not in MODULES:  # ip2p.x.function -> ip2p.x
            target = target.rpartition(".")[0]
        # a module's own packages are imported before it by Python itself: no edge
        if target and target != name and not name.startswith(target + "."):
            modules.add(target)
    return modules


GRAPH = {name: _imported(name, path) for name, path in MODULES.items()}


def _is_core(name: str) -> bool:
    return name not in TOP_LAYER and not (name == "ip2p.toy" or name.startswith("ip2p.toy."))


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle through each strongly connected component of more than one module (Tarjan, then a path back)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    components: list[set[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(component)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    cycles = []
    for component in components:
        start = min(component)
        path, seen = [start], {start}
        while True:  # walk inside the component until a module repeats
            nxt = min(w for w in graph[path[-1]] if w in component)
            if nxt in seen:
                cycles.append(path[path.index(nxt) :] + [nxt])
                break
            path.append(nxt)
            seen.add(nxt)
    return cycles


def test_the_source_tree_is_read():
    assert {"ip2p.registry", "ip2p.models", "ip2p.toy.plugin", "ip2p.cli"} <= set(MODULES)
    assert "ip2p.registry" in GRAPH["ip2p.models"]  # an import the parser must see


def test_core_modules_never_import_the_toy_world():
    offenders = {
        name: sorted(t for t in targets if not _is_core(t) and t not in TOP_LAYER)
        for name, targets in GRAPH.items()
        if _is_core(name)
    }
    offenders = {k: v for k, v in offenders.items() if v}
    assert not offenders, (
        "core modules import the toy world (register through ip2p.registry instead): "
        + "; ".join(f"{k} -> {', '.join(v)}" for k, v in sorted(offenders.items()))
    )


def test_no_import_cycles():
    cycles = _cycles(GRAPH)
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


@pytest.mark.parametrize(
    "graph, expected",
    [
        ({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}, [["a", "b", "c", "a"]]),
        ({"a": {"b"}, "b": set()}, []),
    ],
)
def test_cycle_finder_names_the_cycle(graph, expected):
    assert _cycles(graph) == expected


def test_function_level_and_relative_imports_count(tmp_path):
    path = tmp_path / "x.py"
    path.write_text("def f():\n    from ip2p.toy.oracle import judge_edit\n\nfrom .pairs import clip_score\n")
    assert _imported("ip2p.x", path) == {"ip2p.toy.oracle", "ip2p.pairs.clip_score", "ip2p.pairs"}
    assert not _is_core("ip2p.toy.oracle") and _is_core("ip2p.evaluate.run")
