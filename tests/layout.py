"""The project's packages, their lines and the package graph, read by grimp (import-linter's
graph: every import, at module level or inside a function, `TYPE_CHECKING` ones included).

    python -m tests.layout      # lines per package and which packages each imports from

The layering itself is a contract in pyproject.toml (`[tool.importlinter]`), which
`tests/test_layout.py` checks; docs/results/ record what this prints.
"""
from __future__ import annotations

import ast
import tomllib
from pathlib import Path

import grimp

REPO = Path(__file__).resolve().parents[1]
_CONFIG = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]
#: The packages from the bottom up (the contract lists them top down).
LAYERS: tuple[str, ...] = tuple(reversed(_CONFIG["contracts"][0]["layers"]))
#: Commands on top of every package.
TOP = ("run_search",)


def package_graph() -> dict[str, set[str]]:
    """Package or command -> the other packages it imports."""
    graph = grimp.build_graph(*LAYERS)
    packages = {package: {imported.split(".")[0] for module in graph.find_descendants(package) | {package}
                          for imported in graph.find_modules_directly_imported_by(module)} - {package}
                for package in LAYERS}
    return {**packages, **{name: top_level_imports(REPO / f"{name}.py") & set(LAYERS) for name in TOP}}


def top_level_imports(path: Path) -> set[str]:
    """The top-level names a file imports absolutely, anywhere in it (grimp's graph holds packages only:
    this reads the commands, and whether a package imports one)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            found.add(node.module.split(".")[0])
    return found


def lines_per_package() -> dict[str, int]:
    """Lines of the Python files of each package and command."""
    files = {name: [REPO / f"{name}.py"] for name in TOP}
    files.update({package: sorted((REPO / package).rglob("*.py")) for package in LAYERS})
    return {name: sum(len(path.read_text().splitlines()) for path in paths) for name, paths in files.items()}


def main() -> None:
    packages, lines = package_graph(), lines_per_package()
    print("| package (bottom up) | lines | imports from |\n|---|---|---|")
    for name in (*LAYERS, *TOP):
        imported = sorted(packages.get(name, ()), key=LAYERS.index)
        print(f"| {name} | {lines[name]} | {', '.join(imported) or '-'} |")


if __name__ == "__main__":
    main()
