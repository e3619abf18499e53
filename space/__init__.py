"""The design space: specs, choices, sampling, exact costs, budgets and measured throughput."""
from localvit.spec import ArchSpec, LayerSpec

from .bases import base_spec
from .budget import Bounds, Budget, bounds, format_count, parse_budget, require_feasible
from .cost import Cost, at_resolution, model_cost, target_cost
from .paper import PAPER_NAMED_SPECS, PAPER_ROWS, PaperRow
from .space import LayerChoices, ListSpace, SearchSpace, Space, load_space, make_space

__all__ = [
    "ArchSpec", "Bounds", "Budget", "Cost", "LayerChoices", "LayerSpec", "PAPER_NAMED_SPECS", "PAPER_ROWS",
    "PaperRow", "ListSpace", "SearchSpace", "Space", "at_resolution", "base_spec", "bounds", "format_count",
    "load_space", "make_space", "model_cost", "parse_budget", "require_feasible", "target_cost",
]
