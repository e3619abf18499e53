"""Budgets: parsing "1.3G"-style strings, checking a spec's cost, and the feasibility of a space.

Budgets apply to the target task (224x224, 1000 classes), the setting of the paper's figures.
Because every block's cost depends only on its own design, the cheapest and the most
expensive spec of a space are found exactly, block by block, from the closed-form model.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from localvit.cli import option
from localvit.spec import ArchSpec

from .cost import Cost, target_cost
from .space import ListSpace, Space

_SUFFIX = {"": 1, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}
_BUDGET = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([KMGT]?)\s*(FLOPS?|MACS?|PARAMS?)?\s*$",
                     re.IGNORECASE)
ACCEPTED_FORMS = "a positive number with an optional K/M/G/T suffix and unit, e.g. 1.3G, 1300M, 1.3e9, 1.3GFLOPs, 5.9M"


def parse_budget(text: str | float | int) -> int:
    """'1.3G' -> 1_300_000_000; '5.9M' -> 5_900_000; plain numbers are taken as they are."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        value = float(text)
    else:
        match = _BUDGET.match(str(text))
        if not match:
            raise ValueError(f"budget {text!r} is invalid; accepted: {ACCEPTED_FORMS}")
        value = float(match.group(1)) * _SUFFIX[match.group(2).upper()]
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"budget {text!r} is invalid; accepted: {ACCEPTED_FORMS} (greater than 0)")
    return round(value)


def format_count(value: float, unit: str = "") -> str:
    for suffix, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.3g}{suffix}{unit}"
    return f"{value:g}{unit}"


def _bound(help: str, flag: str) -> dict:
    """A budget field's command-line option (`search.options` reads the metadata)."""
    return option(help, BUDGET_GROUP, flag=flag, parse=parse_budget, metavar="N")


BUDGET_GROUP = "budget (at 224x224, 1000 classes; e.g. 1.3G, 900M, 5.9M, 1.3e9)"


@dataclass(frozen=True)
class Budget:
    """Bounds on the target cost (None: unbounded) and on measured throughput (images/s)."""

    max_flops: int | None = field(default=None, metadata=_bound("most FLOPs (multiply-adds) a model may cost",
                                                                "--budget-flops"))
    max_params: int | None = field(default=None, metadata=_bound("most parameters", "--budget-params"))
    min_flops: int | None = field(default=None, metadata=_bound("fewest FLOPs, for a bracket", "--min-flops"))
    min_params: int | None = field(default=None, metadata=_bound("fewest parameters, for a bracket", "--min-params"))
    min_throughput: float | None = field(default=None, metadata=option(
        "least inference images/s, measured on this machine's CPU at 224x224 (batch and threads: "
        "SearchSettings.throughput_batch and throughput_threads), BN folded", BUDGET_GROUP, metavar="IMG/S"))

    def __post_init__(self) -> None:
        for low, high in (("min_flops", "max_flops"), ("min_params", "max_params")):
            lo, hi = getattr(self, low), getattr(self, high)
            if lo is not None and hi is not None and lo > hi:
                raise ValueError(f"{low}={lo} is invalid; accepted: at most {high}={hi}")
        if self.min_throughput is not None and not self.min_throughput > 0:
            raise ValueError(f"min_throughput={self.min_throughput:g} is invalid; accepted: a positive number")

    def violations(self, cost: Cost) -> dict[str, float]:
        """Relative excess per cost bound: <= 0 where met (Optuna's constraint convention)."""
        out: dict[str, float] = {}
        if self.max_flops is not None:
            out["max_flops"] = cost.flops / self.max_flops - 1
        if self.min_flops is not None:
            out["min_flops"] = 1 - cost.flops / self.min_flops
        if self.max_params is not None:
            out["max_params"] = cost.params / self.max_params - 1
        if self.min_params is not None:
            out["min_params"] = 1 - cost.params / self.min_params
        return out

    def throughput_violation(self, images_per_s: float) -> float:
        return 1 - images_per_s / self.min_throughput if self.min_throughput else 0.0

    def admits(self, spec: ArchSpec) -> bool:
        """Whether the spec meets the cost bounds (throughput is measured separately)."""
        return all(v <= 0 for v in self.violations(target_cost(spec)).values())

    def describe(self) -> str:
        parts = []
        for label, low, high, unit in (("FLOPs", self.min_flops, self.max_flops, "FLOPs"),
                                       ("params", self.min_params, self.max_params, "")):
            if high is not None or low is not None:
                lo = format_count(low, unit) if low is not None else ""
                parts.append(f"{lo + ' <= ' if lo else ''}{label} <= {format_count(high, unit)}" if high is not None
                             else f"{label} >= {lo}")
        if self.min_throughput:
            parts.append(f"throughput >= {self.min_throughput:g} images/s")
        return ", ".join(parts) or "no budget"


@dataclass(frozen=True)
class Bounds:
    """The cheapest and the most expensive specs of a space, by FLOPs and by params."""

    cheapest_flops: tuple[ArchSpec, Cost]
    cheapest_params: tuple[ArchSpec, Cost]
    costliest_flops: tuple[ArchSpec, Cost]
    costliest_params: tuple[ArchSpec, Cost]


def bounds(space: Space) -> Bounds:
    """Exact extremes. A block's cost depends only on its own design, so each block's design
    is picked on its own from a table of the block's costs, for every combination of global
    choices."""
    if isinstance(space, ListSpace):
        candidates = list(space.points.values())
    else:
        candidates = []
        for base in space.bases():
            choices = space.block_choices(base)
            if space.shared:
                candidates += [base.replace(layers=(layer,) * base.depth) for layer in choices[0]]
                continue
            tables = [[(layer, target_cost(base.replace(layers=base.layers[:i] + (layer,) + base.layers[i + 1:])))
                       for layer in options] for i, options in enumerate(choices)]
            for key, pick in (("flops", min), ("params", min), ("flops", max), ("params", max)):
                layers = tuple(pick(table, key=lambda entry: getattr(entry[1], key))[0] for table in tables)
                candidates.append(base.replace(layers=layers))
    costs = [(spec, target_cost(spec)) for spec in candidates]
    return Bounds(min(costs, key=lambda c: c[1].flops), min(costs, key=lambda c: c[1].params),
                  max(costs, key=lambda c: c[1].flops), max(costs, key=lambda c: c[1].params))


def require_feasible(space: Space, budget: Budget) -> Bounds:
    """Raise ValueError, naming the cheapest spec's cost, when no spec can meet the cost bounds."""
    b = bounds(space)
    problems = []
    if budget.max_flops is not None and b.cheapest_flops[1].flops > budget.max_flops:
        spec, cost = b.cheapest_flops
        problems.append(f"FLOP budget {format_count(budget.max_flops, 'FLOPs')} is below the cheapest architecture "
                        f"of space {space.name!r} ({format_count(cost.flops, 'FLOPs')}, spec {spec.id})")
    if budget.max_params is not None and b.cheapest_params[1].params > budget.max_params:
        spec, cost = b.cheapest_params
        problems.append(f"parameter budget {format_count(budget.max_params)} is below the smallest architecture "
                        f"of space {space.name!r} ({format_count(cost.params)} params, spec {spec.id})")
    if budget.min_flops is not None and b.costliest_flops[1].flops < budget.min_flops:
        problems.append(f"FLOP lower bound {format_count(budget.min_flops, 'FLOPs')} is above the costliest "
                        f"architecture of space {space.name!r} ({format_count(b.costliest_flops[1].flops, 'FLOPs')})")
    if budget.min_params is not None and b.costliest_params[1].params < budget.min_params:
        problems.append(f"parameter lower bound {format_count(budget.min_params)} is above the largest "
                        f"architecture of space {space.name!r} ({format_count(b.costliest_params[1].params)})")
    if problems:
        raise ValueError("infeasible budget: " + "; ".join(problems))
    return b
