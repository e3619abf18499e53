"""The project's import graph, read from the source (every import, at module level or inside a
function, `TYPE_CHECKING` ones included), and the layers it must respect.

    python -m tests.layout      # the package graph, lines per package, any circle or upward import

`tests/test_layout.py` fails on a circle between modules or an import from a lower layer to a
higher one; docs/results/ records what this prints.
"""
from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
#: The packages from the bottom up: each may import only from its own layer and those below.
LAYERS = ("localvit", "space", "proxy", "ranking", "imagenet", "search", "audit")
#: Commands on top of every package.
TOP = ("run_search",)


def modules() -> dict[str, Path]:
    """Module name -> file, for every module of the layered packages and the top-level commands."""
    found = {name: REPO / f"{name}.py" for name in TOP}
    for package in LAYERS:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _imported(node: ast.AST, module: str, is_package: bool) -> list[str]:
    """The module names an import statement names (relative ones resolved)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    assert isinstance(node, ast.ImportFrom)
    if node.level:
        base = module.split(".")
        base = base if is_package else base[:-1]
        base = base[:len(base) - node.level + 1]
        prefix = ".".join(base + ([node.module] if node.module else []))
    else:
        prefix = node.module or ""
    return [prefix] + [f"{prefix}.{alias.name}" for alias in node.names]


def edges() -> dict[str, set[str]]:
    """Module -> the project modules it imports (a `from x import y` of a submodule y counts as x.y)."""
    known = modules()
    graph: dict[str, set[str]] = defaultdict(set)
    for name, path in known.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                targets = [t for t in _imported(node, name, path.name == "__init__.py") if t in known]
                # `from pkg import sub` imports pkg.sub, not pkg's namesake: keep the most specific
                specific = {t for t in targets if not any(o.startswith(t + ".") for o in targets)}
                graph[name] |= {t for t in specific if t != name}
        graph.setdefault(name, set())
    return dict(graph)


def layer(module: str) -> int:
    top = module.split(".")[0]
    return len(LAYERS) if top in TOP else LAYERS.index(top)


def upward(graph: dict[str, set[str]]) -> list[tuple[str, str]]:
    """Imports from a lower layer to a higher one."""
    return sorted((a, b) for a, targets in graph.items() for b in targets if layer(b) > layer(a))


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def package_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """Package -> the other packages its modules import."""
    out: dict[str, set[str]] = defaultdict(set)
    for a, targets in graph.items():
        out[a.split(".")[0]] |= {b.split(".")[0] for b in targets if b.split(".")[0] != a.split(".")[0]}
    return dict(out)


def lines_per_package() -> dict[str, int]:
    counts: dict[str, int] = defaultdict(int)
    for name, path in modules().items():
        counts[name.split(".")[0]] += len(path.read_text().splitlines())
    return dict(counts)


def main() -> None:
    graph = edges()
    print("| package (bottom up) | lines | imports from |\n|---|---|---|")
    packages = package_graph(graph)
    lines = lines_per_package()
    for name in (*LAYERS, *TOP):
        print(f"| {name} | {lines.get(name, 0)} | {', '.join(sorted(packages.get(name, ()), key=layer)) or '-'} |")
    print(f"\ncircles between modules: {circles(graph) or 'none'}")
    print(f"imports from a lower layer to a higher one: {upward(graph) or 'none'}")


if __name__ == "__main__":
    main()
