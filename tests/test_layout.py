"""The layering holds: import-linter's contracts of pyproject.toml (`[tool.importlinter]`: the
packages in layers, no circle between the modules of a package) are kept, they catch an upward
import hidden in a function and a circle, and no package imports the command on top."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from tests import layout

LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def _lint(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(LINT_IMPORTS), "--config", str(root / "pyproject.toml"), "--no-cache"], cwd=root,
                          env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"}, capture_output=True, text=True,
                          timeout=120)


def test_the_import_contracts_are_kept() -> None:
    result = _lint(layout.REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 kept, 0 broken" in result.stdout


def test_the_contracts_catch_a_lazy_upward_import_and_a_circle(tmp_path) -> None:
    for name in (*layout.LAYERS, "pyproject.toml"):
        copy = shutil.copytree if (layout.REPO / name).is_dir() else shutil.copy
        copy(layout.REPO / name, tmp_path / name)
    cost = tmp_path / "space" / "cost.py"  # space sits below search: an import inside a function breaks the layers
    cost.write_text(cost.read_text() + "\n\ndef _upward() -> None:\n    from search import settings  # noqa\n")
    studies = tmp_path / "search" / "studies.py"  # search.driver imports search.studies: the other way is a circle
    assert "from .studies import" in (tmp_path / "search" / "driver.py").read_text()
    studies.write_text(studies.read_text() + "\n\ndef _circle() -> None:\n    from . import driver  # noqa\n")
    result = _lint(tmp_path)
    assert result.returncode == 1 and "0 kept, 2 broken" in result.stdout, result.stdout + result.stderr
    assert "space.cost -> search.settings" in result.stdout


def test_no_package_imports_the_command_on_top() -> None:
    for package in layout.LAYERS:
        for path in (layout.REPO / package).rglob("*.py"):
            assert not layout.top_level_imports(path) & set(layout.TOP), path
    assert layout.top_level_imports(layout.REPO / "run_search.py") >= {"search"}
