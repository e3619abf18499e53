"""The layout holds: no circle between modules, no import from a lower package to a higher one
(`tests.layout.LAYERS`), and the walk itself sees what it must."""
from __future__ import annotations

from tests import layout


def test_no_module_imports_in_a_circle() -> None:
    assert layout.circles(layout.edges()) == []


def test_no_package_imports_from_a_higher_one() -> None:
    assert layout.upward(layout.edges()) == []


def test_the_walk_finds_relative_lazy_and_type_checking_imports() -> None:
    graph = {"a.x": {"a.y"}, "a.y": {"a.z"}, "a.z": {"a.x"}, "b": {"a.x"}}
    assert layout.circles(graph) == [["a.x", "a.y", "a.z"]]
    edges = layout.edges()
    assert "search.studies" in edges["search.driver"]  # relative, at module level
    assert "search.oneshot" in edges["search.driver"]  # inside a function
    assert "space.references" in edges["space.space"]
    assert ("space.cost", "search.settings") not in layout.upward(edges)
    assert layout.upward({"space.cost": {"search.settings"}}) == [("space.cost", "search.settings")]
